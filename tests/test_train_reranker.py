"""The reranker trainer on Ray Train learns its answer format on the demo corpus."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import mining_config
from unime.pipeline import mine, train_reranker
from unime.rerank import Reranker
from unime.rerank.prompts import training_chats

pytestmark = pytest.mark.integration


def test_reranker_learns_the_listwise_format(mined_run, demo_dir, tiny_dir, tmp_path):
    shutil.copytree(mined_run[0].run_dir, tmp_path, dirs_exist_ok=True)  # the session's mining, not redone
    config = mining_config(
        demo_dir, tiny_dir, tmp_path, f"models.reranker={tiny_dir}/reranker",
        "train_reranker.placement.num_workers=1", "train_reranker.placement.use_gpu=false", "train_reranker.placement.cpus_per_worker=0.5",
        "train_reranker.effective_batch_size=8", "train_reranker.micro_batch_size=8", "train_reranker.optim.lr=1e-3",
        "train_reranker.epochs=3", "train_reranker.full_finetune=true",
        "train_reranker.listwise_candidates=3", "train_reranker.checkpoint_every=1000")
    result = train_reranker.run(config)
    losses = json.loads((tmp_path / "train_reranker" / "losses.json").read_text())
    assert result["rows"]["steps"] == len(losses) > 10
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])

    reranker = Reranker(str(tmp_path / "train_reranker" / "merged"), device="cpu")
    records = pq.read_table(mine.output_paths(str(tmp_path))["mined_table"]).to_pylist()[:12]
    parsed = 0
    for record in records:
        chat = training_chats(record, __import__("random").Random(0), 3)[2]
        ranking = reranker.rank((chat["query"][0], None), [(text, None) for text, _ in chat["candidates"]],
                                mode="listwise-greedy")
        parsed += ranking.parsed
    assert parsed / len(records) >= 0.9, f"parse rate {parsed}/{len(records)}"
