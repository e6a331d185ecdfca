"""Input recipes against an oracle of the UniME-V2 authors' released input pipeline.

``tests/official_inputs.py`` re-derives the authors' formatting without unime's code; here
unime's ``unime-v2`` recipe must give the same input ids, image grids and pixel values, the
same embeddings (fp32, 1e-5) and the same reranker first-token logits (1e-5), item kinds alone
and mixed in one batch, and the native recipe must not (the test can tell them apart).
"""

from __future__ import annotations

import gc
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from tests import official_inputs as official
from tests.helpers import restored_environment
from unime.models import Embedder, EmbedItem
from unime.models.recipes import fit_to_budget, get_recipe
from unime.rerank import Reranker, build_listwise_messages, build_pairwise_messages

RNG = np.random.default_rng(0)


def picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 3)
    pixels = RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)
    if mode == "RGBA":
        pixels[..., 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]  # graded transparency
        return Image.fromarray(pixels, "RGBA")
    image = Image.fromarray(pixels, "RGB")
    return image.convert("P", palette=Image.ADAPTIVE) if mode == "P" else image


PORTRAIT, LANDSCAPE = picture(90, 170), picture(230, 70)
TRANSPARENT, PALETTE = picture(120, 80, "RGBA"), picture(64, 96, "P")
ITEMS = {
    "text-only": ("Represent the given dialogue about an image, which is used for image retrieval: a dog\n", None),
    "image-only": ("<|image_1|>\n", LANDSCAPE),
    "image+instruction": ("<|image_1|>\nRepresent the given image with the following question: What is it?\n",
                          PORTRAIT),
    "rgba": ("<|image_1|>\nRepresent the given image.\n", TRANSPARENT),
    "palette": ("<|image_1|> Find an image caption describing the given image.", PALETTE),
}


def with_pixel_bounds(source, target, max_pixels: int = 12845056):
    """A copy of a tiny checkpoint whose processor allows Qwen2-VL's real 12.8M-pixel maximum,
    so that images reach the model at the sizes the recipes choose."""
    shutil.copytree(source, target)
    config_path = target / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config.update(max_pixels=max_pixels, size={"shortest_edge": config["min_pixels"], "longest_edge": max_pixels})
    config_path.write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def embedder_dir(tiny_dir, tmp_path_factory):
    return with_pixel_bounds(tiny_dir / "embedder", tmp_path_factory.mktemp("recipe") / "embedder")


@pytest.fixture(scope="module")
def reranker_dir(tiny_dir, tmp_path_factory):
    return with_pixel_bounds(tiny_dir / "reranker", tmp_path_factory.mktemp("recipe") / "reranker")


@pytest.fixture(scope="module")
def unime_embedder(embedder_dir):
    return Embedder(str(embedder_dir), device="cpu", input_format="unime-v2", image_resolution="high")


def oracle_embeddings(path, model, items):
    inputs = official.embedder_inputs(AutoTokenizer.from_pretrained(path),
                                      Qwen2VLImageProcessorPil.from_pretrained(path), items)
    return inputs, official.embed(model, inputs).numpy()


def real_rows(batch: dict) -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


@pytest.mark.parametrize("kind", list(ITEMS))
def test_each_item_kind_alone(unime_embedder, embedder_dir, kind):
    item = ITEMS[kind]
    inputs, want = oracle_embeddings(embedder_dir, unime_embedder.model, [item])
    batch = unime_embedder.collate([EmbedItem(*item)])
    assert real_rows(batch) == real_rows(inputs)
    if item[1] is not None:
        assert torch.equal(batch["image_grid_thw"], inputs["image_grid_thw"])
        assert inputs["image_grid_thw"][0].tolist() == [1, 96, 96]  # 1344 x 1344 -> 2,304 tokens
    np.testing.assert_allclose(unime_embedder.encode([EmbedItem(*item)]), want, atol=1e-5, rtol=0)


def test_mixed_batch(unime_embedder, embedder_dir):
    items = list(ITEMS.values())
    inputs, want = oracle_embeddings(embedder_dir, unime_embedder.model, items)
    batch = unime_embedder.collate([EmbedItem(*i) for i in items])
    assert real_rows(batch) == real_rows(inputs)
    assert torch.equal(batch["image_grid_thw"], inputs["image_grid_thw"])
    assert torch.equal(batch["pixel_values"], inputs["pixel_values"])
    np.testing.assert_allclose(unime_embedder.encode([EmbedItem(*i) for i in items]), want, atol=1e-5, rtol=0)


def test_native_recipe_is_not_the_authors(embedder_dir, unime_embedder):
    """The oracle tells recipes apart: today's Qwen2-VL-native inputs give other embeddings."""
    native = Embedder(str(embedder_dir), device="cpu")
    items = [ITEMS["image+instruction"], ITEMS["rgba"]]
    _, want = oracle_embeddings(embedder_dir, unime_embedder.model, items)
    got = native.encode([EmbedItem(*i) for i in items])
    assert np.abs(got - want).max() > 1e-3


def test_truncation_at_4096_tokens(unime_embedder, embedder_dir):
    long_text = "word " * 5000
    inputs, want = oracle_embeddings(embedder_dir, unime_embedder.model, [(long_text, None)])
    batch = unime_embedder.collate([EmbedItem(long_text)])
    assert batch["input_ids"].shape[1] == inputs["input_ids"].shape[1] == 4096
    np.testing.assert_allclose(unime_embedder.encode([EmbedItem(long_text)]), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(28, 28), (476, 476), (1344, 1344), (1700, 2200), (90, 170), (3000, 20), (13, 9)])
def test_fit_to_budget_is_qwen_smart_resize(size):
    height, width = size
    for low, high in ((4 * 28 * 28, 300 * 28 * 28), (3136, 12845056)):
        assert fit_to_budget(height, width, low, high) == smart_resize(height, width, 28, low, high)


def test_reranker_text_keeps_all_but_the_placeholder():
    recipe = get_recipe("unime-v2")
    assert recipe.rerank_text("<|image_1|>\nWhat is the man riding?\n") == "What is the man riding?\n"
    assert recipe.rerank_text("  a caption  ") == "  a caption  "
    assert get_recipe("qwen2-vl-native").rerank_text("<|image_1|>\nWhat is the man riding?\n") == \
        "What is the man riding?"


# -- reranker -----------------------------------------------------------------------------
QUERY = ("<|image_1|>\nWhat is the man riding?\n", TRANSPARENT)
CANDIDATES = [("a horse", None), ("<|image_1|>\n", LANDSCAPE), ("a bicycle on a road", PORTRAIT),
              ("<|image_1|>\nRepresent the given image.\n", PALETTE)]


def oracle_logits(path, model, chats):
    inputs = official.reranker_inputs(AutoTokenizer.from_pretrained(path),
                                      Qwen2VLImageProcessorPil.from_pretrained(path), chats)
    return inputs, official.first_token_logits(model, inputs)


@pytest.fixture(scope="module")
def unime_reranker(reranker_dir):
    return Reranker(str(reranker_dir), backend="hf", device="cpu", input_format="unime-v2")


def rerank_cases():
    pairwise = [(build_pairwise_messages(*QUERY, *c), official.pairwise_chat(QUERY, c)) for c in CANDIDATES]
    pairwise.append((build_pairwise_messages("a text-only query\n", None, *CANDIDATES[2]),
                     official.pairwise_chat(("a text-only query\n", None), CANDIDATES[2])))
    listwise = [(build_listwise_messages(*QUERY, CANDIDATES), official.listwise_chat(QUERY, CANDIDATES))]
    return {"pairwise": pairwise, "listwise": listwise}


@pytest.mark.parametrize("kind", ["pairwise", "listwise"])
def test_reranker_matches_the_authors(unime_reranker, reranker_dir, kind):
    ours, theirs = zip(*rerank_cases()[kind])
    judge = unime_reranker.backend.judge
    inputs, want = oracle_logits(reranker_dir, judge.model, list(theirs))
    batch = judge.encode(list(ours))
    assert torch.equal(batch["input_ids"], inputs["input_ids"])
    assert torch.equal(batch["image_grid_thw"], inputs["image_grid_thw"])
    assert torch.equal(batch["pixel_values"], inputs["pixel_values"])
    assert (inputs["image_grid_thw"][:, 1:] == 34).all()  # every image 476 x 476: 289 tokens
    got = judge.first_token_logits(list(ours)).float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.integration
def test_vllm_reranker_matches_the_authors(reranker_dir, unime_reranker):
    """The vLLM path, within the HF/vLLM parity tolerance of tests/test_vllm_judge.py."""
    import vllm  # noqa: F401  (a pinned dependency of the cpu extra: a broken install fails here)

    judge = unime_reranker.backend.judge
    pairwise = rerank_cases()["pairwise"]
    _, want = oracle_logits(reranker_dir, judge.model, [t for _, t in pairwise])
    want_p_yes = torch.softmax(want[:, [judge.yes_id, judge.no_id]], -1)[:, 0].numpy()
    with restored_environment():
        check_vllm_against_the_authors(reranker_dir, judge, pairwise, want_p_yes)


def check_vllm_against_the_authors(reranker_dir, judge, pairwise, want_p_yes):
    engine = Reranker(str(reranker_dir), backend="vllm", input_format="unime-v2", max_model_len=4096, kv_cache_gib=1)
    try:
        # the engine gets the HF path's prompt text and prepared images
        prompts = engine.backend.judge.engine_prompts([o for o, _ in pairwise])
        prepared = judge.prepare([o for o, _ in pairwise])
        assert [p["prompt"] for p in prompts] == judge.prompt_texts(prepared)
        for prompt, chat in zip(prompts, prepared):
            images = [p["image"] for p in chat[0]["content"] if p["type"] == "image"]
            got = prompt.get("multi_modal_data", {}).get("image", [])
            assert [np.asarray(i).tobytes() for i in got] == [np.asarray(i).tobytes() for i in images]
        np.testing.assert_allclose(engine.backend.p_yes([o for o, _ in pairwise]), want_p_yes, atol=1e-4, rtol=0)
        ours, theirs = rerank_cases()["listwise"][0]
        _, want = oracle_logits(reranker_dir, judge.model, [theirs])
        top = torch.topk(want[0], 5).indices.tolist()
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(top), logprob_token_ids=top)
        output = engine.backend.judge.llm.generate(engine.backend.judge.engine_prompts([ours]), params,
                                                   use_tqdm=False)[0].outputs[0].logprobs[0]
        expected = torch.log_softmax(want[0], -1)[top].numpy()
        np.testing.assert_allclose([output[t].logprob for t in top], expected, atol=1e-4, rtol=0)
    finally:
        del engine
        gc.collect()


def test_an_image_shared_by_chats_is_prepared_once(monkeypatch):
    """A query's image recurs in its ~51 judge chats: resized once per batch, not per chat."""
    recipe = get_recipe("unime-v2")
    calls = []
    original = recipe.rerank_image
    monkeypatch.setattr(type(recipe), "rerank_image", lambda self, *a: calls.append(1) or original(*a))
    shared: dict = {}
    chats = [recipe.prepare_chat(build_pairwise_messages(*QUERY, *c), "high", None, shared) for c in CANDIDATES]
    assert len(calls) == 1 + 3  # the query's image once, plus the three image candidates
    assert all(chat[0]["content"][2]["image"] is chats[0][0]["content"][2]["image"] for chat in chats)
