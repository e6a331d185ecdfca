"""Stable content ids: the same (text, image) anywhere in any dataset is one item."""

from __future__ import annotations

import hashlib


def item_id(text: str | None, image: str | None) -> str:
    """16 hex chars of SHA-1 over text and image path (relative to the image root).

    Text and path are separated by a NUL byte, which neither can contain, so
    ("ab", "c") and ("a", "bc") never collide by construction.
    """
    payload = f"{text or ''}\x00{image or ''}".encode("utf-8", "surrogatepass")
    return hashlib.sha1(payload).hexdigest()[:16]
