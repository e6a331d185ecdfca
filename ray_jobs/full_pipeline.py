"""The UniME-V2 pipeline as one Ray job.

    python ray_jobs/full_pipeline.py --config configs/demo.yaml [--stages ingest,embed] [key=value ...]
    ray job submit --working-dir . -- python ray_jobs/full_pipeline.py --config configs/demo.yaml

Stages run in order: ingest, embed, retrieve, judge, mine, train_embedder, train_reranker,
evaluate, index, serve, report. Each is skipped when its manifest under ``<run_dir>/<stage>/``
matches its inputs and config, so rerunning the same command after a crash continues where
the run stopped (the judge resumes shard by shard). The runtime environment is the config's
``ray.runtime_env``; ``ray job submit`` only adds the working dir.
"""

from __future__ import annotations

import sys

from unime.cli import run_pipeline


def main(argv: list[str] | None = None) -> int:
    return run_pipeline(argv, prog="ray_jobs/full_pipeline.py")


if __name__ == "__main__":
    sys.exit(main())
