"""HTTP request and response models, and input validation that turns bad input into 4xx.

Images arrive as base64 or ``data:`` URLs only: the server never fetches URLs or reads local
paths named in a request.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from pydantic import BaseModel, Field

from unime.config import ServeLimits

_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)


class InputError(ValueError):
    """Bad request content; the message goes back to the client with a 4xx."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Item(BaseModel):
    text: str | None = Field(default=None, description="text of the query or candidate")
    image: str | None = Field(default=None, description="image as base64 or a data: URL (no remote URLs)")


class EmbeddingsRequest(BaseModel):
    input: list[Item] = Field(description="items to embed")
    instruction: str | None = Field(default=None, description="task instruction prepended to each text")
    model: str | None = None


class SearchRequest(BaseModel):
    query: Item
    instruction: str | None = None
    top_k: int = 10
    rerank: bool = True
    rerank_k: int = 10
    rerank_mode: str | None = None


class RerankRequest(BaseModel):
    query: Item
    candidates: list[Item]
    mode: str | None = None


def decode_image(value: str, limits: ServeLimits, field: str = "image"):
    """base64 / data URL -> RGB PIL image, or :class:`InputError` naming the problem."""
    from PIL import Image

    if value.startswith(("http://", "https://", "file:", "/", "s3://", "gs://")):
        raise InputError(f"{field}: send the image as base64 or a data URL; URLs and paths are not fetched")
    payload = _DATA_URL.sub("", value, count=1)
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise InputError(f"{field}: image larger than max_image_bytes={limits.max_image_bytes}", 413)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{field}: not valid base64 ({exc})") from exc
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > limits.max_image_pixels:
            raise InputError(f"{field}: image of {width}x{height} exceeds max_image_pixels={limits.max_image_pixels}", 413)
        if max(width, height) > limits.max_image_aspect * min(width, height):
            raise InputError(f"{field}: image of {width}x{height}: its long side must be at most "
                             f"max_image_aspect={limits.max_image_aspect:g} times its short side")
        return image.convert("RGB")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{field}: cannot decode image ({type(exc).__name__})") from exc


def check_item(item: Item, limits: ServeLimits, field: str, instruction: str | None = None) -> tuple[str, object]:
    """(text, PIL image or None) for an item, or :class:`InputError`. ``max_text_chars``
    bounds the text the model reads: the instruction, when given, counts."""
    text = item.text or ""
    if len(text) > limits.max_text_chars:
        raise InputError(f"{field}.text: longer than max_text_chars={limits.max_text_chars}", 413)
    image = decode_image(item.image, limits, f"{field}.image") if item.image else None
    if not text.strip() and image is None:
        raise InputError(f"{field}: empty: give text, an image or both")
    check_unicode(text, f"{field}.text")
    if instruction:
        check_unicode(instruction, "instruction")
        text = f"{instruction}\n{text}" if text else instruction
        if len(text) > limits.max_text_chars:
            raise InputError(f"instruction: with {field}.text, longer than max_text_chars={limits.max_text_chars}",
                             413)
    return text, image


def check_unicode(text: str, field: str) -> None:
    """JSON can carry lone surrogates (``"\\ud800"``), which no tokenizer encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{field}: not valid Unicode (a lone surrogate at character {exc.start})") from exc


def check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InputError(f"{name}: {value} is outside {low}..{high}")
