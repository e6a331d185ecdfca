"""Checkpoints on object stores, copied to node-local disk before ``from_pretrained`` or vLLM.

Neither transformers nor vLLM reads ``s3://``. A trained checkpoint under an ``s3://`` run
dir (``<run_dir>/train_embedder/merged``) is therefore materialised once per node and version:
the folder's listing (names, sizes, ETags or modification times) names a version, the files
land in ``<cache>/<name>-<version>/`` through a temporary folder renamed into place, and a file
lock lets the several actors of one node share a single download. Local paths and hub ids
pass through unchanged.

The cache is ``$UNIME_CHECKPOINT_CACHE``, else ``~/.cache/unime/checkpoints``. It keeps the
newest :data:`KEEP_VERSIONS` versions of each checkpoint (a replica may still serve the one
before) and removes the scratch folders of downloads that died.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from unime.data.storage import file_stamp, filesystem, is_remote, listing_version

COMPLETE_MARKER = ".unime-complete"
KEEP_VERSIONS = 2


def cache_root() -> Path:
    return Path(os.environ.get("UNIME_CHECKPOINT_CACHE") or Path.home() / ".cache" / "unime" / "checkpoints")


def remote_listing(url: str, storage_options: dict | None = None) -> tuple[list[tuple[str, dict]], str]:
    """The checkpoint's files (path inside the store, info) and the version they make."""
    fs, inner = filesystem(url, storage_options)
    files = sorted((path, info) for path, info in fs.find(inner, detail=True).items() if info.get("type") != "directory")
    if not files:
        raise FileNotFoundError(f"no checkpoint files under {url}")
    return files, listing_version([(path[len(inner):].lstrip("/"), *file_stamp(info)) for path, info in files])


def checkpoint_version(name_or_path: str, storage_options: dict | None = None) -> str:
    """What a stage fingerprint records of a checkpoint besides its name: the version its
    files make (names, sizes, ETags or modification times; :func:`remote_listing`), for a
    local folder as for one on an object store, so that a checkpoint rebuilt in place reruns
    the stages that used it. A hub id is its own version (``hub:<id>``)."""
    if not is_remote(name_or_path) and not Path(name_or_path).is_dir():
        return f"hub:{name_or_path}"
    return remote_listing(name_or_path, storage_options)[1]


@contextlib.contextmanager
def node_lock(path: Path):
    """An exclusive lock on ``path`` (a file) shared by every process of this node."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def local_checkpoint(name_or_path: str, storage_options: dict | None = None) -> str:
    """A path ``from_pretrained`` and vLLM can read for ``name_or_path``.

    Hub ids and local paths are returned as they are; a remote folder (``s3://...``) is
    downloaded into this node's cache unless this version of it is there already.
    """
    if not is_remote(name_or_path):
        return name_or_path
    files, version = remote_listing(name_or_path, storage_options)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name_or_path.split("://", 1)[1].strip("/"))[-80:]
    target = cache_root() / f"{name}-{version}"
    if (target / COMPLETE_MARKER).exists():
        return str(target)
    with node_lock(cache_root() / f"{name}.lock"):
        if not (target / COMPLETE_MARKER).exists():  # another process of this node may have finished it
            _prune(name)
            _download(name_or_path, files, target, storage_options)
    return str(target)


def _prune(name: str) -> None:
    """Under the checkpoint's lock: drop dead downloads' scratch folders and all but the
    newest ``KEEP_VERSIONS - 1`` complete versions (the one being fetched makes the rest)."""
    root = cache_root()
    for scratch in root.glob(f".{name}-*"):
        shutil.rmtree(scratch, ignore_errors=True)
    versions = sorted((p for p in root.glob(f"{name}-*") if (p / COMPLETE_MARKER).exists()),
                      key=lambda p: (p / COMPLETE_MARKER).stat().st_mtime)
    for old in versions[: max(0, len(versions) - (KEEP_VERSIONS - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def _download(url: str, files: list[tuple[str, dict]], target: Path, storage_options: dict | None) -> None:
    fs, inner = filesystem(url, storage_options)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for path, _ in files:
            destination = scratch / path[len(inner):].lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(destination))
        (scratch / COMPLETE_MARKER).write_text(json.dumps({"source": url, "files": len(files)}))
        scratch.rename(target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
