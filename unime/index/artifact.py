"""The index artefact: ``index.faiss``, ``records.parquet`` (row -> id, text, image) and
``manifest.json`` (kind, size, dimension, and the embedder's fingerprint), on local disk or S3.

A retriever must refuse an index whose vectors came from another embedder than the one it
serves queries with; :meth:`IndexArtifact.check_embedder` is that check.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime.data.storage import join, read_bytes, write_bytes
from unime.mining.retrieval import IndexSpec, build_ivf

EXACT = IndexSpec()  # flat: exact inner product


def build_faiss_index(vectors: np.ndarray, spec: IndexSpec = EXACT):
    """An inner-product FAISS index over L2-normalised ``vectors`` (returned on the CPU); IVF
    is the mining retrieval's own builder."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if spec.kind == "ivf":
        return build_ivf(vectors, spec)
    if spec.kind == "hnsw":  # FAISS has no GPU HNSW
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = spec.hnsw_ef_search
        index.add(vectors)
        return index
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def checkpoint_fingerprint(name_or_path: str, storage_options: dict | None = None) -> str:
    """SHA-256 over a checkpoint's config and weights (one on an object store is copied to this
    node first); the id itself for hub ids."""
    from unime.models.checkpoints import local_checkpoint

    folder = Path(local_checkpoint(name_or_path, storage_options))
    if not folder.is_dir():
        return f"hub:{name_or_path}"
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.is_file() and (path.suffix in (".safetensors", ".bin") or path.name == "config.json"):
            digest.update(path.name.encode())
            with open(path, "rb") as handle:  # a 15 GB shard is hashed in pieces, never held whole
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()


@dataclass
class IndexArtifact:
    index: object
    records: pa.Table
    manifest: dict

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each ``[Q, k]``; row -1 where fewer than k exist."""
        k = min(k, self.index.ntotal)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def check_embedder(self, name_or_path: str, inputs: dict | None = None, storage_options: dict | None = None
                       ) -> None:
        """Raise unless the index was built by this embedder checkpoint and, where both are
        known, with these inputs (input recipe and image resolution): the same checkpoint fed
        other inputs puts queries in another space than the indexed vectors."""
        want, have = checkpoint_fingerprint(name_or_path, storage_options), self.manifest["embedder_fingerprint"]
        if want != have:
            raise ValueError(f"index built by embedder {self.manifest['embedder']} ({have[:12]}), "
                             f"not by {name_or_path} ({want[:12]}): rebuild the index or deploy its embedder")
        built_with = self.manifest.get("inputs")
        if inputs is not None and built_with is not None and built_with != inputs:
            raise ValueError(f"index built with embedder inputs {built_with}, queries would be embedded with "
                             f"{inputs}: deploy with the index's models.input_format / image_resolution")


def write_index(folder: str, vectors: np.ndarray, records: pa.Table, embedder: str, spec: IndexSpec = EXACT,
                storage_options: dict | None = None, inputs: dict | None = None) -> dict:
    """Build and write the artefact; the manifest is written last. ``inputs``: the embedder's
    input recipe and image resolution, recorded for the retriever's check."""
    import faiss

    if len(vectors) != records.num_rows:
        raise ValueError(f"{len(vectors)} vectors for {records.num_rows} records")
    started = time.perf_counter()
    index = build_faiss_index(vectors, spec)
    seconds = time.perf_counter() - started
    write_bytes(join(folder, "index.faiss"), faiss.serialize_index(index).tobytes(), storage_options)
    buffer = io.BytesIO()
    pq.write_table(records, buffer)
    write_bytes(join(folder, "records.parquet"), buffer.getvalue(), storage_options)
    manifest = {"kind": spec.kind, "spec": asdict(spec), "size": int(len(vectors)), "dim": int(vectors.shape[1]),
                "embedder": embedder, "embedder_fingerprint": checkpoint_fingerprint(embedder, storage_options),
                "inputs": inputs,
                "build_seconds": seconds, "created_at": time.time()}
    write_bytes(join(folder, "manifest.json"), json.dumps(manifest, indent=2).encode(), storage_options)
    return manifest


def load_index(folder: str, storage_options: dict | None = None) -> IndexArtifact:
    import faiss

    manifest = json.loads(read_bytes(join(folder, "manifest.json"), storage_options))
    index = faiss.deserialize_index(np.frombuffer(read_bytes(join(folder, "index.faiss"), storage_options),
                                                  dtype=np.uint8))
    if manifest["kind"] == "ivf":
        index.nprobe = manifest["spec"]["nprobe"]
    elif manifest["kind"] == "hnsw":
        index.hnsw.efSearch = manifest["spec"]["hnsw_ef_search"]
    records = pq.read_table(io.BytesIO(read_bytes(join(folder, "records.parquet"), storage_options)))
    if index.ntotal != records.num_rows:
        raise ValueError(f"{folder}: index holds {index.ntotal} vectors but records.parquet {records.num_rows} rows")
    return IndexArtifact(index, records, manifest)
