"""The stage registry and the loop that runs a config's stages in order."""

from __future__ import annotations

import json
import time
from pathlib import Path

from unime.config import PipelineConfig
from unime.data.storage import is_remote, read_json, write_bytes
from unime.monitoring import record
from unime.pipeline import (
    build_index,
    deploy,
    embed,
    evaluate,
    ingest,
    judge,
    mine,
    report,
    retrieve,
    train_embedder,
    train_reranker,
)
from unime.pipeline.stage import Stage, run_stage

STAGES: dict[str, Stage] = {module.stage.name: module.stage for module in (
    ingest, embed, retrieve, judge, mine, train_embedder, train_reranker, evaluate, build_index, deploy, report)}
MINING_STAGES = ["ingest", "embed", "retrieve", "judge", "mine"]


def prepare_demo(config: PipelineConfig) -> None:
    """Build the demo corpus, the tiny checkpoints and the trained ones once (all are
    deterministic; the trained ones are rebuilt when their recipe or code changes)."""
    from unime.config import load_config
    from unime.demo import corpus as demo_data
    from unime.demo import models as demo_models
    from unime.demo import tiny

    corpus, checkpoints = Path(config.demo.corpus_dir), Path(config.demo.checkpoints_dir)
    if not (corpus / "manifest.json").exists():
        print(f"building the demo corpus in {corpus}")
        demo_data.build(corpus, config.demo.corpus)
    if not (checkpoints / "manifest.json").exists():
        print(f"building tiny checkpoints in {checkpoints}")
        tiny.build(checkpoints, seed=config.demo.checkpoint_seed)
    if config.demo.models_config:
        demo_models.build(load_config(config.demo.models_config, cls=demo_models.DemoModelsConfig), corpus)


def absolute_local_paths(config: PipelineConfig) -> None:
    """Ray workers may not share the driver's working directory: give them absolute paths."""
    def fix(path: str) -> str:
        return path if not path or is_remote(path) else str(Path(path).resolve())

    config.run_dir = fix(config.run_dir)
    config.data.train = [fix(p) for p in config.data.train]
    config.data.eval_dir, config.data.image_root = fix(config.data.eval_dir), fix(config.data.image_root)
    config.data.global_eval = fix(config.data.global_eval)
    config.index.corpus = [fix(p) for p in config.index.corpus]
    for role in ("embedder", "judge", "reranker"):
        path = getattr(config.models, role)
        if Path(path).exists():
            setattr(config.models, role, fix(path))


def run_stages(config: PipelineConfig, stages: list[str] | None = None, log=print) -> dict[str, dict]:
    """Run ``stages`` (default: the config's) in order; each is skipped when its manifest
    matches (:func:`unime.pipeline.stage.run_stage`).

    After each stage its counts and seconds go to the metrics (:mod:`unime.monitoring`) and
    its timing to ``report/timings.json``, which the report stage reads.
    """
    stages = stages or config.stages
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGES)}")
    results = {}
    for name in stages:
        started = time.perf_counter()
        results[name] = run_stage(STAGES[name], config, pipeline=tuple(STAGES))
        seconds = time.perf_counter() - started
        skipped = results[name].get("skipped")
        if not skipped:
            _record_metrics(name, results[name], seconds)
        record_timing(config, name, seconds, skipped)
        state = "skipped (manifest matches)" if skipped else "done"
        log(f"[{name}] {state} in {seconds:.1f}s: {json.dumps(results[name].get('rows', {}))}")
    return results


def record_timing(config: PipelineConfig, stage: str, seconds: float, skipped: bool) -> None:
    """Merge a stage's timing into ``report/timings.json`` (a skipped stage keeps the seconds
    of the run that did its work)."""
    options = config.data.storage_options
    path = report.timings_path(config.run_dir)
    timings = read_json(path, options) or {}
    previous = timings.get(stage, {})
    timings[stage] = {"seconds": previous.get("seconds") if skipped else seconds,
                      "skipped_last_run": bool(skipped), "last_run_at": time.time()}
    write_bytes(path, json.dumps(timings, indent=2).encode(), options)


def _record_metrics(stage: str, result: dict, seconds: float) -> None:
    record("unime_stage_seconds_total", seconds, stage=stage)
    for count, value in result.get("rows", {}).items():
        if isinstance(value, int) and not isinstance(value, bool):  # counts, not means or ratios
            record("unime_stage_rows_total", value, stage=stage, count=count)
