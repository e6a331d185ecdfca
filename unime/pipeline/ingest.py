"""Ingest stage: read training pairs with Ray Data, validate rows and images, quarantine the bad.

Each input file is parsed and checked by one Ray task (:func:`ingest_files`, a pure function
over a batch of file paths); good rows go to ``<run_dir>/ingest/pairs/`` and rejected rows to
``<run_dir>/ingest/quarantine/``, both parquet. The manifest records input rows, good rows and
quarantined rows per source, and the stage refuses to finish unless they reconcile.
"""

from __future__ import annotations

from dataclasses import asdict

import pyarrow as pa

from unime.config import DataConfig, fingerprint_view
from unime.data import schemas
from unime.data.images import ImageChecker, ImageLimits
from unime.data.readers import SUFFIXES, read_rows
from unime.data.storage import arrow_filesystem, filesystem, join, list_files
from unime.pipeline import manifest
from unime.pipeline.common import task_options

STAGE = "ingest"
STATUS_FIELDS = [("quarantined", pa.bool_()), ("field", pa.string()), ("reason", pa.string()),
                 ("input_rows", pa.int64())]
INGEST_SCHEMA = pa.schema(list(schemas.PAIR) + [pa.field(n, t) for n, t in STATUS_FIELDS])


def ingest_files(batch: dict, image_root: str, limits: dict, storage_options: dict) -> pa.Table:
    """Parse and validate the files named in ``batch["path"]``: good and quarantined rows, tagged."""
    checker = ImageChecker(image_root, ImageLimits(**limits), storage_options)
    rows = []
    for path in batch["path"]:
        result = read_rows(str(path), "pairs", storage_options=storage_options, checker=checker)
        rows += [{**row, "quarantined": False, "input_rows": 0} for row in result.rows]
        rows += [{**q, "quarantined": True, "input_rows": 0} for q in result.quarantine]
        # One marker row per file carries its input row count, so the driver can reconcile.
        rows.append({"source": str(path), "row_index": -1, "quarantined": False, "input_rows": result.input_rows})
    return pa.Table.from_pylist(rows, schema=INGEST_SCHEMA)


def input_files(data: DataConfig) -> list[dict]:
    files = [p for root in data.train for p in list_files(root, SUFFIXES, data.storage_options)]
    described = []
    for path in files:
        fs, inner = filesystem(path, data.storage_options)
        described.append({"path": path, "size": fs.size(inner)})
    return described


def run(data: DataConfig, run_dir: str, task_resources: dict[str, float] | None = None) -> dict:
    """Run (or skip, when its manifest matches) the ingest stage; returns the manifest.

    ``task_resources``: custom resources the read and write tasks ask for (placement only).
    """
    import ray.data
    from ray.data.expressions import col

    files = input_files(data)
    if not files:
        raise FileNotFoundError(f"no training files ({', '.join(SUFFIXES)}) under {data.train}")
    stage_fingerprint = manifest.fingerprint({"files": files, "data": fingerprint_view(data)})
    if manifest.is_complete(run_dir, STAGE, stage_fingerprint, data.storage_options):
        return manifest.read_manifest(run_dir, STAGE, data.storage_options) | {"skipped": True}

    tagged = ray.data.from_items([{"path": f["path"]} for f in files], override_num_blocks=len(files))
    placement = task_options(task_resources or {})
    tagged = tagged.map_batches(ingest_files, batch_format="numpy", batch_size=1, fn_kwargs={
        "image_root": data.image_root, "limits": asdict(data.limits), "storage_options": data.storage_options,
    }, **placement).materialize()
    markers = tagged.filter(expr=col("row_index") == -1).to_pandas()
    rows = tagged.filter(expr=col("row_index") != -1)
    good = rows.filter(expr=col("quarantined") == False).select_columns(schemas.PAIR.names)  # noqa: E712
    bad = rows.filter(expr=col("quarantined") == True).select_columns(schemas.QUARANTINE.names)  # noqa: E712
    counts = _write_outputs(good, bad, run_dir, data.storage_options, placement)
    counts["input_rows"] = int(markers["input_rows"].sum())
    if counts["input_rows"] != counts["good_rows"] + counts["quarantined_rows"]:
        raise RuntimeError(f"ingest lost rows: {counts}")
    counts["per_source"] = {row.source: int(row.input_rows) for row in markers.itertuples()}
    return manifest.write_manifest(run_dir, STAGE, stage_fingerprint, {"rows": counts},
                                   data.storage_options) | {"skipped": False}


def _write_outputs(good, bad, run_dir: str, storage_options: dict, placement: dict) -> dict:
    counts = {}
    for name, dataset, key in (("pairs", good, "good_rows"), ("quarantine", bad, "quarantined_rows")):
        fs, inner = arrow_filesystem(join(run_dir, STAGE, name), storage_options)
        fs.delete_dir_contents(inner, missing_dir_ok=True)  # leftovers of a crashed attempt
        counts[key] = dataset.count()
        if counts[key]:
            dataset.write_parquet(inner, filesystem=fs, ray_remote_args=placement)
    return counts


def output_paths(run_dir: str) -> dict[str, str]:
    return {"pairs": join(run_dir, STAGE, "pairs"), "quarantine": join(run_dir, STAGE, "quarantine")}
