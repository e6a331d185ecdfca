"""What a pipeline stage is, and the one place that decides whether it runs.

A :class:`Stage` declares its name, the stages whose outputs it reads (``inputs``), what
else decides its output (``fingerprint``), and ``run(context) -> manifest body``. It never
reads or writes its own manifest: :func:`run_stage` does, with one rule for every stage:

- the fingerprint is the inputs' fingerprints plus the stage's own payload, and a stage whose
  manifest records the same fingerprint is complete and skipped;
- where work runs and how big its engines are (:data:`unime.config.RUNTIME_ONLY`) is never
  part of a payload (:func:`unime.config.fingerprint_view` leaves it out), so moving work
  never reruns it;
- a stage with ``cached=False`` (a deployment, the report) runs every time and writes no
  manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unime.config import PipelineConfig
from unime.pipeline import manifest


@dataclass
class Context:
    """What a stage's ``run`` gets: the config, the fingerprint payload it computed (the models
    and files it resolved, so ``run`` need not resolve them again), the fingerprint it will be
    recorded under (None for uncached stages) and the pipeline's stage names in order."""

    config: PipelineConfig
    payload: Any
    fingerprint: str | None
    pipeline: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], dict]
    fingerprint: Callable[[PipelineConfig], Any] = lambda config: {}
    inputs: tuple[str, ...] = ()
    cached: bool = True


def model_versions(config: PipelineConfig, *models: str) -> list[str]:
    """The version of each checkpoint a stage reads (its files' listing:
    :func:`unime.models.checkpoints.checkpoint_version`), for its fingerprint: a model path
    names a folder whose contents can change, so the path alone would let a rebuilt checkpoint
    pass for the old one."""
    from unime.models.checkpoints import checkpoint_version

    return [checkpoint_version(model, config.data.storage_options) for model in models]


def stage_fingerprint(stage: Stage, config: PipelineConfig, inputs: dict[str, dict], payload: Any = None) -> str:
    """The inputs' fingerprints plus the stage's payload (computed here unless given)."""
    payload = stage.fingerprint(config) if payload is None else payload
    return manifest.fingerprint({**{name: found["fingerprint"] for name, found in inputs.items()}, **payload})


def run_stage(stage: Stage, config: PipelineConfig, pipeline: tuple[str, ...] = ()) -> dict:
    """Run ``stage`` unless its manifest matches; returns the manifest plus ``skipped``."""
    run_dir, options = config.run_dir, config.data.storage_options
    inputs = {}
    for name in stage.inputs:
        found = manifest.read_manifest(run_dir, name, options)
        if found is None:
            raise RuntimeError(f"{stage.name} needs the {name} stage's output under {run_dir}")
        inputs[name] = found
    payload = stage.fingerprint(config)
    if not stage.cached:
        return stage.run(Context(config, payload, None, pipeline)) | {"skipped": False}
    fingerprint = stage_fingerprint(stage, config, inputs, payload)
    recorded = manifest.completed(run_dir, stage.name, fingerprint, options)
    if recorded is not None:
        return recorded | {"skipped": True}
    body = stage.run(Context(config, payload, fingerprint, pipeline))
    return manifest.write_manifest(run_dir, stage.name, fingerprint, body, options) | {"skipped": False}
