"""Build the search index of a corpus as one Ray job: ingest -> index.

    python ray_jobs/build_index.py --config configs/demo.yaml [index.faiss.kind=hnsw] [index.corpus=[s3://...]]

Writes ``<run_dir>/index/artifact/`` (FAISS index, id -> record table, manifest naming the
embedder checkpoint), local or s3://.
"""

from __future__ import annotations

import sys

from unime.cli import run_pipeline


def main(argv: list[str] | None = None) -> int:
    return run_pipeline(argv, ["ingest", "index"], prog="ray_jobs/build_index.py")


if __name__ == "__main__":
    sys.exit(main())
