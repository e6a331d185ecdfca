"""Hard-negative mining as one Ray job: ingest -> embed -> retrieve -> judge -> mine.

    python ray_jobs/mine.py --config configs/demo.yaml [key=value ...]
    ray job submit --working-dir . -- python ray_jobs/mine.py --config configs/qwen2vl_2b.yaml

Writes ``<run_dir>/mine/mined.json`` in the released UniME-V2 format (local or s3://).
"""

from __future__ import annotations

import sys

from unime.cli import run_pipeline
from unime.pipeline.runner import MINING_STAGES


def main(argv: list[str] | None = None) -> int:
    return run_pipeline(argv, MINING_STAGES, prog="ray_jobs/mine.py")


if __name__ == "__main__":
    sys.exit(main())
