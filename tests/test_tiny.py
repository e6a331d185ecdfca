"""The tiny checkpoints: deterministic, offline, loadable through the ordinary HF path, and
the embedder / judge forwards compute what the method defines."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from unime.demo import tiny
from unime.judge import HFJudge, build_judge_messages
from unime.models import Embedder, EmbedItem, load_model, load_processor
from unime.models.processor import ImageOnlyQwen2VLProcessor


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection off the loopback fails the test: checkpoints must load offline."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="module")
def image():
    import random

    from unime.demo.corpus import Scene, render_scene

    return render_scene(Scene("circle", "red", 2, "left"), 64, random.Random(0))


def test_build_is_deterministic_and_small(tiny_dir, tmp_path):
    again = tiny.build(tmp_path / "again", seed=0)
    first = json.loads((tiny_dir / "manifest.json").read_text())["checkpoints"]
    for role, folder in again.items():
        assert tiny.fingerprint(folder) == first[role]["sha256"], role
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 8 * 1024 * 1024, f"{role} is {size} bytes"
    other_seed = tiny.build(tmp_path / "other", seed=1)
    assert tiny.fingerprint(other_seed["embedder"]) != first["embedder"]["sha256"]


def test_architectures_and_tokenizer(tiny_dir):
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(tiny_dir / "embedder").model_type == "qwen2_vl"
    assert AutoConfig.from_pretrained(tiny_dir / "judge").model_type == "qwen2_5_vl"
    assert AutoConfig.from_pretrained(tiny_dir / "reranker").model_type == "qwen2_5_vl"
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "judge")
    assert len(tokenizer.encode("Yes", add_special_tokens=False)) == 1
    assert len(tokenizer.encode("No", add_special_tokens=False)) == 1
    for special in tiny.SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(special) != tokenizer.unk_token_id
        assert tokenizer.decode(tokenizer.encode(special, add_special_tokens=False)) == special
    chat = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                         tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>" in chat
    assert chat.endswith("<|im_start|>assistant\n")


def test_processor_with_and_without_torchvision_expand_images_alike(tiny_dir, image):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = load_processor(str(tiny_dir / "judge"))
    image_only = ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(tiny_dir / "judge"),
        tokenizer=processor.tokenizer, chat_template=processor.tokenizer.chat_template)
    text = "<|vision_start|><|image_pad|><|vision_end|>two red circles"
    full = processor(text=[text], images=[image], return_tensors="pt")
    lean = image_only(text=[text], images=[image], return_tensors="pt")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(full[key], lean[key]), key
    # The two image backends resize with different kernels: close, not identical.
    assert torch.allclose(full["pixel_values"], lean["pixel_values"], atol=0.05)
    n_image_tokens = int((full["input_ids"] == processor.image_token_id).sum())
    assert n_image_tokens == int(full["image_grid_thw"].prod()) // 4


def test_embedder_is_normalised_last_token_and_padding_invariant(tiny_dir, image):
    embedder = Embedder(str(tiny_dir / "embedder"), device="cpu")
    items = [EmbedItem("<|image_1|>\nFind a caption for the given image.\n", image), EmbedItem("a red circle"),
             EmbedItem("four blue squares at the bottom of a much longer caption")]
    vectors = embedder.encode(items)
    assert vectors.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    batch = embedder.collate(items)
    assert bool(batch["attention_mask"][:, -1].all()), "left padding puts every last token at -1"
    with torch.no_grad():
        hidden = embedder.model(**batch, output_hidden_states=True).hidden_states[-1][:, -1]
    np.testing.assert_allclose(vectors, torch.nn.functional.normalize(hidden, dim=-1).numpy(), atol=1e-5)
    for k, item in enumerate(items):  # padded batch == one at a time
        np.testing.assert_allclose(embedder.encode([item])[0], vectors[k], atol=1e-5)


def test_judge_scores_p_yes_over_the_two_tokens(tiny_dir, image):
    judge = HFJudge(str(tiny_dir / "judge"), device="cpu")
    chats = [build_judge_messages("<|image_1|>\nFind a caption.\n", image, "two red circles", None),
             build_judge_messages("two red circles", None, "<|image_1|>\nRepresent the image.\n", image)]
    scores = judge.score(chats)
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))
    for chat, score in zip(chats, scores):
        text = judge.prompt_texts(judge.prepare([chat]))[0]
        batch = judge.processor(text=[text], images=[image], return_tensors="pt")
        with torch.no_grad():
            logits = judge.model(**batch).logits[0, -1]
        expected = torch.exp(logits[judge.yes_id]) / (torch.exp(logits[judge.yes_id]) + torch.exp(logits[judge.no_id]))
        assert abs(float(expected) - float(score)) < 1e-5


def test_save_load_round_trip(tiny_dir, tmp_path, image):
    model = load_model(str(tiny_dir / "reranker"), device="cpu")
    model.save_pretrained(tmp_path / "copy")
    load_processor(str(tiny_dir / "reranker")).save_pretrained(tmp_path / "copy")
    copy = load_model(str(tmp_path / "copy"), device="cpu")
    for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name
    processor = load_processor(str(tmp_path / "copy"))
    batch = processor(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (64, 64))],
                      return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, copy(**batch).logits)


def test_a_gpu_that_is_not_there_is_an_error_not_a_cpu_run(monkeypatch):
    from unime.models import loading

    monkeypatch.setattr(loading.torch.cuda, "is_available", lambda: False)
    assert str(loading.resolve_device("auto")) == "cpu"
    with pytest.raises(RuntimeError, match="'cuda' was asked for.*no CUDA device on node"):
        loading.resolve_device("cuda")
    monkeypatch.setattr(loading, "ray_gpu_ids", lambda: ["0"])
    with pytest.raises(RuntimeError, match=r"given GPU\(s\) \['0'\].*Refusing to run on the CPU"):
        loading.resolve_device("auto")
