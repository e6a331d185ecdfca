"""The data layer: schemas, stable ids, readers and writers, images, quarantine."""

from unime.data.ids import item_id
from unime.data.images import ImageError, ImageLimits, load_image, resolve_image
from unime.data.mined import JsonStyle, mined_table, read_mined, write_mined
from unime.data.readers import (
    CorruptFileError,
    ReadResult,
    read_eval,
    read_many,
    read_pairs,
    read_rows,
    write_table,
)
from unime.data.records import RowError

__all__ = [
    "CorruptFileError",
    "ImageError",
    "ImageLimits",
    "JsonStyle",
    "ReadResult",
    "RowError",
    "item_id",
    "load_image",
    "mined_table",
    "read_eval",
    "read_many",
    "read_mined",
    "read_pairs",
    "read_rows",
    "resolve_image",
    "write_mined",
    "write_table",
]
