"""Readers and writers for pairs, mined records and MMEB-eval rows: JSON, JSONL, parquet,
local or ``s3://``. Bad rows are quarantined with a reason; a corrupt file fails naming it.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from unime.data import schemas
from unime.data.images import ImageChecker, ImageError, ImageLimits, resolve_image
from unime.data.records import (
    ROW,
    RowError,
    image_fields,
    normalise_eval,
    normalise_global,
    normalise_mined,
    normalise_pair,
)
from unime.data.storage import list_files, open_file, read_bytes

SUFFIXES = (".parquet", ".jsonl", ".json")
_SHARD_STEM = re.compile(r"^(train|test|validation|val|original|diverse_instruction)([-_.].*)?$")


class CorruptFileError(ValueError):
    """A whole input file is unreadable; the message names the file."""


@dataclass
class ReadResult:
    """Good canonical rows and quarantine rows of one or more sources."""

    rows: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    input_rows: int = 0

    def extend(self, other: ReadResult) -> None:
        self.rows += other.rows
        self.quarantine += other.quarantine
        self.input_rows += other.input_rows

    def quarantine_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.quarantine, schema=schemas.QUARANTINE)


def dataset_name(path: str) -> str:
    """``.../DocVQA/train-00000.parquet`` -> DocVQA; ``.../DocVQA.jsonl`` -> DocVQA."""
    stem = posixpath.basename(path).split(".")[0]
    return posixpath.basename(posixpath.dirname(path)) if _SHARD_STEM.match(stem) else stem


def _decode(data: bytes) -> str:
    # surrogateescape keeps invalid UTF-8 bytes visible to the per-field check instead of
    # failing the whole file.
    return data.decode("utf-8", "surrogateescape")


def iter_raw_rows(path: str, storage_options: dict[str, Any] | None = None,
                  parse_number: Callable[[str], Any] | None = None) -> Iterator[tuple[int, Any]]:
    """(row index, raw row or RowError) for every row of a JSON, JSONL or parquet file.

    ``parse_number`` turns each JSON number's source text into its value: ints, floats and
    ``NaN`` / ``Infinity`` / ``-Infinity`` alike (the default: :func:`json.loads`'s own).
    """
    hooks = dict.fromkeys(("parse_float", "parse_int", "parse_constant"), parse_number) if parse_number else {}
    if path.endswith(".parquet"):
        try:
            table = pq.read_table(io.BytesIO(read_bytes(path, storage_options)))
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptFileError(f"{path}: not a readable parquet file ({exc})") from exc
        yield from enumerate(table.to_pylist())
    elif path.endswith(".jsonl"):
        yield from _iter_jsonl(path, read_bytes(path, storage_options), hooks)
    elif path.endswith(".json"):
        try:
            payload = json.loads(_decode(read_bytes(path, storage_options)), **hooks)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(payload, list):
            raise CorruptFileError(f"{path}: expected a JSON array of rows, got {type(payload).__name__}")
        yield from enumerate(payload)
    else:
        raise CorruptFileError(f"{path}: unknown format; expected one of {SUFFIXES}")


def _iter_jsonl(path: str, data: bytes, hooks: dict[str, Any]) -> Iterator[tuple[int, Any]]:
    """(row index, value) per non-blank line; the row index is the line's own (0-based: its
    line number minus one), so a quarantined row points at its line even after blank lines."""
    lines = [(index, line) for index, line in enumerate(data.split(b"\n")) if line.strip()]
    parsed = []
    for index, line in lines:
        try:
            parsed.append((index, json.loads(_decode(line), **hooks)))
        except json.JSONDecodeError as exc:
            parsed.append((index, RowError(ROW, f"malformed JSON: {exc.msg} at column {exc.colno}")))
    if lines and all(isinstance(value, RowError) for _, value in parsed):
        raise CorruptFileError(f"{path}: no line parses as JSON; not a JSONL file")
    yield from parsed


def read_rows(path: str, kind: str, image_root: str = "", limits: ImageLimits | None = None,
              storage_options: dict[str, Any] | None = None, checker: ImageChecker | None = None,
              check_images: bool = True, normalise: Callable[[Any], dict] | None = None,
              parse_number: Callable[[str], Any] | None = None) -> ReadResult:
    """Read one file of ``kind`` ("pairs", "mined", "eval" or "global"), validating rows and images.

    ``check_images=False`` validates rows only (e.g. converting a released score file
    whose images live elsewhere). ``normalise`` replaces the kind's row normaliser (e.g.
    :func:`normalise_mined` with a required number of hard negatives); ``parse_number``
    is passed to :func:`iter_raw_rows`.
    """
    dataset = dataset_name(path)
    normalise = normalise or {"pairs": lambda r: normalise_pair(r, dataset), "mined": normalise_mined,
                              "eval": lambda r: normalise_eval(r, dataset), "global": normalise_global}[kind]
    checker = checker or ImageChecker(image_root, limits or ImageLimits(), storage_options)
    result = ReadResult()
    for index, raw in iter_raw_rows(path, storage_options, parse_number):
        result.input_rows += 1
        try:
            if isinstance(raw, RowError):
                raise raw
            row = normalise(raw)
            for name, image in image_fields(kind, row) if check_images else []:
                if (reason := checker.problem(image)) is not None:
                    raise RowError(name, reason)
        except RowError as err:
            result.quarantine.append({"source": path, "row_index": index, "field": err.field, "reason": err.reason})
            continue
        if kind in ("pairs", "eval"):
            row.update(source=path, row_index=index)
        result.rows.append(row)
    return result


def read_many(paths: list[str] | str, kind: str, image_root: str = "", limits: ImageLimits | None = None,
              storage_options: dict[str, Any] | None = None) -> ReadResult:
    """Read every file under ``paths`` (files or folders), sharing one image check cache."""
    checker = ImageChecker(image_root, limits or ImageLimits(), storage_options)
    result = ReadResult()
    for root in [paths] if isinstance(paths, str) else paths:
        for path in list_files(root, SUFFIXES, storage_options):
            result.extend(read_rows(path, kind, storage_options=storage_options, checker=checker))
    return result


def named_images(paths: list[str] | str, kind: str, image_root: str = "", limits: ImageLimits | None = None,
                 storage_options: dict[str, Any] | None = None) -> list[str]:
    """Where every image the rows under ``paths`` name lives (rows parsed, images not opened),
    for a version of what a stage reads; a path that cannot be resolved is left to the
    stage's own check, which quarantines its row."""
    limits = limits or ImageLimits()
    located = set()
    for root in [paths] if isinstance(paths, str) else paths:
        for path in list_files(root, SUFFIXES, storage_options):
            for row in read_rows(path, kind, storage_options=storage_options, check_images=False).rows:
                for image in (image for _, image in image_fields(kind, row) if image):
                    with contextlib.suppress(ImageError):
                        located.add(resolve_image(image, image_root, limits.allow_absolute_paths))
    return sorted(located)


def read_pairs(paths, image_root: str = "", limits: ImageLimits | None = None,
               storage_options: dict[str, Any] | None = None) -> tuple[pa.Table, ReadResult]:
    """Training pairs (MMEB-train or UniME-V2 names) as a :data:`schemas.PAIR` table."""
    result = read_many(paths, "pairs", image_root, limits, storage_options)
    return pa.Table.from_pylist(result.rows, schema=schemas.PAIR), result


def read_eval(eval_dir: str, subsets: list[str] | None = None, image_root: str = "",
              limits: ImageLimits | None = None, storage_options: dict[str, Any] | None = None
              ) -> tuple[dict[str, pa.Table], ReadResult]:
    """MMEB-eval subsets (``<eval_dir>/<Subset>/test-*.parquet``) as :data:`schemas.EVAL` tables."""
    result = read_many(eval_dir, "eval", image_root, limits, storage_options)
    tables: dict[str, list[dict]] = {}
    for row in result.rows:
        if subsets is None or row["dataset"] in subsets:
            tables.setdefault(row["dataset"], []).append(row)
    missing = sorted(set(subsets or []) - set(tables))
    if missing:
        raise FileNotFoundError(f"eval subsets not found under {eval_dir}: {missing}")
    return {name: pa.Table.from_pylist(rows, schema=schemas.EVAL) for name, rows in sorted(tables.items())}, result


def write_table(table: pa.Table, path: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write parquet, JSONL or JSON by the path's suffix."""
    with open_file(path, "wb", storage_options) as handle:
        if path.endswith(".parquet"):
            pq.write_table(table, handle)
        elif path.endswith(".jsonl"):
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()).encode())
        elif path.endswith(".json"):
            handle.write(json.dumps(table.to_pylist(), ensure_ascii=False, indent=2).encode() + b"\n")
        else:
            raise ValueError(f"{path}: unknown format; expected one of {SUFFIXES}")
