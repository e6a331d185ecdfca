"""Build the search index of a corpus as one Ray job: ingest -> index.

    python ray_jobs/build_index.py --config configs/demo.yaml [index.kind=hnsw] [index.corpus=[s3://...]]

Writes ``<run_dir>/index/artifact/`` (FAISS index, id -> record table, manifest naming the
embedder checkpoint), local or s3://.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: sibling job modules

import full_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return full_pipeline.main(argv, default_stages=["ingest", "index"])


if __name__ == "__main__":
    sys.exit(main())
