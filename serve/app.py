"""The Serve application entry point (deployment code lives in :mod:`unime.serving`).

    serve run serve.app:build config=configs/demo.yaml
    serve deploy serve/config.yaml

``build(args)`` is a Serve application builder: ``args["config"]`` names the pipeline YAML
(default ``configs/demo.yaml``) and ``args["overrides"]`` lists dotted overrides.
"""

from __future__ import annotations

from unime.config import load_config
from unime.pipeline.deploy import app_for_run
from unime.pipeline.runner import absolute_local_paths


def build(args: dict):
    overrides = args.get("overrides") or []
    config = load_config(args.get("config", "configs/demo.yaml"),
                         overrides.split() if isinstance(overrides, str) else list(overrides))
    absolute_local_paths(config)
    return app_for_run(config)
