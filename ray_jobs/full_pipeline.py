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

import argparse
import sys

from unime.config import load_config
from unime.pipeline.ray_runtime import init_ray
from unime.pipeline.runner import STAGES, absolute_local_paths, prepare_demo, run_stages


def parse_args(argv: list[str] | None, description: str = __doc__) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--run-dir", help="local path or s3:// URL (overrides run_dir)")
    parser.add_argument("--stages", help=f"comma-separated subset of {list(STAGES)}")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. mining.beta=0.02")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, default_stages: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    config = load_config(args.config, overrides)
    stages = args.stages.split(",") if args.stages else default_stages or config.stages
    if config.demo.enabled:
        prepare_demo(config)
    absolute_local_paths(config)
    init_ray(config.ray)
    results = run_stages(config, stages)
    if "evaluate" in results:
        from unime.data.storage import read_bytes
        from unime.pipeline import evaluate

        print("\n" + read_bytes(evaluate.output_paths(config.run_dir)["markdown"], config.data.storage_options).decode())
    if "report" in results:
        print_demo_checks(config)
        print(f"report: {results['report']['path']}")
    print(f"run dir: {config.run_dir}")
    return 0


def print_demo_checks(config) -> None:
    """The report's checks against the demo corpus's ground truth, where it has them."""
    from unime.data.storage import read_json
    from unime.pipeline.demo_checks import Check, checks_markdown
    from unime.pipeline.report import checks_path

    checks = read_json(checks_path(config.run_dir), config.data.storage_options)
    if checks:
        print("\nChecked against the demo corpus's ground truth\n\n" + checks_markdown([Check(**c) for c in checks]))


if __name__ == "__main__":
    sys.exit(main())
