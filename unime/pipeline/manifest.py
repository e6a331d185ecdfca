"""Stage manifests: what a stage consumed, with which config, and what it wrote.

A stage whose manifest records the same fingerprint (inputs + config) is complete and is
skipped on rerun; a manifest is written last, so a crashed stage has none.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from unime.data.storage import join, read_json, write_bytes


def fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def manifest_path(run_dir: str, stage: str) -> str:
    return join(run_dir, stage, "manifest.json")


def read_manifest(run_dir: str, stage: str, storage_options: dict | None = None) -> dict | None:
    return read_json(manifest_path(run_dir, stage), storage_options)


def completed(run_dir: str, stage: str, stage_fingerprint: str, storage_options: dict | None = None) -> dict | None:
    """The stage's manifest when it records ``stage_fingerprint`` (the stage is complete), else None."""
    manifest = read_manifest(run_dir, stage, storage_options)
    return manifest if manifest is not None and manifest.get("fingerprint") == stage_fingerprint else None


def write_manifest(run_dir: str, stage: str, stage_fingerprint: str, body: dict,
                   storage_options: dict | None = None) -> dict:
    manifest = {"stage": stage, "fingerprint": stage_fingerprint, "finished_at": time.time(), **body}
    write_bytes(manifest_path(run_dir, stage), json.dumps(manifest, indent=2, default=str).encode() + b"\n",
                storage_options)
    return manifest


def trained_or(run_dir: str, stage, explicit: str | None, fallback: str, storage_options: dict | None = None) -> str:
    """The explicit checkpoint, else the run's trained one once ``stage`` finished, else ``fallback``."""
    if explicit:
        return explicit
    if read_manifest(run_dir, stage.STAGE, storage_options):
        return stage.output_paths(run_dir)["merged"]
    return fallback
