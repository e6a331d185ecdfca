"""evaluate stage: MMEB Precision@1 per subset, before and after reranking, on Ray Data.

Unique queries and targets of all subsets are embedded once (the embed stage's actor pool);
each row's query is scored against its own candidate list; the reranker (an actor pool,
model loaded once per actor) reorders each row's top-k in every configured mode. Reports
under ``<run_dir>/evaluate/``: ``per_dataset.json``, ``summary.json``, ``summary.md`` (the
published column order) and ``meta_tasks.png``.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from unime.config import DataConfig, PipelineConfig, fingerprint_view
from unime.data.images import ImageCache, ImageLimits
from unime.data.readers import named_images, read_eval, read_many
from unime.data.storage import files_version, join, write_bytes
from unime.eval.harness import (
    eval_items,
    global_items,
    global_recall,
    headline_mode,
    reranked_hit,
    row_scores,
    subset_metrics,
    top_k,
)
from unime.eval.mmeb import COLUMNS, aggregate, summary_markdown
from unime.models.checkpoints import remote_listing
from unime.models.recipes import get_recipe
from unime.pipeline import manifest, registry, train_embedder, train_reranker
from unime.pipeline.common import actor_options, write_parquet
from unime.pipeline.embed import embed_items
from unime.pipeline.retrieve import EmbeddingStore
from unime.pipeline.stage import Context, Stage, model_versions, run_stage
from unime.reporting import figure_png, new_figure

STAGE = "evaluate"


class RerankBatch:
    """Ray Data callable class: loads the reranker once; reorders each row's top-k per mode.

    A row whose prompt exceeds the reranker's token budget is a miss in that mode, with the
    reason kept (``{mode}_error``), never a failed stage.
    """

    def __init__(self, model: str, backend: str, modes: list[str], dtype: str, device: str, image_root: str,
                 limits: dict, storage_options: dict, input_format: str = "qwen2-vl-native",
                 image_resolution: str | None = None, max_model_len: int = 8192, engine: dict | None = None,
                 min_pixels: int | None = None, max_pixels: int | None = None, image_cache_mib: int = 2048):
        from unime.rerank import Reranker

        self.reranker = Reranker(model, backend=backend, dtype=dtype, device=device, input_format=input_format,
                                 image_resolution=image_resolution, min_pixels=min_pixels, max_pixels=max_pixels,
                                 max_model_len=max_model_len, storage_options=storage_options, engine=engine)
        self.modes = modes
        self.images = ImageCache(image_root, ImageLimits(**limits), storage_options, image_cache_mib << 20,
                                 prepare=self.reranker.prepare_image)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = rerank_outcomes(self.reranker, self.images, batch.to_pylist(), self.modes)
        return pa.table({"dataset": batch["dataset"], "row_index": batch["row_index"], **out})


def rerank_outcomes(reranker, images, rows: list[dict], modes: list[str]) -> dict[str, list]:
    """Each :func:`rerank_rows` row reordered by ``reranker`` in every mode: ``{mode}_hit``
    (the positive first, :func:`unime.eval.harness.reranked_hit`), ``{mode}_parsed`` and
    ``{mode}_error`` (the refusal's reason, or ""). ``images`` maps a path to a PIL image."""
    out = {f"{mode}_{key}": [] for mode in modes for key in ("parsed", "hit", "error")}
    for row in rows:
        query = (row["qry_text"], images.get(row["qry_img_path"]))
        candidates = [(t, images.get(i)) for t, i in zip(row["cand_texts"], row["cand_images"])]
        contents = list(zip(row["cand_texts"], row["cand_images"]))
        positive_slot = row["cand_index"].index(0) if 0 in row["cand_index"] else None
        for mode in modes:
            ranking, error = reranker.rank_or_refusal(query, candidates, mode)
            out[f"{mode}_error"].append(error)
            out[f"{mode}_parsed"].append(bool(ranking and ranking.parsed))
            out[f"{mode}_hit"].append(ranking is not None and reranked_hit(
                ranking.order, ranking.parsed, contents, (row["pos_text"], row["pos_image"]), positive_slot))
    return out


def rerank_rows(tables: dict[str, pa.Table], scores: dict[str, list[np.ndarray]], k: int) -> pa.Table:
    rows = []
    for name, table in tables.items():
        for index, (row, row_score) in enumerate(zip(table.to_pylist(), scores[name])):
            chosen = top_k(row_score, k)
            rows.append({"dataset": name, "row_index": index, "qry_text": row["qry_text"],
                         "qry_img_path": row["qry_img_path"], "cand_index": chosen,
                         "pos_text": row["tgt_text"][0], "pos_image": row["tgt_img_path"][0],
                         "cand_texts": [row["tgt_text"][j] for j in chosen],
                         "cand_images": [row["tgt_img_path"][j] for j in chosen]})
    return pa.Table.from_pylist(rows)


def rerank(config: PipelineConfig, rows: pa.Table, model: str) -> pa.Table:
    import ray.data

    data = config.data
    dataset = ray.data.from_arrow(rows).repartition(max(1, config.eval.actors.num_actors * 4))
    return pa.Table.from_pylist(dataset.map_batches(
        RerankBatch, batch_format="pyarrow", batch_size=8,
        fn_constructor_kwargs={"model": model, "backend": config.eval.rerank_backend,
                               "modes": list(config.eval.rerank_modes), "dtype": config.models.dtype,
                               "device": config.models.device, "image_root": data.image_root,
                               "limits": asdict(data.limits), "storage_options": data.storage_options,
                               "image_cache_mib": data.image_cache_mib,
                               **config.reranker_inputs(), "engine": asdict(config.eval.rerank_engine)},
        **actor_options(config.eval.actors)).take_all())


def bar_chart(aggregated: dict, reranked: dict | None) -> bytes:
    columns = [c for c in COLUMNS if aggregated["scores"][c] is not None]
    fig, ax = new_figure(7, 3.2)
    x = np.arange(len(columns))
    width = 0.4 if reranked else 0.6
    ax.bar(x - (width / 2 if reranked else 0), [aggregated["scores"][c] for c in columns], width, label="embedder")
    if reranked:
        ax.bar(x + width / 2, [reranked["scores"][c] for c in columns], width, label=f"+ rerank ({reranked['mode']})")
    ax.set_xticks(x, columns)
    ax.set_ylabel("Precision@1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right")
    return figure_png(fig)


def global_prompts(config: PipelineConfig) -> tuple[str, str]:
    """(caption, image) prompts of the global image-text evaluation: the config's, else the
    embedder's input recipe's (``unime-v2``: the authors' Flickr30K / COCO prompts)."""
    recipe = get_recipe(config.models.input_format)
    return (config.eval.global_caption_prompt or recipe.global_caption_prompt,
            config.eval.global_image_prompt or recipe.global_image_prompt)


def models_evaluated(config: PipelineConfig) -> tuple[str, str]:
    """(embedder, reranker): the eval section's, else this run's trained ones, else the models'."""
    run_dir, options = config.run_dir, config.data.storage_options
    return (manifest.trained_or(run_dir, train_embedder, config.eval.embedder, config.models.embedder, options),
            manifest.trained_or(run_dir, train_reranker, config.eval.reranker, config.models.reranker, options))


def data_version(path: str, options: dict | None) -> str:
    """The version of an eval folder or file, local or on an object store."""
    try:
        return remote_listing(path, options)[1]
    except FileNotFoundError:
        raise FileNotFoundError(f"evaluation data: no files under {path} (data.eval_dir / data.global_eval)") from None


def eval_image_version(data: DataConfig) -> str:
    """The version of every image the eval files and the global eval set name."""
    limits, options = data.limits, data.storage_options
    named = named_images(data.eval_dir, "eval", data.image_root, limits, options) if data.eval_dir else []
    if data.global_eval:
        named += named_images(data.global_eval, "global", data.image_root, limits, options)
    return files_version(named, options)


def fingerprint_payload(config: PipelineConfig) -> dict:
    data, options = config.data, config.data.storage_options
    embedder, reranker = models_evaluated(config)
    trained = [manifest.read_manifest(config.run_dir, s.STAGE, options) for s in (train_embedder, train_reranker)]
    return {"eval": fingerprint_view(config.eval), "embedder": embedder, "reranker": reranker,
            "off_the_shelf": config.models.embedder,
            "versions": model_versions(config, embedder, reranker, config.models.embedder),
            "data": [data.eval_dir, data.global_eval],
            # the eval files' names, sizes and modification times (or ETags), and those of the
            # images they name: an eval set or an image rewritten in place reruns the evaluation
            "data_versions": [data_version(path, options) for path in (data.eval_dir, data.global_eval) if path],
            "image_versions": eval_image_version(data),
            "trained": [u and u["fingerprint"] for u in trained],
            "inputs": [config.embedder_inputs(), config.reranker_inputs()]}


def build(context: Context) -> dict:
    config = context.config
    data, run_dir, options = config.data, config.run_dir, config.data.storage_options
    groups = registry.resolve(registry.EVAL_GROUPS, config.eval.groups, "eval.groups")
    embedder, reranker = context.payload["embedder"], context.payload["reranker"]
    tables, read = read_eval(data.eval_dir, config.eval.subsets, data.image_root, data.limits, options)
    global_rows = []
    if data.global_eval:
        global_read = read_many(data.global_eval, "global", data.image_root, data.limits, options)
        read.extend(global_read)
        global_rows = global_read.rows
    write_parquet(read.quarantine_table(), join(run_dir, STAGE, "quarantine.parquet"), options)
    captions, images, caption_image = global_items(global_rows, *global_prompts(config))
    items, references = eval_items(tables, captions + images)
    vectors = item_vectors(config, items, embedder, "embeddings")
    scores = {name: [row_scores(row, vectors) for row in tqdm(table.to_pylist(), desc=f"scoring {name}", leave=False)]
              for name, table in tables.items()}
    per_dataset = {name: subset_metrics(rows) for name, rows in scores.items()}
    global_result = global_recall(captions, images, caption_image, vectors) if global_rows else None
    off_the_shelf = None
    if config.eval.compare_off_the_shelf and embedder != config.models.embedder:
        off_the_shelf = off_the_shelf_scores(config, items, tables, groups)
        for name, value in off_the_shelf["per_dataset"].items():
            per_dataset[name]["off_the_shelf_P@1"] = value

    reranked_summary = None
    if config.eval.rerank and config.eval.rerank_modes:
        reranked_summary = rerank_summary(config, tables, scores, reranker, per_dataset, groups)
    aggregated = aggregate({name: d["P@1"] for name, d in per_dataset.items()}, groups)
    summary = {"embedder": embedder, "reranker": reranker, "aggregate": aggregated, "reranked": reranked_summary,
               "off_the_shelf": off_the_shelf, "global": global_result,
               "items": {"unique": items.num_rows, "references": references,
                         "dedup_saving": 1 - items.num_rows / max(1, references)},
               "quarantined_rows": len(read.quarantine)}
    markdown = report_markdown(config, aggregated, off_the_shelf, reranked_summary, global_result)
    for name, payload in (("per_dataset.json", json.dumps(per_dataset, indent=2)),
                          ("summary.json", json.dumps(summary, indent=2)), ("summary.md", markdown + "\n")):
        write_bytes(join(run_dir, STAGE, name), payload.encode(), options)
    write_bytes(join(run_dir, STAGE, "meta_tasks.png"), bar_chart(aggregated, reranked_summary), options)
    rows = {"subsets": len(tables), "rows": sum(d["rows"] for d in per_dataset.values()),
            "overall_P@1": aggregated["scores"]["Overall"],
            "overall_P@1_reranked": reranked_summary["scores"]["Overall"] if reranked_summary else None,
            "overall_P@1_off_the_shelf": off_the_shelf["aggregate"]["scores"]["Overall"] if off_the_shelf else None,
            "unique_items": items.num_rows, "item_references": references,
            "global_t2i_R@1": global_result["t2i_R@1"] if global_result else None}
    return {"rows": rows}


stage = Stage(STAGE, build, fingerprint_payload)


def run(config: PipelineConfig) -> dict:
    return run_stage(stage, config)


def rerank_summary(config: PipelineConfig, tables: dict, scores: dict, reranker: str, per_dataset: dict,
                   groups) -> dict:
    """Rerank every subset's embedder top-k in each mode: per-dataset P@1, parse rate and
    refusals into ``per_dataset``; the aggregate of the headline mode, with every mode's."""
    run_dir, options, modes = config.run_dir, config.data.storage_options, config.eval.rerank_modes
    results = rerank(config, rerank_rows(tables, scores, config.eval.rerank_k), reranker).to_pylist()
    refused = [{"dataset": r["dataset"], "row_index": r["row_index"], "mode": mode, "reason": r[f"{mode}_error"]}
               for r in results for mode in modes if r[f"{mode}_error"]]
    write_bytes(join(run_dir, STAGE, "rerank_refused.json"), json.dumps(refused, indent=2).encode(), options)
    for name in per_dataset:
        mine = [r for r in results if r["dataset"] == name]
        if len(mine) != per_dataset[name]["rows"]:  # a P@1 over fewer rows would look like any other
            raise RuntimeError(f"rerank of {name}: {len(mine)} results for {per_dataset[name]['rows']} rows")
        per_dataset[name]["rerank"] = {
            mode: {"P@1": 100 * float(np.mean([r[f"{mode}_hit"] for r in mine])),
                   "parse_rate": 100 * float(np.mean([r[f"{mode}_parsed"] for r in mine])),
                   "too_long": sum(bool(r[f"{mode}_error"]) for r in mine)}
            for mode in modes}
    by_mode = {mode: aggregate({n: d["rerank"][mode]["P@1"] for n, d in per_dataset.items()}, groups)
               for mode in modes}
    headline = headline_mode(list(modes))
    return by_mode[headline] | {"mode": headline, "by_mode": by_mode}


def report_markdown(config: PipelineConfig, aggregated: dict, off_the_shelf: dict | None,
                    reranked_summary: dict | None, global_result: dict | None) -> str:
    """The stage's summary.md: the embedder's table, then off-the-shelf, reranked, global."""
    markdown = summary_markdown(aggregated, "embedder", config.eval.compare_with)
    if off_the_shelf:
        markdown += "\n\n" + summary_markdown(off_the_shelf["aggregate"], "off-the-shelf embedder (before training)")
    if reranked_summary:
        for mode, reranked in reranked_summary["by_mode"].items():
            markdown += "\n\n" + summary_markdown(reranked, f"+ rerank ({mode})")
    if global_result:
        keys = [k for k in global_result if k not in ("captions", "images")]
        markdown += ("\n\nGlobal image-text retrieval (" + f"{global_result['captions']} captions, "
                     f"{global_result['images']} images)\n\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys)
                     + "\n| " + " | ".join(f"{global_result[k]:.1f}" for k in keys) + " |")
    return markdown


def item_vectors(config: PipelineConfig, items: pa.Table, embedder: str, folder: str) -> dict[str, np.ndarray]:
    """Content id -> embedding of every item, embedded on the actor pool into ``folder``."""
    out = join(config.run_dir, STAGE, folder)
    embed_items(items, embedder, config, out, STAGE)
    ids = items["id"].to_pylist()
    return dict(zip(ids, EmbeddingStore(out, config.data.storage_options).vectors(ids)))


def off_the_shelf_scores(config: PipelineConfig, items: pa.Table, tables: dict[str, pa.Table], groups) -> dict:
    """Precision@1 of ``models.embedder``, the checkpoint training started from, on the same rows."""
    vectors = item_vectors(config, items, config.models.embedder, "off_the_shelf_embeddings")
    per_dataset = {name: subset_metrics([row_scores(row, vectors) for row in table.to_pylist()])["P@1"]
                   for name, table in tables.items()}
    return {"embedder": config.models.embedder, "per_dataset": per_dataset, "aggregate": aggregate(per_dataset, groups)}


def output_paths(run_dir: str) -> dict[str, str]:
    return {n: join(run_dir, STAGE, f) for n, f in (("per_dataset", "per_dataset.json"), ("summary", "summary.json"),
                                                      ("markdown", "summary.md"), ("chart", "meta_tasks.png"))}
