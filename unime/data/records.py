"""Row normalisation and validation for pairs, mined records and eval rows.

Each ``normalise_*`` takes one raw row (a dict from JSON, JSONL or parquet) and returns
the canonical row, or raises :class:`RowError` naming the offending field. Readers turn
those errors into quarantine rows, so input rows = good rows + quarantined rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from unime.data.ids import item_id
from unime.prompts import strip_image_placeholders

ROW = "<row>"  # the field name for problems with a row as a whole
_SURROGATES = re.compile("[\ud800-\udfff]")

# MMEB-train field names -> UniME-V2 names.
PAIR_ALIASES = {"qry": "query_text", "qry_image_path": "query_image", "pos_image_path": "pos_image"}
MINED_FIELDS = ("query_text", "query_image", "pos_text", "pos_image", "query_pos_scores", "hard_negatives",
                "hard_negatives_scores")


class RowError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class JsonNumber(float):
    """A JSON number that remembers its source spelling (``0.50``, ``2.5E-1``, ``1``, ``NaN``).

    It is a float everywhere (arithmetic returns plain floats, ``float(x)`` a plain copy);
    only the mined-record writer and quarantine reasons look at :attr:`text`, the writer to
    write the number back exactly as it was read.
    """

    __slots__ = ("text",)

    def __new__(cls, text: str) -> JsonNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __reduce__(self):
        return JsonNumber, (self.text,)


def _type_name(value: Any) -> str:
    return "number" if isinstance(value, JsonNumber) else type(value).__name__


def as_text(value: Any, field: str) -> str:
    """A UTF-8 string field; None means empty. Bytes are decoded strictly."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowError(field, f"text is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if not isinstance(value, str):
        raise RowError(field, f"expected a string, got {_type_name(value)}")
    if _SURROGATES.search(value):
        raise RowError(field, "text is not valid UTF-8")
    return value


def _required(raw: dict, field: str) -> Any:
    if field not in raw:
        raise RowError(field, "missing field")
    return raw[field]


def _is_empty(text: str, image: str) -> bool:
    return not strip_image_placeholders(text) and not image


def _require_query_and_positive(row: dict, error: Callable[[str, str], RowError]) -> None:
    """A pair needs a query and a positive, each a text or an image; ``error`` builds the
    row's error for the field at fault."""
    if _is_empty(row["query_text"], row["query_image"]):
        raise error("query_text", "empty query: no text and no image")
    if _is_empty(row["pos_text"], row["pos_image"]):
        raise error("pos_text", "empty positive: no text and no image")


def normalise_pair(raw: Any, dataset: str) -> dict:
    """A training pair in UniME-V2 names, with content ids for the query and its positive."""
    if not isinstance(raw, dict):
        raise RowError(ROW, f"expected an object, got {type(raw).__name__}")
    raw = {PAIR_ALIASES.get(k, k): v for k, v in raw.items()}
    row = {f: as_text(_required(raw, f), f) for f in ("query_text", "pos_text")}
    row.update({f: as_text(raw.get(f), f) for f in ("query_image", "pos_image")})
    _require_query_and_positive(row, RowError)
    row["dataset"] = as_text(raw.get("dataset"), "dataset") or dataset
    row["query_id"] = item_id(row["query_text"], row["query_image"])
    row["pos_id"] = item_id(row["pos_text"], row["pos_image"])
    return row


def _show(value: Any) -> str:
    """A value as a quarantine reason quotes it (numbers by their source spelling)."""
    shown = value.text if isinstance(value, JsonNumber) else repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _bad(path: str, problem: str) -> RowError:
    """The error for the value at ``path`` (``hard_negatives[2][1]``): its field is the column."""
    return RowError(path.split("[")[0], f"{path}: {problem}")


def _unit_score(value: Any, path: str) -> None:
    """A judge score: a real number (not a bool), finite, in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, f"expected a number, got {_type_name(value)} {_show(value)}")
    if not math.isfinite(value):
        raise _bad(path, f"{_show(value)} is not a finite number")
    if not 0 <= value <= 1:
        raise _bad(path, f"{_show(value)} is outside [0, 1]")


def _mined_field(raw: dict, field: str) -> Any:
    if field not in raw:
        raise _bad(field, "missing field")
    return raw[field]


def _mined_text(value: Any, path: str) -> str:
    try:
        return as_text(value, path)
    except RowError as err:
        raise _bad(path, err.reason) from err


def normalise_mined(raw: Any, expected_negatives: int | None = None) -> dict:
    """A released-format mined record, validated; values are returned as given (no coercion).

    Text fields are strings (null reads as empty); the query and the positive each have a
    text or an image; ``hard_negatives`` is a non-empty list of ``[text, image]`` pairs
    (exactly ``expected_negatives`` of them when given), none empty, with one
    ``hard_negatives_scores`` entry each; every score is a real number in [0, 1]. The
    error's field is the column at fault; its reason starts with the exact place
    (``hard_negatives_scores[3]: 7.5 is outside [0, 1]``).
    """
    if not isinstance(raw, dict):
        raise RowError(ROW, f"expected an object, got {type(raw).__name__}")
    text = {f: _mined_text(_mined_field(raw, f), f) for f in ("query_text", "pos_text")}
    text.update({f: _mined_text(raw.get(f), f) for f in ("query_image", "pos_image")})
    _require_query_and_positive(text, _bad)
    _unit_score(_mined_field(raw, "query_pos_scores"), "query_pos_scores")
    negatives, scores = _mined_field(raw, "hard_negatives"), _mined_field(raw, "hard_negatives_scores")
    if not isinstance(negatives, list):
        raise _bad("hard_negatives", f"expected a list, got {_type_name(negatives)}")
    if not negatives:
        raise _bad("hard_negatives", "empty list; expected at least 1 hard negative")
    if expected_negatives is not None and len(negatives) != expected_negatives:
        raise _bad("hard_negatives", f"{len(negatives)} hard negatives, expected {expected_negatives}")
    for k, pair in enumerate(negatives):
        if not isinstance(pair, list) or len(pair) != 2:
            got = f"{len(pair)} elements" if isinstance(pair, list) else _type_name(pair)
            raise _bad(f"hard_negatives[{k}]", f"expected a [text, image] pair, got {got}")
        if _is_empty(_mined_text(pair[0], f"hard_negatives[{k}][0]"), _mined_text(pair[1], f"hard_negatives[{k}][1]")):
            raise _bad(f"hard_negatives[{k}]", "empty hard negative: no text and no image")
    if not isinstance(scores, list):
        raise _bad("hard_negatives_scores", f"expected a list, got {_type_name(scores)}")
    if len(scores) != len(negatives):
        raise _bad("hard_negatives_scores", f"{len(scores)} scores for {len(negatives)} hard negatives; "
                                            "expected one each")
    for k, score in enumerate(scores):
        _unit_score(score, f"hard_negatives_scores[{k}]")
    return raw


def normalise_eval(raw: Any, dataset: str) -> dict:
    """An MMEB-eval row: query plus its own candidate list, the positive at index 0."""
    if not isinstance(raw, dict):
        raise RowError(ROW, f"expected an object, got {type(raw).__name__}")
    row = {"qry_text": as_text(_required(raw, "qry_text"), "qry_text"),
           "qry_img_path": as_text(raw.get("qry_img_path"), "qry_img_path")}
    for field in ("tgt_text", "tgt_img_path"):
        values = _required(raw, field)
        if not isinstance(values, (list, tuple)):
            raise RowError(field, f"expected a list, got {type(values).__name__}")
        row[field] = [as_text(v, field) for v in values]
    if not row["tgt_text"]:
        raise RowError("tgt_text", "no candidates")
    if len(row["tgt_text"]) != len(row["tgt_img_path"]):
        raise RowError("tgt_img_path", f"{len(row['tgt_img_path'])} image paths for {len(row['tgt_text'])} texts")
    if _is_empty(row["qry_text"], row["qry_img_path"]):
        raise RowError("qry_text", "empty query: no text and no image")
    row["dataset"] = dataset
    return row


def normalise_global(raw: Any) -> dict:
    """A global image-text retrieval row: a caption and the image it describes."""
    if not isinstance(raw, dict):
        raise RowError(ROW, f"expected an object, got {type(raw).__name__}")
    row = {"caption": as_text(_required(raw, "caption"), "caption"), "image": as_text(_required(raw, "image"), "image")}
    if not row["caption"].strip():
        raise RowError("caption", "empty caption")
    if not row["image"]:
        raise RowError("image", "empty image path")
    return row


def image_fields(kind: str, row: dict) -> list[tuple[str, str]]:
    """(field, image path) for every image a canonical row references."""
    if kind == "pairs":
        return [("query_image", row["query_image"]), ("pos_image", row["pos_image"])]
    if kind == "global":
        return [("image", row["image"])]
    if kind == "mined":
        pairs = [("query_image", row.get("query_image") or ""), ("pos_image", row.get("pos_image") or "")]
        return pairs + [("hard_negatives", pair[1] or "") for pair in row["hard_negatives"]]
    return [("qry_img_path", row["qry_img_path"])] + [("tgt_img_path", p) for p in row["tgt_img_path"]]
