"""index stage: embed a corpus on the actor pool and write a search index artefact.

The corpus is the positives (candidates) of ``index.corpus`` pair files, or of the run's
ingested pairs; each unique item is embedded once. The FAISS build runs as one Ray task
placed by ``index.placement`` (on a GPU when it asks for one). Output
``<run_dir>/index/artifact/`` (see :mod:`unime.index.artifact`): ``index.faiss``,
``records.parquet``, ``manifest.json``.
"""

from __future__ import annotations

import dataclasses

import pyarrow.compute as pc

from unime.config import PipelineConfig, fingerprint_view
from unime.data.readers import read_pairs
from unime.data.storage import join
from unime.index import write_index
from unime.pipeline import ingest, manifest, train_embedder
from unime.pipeline.common import read_parquet_dir, write_parquet
from unime.pipeline.embed import embed_items, unique_items
from unime.pipeline.retrieve import EmbeddingStore
from unime.pipeline.stage import Context, Stage, model_versions, run_stage

STAGE = "index"


def corpus_source(config: PipelineConfig) -> dict:
    """What the index is built from, as its fingerprint sees it: ``index.corpus``'s files
    (paths and sizes), else the ingest stage's output."""
    options = config.data.storage_options
    if config.index.corpus:
        return {"corpus": config.index.corpus, "files": ingest.describe_files(config.index.corpus, options)}
    upstream = manifest.read_manifest(config.run_dir, ingest.STAGE, options)
    if upstream is None:
        raise RuntimeError(f"index needs index.corpus or the ingest stage's output under {config.run_dir}")
    return {"ingest": upstream["fingerprint"]}


def corpus_pairs(config: PipelineConfig):
    """The pairs to index (``index.corpus``'s rows checked as ingest checks them, the bad
    ones written to ``quarantine.parquet``), else the ingest stage's pairs."""
    data, options = config.data, config.data.storage_options
    if config.index.corpus:
        pairs, read = read_pairs(config.index.corpus, data.image_root, data.limits, options)
        write_parquet(read.quarantine_table(), join(config.run_dir, STAGE, "quarantine.parquet"), options)
        return pairs
    return read_parquet_dir(ingest.output_paths(config.run_dir)["pairs"], options)


def index_embedder(config: PipelineConfig) -> str:
    return manifest.trained_or(config.run_dir, train_embedder, config.index.embedder, config.models.embedder,
                               config.data.storage_options)


def fingerprint_payload(config: PipelineConfig) -> dict:
    trained = manifest.read_manifest(config.run_dir, train_embedder.STAGE, config.data.storage_options) or {}
    embedder = index_embedder(config)
    return {"source": corpus_source(config), "index": fingerprint_view(config.index),
            "embedder": embedder, "version": model_versions(config, embedder),
            "inputs": config.embedder_inputs(),
            "trained": trained.get("fingerprint")}


def build(context: Context) -> dict:
    config = context.config
    run_dir, embedder = config.run_dir, context.payload["embedder"]
    pairs = corpus_pairs(config)
    items = unique_items(pairs)
    items = items.filter(items["is_candidate"])
    embed_items(items, embedder, config, join(run_dir, STAGE, "embeddings"), STAGE)
    import ray

    task = ray.remote(build_artifact).options(name="build_index", **config.index.placement.remote_options())
    built = ray.get(task.remote(config, embedder, items.select(["id", "text", "image"])))
    rows = {"items": items.num_rows, "with_image": int(pc.sum(pc.not_equal(items["image"], "")).as_py()),
            "kind": built["kind"], "build_seconds": built["build_seconds"]}
    return {"rows": rows, "embedder": embedder}


stage = Stage(STAGE, build, fingerprint_payload)


def run(config: PipelineConfig) -> dict:
    return run_stage(stage, config)


def build_artifact(config: PipelineConfig, embedder: str, records) -> dict:
    """The FAISS build and the artefact's write (a Ray task): the records' vectors from the
    stage's embeddings, the index of ``index.faiss``; the artefact's manifest."""
    spec = config.index
    vectors = EmbeddingStore(join(config.run_dir, STAGE, "embeddings"), config.data.storage_options).vectors(
        records["id"].to_pylist())
    index_spec = dataclasses.replace(spec.faiss, use_gpu=True if spec.placement.num_gpus else None)
    return write_index(output_path(config.run_dir), vectors, records, embedder, index_spec,
                       config.data.storage_options, config.embedder_inputs())


def output_path(run_dir: str) -> str:
    return join(run_dir, STAGE, "artifact")
