"""Do two pipeline runs give the same outputs? A refactor's "behaviour unchanged" check.

    python tools/compare_runs.py RUN_DIR_BEFORE RUN_DIR_AFTER

Compares what a behaviour change would move: the judge's scores, the mined records (the
released JSON byte for byte), both trainers' loss curves and the evaluation's numbers.
Timings, hostnames and absolute paths are not outputs and are not compared. Prints one line
per output and exits 1 when any differs or is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

# (what, path under the run dir, how to read it)
OUTPUTS = (
    ("judge scores", "judge/scores", "parquet"),
    ("mined records (released JSON)", "mine/mined.json", "bytes"),
    ("mining counts", "mine/summary.json", "json"),
    ("embedder losses", "train_embedder/losses.json", "json"),
    ("reranker losses", "train_reranker/losses.json", "json"),
    ("evaluation per dataset", "evaluate/per_dataset.json", "json"),
)


def digest(path: Path, kind: str) -> str:
    """A content digest of one output: parquet folders by their rows in a canonical order
    (shard files and row groups may split differently), JSON by its parsed value."""
    if kind == "bytes":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if kind == "json":
        return hashlib.sha256(json.dumps(json.loads(path.read_text()), sort_keys=True).encode()).hexdigest()
    rows = [json.dumps(row, sort_keys=True, default=str) for file in sorted(path.rglob("*.parquet"))
            for row in pq.read_table(file).to_pylist()]
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def compare(before: Path, after: Path) -> list[tuple[str, str]]:
    """``(what, "same" | "DIFFERENT" | "missing in <dir>")`` for every output."""
    results = []
    for what, relative, kind in OUTPUTS:
        missing = [str(run) for run in (before, after) if not (run / relative).exists()]
        if missing:
            results.append((what, "missing in " + ", ".join(missing)))
            continue
        same = digest(before / relative, kind) == digest(after / relative, kind)
        results.append((what, "same" if same else "DIFFERENT"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    results = compare(args.before, args.after)
    for what, verdict in results:
        print(f"{verdict:>10}  {what}")
    return 0 if all(verdict == "same" for _, verdict in results) else 1


if __name__ == "__main__":
    sys.exit(main())
