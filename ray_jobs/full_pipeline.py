"""The UniME-V2 pipeline as one Ray job.

    python ray_jobs/full_pipeline.py --config configs/demo.yaml [--stages ingest] [key=value ...]
    ray job submit --working-dir . -- python ray_jobs/full_pipeline.py --config configs/demo.yaml

Stages run in order and each is skipped when its manifest under ``<run_dir>/<stage>/``
matches its inputs and config. Stages that exist so far: ingest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from unime.config import PipelineConfig, load_config
from unime.data.storage import is_remote
from unime.pipeline import ingest
from unime.pipeline.ray_runtime import init_ray

STAGES = {"ingest": lambda config: ingest.run(config.data, config.run_dir)}


def prepare_demo(config: PipelineConfig) -> None:
    """Build the demo corpus and the tiny checkpoints once (both are deterministic)."""
    from unime import demo_data, tiny

    corpus, checkpoints = Path(config.demo.corpus_dir), Path(config.demo.checkpoints_dir)
    if not (corpus / "manifest.json").exists():
        print(f"building the demo corpus in {corpus}")
        demo_data.build(corpus, config.demo.corpus)
    if not (checkpoints / "manifest.json").exists():
        print(f"building tiny checkpoints in {checkpoints}")
        tiny.build(checkpoints, seed=config.demo.checkpoint_seed)


def absolute_local_paths(config: PipelineConfig) -> None:
    """Ray workers may not share the driver's working directory: pass them absolute paths."""
    def fix(path: str) -> str:
        return path if not path or is_remote(path) else str(Path(path).resolve())

    config.run_dir = fix(config.run_dir)
    config.data.train = [fix(p) for p in config.data.train]
    config.data.eval_dir, config.data.image_root = fix(config.data.eval_dir), fix(config.data.image_root)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--run-dir", help="local path or s3:// URL (overrides run_dir)")
    parser.add_argument("--stages", help=f"comma-separated subset of {list(STAGES)}")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. mining.beta=0.02")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.stages:
        overrides.append(f"stages=[{args.stages}]")
    config = load_config(args.config, overrides)
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; available: {list(STAGES)}")
    if config.demo.enabled:
        prepare_demo(config)
    absolute_local_paths(config)
    init_ray(config.ray)
    for stage in config.stages:
        started = time.perf_counter()
        result = STAGES[stage](config)
        state = "skipped (manifest matches)" if result.get("skipped") else "done"
        print(f"[{stage}] {state} in {time.perf_counter() - started:.1f}s: {json.dumps(result.get('rows', {}))}")
    print(f"run dir: {config.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
