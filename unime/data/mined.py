"""The released UniME-V2 mined-record JSON, read and written byte-for-byte.

Users import the authors' released score files and export ours to their trainer, so the
writer reproduces a file's layout exactly: the detected JSON style (array or lines,
indentation, ASCII escaping, trailing newline), key order and number spelling (values
are kept as parsed, never coerced).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from unime.data import schemas
from unime.data.readers import ReadResult, read_rows
from unime.data.records import MINED_FIELDS
from unime.data.storage import read_bytes, write_bytes


@dataclass(frozen=True)
class JsonStyle:
    lines: bool = False  # JSONL instead of one JSON array
    indent: int | None = 4
    ensure_ascii: bool = False
    trailing_newline: bool = True


def detect_style(text: str, lines: bool) -> JsonStyle:
    ensure_ascii = "\\u" in text and text.isascii()
    trailing = text.endswith("\n")
    if lines:
        return JsonStyle(lines=True, indent=None, ensure_ascii=ensure_ascii, trailing_newline=trailing)
    rows = text.split("\n", 2)
    indent = len(rows[1]) - len(rows[1].lstrip(" ")) if len(rows) > 1 and rows[1].strip() else None
    return JsonStyle(indent=indent or None, ensure_ascii=ensure_ascii, trailing_newline=trailing)


def dumps(records: list[dict], style: JsonStyle = JsonStyle()) -> str:
    if style.lines:
        text = "\n".join(json.dumps(r, ensure_ascii=style.ensure_ascii) for r in records)
    else:
        text = json.dumps(records, indent=style.indent, ensure_ascii=style.ensure_ascii)
    return text + ("\n" if style.trailing_newline else "")


def read_mined(path: str, image_root: str = "", storage_options: dict[str, Any] | None = None,
               **read_kwargs) -> tuple[list[dict], JsonStyle, ReadResult]:
    """Records (as parsed, key order kept), the file's style, and the validation result."""
    result = read_rows(path, "mined", image_root=image_root, storage_options=storage_options, **read_kwargs)
    style = JsonStyle()
    if path.endswith((".json", ".jsonl")):
        text = read_bytes(path, storage_options).decode("utf-8", "surrogateescape")
        style = detect_style(text, lines=path.endswith(".jsonl"))
    return result.rows, style, result


def write_mined(records: list[dict], path: str, style: JsonStyle | None = None,
                storage_options: dict[str, Any] | None = None) -> None:
    """Write records in the released layout (``.json`` / ``.jsonl``) or as parquet."""
    if path.endswith(".parquet"):
        from unime.data.readers import write_table

        write_table(mined_table(records), path, storage_options)
        return
    style = style or JsonStyle(lines=path.endswith(".jsonl"), indent=None if path.endswith(".jsonl") else 4)
    write_bytes(path, dumps(records, style).encode("utf-8"), storage_options)


def mined_table(records: list[dict]) -> pa.Table:
    """Records as a :data:`schemas.MINED` table (scores as float64)."""
    columns = {name: [r.get(name) or ("" if name.endswith("image") else None) for r in records]
               for name in MINED_FIELDS}
    columns["query_pos_scores"] = [float(r["query_pos_scores"]) for r in records]
    columns["hard_negatives_scores"] = [[float(s) for s in r["hard_negatives_scores"]] for r in records]
    columns["hard_negatives"] = [[list(p) for p in r["hard_negatives"]] for r in records]
    return pa.table(columns, schema=schemas.MINED)
