"""The demo's trained checkpoints: built by the project's recipes, keyed, reused, documented."""

import json
from dataclasses import replace

import pytest

from unime.config import load_config
from unime.demo import models as demo_models
from unime.demo.models import DemoModelsConfig


def small_recipe(out_dir) -> DemoModelsConfig:
    config = load_config("configs/demo_models.yaml", cls=DemoModelsConfig)
    return replace(config, out_dir=str(out_dir), chat=replace(config.chat, steps=2, chats_per_step=4),
                   judge=replace(config.judge, steps=2, chats_per_step=4, score_batch=16),
                   embedder=replace(config.embedder, max_steps=2, queries_per_worker=4, warmup_steps=1))


@pytest.fixture(scope="module")
def built(demo_dir, tmp_path_factory):
    config = small_recipe(tmp_path_factory.mktemp("demo_models") / "models")
    return config, demo_models.build(config, demo_dir, log=lambda line: None)


def test_each_checkpoint_loads_through_from_pretrained(built):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _, folders = built
    assert set(folders) == {"chat", "embedder"}
    chat = AutoModelForImageTextToText.from_pretrained(folders["chat"])
    embedder = AutoModelForImageTextToText.from_pretrained(folders["embedder"])
    assert chat.config.model_type == "qwen2_5_vl" and embedder.config.model_type == "qwen2_vl"
    # the chat model's images are the recipe's fixed size, saved with its processor
    size = AutoProcessor.from_pretrained(folders["chat"]).image_processor.size
    assert size["shortest_edge"] == size["longest_edge"] == built[0].chat_pixels


def test_model_cards_say_how_they_were_made_and_what_they_score(built):
    config, folders = built
    chat_card = (folders["chat"] / "README.md").read_text()
    scores = json.loads((folders["chat"] / demo_models.SCORES).read_text())
    assert chat_card.startswith("---\nlibrary_name: transformers")
    assert f"{config.chat.steps} steps of caption pre-training" in chat_card
    assert f"**{scores['auc']['held_out']:.3f}**" in chat_card
    assert 0.0 <= scores["auc"]["held_out"] <= 1.0 and scores["auc"]["pairs"] > 0
    embedder_card = (folders["embedder"] / "README.md").read_text()
    embedder_scores = json.loads((folders["embedder"] / demo_models.SCORES).read_text())
    assert "InfoNCE with in-batch negatives" in embedder_card
    assert f"**{embedder_scores['precision_at_1']['overall']:.1f}**" in embedder_card


def test_an_unchanged_recipe_is_reused_and_a_changed_one_rebuilt(built, demo_dir):
    config, folders = built
    weights = folders["chat"] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert demo_models.is_built(config, demo_dir)
    demo_models.build(config, demo_dir, log=lambda line: pytest.fail("rebuilt an unchanged recipe"))
    assert weights.stat().st_mtime_ns == stamp
    changed = replace(config, judge=replace(config.judge, lr=config.judge.lr / 2))
    assert not demo_models.is_built(changed, demo_dir)
    assert demo_models.build_key(changed, demo_dir) != demo_models.build_key(config, demo_dir)


def test_the_key_covers_the_training_code(tmp_path):
    package = tmp_path / "unime"
    for entry in demo_models.RECIPE_CODE:
        path = package / entry if entry.endswith(".py") else package / entry / "module.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    before = demo_models.code_digest(package)
    (package / "train" / "module.py").write_text("x = 2\n")
    assert demo_models.code_digest(package) != before


def test_the_chat_build_raises_its_threads_at_a_fixed_step_not_by_timing(demo_dir):
    """The thread count changes float summation order, so the switch is part of the recipe:
    a step, the same on every build, whatever the machine's load (and in the build key)."""
    import torch

    config = DemoModelsConfig()
    assert demo_models.build_key(config, demo_dir) != demo_models.build_key(
        replace(config, threads_from_step=config.threads_from_step + 1), demo_dir)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        switch = demo_models.ThreadsFromStep(from_step=5, threads=2)
        switch(4)
        assert torch.get_num_threads() == 1
        switch(5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
