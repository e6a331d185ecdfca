"""Images referenced by rows: resolved against an image root, checked, decoded lazily."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from unime.data.storage import filesystem, is_remote, join


class ImageError(ValueError):
    """An image that cannot be used; the message is the quarantine reason."""


@dataclass
class ImageLimits:
    """What an acceptable image is. ``full_decode`` decodes every pixel at check time."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 64_000_000
    min_side: int = 1
    full_decode: bool = True


def resolve_image(image: str, image_root: str) -> str:
    """Absolute paths and URLs pass through; relative paths hang off ``image_root``."""
    if is_remote(image) or image.startswith("/") or not image_root:
        return image
    return join(image_root, image)


def _open(data: bytes, uri: str, limits: ImageLimits):
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image exceeds max_pixels={limits.max_pixels}: {uri} ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"cannot decode image {uri}: not a recognised image format") from exc
    except Exception as exc:
        raise ImageError(f"cannot decode image {uri}: {type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageError(f"image has zero size ({width}x{height}): {uri}")
    if min(width, height) < limits.min_side:
        raise ImageError(f"image side {min(width, height)} below min_side={limits.min_side}: {uri}")
    if width * height > limits.max_pixels:
        raise ImageError(f"image of {width}x{height} pixels exceeds max_pixels={limits.max_pixels}: {uri}")
    return image


def read_image_bytes(uri: str, limits: ImageLimits, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, inner = filesystem(uri, storage_options)
    try:
        size = fs.size(inner)
    except FileNotFoundError as exc:
        raise ImageError(f"image file not found: {uri}") from exc
    if size == 0:
        raise ImageError(f"image file is empty (0 bytes): {uri}")
    if size > limits.max_bytes:
        raise ImageError(f"image file of {size} bytes exceeds max_bytes={limits.max_bytes}: {uri}")
    with fs.open(inner, "rb") as handle:
        return handle.read()


def load_image(uri: str, limits: ImageLimits | None = None, storage_options: dict[str, Any] | None = None,
               keep_mode: bool = False):
    """Decode an image to RGB (or, with ``keep_mode``, in its own mode: RGBA, palette, ..., for
    an input recipe that resizes before converting), or raise :class:`ImageError` saying why
    it is unusable."""
    limits = limits or ImageLimits()
    image = _open(read_image_bytes(uri, limits, storage_options), uri, limits)
    try:
        # decoded now (truncated data fails here, naming the file) and detached from the file
        return image.copy() if keep_mode else image.convert("RGB")
    except Exception as exc:  # truncated or corrupt pixel data surfaces only on decode
        raise ImageError(f"cannot decode image {uri}: {type(exc).__name__}: {exc}") from exc


def check_image(uri: str, limits: ImageLimits, storage_options: dict[str, Any] | None = None) -> str | None:
    """The reason ``uri`` is unusable, or None. Reads only the header unless ``full_decode``."""
    try:
        if limits.full_decode:
            load_image(uri, limits, storage_options)
        else:
            _open(read_image_bytes(uri, limits, storage_options), uri, limits)
    except ImageError as exc:
        return str(exc)
    return None


class ImageChecker:
    """Checks each distinct image once (corpora reference the same image many times)."""

    def __init__(self, image_root: str, limits: ImageLimits, storage_options: dict[str, Any] | None = None):
        self.image_root, self.limits, self.storage_options = image_root, limits, storage_options
        self._reasons: dict[str, str | None] = {}

    def problem(self, image: str) -> str | None:
        if not image:
            return None
        if image not in self._reasons:
            uri = resolve_image(image, self.image_root)
            self._reasons[image] = check_image(uri, self.limits, self.storage_options)
        return self._reasons[image]
