"""The released UniME-V2 mined-record JSON, read strictly and written byte-for-byte.

Users import the authors' released score files and export ours to their trainer, so the
writer reproduces a file's layout exactly: the detected JSON style (array or lines,
indentation, ASCII escaping, trailing newline), key order and number spelling. Numbers are
read as :class:`JsonNumber` (a float that keeps its source text, so ``0.50`` and ``2.5E-1``
are written back as spelled); everything else is written as :func:`json.dumps` writes it.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

import pyarrow as pa

from unime.data import schemas
from unime.data.readers import ReadResult, read_rows
from unime.data.records import MINED_FIELDS, JsonNumber, normalise_mined
from unime.data.storage import read_bytes, write_bytes


@dataclass(frozen=True)
class JsonStyle:
    lines: bool = False  # JSONL instead of one JSON array
    indent: int | str | None = 4  # as json.dumps takes it: spaces per level, or the level's own string
    ensure_ascii: bool = False
    trailing_newline: bool = True


def detect_style(text: str, lines: bool) -> JsonStyle:
    ensure_ascii = "\\u" in text and text.isascii()
    trailing = text.endswith("\n")
    if lines:
        return JsonStyle(lines=True, indent=None, ensure_ascii=ensure_ascii, trailing_newline=trailing)
    # json.dumps writes no raw newline inside a compact array, and with an indent puts the
    # first element on the second line, one indent deep.
    rows = text.split("\n", 2)
    indent: int | str | None = None
    if len(rows) > 1 and rows[1].strip():
        unit = rows[1][:len(rows[1]) - len(rows[1].lstrip())]
        indent = len(unit) if unit.strip(" ") == "" else unit
    return JsonStyle(indent=indent, ensure_ascii=ensure_ascii, trailing_newline=trailing)


_CONSTANTS = {None: "null", True: "true", False: "false"}


def _plain_number(value: int | float) -> str:
    """A number as json.dumps spells it."""
    if isinstance(value, int):
        return int.__repr__(value)
    return float.__repr__(value) if math.isfinite(value) else json.dumps(float(value))  # NaN, Infinity


def _key(key: Any) -> str:
    """A dict key as json.dumps turns it into a string."""
    if isinstance(key, str):
        return key
    if key is None or key is True or key is False:
        return _CONSTANTS[key]
    if isinstance(key, (int, float)):
        return _plain_number(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def to_json(value: Any, *, indent: int | str | None = None, ensure_ascii: bool = True) -> str:
    """``json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)``, except that a
    :class:`JsonNumber` is written as its source text."""
    string = encode_basestring_ascii if ensure_ascii else encode_basestring
    unit = None if indent is None else indent if isinstance(indent, str) else " " * indent
    item_separator = ", " if unit is None else ","
    parts: list[str] = []

    def emit(item: Any, level: int) -> None:
        if isinstance(item, str):
            parts.append(string(item))
        elif item is None or item is True or item is False:
            parts.append(_CONSTANTS[item])
        elif isinstance(item, JsonNumber):
            parts.append(item.text)
        elif isinstance(item, (int, float)):
            parts.append(_plain_number(item))
        elif isinstance(item, (list, tuple, dict)):
            if not item:
                parts.append("{}" if isinstance(item, dict) else "[]")
                return
            is_dict = isinstance(item, dict)
            inner = "" if unit is None else "\n" + unit * (level + 1)
            parts.append(("{" if is_dict else "[") + inner)
            for k, element in enumerate(item.items() if is_dict else item):
                if k:
                    parts.append(item_separator + inner)
                if is_dict:
                    parts.append(string(_key(element[0])) + ": ")
                    element = element[1]
                emit(element, level + 1)
            parts.append(("" if unit is None else "\n" + unit * level) + ("}" if is_dict else "]"))
        else:
            raise TypeError(f"Object of type {type(item).__name__} is not JSON serializable")

    emit(value, 0)
    return "".join(parts)


def dumps(records: list[dict], style: JsonStyle = JsonStyle()) -> str:
    if style.lines:
        text = "\n".join(to_json(r, ensure_ascii=style.ensure_ascii) for r in records)
    else:
        text = to_json(records, indent=style.indent, ensure_ascii=style.ensure_ascii)
    return text + ("\n" if style.trailing_newline else "")


def read_mined(path: str, image_root: str = "", storage_options: dict[str, Any] | None = None,
               expected_negatives: int | None = None, **read_kwargs) -> tuple[list[dict], JsonStyle, ReadResult]:
    """Records (as parsed, key order and number spelling kept), the file's style, and the
    validation result: a row that breaks the format (see :func:`normalise_mined`; with
    ``expected_negatives``, a row without exactly that many hard negatives) is quarantined."""
    result = read_rows(path, "mined", image_root=image_root, storage_options=storage_options,
                       normalise=functools.partial(normalise_mined, expected_negatives=expected_negatives),
                       parse_number=JsonNumber, **read_kwargs)
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
