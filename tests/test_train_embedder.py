"""The embedder trainer on Ray Train: the loss falls, DDP parity, resume after a killed worker."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.faults import fail_after_step, on_first_attempt
from tests.helpers import mining_config
from unime.pipeline import mine, train_embedder
from unime.train.embedder import EmbedderTrainer, train_loop_per_worker, training_examples

pytestmark = pytest.mark.integration
TRAIN = ["train_embedder.placement.num_workers=1", "train_embedder.placement.use_gpu=false", "train_embedder.placement.cpus_per_worker=0.5",
         "train_embedder.num_hard_negatives=3", "train_embedder.queries_per_worker=8",
         "train_embedder.warmup_steps=1", "train_embedder.optim.lr=2e-3", "train_embedder.gradcache_chunk=8"]


@pytest.fixture(scope="module")
def mined(mined_run):
    return Path(mined_run[0].run_dir)


def train_config(demo_dir, tiny_dir, mined, run_dir, *overrides):
    """A config whose run dir holds a copy of the mined run (so mining is not redone)."""
    import shutil

    if not (run_dir / "mine").exists():
        shutil.copytree(mined, run_dir, dirs_exist_ok=True)
    return mining_config(demo_dir, tiny_dir, run_dir, *TRAIN, *overrides)


def test_loss_falls_and_artefacts_load(demo_dir, tiny_dir, mined, tmp_path):
    config = train_config(demo_dir, tiny_dir, mined, tmp_path, "train_embedder.max_steps=24",
                          "train_embedder.checkpoint_every=12")
    result = train_embedder.run(config)
    losses = json.loads((tmp_path / "train_embedder" / "losses.json").read_text())
    assert len(losses) == result["rows"]["steps"] == 24
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    from unime.models import Embedder, EmbedItem

    merged = Embedder(str(tmp_path / "train_embedder" / "merged"), device="cpu")
    vector = merged.encode([EmbedItem("a red circle")])
    assert vector.shape == (1, 128) and abs(np.linalg.norm(vector) - 1) < 1e-5
    assert (tmp_path / "train_embedder" / "adapter" / "adapter_config.json").exists()
    assert train_embedder.run(config)["skipped"]

    # Another config in the same run dir trains afresh: Ray Train would otherwise restore
    # the old run's step-24 checkpoint under the same run name and stop at once.
    changed = train_config(demo_dir, tiny_dir, mined, tmp_path, "train_embedder.max_steps=12",
                           "train_embedder.checkpoint_every=6", "train_embedder.optim.lr=1e-3")
    assert train_embedder.run(changed)["rows"]["steps"] == 12
    assert len(json.loads((tmp_path / "train_embedder" / "losses.json").read_text())) == 12


def _final_progress(config):
    dataset, _ = train_embedder.examples_dataset(config)
    result = train_embedder.make_trainer(config, dataset).fit()
    with result.checkpoint.as_directory() as folder:
        return json.loads(open(f"{folder}/progress.json").read())


RESUME_STEPS = ["train_embedder.max_steps=6", "train_embedder.checkpoint_every=2", "train_embedder.placement.max_failures=1"]


@pytest.fixture(scope="module")
def uninterrupted_progress(demo_dir, tiny_dir, mined, tmp_path_factory):
    """The final progress of the resume tests' run without a fault (one run for both storages)."""
    return _final_progress(train_config(demo_dir, tiny_dir, mined, tmp_path_factory.mktemp("clean"), *RESUME_STEPS))


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_killed_worker_resumes_from_its_checkpoint(demo_dir, tiny_dir, mined, uninterrupted_progress, tmp_path,
                                                   storage, request, monkeypatch):
    steps, reference = RESUME_STEPS, uninterrupted_progress
    run_dir = tmp_path / "faulty"
    extra = []
    if storage == "s3":
        options = request.getfixturevalue("s3_server")
        train_config(demo_dir, tiny_dir, mined, run_dir)  # copy the mined run locally first
        import fsspec

        fsspec.filesystem("s3", **options).put(str(run_dir) + "/", "unime-test/train-run/", recursive=True)
        extra = [f"data.storage_options.{k}={v}" for k, v in options.items()]
        config = mining_config(demo_dir, tiny_dir, "s3://unime-test/train-run", *TRAIN, *steps, *extra)
    else:
        config = train_config(demo_dir, tiny_dir, mined, run_dir, *steps)
    monkeypatch.setattr(train_embedder, "train_loop_per_worker",
                        on_first_attempt(train_loop_per_worker, partial(fail_after_step, EmbedderTrainer, 3)))
    resumed = _final_progress(config)
    # the worker died after step 3; the restarted group resumed from the step-2 checkpoint
    assert reference["resumed_at"] == [] and resumed["resumed_at"] == [2]
    assert len(resumed["losses"]) == len(reference["losses"]) == 6
    np.testing.assert_allclose(resumed["losses"], reference["losses"], rtol=1e-5)


def first_step_gradients(state: dict) -> dict[int, torch.Tensor]:
    """The gradient each parameter had at the first optimiser step, read back from AdamW's
    first moment (``exp_avg = (1 - beta1) * grad`` after one step, no clipping): a gradient
    comparison through Ray Train, where the weights after one AdamW step only show signs."""
    beta1 = state["param_groups"][0]["betas"][0]
    return {index: moments["exp_avg"] / (1 - beta1) for index, moments in state["state"].items()}


def test_two_workers_match_one(demo_dir, tiny_dir, mined, tmp_path):
    """2 workers x B/2 queries give the gradient of 1 worker x B (DDP averages gradients)."""
    common = ["train_embedder.max_steps=1", "train_embedder.checkpoint_every=1", "train_embedder.lora.dropout=0.0",
              "train_embedder.warmup_steps=0"]
    states = {}
    for workers, per_worker in ((1, 8), (2, 4)):
        config = train_config(demo_dir, tiny_dir, mined, tmp_path / f"w{workers}", *common,
                              f"train_embedder.placement.num_workers={workers}", f"train_embedder.queries_per_worker={per_worker}")
        assert config.train_embedder.optim.max_grad_norm is None  # a clipped gradient would hide a scale error
        records = pq.read_table(mine.output_paths(str(config.run_dir))["mined_table"])
        assert records.num_rows >= 8
        # one step over exactly the same 8 examples
        import ray.data

        examples = training_examples(records.slice(0, 8), 3)
        result = train_embedder.make_trainer(config, ray.data.from_arrow(examples), name=f"ddp{workers}").fit()
        with result.checkpoint.as_directory() as folder:
            states[workers] = torch.load(f"{folder}/state.pt", weights_only=False)
    one, two = (first_step_gradients(states[w]["optimizer"]) for w in (1, 2))
    assert one.keys() == two.keys() and len(one) > 10
    # LoRA's A matrices get no gradient while B is still zero; the B matrices must
    assert sum(float(grad.abs().sum()) > 0 for grad in one.values()) >= len(one) // 2
    for index in one:  # float32 sums in another order: a tolerance scaled to each tensor
        scale = float(one[index].abs().max())
        torch.testing.assert_close(two[index], one[index], atol=1e-4 * scale, rtol=1e-4)
    for name in states[1]["weights"]:  # and so the same update
        torch.testing.assert_close(states[2]["weights"][name], states[1]["weights"][name], atol=1e-6, rtol=1e-4)


def test_trainer_without_ray_steps_and_resumes(demo_dir, tiny_dir, mined, tmp_path):
    """The worker state alone: save after 2 steps, load into a fresh trainer, same next step."""
    from unime.config import EmbedderTrainConfig, LoraConfig, OptimConfig

    records = pq.read_table(mine.output_paths(str(mined))["mined_table"])
    rows = training_examples(records, 3).to_pylist()
    batches = [{k: [r[k] for r in rows[i: i + 4]] for k in rows[0]} for i in (0, 4, 8)]
    cfg = EmbedderTrainConfig(optim=OptimConfig(lr=1e-3), warmup_steps=1, max_steps=10, gradcache_chunk=4,
                              lora=LoraConfig(dropout=0.1))
    first = EmbedderTrainer(str(tiny_dir / "embedder"), cfg, device="cpu", image_root=str(demo_dir))
    first.step(batches[0])
    first.step(batches[1])
    first.save_state(tmp_path)
    expected = first.step(batches[2])
    second = EmbedderTrainer(str(tiny_dir / "embedder"), cfg, device="cpu", image_root=str(demo_dir), seed=99)
    second.load_state(tmp_path)
    assert second.step(batches[2]) == pytest.approx(expected, rel=1e-6)
