"""Images referenced by rows: resolved against an image root, checked, decoded lazily."""

from __future__ import annotations

import io
import os
import posixpath
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
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
    # absolute paths and URLs (s3://...) in rows; off, every image must lie under the image root
    allow_absolute_paths: bool = False


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def resolve_image(image: str, image_root: str, allow_absolute: bool = False) -> str:
    """Where a row's image lives: a relative path hangs off ``image_root`` (the working
    directory when empty) and must stay under it, after ``..`` and, locally, after symlinks.
    Absolute paths and URLs are refused (:class:`ImageError`) unless ``allow_absolute``; an
    allowed one passes through as written."""
    if "\x00" in image:
        raise ImageError(f"image path holds a NUL byte: {image!r}")
    absolute = image.startswith(("/", "\\")) or bool(_SCHEME.match(image))
    if absolute:
        if not allow_absolute:
            raise ImageError(f"image path {image!r} is absolute or a URL; images must lie under the image root "
                             "(data.limits.allow_absolute_paths: true reads such paths)")
        return image
    root = image_root or os.getcwd()
    resolved = join(root, image)
    if not inside(resolved, root):
        raise ImageError(f"image path {image!r} leaves the image root {root}")
    return resolved


def inside(path: str, root: str) -> bool:
    """``path`` under ``root``, ``..`` collapsed; for local paths after resolving symlinks."""
    if is_remote(root):
        rest = root.partition("://")[2]
        inner = path.partition("://")[2]
        return _under(posixpath.normpath("/" + inner), posixpath.normpath("/" + rest))
    return _under(os.path.realpath(path), os.path.realpath(root))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


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
            try:
                uri = resolve_image(image, self.image_root, self.limits.allow_absolute_paths)
            except ImageError as exc:
                self._reasons[image] = str(exc)
            else:
                self._reasons[image] = check_image(uri, self.limits, self.storage_options)
        return self._reasons[image]


def image_bytes(image) -> int:
    """Memory a decoded PIL image holds (pixels x bands; palette images one byte a pixel)."""
    return image.width * image.height * len(image.getbands())


class ImageCache:
    """Decoded images by path, each loaded once and kept while they fit in ``max_bytes``
    (least recently used first out): a query's image recurs in all its ~51 judge pairs, a
    candidate in many queries' pools.

    ``prepare`` runs once per image at load time, so what is kept is the image as the model
    stage consumes it (e.g. the recipe's 672x672 squash or its reranker budget fit), not a
    full-resolution decode; every recipe's resize is idempotent, so the stage may apply it
    again. Without ``prepare`` images keep their own mode (RGBA, palette, ...). Thread-safe:
    a prefetching thread may fill it while the step reads it.
    """

    def __init__(self, image_root: str, limits: ImageLimits, storage_options: dict[str, Any] | None = None,
                 max_bytes: int = 2 * 1024 ** 3, prepare: Callable[[Any], Any] | None = None):
        self.image_root, self.limits, self.storage_options = image_root, limits, storage_options
        self.max_bytes, self.prepare = max_bytes, prepare
        self._images: OrderedDict[str, Any] = OrderedDict()
        self._bytes, self._lock = 0, threading.Lock()

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def get(self, image: str | None):
        if not image:
            return None
        with self._lock:
            if image in self._images:
                self._images.move_to_end(image)
                return self._images[image]
        uri = resolve_image(image, self.image_root, self.limits.allow_absolute_paths)
        loaded = load_image(uri, self.limits, self.storage_options, keep_mode=True)
        loaded = self.prepare(loaded) if self.prepare else loaded
        self._keep(image, loaded)
        return loaded

    def _keep(self, key: str, image) -> None:
        size = image_bytes(image)
        with self._lock:
            if key in self._images or size > self.max_bytes:
                return
            self._images[key] = image
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._images.popitem(last=False)
                self._bytes -= image_bytes(evicted)
