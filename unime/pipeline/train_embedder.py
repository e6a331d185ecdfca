"""train_embedder stage: the UniME-V2 embedder on Ray Train from the mined records.

Ray Data feeds each worker its shard (``get_dataset_shard``); workers run
:func:`unime.train.embedder.train_loop_per_worker` under DDP (gloo on CPU, NCCL on GPU);
checkpoints go to ``<run_dir>/train_embedder/ray/`` (local or ``s3://``), the last K kept,
and a failed worker group restarts from the latest one (``FailureConfig``). Final
artefacts: ``adapter/`` (LoRA/DoRA) and ``merged/`` (a full checkpoint ``from_pretrained``
loads), plus ``losses.json``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from unime.config import PipelineConfig
from unime.data.storage import is_remote, join, write_bytes
from unime.pipeline import manifest, mine
from unime.pipeline.common import pyarrow_filesystem, read_parquet_dir
from unime.train.embedder import merge_adapter, train_loop_per_worker, training_examples

STAGE = "train_embedder"


def make_trainer(config: PipelineConfig, dataset, name: str = "embedder"):
    """A ``TorchTrainer`` for the embedder, everything from config."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    train, models, data = config.train_embedder, config.models, config.data
    storage = join(config.run_dir, STAGE, "ray")
    fs, inner = pyarrow_filesystem(storage, data.storage_options) if is_remote(storage) else (None, storage)
    resources = {"CPU": train.cpus_per_worker, **train.resources_per_worker}
    if train.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": models.embedder, "train": asdict(train),
            "fail_after_step": config.faults.train_fail_after_step,
            "trainer_kwargs": {"dtype": models.dtype, "device": "cuda" if train.use_gpu else "cpu",
                               "min_pixels": models.min_pixels, "max_pixels": models.max_pixels,
                               "image_root": data.image_root, "limits": asdict(data.limits),
                               "storage_options": data.storage_options, "seed": train.seed},
        },
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=inner, storage_filesystem=fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=train.max_failures)),
        datasets={"train": dataset},
    )


def examples_dataset(config: PipelineConfig):
    import ray.data

    records = read_parquet_dir(mine.output_paths(config.run_dir)["mined_table"], config.data.storage_options)
    examples = training_examples(records, config.train_embedder.num_hard_negatives)
    order = np.random.default_rng(config.train_embedder.seed).permutation(examples.num_rows)
    return ray.data.from_arrow(examples.take(order)), examples.num_rows


def publish(result, config: PipelineConfig) -> dict:
    """Copy the final adapter and a merged checkpoint next to the stage's manifest."""
    options = config.data.storage_options
    with result.checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as scratch:
        folder = Path(folder)
        progress = json.loads((folder / "progress.json").read_text())
        local = Path(scratch)
        if (folder / "adapter").exists():
            shutil.copytree(folder / "adapter", local / "adapter")
            merge_adapter(config.models.embedder, local / "adapter", local / "merged", dtype="float32")
        (local / "losses.json").write_text(json.dumps(progress["losses"]))
        for path in sorted(local.rglob("*")):
            if path.is_file():
                write_bytes(join(config.run_dir, STAGE, path.relative_to(local).as_posix()), path.read_bytes(), options)
    return progress


def run(config: PipelineConfig) -> dict:
    run_dir, options = config.run_dir, config.data.storage_options
    upstream = manifest.read_manifest(run_dir, mine.STAGE, options)
    if upstream is None:
        raise RuntimeError(f"train_embedder needs the mine stage's output under {run_dir}")
    train = asdict(config.train_embedder)
    for key in ("num_workers", "cpus_per_worker", "resources_per_worker", "max_failures", "keep_checkpoints"):
        train.pop(key)  # where and how robustly it runs does not change what it learns
    stage_fingerprint = manifest.fingerprint({"mine": upstream["fingerprint"], "train": train,
                                              "model": config.models.embedder, "dtype": config.models.dtype})
    if manifest.is_complete(run_dir, STAGE, stage_fingerprint, options):
        return manifest.read_manifest(run_dir, STAGE, options) | {"skipped": True}
    dataset, examples = examples_dataset(config)
    result = make_trainer(config, dataset).fit()
    progress = publish(result, config)
    losses = progress["losses"]
    rows = {"examples": examples, "steps": progress["step"], "first_loss": losses[0], "final_loss": losses[-1]}
    return manifest.write_manifest(run_dir, STAGE, stage_fingerprint, {"rows": rows}, options) | {"skipped": False}


def output_paths(run_dir: str) -> dict[str, str]:
    return {name: join(run_dir, STAGE, name) for name in ("adapter", "merged", "losses.json")}
