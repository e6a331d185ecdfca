"""Hard-negative mining as one Ray job: ingest -> embed -> retrieve -> judge -> mine.

    python ray_jobs/mine.py --config configs/demo.yaml [key=value ...]
    ray job submit --working-dir . -- python ray_jobs/mine.py --config configs/qwen2vl_2b.yaml

Writes ``<run_dir>/mine/mined.json`` in the released UniME-V2 format (local or s3://).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: sibling job modules

import full_pipeline  # noqa: E402

from unime.pipeline.runner import MINING_STAGES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return full_pipeline.main(argv, default_stages=MINING_STAGES)


if __name__ == "__main__":
    sys.exit(main())
