"""Local paths and object stores (``s3://``) through fsspec, one way for every reader and writer."""

from __future__ import annotations

import functools
import posixpath
from typing import Any

import fsspec
from fsspec.core import url_to_fs


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def filesystem(path: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``path`` and the path inside it.

    ``storage_options`` go to the filesystem, e.g. ``{"endpoint_url": ...}`` for an S3 API
    other than AWS (s3fs takes ``endpoint_url`` and credentials as ``key``/``secret``).
    """
    return url_to_fs(str(path), **(storage_options or {}))


# s3fs storage options -> pyarrow.fs.S3FileSystem arguments (what a native S3 client needs)
_S3_OPTIONS = {"key": "access_key", "secret": "secret_key", "token": "session_token", "anon": "anonymous"}


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str | None:
    """The AWS region holding ``bucket`` (s3fs follows region redirects; pyarrow's native client
    needs the region), or None when it cannot be found."""
    from pyarrow.fs import resolve_s3_region

    try:
        return resolve_s3_region(bucket)
    except Exception:  # no network, no permission: the client's default chain decides
        return None


def _native_s3(storage_options: dict[str, Any], bucket: str):
    """A pyarrow native S3 filesystem for s3fs-style options, or None if an option has no
    native equivalent (then the fsspec filesystem is wrapped instead)."""
    import os

    from pyarrow.fs import S3FileSystem

    options = dict(storage_options)
    client = dict(options.pop("client_kwargs", None) or {})
    endpoint = options.pop("endpoint_url", None) or client.pop("endpoint_url", None)
    region = client.pop("region_name", None)
    if client or set(options) - set(_S3_OPTIONS):
        return None
    arguments = {_S3_OPTIONS[k]: v for k, v in options.items()}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        arguments |= {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
    if not region and not endpoint and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        region = _bucket_region(bucket)
    if region:
        arguments["region"] = region
    return S3FileSystem(**arguments)


def arrow_filesystem(path: str, storage_options: dict[str, Any] | None = None):
    """(pyarrow filesystem, path inside it) for Ray Data and Ray Train: pyarrow's native S3
    client for ``s3://`` (parallel multipart uploads, no Python in the data path), fsspec's
    filesystem wrapped for any other store, the local filesystem for local paths."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if not is_remote(path):
        return LocalFileSystem(), str(path)
    fs, inner = filesystem(path, storage_options)
    native = _native_s3(storage_options or {}, inner.split("/", 1)[0]) if str(path).startswith("s3://") else None
    return (native, inner) if native is not None else (PyFileSystem(FSSpecHandler(fs)), inner)


def open_file(path: str, mode: str = "rb", storage_options: dict[str, Any] | None = None):
    fs, inner = filesystem(path, storage_options)
    if "w" in mode:
        parent = posixpath.dirname(inner)
        if parent:
            fs.makedirs(parent, exist_ok=True)
    return fs.open(inner, mode)


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URLs alike (forward slashes)."""
    base = str(base)
    return posixpath.join(base.rstrip("/") if base not in ("", "/") else base, *parts)


def exists(path: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, inner = filesystem(path, storage_options)
    return fs.exists(inner)


def list_files(path: str, suffixes: tuple[str, ...], storage_options: dict[str, Any] | None = None) -> list[str]:
    """``path`` itself if it is a file, else every file under it ending in one of ``suffixes``, sorted."""
    fs, inner = filesystem(path, storage_options)
    if not fs.exists(inner):
        raise FileNotFoundError(f"input not found: {path}")
    if fs.isfile(inner):
        return [str(path)]
    found = sorted(p for p in fs.find(inner) if p.endswith(suffixes))
    protocol = str(path).split("://", 1)[0] if is_remote(path) else None
    return [f"{protocol}://{p}" if protocol else p for p in found]


def file_stamp(info: dict) -> tuple:
    """What a listing entry says of a file's version: its size and its ETag, else its
    modification time (S3's ``LastModified`` or a local ``mtime``)."""
    return info.get("size"), str(info.get("ETag") or info.get("etag") or info.get("LastModified")
                                 or info.get("mtime") or "")


def listing_version(stamps: list) -> str:
    """A short hash of per-file stamps (:func:`file_stamp`, with each file's name)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(stamps, sort_keys=True).encode()).hexdigest()[:16]


def files_version(paths: list[str], storage_options: dict[str, Any] | None = None) -> str:
    """One version of many files (``missing`` for a file that is not there), listing each
    folder once rather than asking the store about every file, so thousands of images on S3
    cost one request a folder."""
    by_folder: dict[str, list[str]] = {}
    for path in sorted(set(paths)):
        by_folder.setdefault(posixpath.dirname(path), []).append(path)
    stamps = []
    for folder, members in by_folder.items():
        fs, inner = filesystem(folder, storage_options)
        try:
            listed = {posixpath.basename(entry["name"].rstrip("/")): entry for entry in fs.ls(inner, detail=True)}
        except FileNotFoundError:
            listed = {}
        for path in members:
            info = listed.get(posixpath.basename(path))
            stamps.append([path, "missing"] if info is None else [path, *file_stamp(info)])
    return listing_version(stamps)


def write_bytes(path: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    with open_file(path, "wb", storage_options) as handle:
        handle.write(data)


def read_bytes(path: str, storage_options: dict[str, Any] | None = None) -> bytes:
    with open_file(path, "rb", storage_options) as handle:
        return handle.read()


def read_json(path: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The JSON document at ``path``, or None when there is none."""
    import json

    return json.loads(read_bytes(path, storage_options)) if exists(path, storage_options) else None
