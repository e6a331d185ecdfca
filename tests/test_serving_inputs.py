"""Request validation without a running app: what reaches the model is bounded."""

import dataclasses

import pytest

from unime.config import ServeLimits
from unime.serving.api import InputError, Item, check_item


def test_the_instruction_counts_towards_max_text_chars():
    limits = ServeLimits(max_text_chars=20)
    assert check_item(Item(text="red circles"), limits, "query", "Find:") == ("Find:\nred circles", None)
    with pytest.raises(InputError, match="instruction: with query.text, longer than max_text_chars=20") as error:
        check_item(Item(text="red circles"), limits, "query", "Find an image for the caption:")
    assert error.value.status == 413
    with pytest.raises(InputError, match=r"input\[3\].text: longer than max_text_chars=20"):
        check_item(Item(text="x" * 21), limits, "input[3]")
    # an image query's text is the instruction alone: bounded too
    with pytest.raises(InputError, match="instruction: with query.text, longer than"):
        check_item(Item(image=png_base64((8, 8))), limits, "query", "y" * 1_000_000)


def png_base64(size) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("size", [(1, 300), (2, 1000), (5000, 10)])
def test_an_image_the_processors_refuse_is_a_400_naming_its_shape(size):
    with pytest.raises(InputError, match=rf"query.image: image of {size[0]}x{size[1]}: .*max_image_aspect=200") as e:
        check_item(Item(image=png_base64(size)), ServeLimits(), "query")
    assert e.value.status == 400
    for fine in ((10, 1000), (1, 200)):  # up to 200:1, as the processors accept
        assert check_item(Item(image=png_base64(fine)), ServeLimits(), "query")[1].size == fine


def test_a_lone_surrogate_is_a_400_naming_the_field():
    with pytest.raises(InputError, match=r"input\[2\].text: not valid Unicode .* at character 3"):
        check_item(Item(text="red\ud800"), ServeLimits(), "input[2]")
    with pytest.raises(InputError, match="instruction: not valid Unicode"):
        check_item(Item(text="red"), ServeLimits(), "query", "\udfff")


def test_one_input_the_embedder_refuses_fails_alone_and_its_batch_mates_get_their_vectors(tiny_dir):
    import numpy as np

    from unime.models import EmbedItem
    from unime.serving.deployments import EmbedderDeployment, vector_or_refusal

    # the deployment's class outside Serve: the batch handler's body (Serve only gathers the batch)
    deployment = EmbedderDeployment.func_or_class(str(tiny_dir / "embedder"), device="cpu")
    encode, encode_counted, calls = deployment.embedder.encode, deployment.embedder.encode_counted, []

    def refusing(items, max_tokens=None):
        calls.append(len(items))
        if any(item.text == "poison" for item in items):
            raise TypeError("the tokenizer refuses it")
        return encode_counted(items, max_tokens)

    deployment.embedder.encode_counted = refusing
    texts = ["a red circle", "poison", "blue squares", "green triangles"]
    results = deployment.encode_batch([(text, None) for text in texts])
    assert calls == [4, 1, 1, 1, 1]  # the batch, then each item alone
    assert results[1] == {"error": "TypeError: the tokenizer refuses it"}
    for text, answer in zip(texts, results):
        if text != "poison":
            np.testing.assert_allclose(answer["vector"], encode([EmbedItem(text, None)])[0], atol=1e-5)
            tokens = deployment.embedder.processor.tokenizer(deployment.embedder.recipe.embed_text(text, False))
            assert answer["tokens"] == len(tokens["input_ids"])
    with pytest.raises(InputError, match=r"input\[1\]: the embedder cannot encode it \(TypeError") as e:
        vector_or_refusal(results[1], "input[1]")
    assert e.value.status == 422
    assert deployment.encode_batch([("poison", None)]) == [{"error": "TypeError: the tokenizer refuses it"}]


def test_a_prompt_over_max_input_tokens_is_a_413_before_the_forward_and_its_batch_mates_are_encoded(tiny_dir):
    import numpy as np

    from unime.models import EmbedItem
    from unime.serving.deployments import EmbedderDeployment, vector_or_refusal

    deployment = EmbedderDeployment.func_or_class(str(tiny_dir / "embedder"), device="cpu", max_input_tokens=50)
    tokenizer, forwards = deployment.embedder.processor.tokenizer, []
    forward = deployment.embedder.forward
    deployment.embedder.forward = lambda batch: forwards.append(batch["input_ids"].shape[0]) or forward(batch)
    parrots = "\U0001F99C" * 40  # 40 characters, one byte-level token per UTF-8 byte: 160 tokens
    assert len(tokenizer(parrots)["input_ids"]) > 50 > len(parrots)
    texts = ["a red circle", parrots, "blue squares"]
    results = deployment.encode_batch([(text, None) for text in texts])
    assert forwards == [2]  # one forward, of the two within the budget
    assert results[1] == {"error": f"{len(tokenizer(parrots)['input_ids'])} tokens, over max_input_tokens=50 "
                                   "(image tokens included)", "status": 413}
    for k in (0, 2):
        np.testing.assert_allclose(results[k]["vector"], deployment.embedder.encode([EmbedItem(texts[k])])[0],
                                   atol=1e-5)
    with pytest.raises(InputError, match=r"input\[1\]: 160 tokens, over max_input_tokens=50") as e:
        vector_or_refusal(results[1], "input[1]")
    assert e.value.status == 413 and e.value.param == "input[1]"


def test_image_tokens_count_towards_max_input_tokens(tiny_dir):
    from PIL import Image

    from unime.serving.deployments import EmbedderDeployment

    deployment = EmbedderDeployment.func_or_class(str(tiny_dir / "embedder"), device="cpu", max_input_tokens=12)
    image = Image.new("RGB", (224, 224), (200, 30, 30))  # 16 image tokens in the tiny processor's pixel bounds
    answer = deployment.encode_batch([("red", image)])[0]
    assert answer.get("status") == 413 and int(answer["error"].split()[0]) > 16, answer
    assert "vector" in deployment.encode_batch([("red", None)])[0]


def test_a_recipe_max_length_caps_the_budget_so_an_accepted_prompt_is_never_cut(tiny_dir):
    from unime.models import EmbedItem
    from unime.models.embedder import PromptTooLong
    from unime.serving.deployments import EmbedderDeployment

    deployment = EmbedderDeployment.func_or_class(str(tiny_dir / "embedder"), device="cpu", max_input_tokens=4096)
    embedder = deployment.embedder
    embedder.recipe = dataclasses.replace(embedder.recipe, max_length=8)
    words = "two red circles and three blue squares on the left of a green triangle"
    with pytest.raises(PromptTooLong) as too_long:
        embedder.encode_counted([EmbedItem("red"), EmbedItem(words)], max_tokens=4096)
    assert too_long.value.limit == 8 and list(too_long.value.over) == [1]
    assert embedder.encode_counted([EmbedItem(words)])[1] == [8]  # without a budget the recipe cuts it


def test_a_model_call_past_request_timeout_s_is_a_504_and_is_cancelled():
    import asyncio

    class SlowResponse:  # what a DeploymentHandle call returns: awaitable, cancellable
        cancelled = False

        def __await__(self):
            return asyncio.sleep(5).__await__()

        def cancel(self):
            self.cancelled = True

    from unime.serving.deployments import answer_of

    slow = SlowResponse()
    with pytest.raises(InputError, match="no answer within request_timeout_s=0.05") as error:
        asyncio.run(answer_of(slow, timeout_s=0.05, retry_after_s=1))
    assert error.value.status == 504 and slow.cancelled


def test_a_full_deployment_queue_is_a_503_with_retry_after():
    import asyncio

    from ray.serve.exceptions import BackPressureError

    from unime.serving.deployments import answer_of

    async def rejected():
        raise BackPressureError(num_queued_requests=8, max_queued_requests=8)

    with pytest.raises(InputError, match="overloaded, retry later") as error:
        asyncio.run(answer_of(rejected(), timeout_s=5, retry_after_s=2.5))
    assert (error.value.status, error.value.retry_after_s) == (503, 2.5)
