"""Helpers shared by the Ray stages: Arrow I/O under a run dir, actor options, image loading."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime.config import ActorConfig
from unime.data.storage import filesystem, list_files, read_bytes


def actor_options(actors: ActorConfig) -> dict[str, Any]:
    """``map_batches`` arguments for an actor pool: size and per-actor resources from config."""
    from ray.data import ActorPoolStrategy

    options: dict[str, Any] = {"compute": ActorPoolStrategy(size=actors.num_actors), "num_cpus": actors.num_cpus}
    if actors.num_gpus:
        options["num_gpus"] = actors.num_gpus
    if actors.resources:
        options["resources"] = dict(actors.resources)
    return options


def task_options(resources: dict[str, float]) -> dict[str, Any]:
    """Ray remote arguments for Ray Data read/write tasks: the config's custom resources."""
    return {"resources": dict(resources)} if resources else {}


def read_parquet_dir(path: str, storage_options: dict | None = None, columns: list[str] | None = None) -> pa.Table:
    """All parquet files under ``path`` (a file or a folder), in file-name order."""
    tables = [pq.read_table(io.BytesIO(read_bytes(p, storage_options)), columns=columns)
              for p in list_files(path, (".parquet",), storage_options)]
    return pa.concat_tables(tables) if tables else pa.table({})


def write_parquet(table: pa.Table, path: str, storage_options: dict | None = None) -> None:
    """Write one parquet file; on object stores a single PUT, so readers never see half a file."""
    fs, inner = filesystem(path, storage_options)
    parent = inner.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    tmp = f"{inner}.tmp"
    with fs.open(tmp, "wb") as handle:
        handle.write(buffer.getvalue())
    fs.mv(tmp, inner)


def embeddings_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """Vectors as a portable fixed-size-list column (not Ray's tensor extension type)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def embeddings_array(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32)
