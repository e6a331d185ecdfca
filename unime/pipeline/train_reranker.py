"""train_reranker stage: the UniME-V2 reranker on Ray Train from the mined records.

Three chats per record (:func:`unime.train.reranker.reranker_examples`), answer-only
cross-entropy, LoRA with the vision tower frozen; ``epochs`` passes at the effective batch
over the shuffled chats, or ``max_steps`` optimiser steps when fewer.
Artefacts under ``<run_dir>/train_reranker/``: ``adapter/``, ``merged/``, ``losses.json``.
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
from unime.train.reranker import reranker_examples, train_loop_per_worker

STAGE = "train_reranker"


def examples(config: PipelineConfig):
    records = read_parquet_dir(mine.output_paths(config.run_dir)["mined_table"], config.data.storage_options)
    train = config.train_reranker
    table = reranker_examples(records, train.listwise_candidates, train.seed)
    return shuffled_by_record(table, records.num_rows, train.seed, pairwise_only=train.answer_loss == "yes_no")


def shuffled_by_record(table, records: int, seed: int, pairwise_only: bool = False):
    """Records come dataset by dataset: shuffled once, so that every batch mixes tasks, each
    record's chats kept together (a query's "Yes" and "No" chats in one batch, which the
    ``yes_no`` loss needs: the query's own pull on P(Yes) then cancels). ``pairwise_only``
    keeps the pairwise chats (what ``yes_no`` trains)."""
    import pyarrow.compute as pc

    per_record = table.num_rows // max(1, records)
    order = np.random.default_rng(seed).permutation(records)
    table = table.take([int(r) * per_record + k for r in order for k in range(per_record)])
    return table.filter(pc.equal(table["kind"], "pairwise")) if pairwise_only else table


def make_trainer(config: PipelineConfig, table, name: str = "reranker"):
    import ray.data

    train, models, data = config.train_reranker, config.models, config.data
    max_steps = max(1, train.epochs * table.num_rows // train.effective_batch_size)
    max_steps = min(max_steps, train.max_steps or max_steps)
    loop_config = {
        "model": models.reranker, "train": asdict(train), "max_steps": max_steps,
        "checkpoint_every": train.checkpoint_every,
        "trainer_kwargs": {"dtype": models.dtype, "device": "cuda" if train.placement.use_gpu else "cpu",
                           "image_root": data.image_root, "limits": asdict(data.limits),
                           "image_cache_mib": data.image_cache_mib,
                           "storage_options": data.storage_options, "seed": train.seed,
                           **config.reranker_inputs()},
    }
    return torch_trainer(train_loop_per_worker, loop_config, train.placement, config.run_dir, STAGE, name,
                         {"train": ray.data.from_arrow(table)}, data.storage_options)


def build(config: PipelineConfig):
    table = examples(config)
    return make_trainer(config, table), table.num_rows


stage = training_stage(STAGE, "train_reranker", "reranker", PipelineConfig.reranker_inputs, build)


def run(config: PipelineConfig) -> dict:
    return run_stage(stage, config)


def output_paths(run_dir: str) -> dict[str, str]:
    return {name: join(run_dir, STAGE, name) for name in ("adapter", "merged", "losses.json")}
