"""report stage: one self-contained HTML page about the run, under ``<run_dir>/report/``.

Sections: stage timings and row counts, judge score histograms (positives vs. pool), the
false-negative filter's statistics, a gallery of queries with their mined hard negatives and
judge scores, training loss curves, and the evaluation before/after reranking. Stages that
did not run leave their section saying so. The charts are also written as PNG files next to
``report.html``, which embeds them. Never skipped: it is cheap and reflects the run dir as is.
"""

from __future__ import annotations

import html
import json

import pyarrow as pa

from unime.config import PipelineConfig
from unime.data.images import ImageError, ImageLimits, load_image, resolve_image
from unime.data.storage import exists, join, read_bytes, read_json, write_bytes
from unime.pipeline import evaluate, manifest, mine, train_embedder, train_reranker
from unime.pipeline.common import read_parquet_dir
from unime.pipeline.demo_checks import Check, demo_checks, filter_truth
from unime.pipeline.stage import Context, Stage
from unime.reporting import (
    Section,
    figure,
    gallery,
    loss_curves_png,
    render_html,
    score_histogram_png,
    table,
    thumbnail_png,
)

STAGE = "report"
TIMINGS = "timings.json"
GALLERY_QUERIES = 6
GALLERY_NEGATIVES = 5


def timings_path(run_dir: str) -> str:
    return join(run_dir, STAGE, TIMINGS)


def missing(stage: str) -> str:
    return f"<p class='muted'>The {html.escape(stage)} stage has not run in this run dir.</p>"


def stages_section(config: PipelineConfig, stage_names: list[str]) -> Section:
    options = config.data.storage_options
    timings = read_json(timings_path(config.run_dir), options) or {}
    rows = []
    for stage in stage_names:
        found = manifest.read_manifest(config.run_dir, stage, options)
        if found is None and stage not in timings:
            continue
        timing = timings.get(stage, {})
        counts = (found or {}).get("rows", {})
        rows.append([stage, timing.get("seconds"), "skipped (manifest matched)" if timing.get("skipped_last_run")
                     else "ran", ", ".join(f"{k}={_short(v)}" for k, v in counts.items() if not isinstance(v, (list, dict)))])
    return Section("stages", "Stages", table(["stage", "seconds", "last run", "counts"], rows, "{:.1f}"))


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def judge_section(summary: dict | None, written: dict[str, bytes]) -> Section:
    if summary is None:
        return Section("judge-scores", "Judge scores", missing("mine"))
    written["judge_scores.png"] = score_histogram_png(summary["positive_score_histogram"],
                                                      summary["pool_score_histogram"])
    means = (f"<p>Mean P(Yes): positives {summary['positive_score_histogram']['mean']:.3f}, "
             f"pool {summary['pool_score_histogram']['mean']:.3f}.</p>")
    return Section("judge-scores", "Judge scores: positives vs. pool",
                   means + figure(written["judge_scores.png"], "judge score histograms"))


def filter_section(config: PipelineConfig, summary: dict | None, truth: dict | None) -> Section:
    if summary is None:
        return Section("false-negatives", "False-negative filter", missing("mine"))
    beta = config.mining.beta
    pool = max(1, summary["pool_pairs"])
    rows = [["pairs in", summary["pairs_in"]], ["pool candidates judged", summary["pool_pairs"]],
            [f"candidates filtered (score > s_pos - {beta})", summary["false_negatives_filtered"]],
            ["fraction of the pool filtered", summary["false_negatives_filtered"] / pool],
            ["records written", summary["records_out"]], ["pairs skipped (no survivor)", summary["skipped"]]]
    if truth:
        rows += [["true false negatives in the pools (ground truth)", truth["false_negatives"]],
                 ["base rate of true false negatives in the pools", truth["base_rate"]],
                 ["filter precision vs. ground truth", truth["precision"]],
                 ["filter recall vs. ground truth", truth["recall"]]]
    return Section("false-negatives", "False-negative filter", table(["", "value"], rows, "{:.3f}"))


def _thumbnail(image: str, config: PipelineConfig) -> bytes | None:
    if not image:
        return None
    try:
        uri = resolve_image(image, config.data.image_root, config.data.limits.allow_absolute_paths)
        return thumbnail_png(load_image(uri, ImageLimits(),
                                        config.data.storage_options))
    except ImageError:
        return None  # the report shows the text; the mining stages already quarantined bad images


def gallery_records(records: pa.Table | None) -> list[dict] | None:
    """The mined records the gallery shows, each cut to the hard negatives shown (None: no
    mined records)."""
    if records is None:
        return None
    return [record | {"hard_negatives": record["hard_negatives"][:GALLERY_NEGATIVES],
                      "hard_negatives_scores": record["hard_negatives_scores"][:GALLERY_NEGATIVES]}
            for record in records.slice(0, GALLERY_QUERIES).to_pylist()]


def gallery_section(config: PipelineConfig, records: pa.Table | None, shown: list[dict] | None) -> Section:
    """``shown``: :func:`gallery_records` of ``records``."""
    if not shown:
        return Section("gallery", "Mined hard negatives", missing("mine"))
    examples = []
    for record in shown:
        row = [{"role": "query", "text": record["query_text"], "thumbnail": _thumbnail(record["query_image"], config)},
               {"role": "positive", "text": record["pos_text"], "score": record["query_pos_scores"],
                "thumbnail": _thumbnail(record["pos_image"], config)}]
        for (text, image), score in zip(record["hard_negatives"], record["hard_negatives_scores"]):
            row.append({"role": "negative", "text": text, "score": score, "thumbnail": _thumbnail(image, config)})
        examples.append(row)
    note = (f"<p>The first {len(examples)} of {records.num_rows} mined queries, with the judge's P(Yes) for the "
            f"positive and for up to {GALLERY_NEGATIVES} hard negatives.</p>")
    return Section("gallery", "Mined hard negatives", note + gallery(examples))


def training_section(config: PipelineConfig, written: dict[str, bytes]) -> Section:
    options = config.data.storage_options
    curves = {}
    for name, stage in (("embedder", train_embedder), ("reranker", train_reranker)):
        losses = read_json(stage.output_paths(config.run_dir)["losses.json"], options)
        if losses:
            curves[name] = losses
    if not curves:
        return Section("training", "Training", missing("train_embedder / train_reranker"))
    written["losses.png"] = loss_curves_png(curves)
    rows = [[name, len(losses), losses[0], losses[-1]] for name, losses in curves.items()]
    return Section("training", "Training loss", table(["model", "steps", "first loss", "final loss"], rows)
                   + figure(written["losses.png"], "training loss curves"))


def evaluation_section(config: PipelineConfig) -> Section:
    options = config.data.storage_options
    paths = evaluate.output_paths(config.run_dir)
    summary, per_dataset = read_json(paths["summary"], options), read_json(paths["per_dataset"], options)
    if summary is None:
        return Section("evaluation", "Evaluation", missing("evaluate"))
    modes = sorted({mode for d in per_dataset.values() for mode in d.get("rerank", {})})
    rows = [[name, d["rows"], d["P@1"], *[d["rerank"][m]["P@1"] for m in modes]] for name, d in per_dataset.items()]
    body = table(["dataset", "queries", "P@1 embedder", *[f"P@1 + rerank ({m})" for m in modes]], rows, "{:.1f}")
    aggregate_rows = [["embedder", *summary["aggregate"]["scores"].values()]]
    for mode, reranked in ((summary.get("reranked") or {}).get("by_mode") or {}).items():
        aggregate_rows.append([f"+ rerank ({mode})", *reranked["scores"].values()])
    body += table(["model", *summary["aggregate"]["scores"]], aggregate_rows, "{:.1f}")
    if summary.get("global"):
        keys = [k for k in summary["global"] if k not in ("captions", "images")]
        body += "<p>Global image-text retrieval</p>" + table(keys, [[summary["global"][k] for k in keys]], "{:.1f}")
    if exists(paths["chart"], options):
        body += figure(read_bytes(paths["chart"], options), "P@1 by meta-task")
    return Section("evaluation", "Evaluation before and after reranking", body)


def build(context: Context) -> dict:
    config = context.config
    run_dir, options = config.run_dir, config.data.storage_options
    summary = read_json(mine.output_paths(run_dir)["summary"], options)
    mined_path = mine.output_paths(run_dir)["mined_table"]
    records = read_parquet_dir(mined_path, options) if exists(mined_path, options) else None
    written: dict[str, bytes] = {}
    truth = filter_truth(config) if summary is not None else None
    shown = gallery_records(records)
    sections = [stages_section(config, [s for s in context.pipeline if s != STAGE]), judge_section(summary, written),
                filter_section(config, summary, truth), gallery_section(config, records, shown),
                training_section(config, written), evaluation_section(config)]
    checks = demo_checks(config, truth, shown)
    if checks is not None:
        sections.insert(0, checks_section(checks))
        write_bytes(checks_path(run_dir), json.dumps([c.as_dict() for c in checks], indent=2).encode(), options)
    page = render_html("unime run report", sections, subtitle=f"run dir {run_dir}")
    for name, png in written.items():
        write_bytes(join(run_dir, STAGE, name), png, options)
    write_bytes(output_path(run_dir), page.encode(), options)
    return {"rows": {"sections": len(sections), "figures": len(written), "bytes": len(page)},
            "path": output_path(run_dir)}


# cheap, and a view of the run dir as it is: it runs every time
stage = Stage(STAGE, build, cached=False)


def checks_section(checks: list[Check]) -> Section:
    rows = [[c.name, c.measured, c.bar, "pass" if c.passed else "FAIL"] for c in checks]
    note = ("<p>This corpus records what every image shows, so each step is scored against the ground "
            "truth (<code>unime.pipeline.demo_checks</code>).</p>")
    return Section("demo-checks", "Checked against the ground truth", note + table(["check", "measured", "bar", ""], rows))


def checks_path(run_dir: str) -> str:
    return join(run_dir, STAGE, "demo_checks.json")


def output_path(run_dir: str) -> str:
    return join(run_dir, STAGE, "report.html")
