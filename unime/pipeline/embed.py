"""Embed stage: every unique query and candidate of the ingested pairs, once, on an actor pool.

Items are de-duplicated by content id (a candidate shared by several datasets is embedded
once) and sorted by an input-length estimate, so that each batch pads little. Images are
fetched, decoded and resized by Ray Data tasks on CPU nodes (``ray.data_task_resources``)
ahead of the embedder actors, so the GPU never waits on S3 or a decoder. Output: parquet
shards ``(id, is_candidate, embedding)`` under ``<run_dir>/embed/embeddings/``.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unime.config import PipelineConfig, fingerprint_view
from unime.data.images import ImageCache, ImageLimits
from unime.data.ordering import by_input_length
from unime.data.storage import arrow_filesystem, join
from unime.models.recipes import get_recipe
from unime.monitoring import record
from unime.pipeline import ingest
from unime.pipeline.common import (
    actor_options,
    embeddings_column,
    read_parquet_dir,
    task_options,
)
from unime.pipeline.stage import Context, Stage, model_versions, run_stage

STAGE = "embed"


def unique_items(pairs: pa.Table) -> pa.Table:
    """Queries and positives as one item table, one row per content id, shortest first."""
    def part(prefix: str, is_candidate: bool) -> pa.Table:
        return pa.table({"id": pairs[f"{prefix}_id"], "text": pairs[f"{prefix}_text"],
                         "image": pairs[f"{prefix}_image"],
                         "is_candidate": pa.array([is_candidate] * pairs.num_rows, pa.bool_())})

    items = pa.concat_tables([part("query", False), part("pos", True)])
    merged = items.group_by("id", use_threads=False).aggregate(
        [("text", "first"), ("image", "first"), ("is_candidate", "max")])
    merged = pa.table({"id": merged["id"], "text": merged["text_first"], "image": merged["image_first"],
                       "is_candidate": merged["is_candidate_max"]})
    return by_input_length(merged)


def prepared_images(batch: pa.Table, image_root: str, limits: dict, storage_options: dict,
                    input_format: str = "qwen2-vl-native", image_resolution: str | None = None) -> pa.Table:
    """A CPU task's work: each item's image fetched, decoded and resized as the embedder's
    recipe feeds it (:meth:`unime.models.Embedder.prepare_image`), pickled with its mode and
    palette into ``image_data`` (empty for text-only items). An image seen twice in the batch
    is loaded once."""
    recipe = get_recipe(input_format)
    resolution = recipe.resolution_for("eval", image_resolution)  # the Embedder's default use
    images = ImageCache(image_root, ImageLimits(**limits), storage_options,
                        prepare=lambda image: recipe.embed_image(image, resolution))
    data = [pickle.dumps(images.get(path), protocol=5) if path else b"" for path in batch["image"].to_pylist()]
    return batch.drop_columns(["image"]).append_column("image_data", pa.array(data, pa.binary()))


class EmbedBatch:
    """Ray Data callable class: loads the embedder once, embeds batches of items whose images
    :func:`prepared_images` has already loaded."""

    def __init__(self, model: str, dtype: str, device: str, min_pixels, max_pixels, stage: str = "embed",
                 input_format: str = "qwen2-vl-native", image_resolution: str | None = None,
                 storage_options: dict | None = None):
        from unime.models import Embedder

        self.embedder = Embedder(model, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels,
                                 input_format=input_format, image_resolution=image_resolution,
                                 storage_options=storage_options)
        self.stage = stage

    def __call__(self, batch: pa.Table) -> pa.Table:
        from unime.models import EmbedItem

        items = [EmbedItem(text, pickle.loads(data) if data else None) for text, data in
                 zip(batch["text"].to_pylist(), batch["image_data"].to_pylist())]
        vectors = self.embedder.encode(items)
        record("unime_items_embedded_total", len(items), stage=self.stage)
        return pa.table({"id": batch["id"], "is_candidate": batch["is_candidate"],
                         "embedding": embeddings_column(vectors)})


def embed_items(items: pa.Table, model: str, config: PipelineConfig, out: str, stage: str = STAGE,
                input_format: str | None = None) -> None:
    """Embed an item table ``(id, text, image, is_candidate[, length])`` on the actor pool into
    parquet shards under ``out``; every item gets exactly one embedding. ``input_format``:
    the embedder's input recipe (default ``models.input_format``)."""
    import ray.data

    data = config.data
    fs, inner = arrow_filesystem(out, data.storage_options)
    fs.delete_dir_contents(inner, missing_dir_ok=True)
    blocks = max(1, min(config.embed.actors.num_actors * 4, items.num_rows // config.embed.batch_size))
    columns = [c for c in items.column_names if c != "length"]
    inputs = config.model_inputs() | {"input_format": input_format or config.models.input_format}
    dataset = ray.data.from_arrow(items.select(columns)).repartition(blocks)
    dataset = dataset.map_batches(
        prepared_images, batch_format="pyarrow", batch_size=config.embed.batch_size,
        fn_kwargs={"image_root": data.image_root, "limits": asdict(data.limits),
                   "storage_options": data.storage_options, **inputs},
        num_cpus=config.embed.image_cpus, **task_options(config.ray.data_task_resources))
    dataset = dataset.map_batches(
        EmbedBatch, batch_format="pyarrow", batch_size=config.embed.batch_size,
        fn_constructor_kwargs={
            "model": model, "dtype": config.models.dtype, "device": config.models.device,
            "min_pixels": config.models.min_pixels, "max_pixels": config.models.max_pixels,
            "storage_options": data.storage_options, "stage": stage, **inputs,
        },
        **actor_options(config.embed.actors))
    dataset.write_parquet(inner, filesystem=fs, ray_remote_args=task_options(config.ray.data_task_resources))
    written = read_parquet_dir(out, data.storage_options, columns=["id"]).num_rows
    if written != items.num_rows:
        raise RuntimeError(f"embedding wrote {written} vectors for {items.num_rows} items")


def fingerprint_payload(config: PipelineConfig) -> dict:
    model = config.embed.model or config.models.embedder
    return {"model": model, "version": model_versions(config, model), "models": fingerprint_view(config.models),
            "embed": fingerprint_view(config.embed)}


def build(context: Context) -> dict:
    config = context.config
    data, run_dir = config.data, config.run_dir
    model = context.payload["model"]
    pairs = read_parquet_dir(ingest.output_paths(run_dir)["pairs"], data.storage_options)
    items = unique_items(pairs)
    embed_items(items, model, config, output_path(run_dir), input_format=config.embed.input_format)
    counts = {"pairs": pairs.num_rows, "items": items.num_rows,
              "candidates": int(pc.sum(items["is_candidate"]).as_py()),
              "query_only_items": int(pc.sum(pc.invert(items["is_candidate"])).as_py()),
              "mean_length": float(np.mean(items["length"].to_numpy())) if items.num_rows else 0.0}
    return {"rows": counts, "model": model}


stage = Stage(STAGE, build, fingerprint_payload, inputs=(ingest.STAGE,))


def run(config: PipelineConfig) -> dict:
    return run_stage(stage, config)


def output_path(run_dir: str) -> str:
    return join(run_dir, STAGE, "embeddings")
