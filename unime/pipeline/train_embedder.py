"""train_embedder stage: the UniME-V2 embedder on Ray Train from the mined records.

Ray Data feeds each worker its shard (``get_dataset_shard``); workers run
:func:`unime.train.embedder.train_loop_per_worker` under DDP (gloo on CPU, NCCL on GPU);
checkpoints go to ``<run_dir>/train_embedder/ray/`` (local or ``s3://``), the last K kept,
and a failed worker group restarts from the latest one (``FailureConfig``). Final
artefacts: ``adapter/`` (LoRA/DoRA) and ``merged/`` (a full checkpoint ``from_pretrained``
loads), plus ``losses.json``.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from unime.config import PipelineConfig
from unime.data.storage import join
from unime.pipeline import mine
from unime.pipeline.common import read_parquet_dir
from unime.pipeline.ray_train import torch_trainer, training_stage
from unime.pipeline.stage import run_stage
from unime.train.embedder import train_loop_per_worker, training_examples

STAGE = "train_embedder"


def make_trainer(config: PipelineConfig, dataset, name: str = "embedder"):
    train, models, data = config.train_embedder, config.models, config.data
    loop_config = {
        "model": models.embedder, "train": asdict(train),
        "trainer_kwargs": {"dtype": models.dtype, "device": "cuda" if train.placement.use_gpu else "cpu",
                           **config.embedder_inputs(),
                           "image_root": data.image_root, "limits": asdict(data.limits),
                           "image_cache_mib": data.image_cache_mib,
                           "storage_options": data.storage_options, "seed": train.seed},
    }
    return torch_trainer(train_loop_per_worker, loop_config, train.placement, config.run_dir, STAGE, name,
                         {"train": dataset}, data.storage_options)


def examples_dataset(config: PipelineConfig):
    import ray.data

    records = read_parquet_dir(mine.output_paths(config.run_dir)["mined_table"], config.data.storage_options)
    examples = training_examples(records, config.train_embedder.num_hard_negatives)
    order = np.random.default_rng(config.train_embedder.seed).permutation(examples.num_rows)
    return ray.data.from_arrow(examples.take(order)), examples.num_rows


def build(config: PipelineConfig):
    dataset, examples = examples_dataset(config)
    return make_trainer(config, dataset), examples


stage = training_stage(STAGE, "train_embedder", "embedder", PipelineConfig.embedder_inputs, build)


def run(config: PipelineConfig) -> dict:
    return run_stage(stage, config)


def output_paths(run_dir: str) -> dict[str, str]:
    return {name: join(run_dir, STAGE, name) for name in ("adapter", "merged", "losses.json")}
