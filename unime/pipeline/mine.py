"""Mine stage: false-negative filter and hard-negative selection into the released format.

For every pair: the judge's score of its positive and of its pool (rank order), then
:func:`unime.mining.select_hard_negatives`. Pairs with no survivor are skipped and
listed. Under ``<run_dir>/mine/``: ``mined.json`` (the released UniME-V2 training JSON),
``mined.parquet`` (the same records plus ids), ``skipped.parquet`` and ``summary.json``.
Every pair is either a record or a skipped row.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from unime.config import PipelineConfig, fingerprint_view
from unime.data import schemas
from unime.data.mined import write_mined
from unime.data.storage import join, write_bytes
from unime.mining import is_false_negative, score_lookup, select_hard_negatives
from unime.pipeline import ingest, judge, retrieve
from unime.pipeline.common import read_parquet_dir, write_parquet
from unime.pipeline.stage import Context, Stage, run_stage

STAGE = "mine"
SKIP_REASON = "no pool candidate survives the false-negative filter"
META = [("source", pa.string()), ("row_index", pa.int64()), ("dataset", pa.string()), ("query_id", pa.string()),
        ("pos_id", pa.string()), ("hard_negative_ids", pa.list_(pa.string()))]
MINED_WITH_IDS = pa.schema(list(schemas.MINED) + [pa.field(n, t) for n, t in META])
SKIPPED = pa.schema([("source", pa.string()), ("row_index", pa.int64()), ("dataset", pa.string()),
                     ("query_id", pa.string()), ("reason", pa.string())])


def mine_pairs(pairs: pa.Table, pools: pa.Table, scores: pa.Table, num_negatives: int, beta: float
               ) -> tuple[list[dict], list[dict], dict]:
    """Pure: (records with ids, skipped rows, statistics) for pairs joined with pools and scores."""
    score_of = score_lookup(scores)
    rows = pairs.to_pylist()
    item = {row["query_id"]: (row["query_text"], row["query_image"]) for row in rows}
    item.update({row["pos_id"]: (row["pos_text"], row["pos_image"]) for row in rows})
    pair_of = {(r["source"], r["row_index"]): r for r in rows}
    records, skipped, positive_scores, pool_scores, filtered = [], [], [], [], 0
    for pool in pools.sort_by([("source", "ascending"), ("row_index", "ascending")]).to_pylist():
        pair = pair_of[(pool["source"], pool["row_index"])]
        query = pool["query_id"]
        positive = score_of[(query, pool["pos_id"])]
        cand_scores = [score_of[(query, c)] for c in pool["pool_ids"]]
        positive_scores.append(positive)
        pool_scores += cand_scores
        filtered += sum(is_false_negative(cand_scores, positive, beta))
        ids, chosen = select_hard_negatives(pool["pool_ids"], cand_scores, positive, num_negatives, beta)
        if not ids:
            skipped.append({k: pool[k] for k in ("source", "row_index", "dataset", "query_id")} | {"reason": SKIP_REASON})
            continue
        records.append({
            "query_text": pair["query_text"], "query_image": pair["query_image"],
            "pos_text": pair["pos_text"], "pos_image": pair["pos_image"],
            "query_pos_scores": positive,
            "hard_negatives": [list(item[c]) for c in ids],
            "hard_negatives_scores": chosen,
            "source": pool["source"], "row_index": pool["row_index"], "dataset": pool["dataset"],
            "query_id": query, "pos_id": pool["pos_id"], "hard_negative_ids": ids,
        })
    stats = {"pairs_in": pools.num_rows, "records_out": len(records), "skipped": len(skipped),
             "false_negatives_filtered": int(filtered), "pool_pairs": len(pool_scores),
             "positive_score_histogram": _histogram(positive_scores),
             "pool_score_histogram": _histogram(pool_scores)}
    return records, skipped, stats


def _histogram(values: list[float], bins: int = 20) -> dict:
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist(),
            "mean": float(np.mean(values)) if values else None}


def released(record: dict) -> dict:
    """The record with exactly the released fields, in the released order."""
    return {name: record[name] for name in schemas.MINED.names}


def build(context: Context) -> dict:
    config = context.config
    run_dir, options = config.run_dir, config.data.storage_options
    pairs = read_parquet_dir(ingest.output_paths(run_dir)["pairs"], options)
    pools = read_parquet_dir(retrieve.output_path(run_dir), options)
    records, skipped, stats = mine_pairs(pairs, pools, judge.read_scores(run_dir, options),
                                         config.mining.num_negatives, config.mining.beta)
    if stats["records_out"] + stats["skipped"] != stats["pairs_in"]:
        raise RuntimeError(f"mine lost pairs: {stats}")
    write_mined([released(r) for r in records], join(run_dir, STAGE, "mined.json"), storage_options=options)
    write_parquet(pa.Table.from_pylist(records, schema=MINED_WITH_IDS), join(run_dir, STAGE, "mined.parquet"), options)
    write_parquet(pa.Table.from_pylist(skipped, schema=SKIPPED), join(run_dir, STAGE, "skipped.parquet"), options)
    write_bytes(join(run_dir, STAGE, "summary.json"), json.dumps(stats, indent=2).encode() + b"\n", options)
    return {"rows": {k: stats[k] for k in ("pairs_in", "records_out", "skipped", "false_negatives_filtered")}}


stage = Stage(STAGE, build, lambda config: {"mining": fingerprint_view(config.mining)}, inputs=(judge.STAGE,))


def run(config: PipelineConfig) -> dict:
    return run_stage(stage, config)


def output_paths(run_dir: str) -> dict[str, str]:
    files = {"mined": "mined.json", "mined_table": "mined.parquet", "skipped": "skipped.parquet",
             "summary": "summary.json"}
    return {name: join(run_dir, STAGE, file) for name, file in files.items()}
