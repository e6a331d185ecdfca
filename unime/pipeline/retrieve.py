"""Retrieve stage: the global potential-hard-negative pool of every pair (docs/method.md section 2).

Candidates (the positives of all datasets, de-duplicated) are streamed shard by shard from
the embed stage's parquet files into :func:`unime.mining.retrieve_pool`; queries go in
chunks of ``mining.query_chunk``. The work runs as one Ray task placed by
``mining.placement`` (a FAISS GPU when it asks for one). Output
``<run_dir>/retrieve/pools.parquet``: one row per pair with its pool ids and similarities,
best first.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unime.config import PipelineConfig, fingerprint_view
from unime.data.storage import join, list_files
from unime.mining import retrieve_pool
from unime.pipeline import embed, ingest
from unime.pipeline.common import embeddings_array, read_parquet_dir, write_parquet
from unime.pipeline.stage import Context, Stage, run_stage

STAGE = "retrieve"
POOLS = pa.schema([("source", pa.string()), ("row_index", pa.int64()), ("dataset", pa.string()),
                   ("query_id", pa.string()), ("pos_id", pa.string()), ("pool_ids", pa.list_(pa.string())),
                   ("pool_sims", pa.list_(pa.float32()))])


class EmbeddingStore:
    """The embed stage's shards: candidate rows in a global order, loaded one file at a time."""

    def __init__(self, path: str, storage_options: dict | None = None):
        self.files = list_files(path, (".parquet",), storage_options)
        self.storage_options = storage_options
        self.file_ids = [read_parquet_dir(f, storage_options, ["id", "is_candidate"]) for f in self.files]
        self.candidate_ids = [i for t in self.file_ids for i in pc.filter(t["id"], t["is_candidate"]).to_pylist()]
        self.candidate_row = {cid: row for row, cid in enumerate(self.candidate_ids)}

    def candidate_shards(self) -> list:
        def loader(path):
            def load() -> np.ndarray:
                table = read_parquet_dir(path, self.storage_options, ["is_candidate", "embedding"])
                return embeddings_array(pc.filter(table["embedding"], table["is_candidate"]))
            return load

        return [loader(f) for f, ids in zip(self.files, self.file_ids) if pc.any(ids["is_candidate"]).as_py()]

    def vectors(self, ids: list[str]) -> np.ndarray:
        """Embeddings of ``ids`` (any items), streaming the files once."""
        wanted = {item: k for k, item in enumerate(dict.fromkeys(ids))}
        found: dict[str, np.ndarray] = {}
        for path, file_ids in zip(self.files, self.file_ids):
            rows = [r for r, item in enumerate(file_ids["id"].to_pylist()) if item in wanted]
            if rows:
                table = read_parquet_dir(path, self.storage_options, ["id", "embedding"]).take(rows)
                found.update(zip(table["id"].to_pylist(), embeddings_array(table["embedding"])))
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"no embedding for {len(missing)} ids, e.g. {missing[:3]}")
        return np.stack([found[i] for i in ids])


def _pool_rows(ids: list[str], rows: np.ndarray, sims: np.ndarray) -> tuple[list, list]:
    pool_ids = [[ids[r] for r in row if r >= 0] for row in rows]
    pool_sims = [[float(s) for s, r in zip(srow, row) if r >= 0] for srow, row in zip(sims, rows)]
    return pool_ids, pool_sims


def global_pools(store: EmbeddingStore, pairs: pa.Table, config: PipelineConfig) -> tuple[list, list]:
    mining = config.mining
    # a task that was given a GPU searches on it (or fails where faiss sees none); else FAISS's own choice
    spec = dataclasses.replace(mining.faiss, use_gpu=True if mining.placement.num_gpus else None)
    query_ids, pos_ids = pairs["query_id"].to_pylist(), pairs["pos_id"].to_pylist()
    shards = store.candidate_shards()
    pool_ids, pool_sims = [], []
    for start in range(0, len(query_ids), mining.query_chunk):
        chunk = slice(start, start + mining.query_chunk)
        positives = np.array([store.candidate_row[p] for p in pos_ids[chunk]])
        rows, sims = retrieve_pool(store.vectors(query_ids[chunk]), shards, positives, k=mining.pool_size, index=spec)
        chunk_ids, chunk_sims = _pool_rows(store.candidate_ids, rows, sims)
        pool_ids += chunk_ids
        pool_sims += chunk_sims
    return pool_ids, pool_sims


def per_dataset_pools(store: EmbeddingStore, pairs: pa.Table, config: PipelineConfig) -> tuple[list, list]:
    """Each dataset's queries against that dataset's own candidates only."""
    pool_ids: list = [None] * pairs.num_rows
    pool_sims: list = [None] * pairs.num_rows
    datasets = pairs["dataset"].to_pylist()
    for name in sorted(set(datasets)):
        members = [i for i, d in enumerate(datasets) if d == name]
        subset = pairs.take(members)
        candidates = list(dict.fromkeys(subset["pos_id"].to_pylist()))
        row_of = {c: r for r, c in enumerate(candidates)}
        rows, sims = retrieve_pool(store.vectors(subset["query_id"].to_pylist()), store.vectors(candidates),
                                   [row_of[p] for p in subset["pos_id"].to_pylist()], k=config.mining.pool_size)
        for member, ids, scores in zip(members, *_pool_rows(candidates, rows, sims)):
            pool_ids[member], pool_sims[member] = ids, scores
    return pool_ids, pool_sims


def build(context: Context) -> dict:
    import ray

    config = context.config
    task = ray.remote(retrieve_pools).options(name="retrieve_pools", **config.mining.placement.remote_options())
    return {"rows": ray.get(task.remote(config))}


stage = Stage(STAGE, build, lambda config: {"mining": fingerprint_view(config.mining)}, inputs=(embed.STAGE,))


def run(config: PipelineConfig) -> dict:
    return run_stage(stage, config)


def retrieve_pools(config: PipelineConfig) -> dict:
    """The stage's work (a Ray task): every pair's pool, written to ``pools.parquet``; its counts."""
    data, run_dir = config.data, config.run_dir
    pairs = read_parquet_dir(ingest.output_paths(run_dir)["pairs"], data.storage_options,
                             ["source", "row_index", "dataset", "query_id", "pos_id"])
    pairs = pairs.sort_by([("source", "ascending"), ("row_index", "ascending")])  # input order, not Ray's
    store = EmbeddingStore(embed.output_path(run_dir), data.storage_options)
    pools = global_pools if config.mining.global_pool else per_dataset_pools
    pool_ids, pool_sims = pools(store, pairs, config)
    table = pa.table({**{name: pairs[name] for name in POOLS.names[:5]},
                      "pool_ids": pool_ids, "pool_sims": pool_sims}, schema=POOLS)
    write_parquet(table, output_path(run_dir), data.storage_options)
    sizes = np.array([len(p) for p in pool_ids])
    return {"pairs": table.num_rows, "candidates": len(store.candidate_ids),
            "mean_pool_size": float(sizes.mean()) if len(sizes) else 0.0,
            "short_pools": int((sizes < config.mining.pool_size).sum())}


def output_path(run_dir: str) -> str:
    return join(run_dir, STAGE, "pools.parquet")
