"""The order items are embedded in: shortest input first, so that each batch pads little.

The embed stage (training pairs) and the evaluation harness (eval rows) both sort their
item tables with :func:`by_input_length`, so one estimate decides both orders and an item
set sorts the same wherever it is embedded.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

IMAGE_LENGTH = 256  # characters an image weighs in the length estimate (a few hundred tokens)


def input_lengths(items: pa.Table) -> pa.Array:
    """The length estimate of each item: its text's characters, plus :data:`IMAGE_LENGTH`
    when it has an image (a non-empty ``image``; a null one counts as none)."""
    has_image = pc.fill_null(pc.not_equal(items["image"], ""), False)
    return pc.add(pc.utf8_length(items["text"]), pc.multiply(pc.cast(has_image, pa.int32()), IMAGE_LENGTH))


def by_input_length(items: pa.Table) -> pa.Table:
    """``items`` (``id, text, image, ...``) with a ``length`` column, shortest first; equal
    lengths in ``id`` order, so the order depends on the set of items, not on how they came."""
    with_length = items.append_column("length", input_lengths(items))
    return with_length.sort_by([("length", "ascending"), ("id", "ascending")])
