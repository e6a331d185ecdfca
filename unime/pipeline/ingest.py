"""Ingest stage: read training pairs with Ray Data, validate rows and images, quarantine the bad.

Each input file is parsed and checked by one Ray task (:func:`ingest_files`, a pure function
over a batch of file paths); good rows go to ``<run_dir>/ingest/pairs/`` and rejected rows to
``<run_dir>/ingest/quarantine/``, both parquet. A good row whose ``(dataset, query_id, pos_id)``
equals an earlier one's is a duplicate: it is quarantined (field ``<row>``, reason
``duplicate of <source> row <row_index>``), so each pair is written once. "Earlier" is the
stable read order (file order, then row order), decided once for all files, not per task:
see :func:`find_duplicates`. The manifest records input rows, good rows, quarantined rows
(duplicates included) and duplicates, and the stage refuses to finish unless they reconcile.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unime.config import DataConfig, PipelineConfig, fingerprint_view
from unime.data import schemas
from unime.data.images import ImageChecker, ImageLimits
from unime.data.readers import SUFFIXES, read_rows
from unime.data.records import ROW
from unime.data.storage import arrow_filesystem, filesystem, join, list_files
from unime.pipeline.common import task_options
from unime.pipeline.stage import Context, Stage, run_stage

STAGE = "ingest"
# Two good rows with the same values here are the same training pair.
DUPLICATE_KEY = ("dataset", "query_id", "pos_id")
STATUS_FIELDS = [("quarantined", pa.bool_()), ("field", pa.string()), ("reason", pa.string()),
                 ("input_rows", pa.int64()), ("file_index", pa.int64())]
INGEST_SCHEMA = pa.schema(list(schemas.PAIR) + [pa.field(n, t) for n, t in STATUS_FIELDS])
# Where a row stands in the read order: (index of its file in the stage's file list, row index).
Position = tuple[int, int]


def ingest_files(batch: dict, image_root: str, limits: dict, storage_options: dict) -> pa.Table:
    """Parse and validate the files named in ``batch["path"]``: good and quarantined rows, tagged.

    ``batch["file_index"]`` (default: the position in the batch) is each file's place in the
    stage's file list; every row carries it, so duplicates can be ordered across files.
    """
    checker = ImageChecker(image_root, ImageLimits(**limits), storage_options)
    file_indices = batch.get("file_index", range(len(batch["path"])))
    rows = []
    for path, file_index in zip(batch["path"], file_indices):
        result = read_rows(str(path), "pairs", storage_options=storage_options, checker=checker)
        tag = {"input_rows": 0, "file_index": int(file_index)}
        rows += [{**row, "quarantined": False, **tag} for row in result.rows]
        rows += [{**q, "quarantined": True, **tag} for q in result.quarantine]
        # One marker row per file carries its input row count, so the driver can reconcile.
        rows.append({"source": str(path), "row_index": -1, "quarantined": False, "input_rows": result.input_rows,
                     "file_index": int(file_index)})
    return pa.Table.from_pylist(rows, schema=INGEST_SCHEMA)


def find_duplicates(keys: pa.Table) -> dict[Position, Position]:
    """Every good row that repeats an earlier row's :data:`DUPLICATE_KEY`, mapped to that row.

    ``keys``: the key columns plus ``file_index`` and ``row_index`` of all good rows, from
    all files, in any order (the result depends on none: the first occurrence is the
    smallest ``(file_index, row_index)``). Returns ``{duplicate: first occurrence}``.
    """
    if not keys.num_rows:
        return {}
    ordered = keys.select([*DUPLICATE_KEY, "file_index", "row_index"]).sort_by(
        [("file_index", "ascending"), ("row_index", "ascending")])
    ordered = ordered.append_column("order", pa.array(np.arange(ordered.num_rows, dtype=np.int64)))
    firsts = ordered.group_by(list(DUPLICATE_KEY), use_threads=False).aggregate([("order", "min")])
    joined = ordered.join(firsts, list(DUPLICATE_KEY), use_threads=False)
    repeats = joined.filter(pc.not_equal(joined["order"], joined["order_min"])).sort_by("order")
    first_rows = ordered.take(repeats["order_min"])
    return {(int(f), int(r)): (int(first_f), int(first_r)) for f, r, first_f, first_r in zip(
        repeats["file_index"].to_pylist(), repeats["row_index"].to_pylist(),
        first_rows["file_index"].to_pylist(), first_rows["row_index"].to_pylist())}


def mark_duplicates(batch: pa.Table, duplicates: dict[Position, Position], sources: list[str]) -> pa.Table:
    """``batch`` (tagged rows, as :func:`ingest_files` returns) with each duplicate turned into
    a quarantine row naming its first occurrence; ``sources[i]`` is file ``i``'s path."""
    positions = zip(batch["file_index"].to_pylist(), batch["row_index"].to_pylist())
    firsts = [duplicates.get(position) for position in positions]
    if not any(firsts):
        return batch
    is_duplicate = pa.array([first is not None for first in firsts])
    reasons = pa.array([None if first is None else f"duplicate of {sources[first[0]]} row {first[1]}"
                        for first in firsts], pa.string())
    updated = {"quarantined": pc.or_(batch["quarantined"], is_duplicate),
               "field": pc.if_else(is_duplicate, ROW, batch["field"]),
               "reason": pc.if_else(is_duplicate, reasons, batch["reason"])}
    for name, column in updated.items():
        batch = batch.set_column(batch.schema.get_field_index(name), name, column)
    return batch


def reconcile(input_rows: int, key_rows: int, good_rows: int, quarantined_rows: int, duplicates: int) -> None:
    """Raise unless every input row is written once: good or quarantined (duplicates included)."""
    if input_rows != good_rows + quarantined_rows or good_rows != key_rows - duplicates:
        raise RuntimeError(f"ingest lost rows: input_rows={input_rows}, good_rows={good_rows}, "
                           f"quarantined_rows={quarantined_rows} (duplicates={duplicates} of "
                           f"{key_rows} valid rows)")


def input_files(data: DataConfig) -> list[dict]:
    return describe_files(data.train, data.storage_options)


def describe_files(roots: list[str], storage_options: dict | None = None) -> list[dict]:
    """Every training file under ``roots`` (file order is row order downstream), with its size."""
    files = [p for root in roots for p in list_files(root, SUFFIXES, storage_options)]
    described = []
    for path in files:
        fs, inner = filesystem(path, storage_options)
        described.append({"path": path, "size": fs.size(inner)})
    return described


def fingerprint_payload(config: PipelineConfig) -> dict:
    data = config.data
    files = input_files(data)
    if not files:
        raise FileNotFoundError(f"no training files ({', '.join(SUFFIXES)}) under {data.train}")
    return {"files": files, "data": fingerprint_view(data), "duplicate_key": list(DUPLICATE_KEY)}


def build(context: Context) -> dict:
    """The stage's work: every input row written once, good or quarantined; the counts."""
    import ray.data
    from ray.data.expressions import col

    config = context.config
    data, run_dir = config.data, config.run_dir
    sources = [described["path"] for described in context.payload["files"]]  # listed once, for the fingerprint
    items = [{"path": path, "file_index": index} for index, path in enumerate(sources)]
    tagged = ray.data.from_items(items, override_num_blocks=len(sources))
    # custom resources the read and write tasks ask for (placement only)
    placement = task_options(config.ray.data_task_resources or {})
    tagged = tagged.map_batches(ingest_files, batch_format="numpy", batch_size=1, fn_kwargs={
        "image_root": data.image_root, "limits": asdict(data.limits), "storage_options": data.storage_options,
    }, **placement).materialize()
    markers = tagged.filter(expr=col("row_index") == -1).to_pandas()
    rows = tagged.filter(expr=col("row_index") != -1)
    # Duplicates are decided here, once, over the keys of every file's good rows (small columns
    # only): a per-task decision would miss repeats across files and depend on block layout.
    key_columns = [*DUPLICATE_KEY, "file_index", "row_index"]
    valid = rows.filter(expr=col("quarantined") == False, **placement)  # noqa: E712
    keys = _collect(valid.select_columns(key_columns))
    duplicates = find_duplicates(keys)
    if duplicates:
        rows = rows.map_batches(mark_duplicates, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"duplicates": duplicates, "sources": sources}, **placement).materialize()
    good = rows.filter(expr=col("quarantined") == False).select_columns(schemas.PAIR.names)  # noqa: E712
    bad = rows.filter(expr=col("quarantined") == True).select_columns(schemas.QUARANTINE.names)  # noqa: E712
    counts = _write_outputs(good, bad, run_dir, data.storage_options, placement)
    counts["input_rows"] = int(markers["input_rows"].sum())
    counts["duplicates"] = len(duplicates)
    reconcile(counts["input_rows"], keys.num_rows, counts["good_rows"], counts["quarantined_rows"],
              counts["duplicates"])
    counts["per_source"] = {row.source: int(row.input_rows) for row in markers.itertuples()}
    return {"rows": counts}


stage = Stage(STAGE, build, fingerprint_payload)


def run(data: DataConfig, run_dir: str, task_resources: dict[str, float] | None = None) -> dict:
    """Run (or skip, when its manifest matches) the ingest stage on ``data`` alone; returns
    the manifest. ``task_resources``: custom resources the read and write tasks ask for."""
    config = PipelineConfig(run_dir=run_dir, data=data)
    config.ray.data_task_resources = dict(task_resources or {})
    return run_stage(stage, config)


def _collect(dataset) -> pa.Table:
    """A Ray dataset's rows as one Arrow table on the driver (empty with no rows)."""
    import ray

    tables = [t for t in ray.get(dataset.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else pa.table({name: pa.array([], pa.string())
                                                             for name in DUPLICATE_KEY})


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
