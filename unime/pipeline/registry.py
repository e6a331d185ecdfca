"""What the pipeline finds by the name a config gives, imported only when a run asks for it.

The demo's scaffolding (its eval groups, its ground-truth judge) registers here by name and
import path: no pipeline module imports the demo package, and an MLLM run never loads it.
"""

from __future__ import annotations

import importlib

# eval.groups: the MMEB columns each subset counts toward
EVAL_GROUPS = {"mmeb": "unime.eval.mmeb:GROUPS", "demo": "unime.demo.corpus:EVAL_GROUPS"}
# judge.backend values the judge stage builds itself (the library's MLLM judges aside)
STAGE_JUDGES = {"label": "unime.demo.label_judge:LabelJudge"}


def resolve(registry: dict[str, str], name: str, field: str):
    """The object ``registry`` names ``name``; ``field`` (the config key) names a bad value."""
    if name not in registry:
        raise ValueError(f"{field}: unknown value {name!r}; expected one of {sorted(registry)}")
    module, attribute = registry[name].split(":")
    return getattr(importlib.import_module(module), attribute)
