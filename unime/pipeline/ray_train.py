"""Ray Train plumbing shared by the training stages: trainer construction and publishing."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from unime.config import PLACEMENT_KEYS
from unime.data.storage import exists, filesystem, is_remote, join, read_bytes, write_bytes
from unime.pipeline import manifest, mine
from unime.pipeline.common import pyarrow_filesystem
from unime.train.base import materialise_full, merge_adapter


def torch_trainer(loop, loop_config: dict, train, run_dir: str, stage: str, name: str, datasets: dict,
                  storage_options: dict | None = None):
    """A ``TorchTrainer``: workers, resources, checkpoint retention and failures from ``train``.

    Checkpoints go under ``<run_dir>/<stage>/ray/<name>`` on local disk or S3.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = join(run_dir, stage, "ray")
    fs, inner = pyarrow_filesystem(storage, storage_options) if is_remote(storage) else (None, storage)
    resources = {"CPU": train.cpus_per_worker, **train.resources_per_worker}
    if train.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=inner, storage_filesystem=fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=train.max_failures)),
        datasets=datasets,
    )


def publish(result, base_model: str, run_dir: str, stage: str, storage_options: dict | None = None) -> dict:
    """Copy the final adapter, a merged checkpoint and the loss curve next to the stage manifest."""
    with result.checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as scratch:
        folder, local = Path(folder), Path(scratch)
        progress = json.loads((folder / "progress.json").read_text())
        if (folder / "adapter").exists():
            shutil.copytree(folder / "adapter", local / "adapter")
            merge_adapter(base_model, local / "adapter", local / "merged")
        else:  # full fine-tuning: the checkpoint holds every trained weight
            materialise_full(base_model, folder / "state.pt", local / "merged")
        (local / "losses.json").write_text(json.dumps(progress["losses"]))
        for path in sorted(local.rglob("*")):
            if path.is_file():
                write_bytes(join(run_dir, stage, path.relative_to(local).as_posix()), path.read_bytes(), storage_options)
    return progress



def claim_checkpoints(run_dir: str, stage: str, stage_fingerprint: str, storage_options: dict | None = None) -> None:
    """Keep the stage's Ray Train checkpoints only for this fingerprint.

    Ray Train restores a run of the same name and storage path from its latest checkpoint:
    what a crashed run of the same config should do, but a run of another config (other
    data, steps or learning rate) must start afresh rather than continue the old one.
    """
    storage = join(run_dir, stage, "ray")
    marker = join(storage, "fingerprint")
    if exists(marker, storage_options) and read_bytes(marker, storage_options).decode() == stage_fingerprint:
        return
    fs, inner = filesystem(storage, storage_options)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)
    write_bytes(marker, stage_fingerprint.encode(), storage_options)


def run_training_stage(config, stage: str, train, base_model: str, build) -> dict:
    """The shared body of the training stages: skip when complete, else fit, publish, record.

    ``build()`` returns ``(TorchTrainer, number of training examples)``.
    """
    run_dir, options = config.run_dir, config.data.storage_options
    upstream = manifest.read_manifest(run_dir, mine.STAGE, options)
    if upstream is None:
        raise RuntimeError(f"{stage} needs the mine stage's output under {run_dir}")
    learned = {k: v for k, v in asdict(train).items() if k not in PLACEMENT_KEYS}
    stage_fingerprint = manifest.fingerprint({"mine": upstream["fingerprint"], "train": learned,
                                              "model": base_model, "dtype": config.models.dtype,
                                              "inputs": config.model_inputs()})
    if manifest.is_complete(run_dir, stage, stage_fingerprint, options):
        return manifest.read_manifest(run_dir, stage, options) | {"skipped": True}
    claim_checkpoints(run_dir, stage, stage_fingerprint, options)
    trainer, examples = build()
    progress = publish(trainer.fit(), base_model, run_dir, stage, options)
    losses = progress["losses"]
    rows = {"examples": examples, "steps": progress["step"], "first_loss": losses[0], "final_loss": losses[-1]}
    return manifest.write_manifest(run_dir, stage, stage_fingerprint, {"rows": rows}, options) | {"skipped": False}
