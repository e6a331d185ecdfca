"""Ray Train plumbing shared by the training stages: trainer construction and publishing."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from unime.config import PipelineConfig, TrainPlacement, fingerprint_view
from unime.data.storage import arrow_filesystem, exists, filesystem, is_remote, join, read_bytes, write_bytes
from unime.models.checkpoints import local_checkpoint
from unime.pipeline import mine
from unime.pipeline.stage import Context, Stage, model_versions
from unime.train.base import materialise_full, merge_adapter


def torch_trainer(loop, loop_config: dict, placement: TrainPlacement, run_dir: str, stage: str, name: str, datasets: dict,
                  storage_options: dict | None = None):
    """A ``TorchTrainer``: workers, resources, checkpoint retention and failures from ``placement``.

    Checkpoints go under ``<run_dir>/<stage>/ray/<name>`` on local disk or an object store,
    written by pyarrow's native client for ``s3://`` (:func:`unime.data.storage.arrow_filesystem`).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = join(run_dir, stage, "ray")
    fs, inner = arrow_filesystem(storage, storage_options) if is_remote(storage) else (None, storage)
    return TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=placement.num_workers, use_gpu=placement.use_gpu,
                                     resources_per_worker=worker_resources(placement)),
        run_config=RunConfig(name=name, storage_path=inner, storage_filesystem=fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=placement.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=placement.max_failures)),
        datasets=datasets,
    )


def worker_resources(placement: TrainPlacement) -> dict[str, float]:
    """One training worker's resources: its CPUs, a GPU when it trains on one, and the node
    type's custom resource."""
    return ({"CPU": placement.cpus_per_worker, **placement.resources_per_worker}
            | ({"GPU": 1} if placement.use_gpu else {}))


def publish_checkpoint(checkpoint, base_model: str, run_dir: str, stage: str, dtype: str, device: str,
                       storage_options: dict | None = None) -> tuple[dict, dict]:
    """Copy the final adapter, a merged checkpoint and the loss curve next to the stage manifest.

    Runs where a training worker runs (:func:`publish`): the merge loads the base model in the
    run's dtype (bf16 for a 7B model: ~15 GB, not the ~30 GB of fp32) on that node's device.
    Returns the training progress and where the merge ran.
    """
    import os

    import ray

    with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as scratch:
        folder, local = Path(folder), Path(scratch)
        progress = json.loads((folder / "progress.json").read_text())
        base = local_checkpoint(base_model, storage_options)
        if (folder / "adapter").exists():
            shutil.copytree(folder / "adapter", local / "adapter")
            merge_adapter(base, local / "adapter", local / "merged", dtype=dtype, device=device)
        else:  # full fine-tuning: the checkpoint holds every trained weight
            materialise_full(base, folder / "state.pt", local / "merged", dtype=dtype, device=device)
        (local / "losses.json").write_text(json.dumps(progress["losses"]))
        for path in sorted(local.rglob("*")):
            if path.is_file():
                write_bytes(join(run_dir, stage, path.relative_to(local).as_posix()), path.read_bytes(), storage_options)
    context = ray.get_runtime_context()
    return progress, {"node": context.get_node_id(), "task": context.get_task_id(), "pid": os.getpid(),
                      "device": device, "dtype": dtype}


def publish(result, base_model: str, run_dir: str, stage: str, train, dtype: str,
            storage_options: dict | None = None) -> tuple[dict, dict]:
    """:func:`publish_checkpoint` as a Ray task on a node of the training workers' type (never
    the driver's head node, which has neither the memory nor the GPU for a 7B merge)."""
    import ray

    resources = worker_resources(train.placement)
    task = ray.remote(publish_checkpoint).options(
        name=f"publish_{stage}", num_cpus=resources.pop("CPU"), num_gpus=resources.pop("GPU", 0),
        resources=resources)
    return ray.get(task.remote(result.checkpoint, base_model, run_dir, stage, dtype,
                               "cuda" if train.placement.use_gpu else "cpu", storage_options))


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


def training_stage(name: str, section: str, role: str, inputs: Callable[[PipelineConfig], dict],
                   build: Callable[[PipelineConfig], tuple]) -> Stage:
    """A training stage over the mined records: fit on Ray Train, publish, count.

    ``section``: the config section of its hyper-parameters (``train_embedder``); ``role``:
    the ``models`` field of its base checkpoint; ``inputs``: how the model is fed (recipe,
    pixel and token budgets; part of the fingerprint); ``build(config)`` returns
    ``(TorchTrainer, number of training examples)``.
    """
    def payload(config: PipelineConfig) -> dict:
        model = getattr(config.models, role)
        train = getattr(config, section)
        # placement is runtime-only, but a GPU's bf16 autocast changes the numerics
        return {"train": fingerprint_view(train), "use_gpu": train.placement.use_gpu, "model": model,
                "version": model_versions(config, model), "dtype": config.models.dtype, "inputs": inputs(config)}

    def run(context: Context) -> dict:
        config = context.config
        run_dir, options = config.run_dir, config.data.storage_options
        claim_checkpoints(run_dir, name, context.fingerprint, options)
        trainer, examples = build(config)
        progress, published = publish(trainer.fit(), getattr(config.models, role), run_dir, name,
                                      getattr(config, section), config.models.dtype, options)
        losses = progress["losses"]
        rows = {"examples": examples, "steps": progress["step"], "first_loss": losses[0], "final_loss": losses[-1],
                "skipped_over_token_budget": progress.get("skipped_examples", 0)}
        return {"rows": rows, "published_by": published}

    return Stage(name, run, payload, inputs=(mine.STAGE,))
