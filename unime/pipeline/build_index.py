"""index stage: embed a corpus on the actor pool and write a search index artefact.

The corpus is the positives (candidates) of ``index.corpus`` pair files, or of the run's
ingested pairs; each unique item is embedded once. The FAISS build runs as one Ray task
placed by ``index.placement`` (on a GPU when it asks for one). Output
``<run_dir>/index/artifact/`` (see :mod:`unime.index.artifact`): ``index.faiss``,
``records.parquet``, ``manifest.json``.
"""

from __future__ import annotations

import pyarrow.compute as pc

from unime.config import PipelineConfig, fingerprint_view
from unime.data.readers import read_pairs
from unime.data.storage import join
from unime.index import IndexSpec, write_index
from unime.pipeline import ingest, manifest, train_embedder
from unime.pipeline.common import read_parquet_dir, write_parquet
from unime.pipeline.embed import embed_items, unique_items
from unime.pipeline.retrieve import EmbeddingStore

STAGE = "index"


def corpus_pairs(config: PipelineConfig):
    data, options = config.data, config.data.storage_options
    if config.index.corpus:
        pairs, read = read_pairs(config.index.corpus, data.image_root, data.limits, options)
        write_parquet(read.quarantine_table(), join(config.run_dir, STAGE, "quarantine.parquet"), options)
        return pairs, {"corpus": config.index.corpus, "rows": read.input_rows}
    upstream = manifest.read_manifest(config.run_dir, ingest.STAGE, options)
    if upstream is None:
        raise RuntimeError(f"index needs index.corpus or the ingest stage's output under {config.run_dir}")
    return read_parquet_dir(ingest.output_paths(config.run_dir)["pairs"], options), {"ingest": upstream["fingerprint"]}


def run(config: PipelineConfig) -> dict:
    run_dir, options = config.run_dir, config.data.storage_options
    embedder = manifest.trained_or(run_dir, train_embedder, config.index.embedder, config.models.embedder, options)
    pairs, source = corpus_pairs(config)
    stage_fingerprint = manifest.fingerprint({"source": source, "index": fingerprint_view(config.index),
                                              "embedder": embedder,
                                              "inputs": config.embedder_inputs(),
                                              "trained": (manifest.read_manifest(run_dir, train_embedder.STAGE, options)
                                                          or {}).get("fingerprint")})
    if manifest.is_complete(run_dir, STAGE, stage_fingerprint, options):
        return manifest.read_manifest(run_dir, STAGE, options) | {"skipped": True}
    items = unique_items(pairs)
    items = items.filter(items["is_candidate"])
    embed_items(items, embedder, config, join(run_dir, STAGE, "embeddings"), STAGE)
    import ray

    task = ray.remote(build_artifact).options(name="build_index", **config.index.placement.remote_options())
    built = ray.get(task.remote(config, embedder, items.select(["id", "text", "image"])))
    rows = {"items": items.num_rows, "with_image": int(pc.sum(pc.not_equal(items["image"], "")).as_py()),
            "kind": built["kind"], "build_seconds": built["build_seconds"]}
    return manifest.write_manifest(run_dir, STAGE, stage_fingerprint, {"rows": rows, "embedder": embedder},
                                   options) | {"skipped": False}


def build_artifact(config: PipelineConfig, embedder: str, records) -> dict:
    """The FAISS build and the artefact's write (a Ray task): the records' vectors from the
    stage's embeddings, the index of ``index.kind``; the artefact's manifest."""
    spec = config.index
    vectors = EmbeddingStore(join(config.run_dir, STAGE, "embeddings"), config.data.storage_options).vectors(
        records["id"].to_pylist())
    index_spec = IndexSpec(spec.kind, spec.nlist, spec.nprobe, spec.hnsw_m, spec.hnsw_ef_search,
                           use_gpu=True if spec.placement.num_gpus else None)
    return write_index(output_path(config.run_dir), vectors, records, embedder, index_spec,
                       config.data.storage_options, config.embedder_inputs())


def output_path(run_dir: str) -> str:
    return join(run_dir, STAGE, "artifact")
