"""The ``unime`` command: the pipeline job and the project's tools behind one entry point.

    unime run --config configs/demo.yaml [--stages ingest,embed] [key=value ...]
    unime mine --config configs/qwen2vl_2b.yaml          # ingest -> embed -> retrieve -> judge -> mine
    unime build-index --config configs/demo.yaml         # ingest -> index
    unime serve --config configs/demo.yaml               # deploy the run's app and keep it up
    unime tiny build DIR                                 # random-init tiny checkpoints
    unime demo-data DIR                                  # the synthetic demo corpus
    unime demo-models build                              # the demo's trained tiny checkpoints

``ray job submit -- python ray_jobs/full_pipeline.py ...`` runs the same job as ``unime run``
(the scripts under ``ray_jobs/`` are thin wrappers of this module). This is the application
layer: the library under ``unime/`` never imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def parse_job_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    from unime.pipeline.runner import STAGES

    parser = argparse.ArgumentParser(prog=prog, description="Run stages of the UniME-V2 pipeline as one Ray job.")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--run-dir", help="local path or s3:// URL (overrides run_dir)")
    parser.add_argument("--stages", help=f"comma-separated subset of {list(STAGES)}")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. mining.beta=0.02")
    return parser.parse_args(argv)


def run_pipeline(argv: list[str] | None = None, default_stages: list[str] | None = None,
                 prog: str = "unime run", extra_overrides: tuple[str, ...] = ()) -> int:
    """The pipeline job: each stage skipped when its manifest matches, so a rerun resumes."""
    from unime.config import load_config
    from unime.pipeline.ray_runtime import init_ray
    from unime.pipeline.runner import absolute_local_paths, prepare_demo, run_stages

    args = parse_job_args(argv, prog)
    overrides = list(args.overrides) + list(extra_overrides)
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


def _mining_stages() -> list[str]:
    from unime.pipeline.runner import MINING_STAGES

    return MINING_STAGES


def _tool(module: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(argv)
    return run


COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "run": ("run the pipeline's stages (the config's, or --stages)", lambda argv: run_pipeline(argv)),
    "mine": ("hard-negative mining: ingest, embed, retrieve, judge, mine",
             lambda argv: run_pipeline(argv, _mining_stages(), prog="unime mine")),
    "build-index": ("the search index of a corpus: ingest, index",
                    lambda argv: run_pipeline(argv, ["ingest", "index"], prog="unime build-index")),
    "serve": ("deploy the run's retrieve-then-rerank app and keep it running",
              lambda argv: run_pipeline(argv, ["serve"], prog="unime serve", extra_overrides=("serve.keep_running=true",))),
    "tiny": ("random-init tiny checkpoints for tests (tiny build DIR)", _tool("unime.demo.tiny")),
    "demo-data": ("the synthetic demo corpus (demo-data DIR)", _tool("unime.demo.corpus")),
    "demo-models": ("the demo's trained tiny checkpoints (demo-models build)", _tool("unime.demo.models")),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = "usage: unime COMMAND [ARGS ...]\n\ncommands:\n" + "\n".join(
        f"  {name:<12} {summary}" for name, (summary, _) in COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"unime: unknown command {argv[0]!r}\n\n{usage}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]][1](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
