"""The names a config gives for the demo's scaffolding resolve to it (unime.pipeline.registry)."""

import pytest

from unime.pipeline import registry


def test_every_registered_name_resolves_and_a_bad_one_is_named():
    from unime.demo.corpus import EVAL_GROUPS
    from unime.demo.label_judge import LabelJudge
    from unime.eval.mmeb import GROUPS

    assert registry.resolve(registry.EVAL_GROUPS, "demo", "eval.groups") is EVAL_GROUPS
    assert registry.resolve(registry.EVAL_GROUPS, "mmeb", "eval.groups") is GROUPS
    assert registry.resolve(registry.STAGE_JUDGES, "label", "judge.backend") is LabelJudge
    with pytest.raises(ValueError, match=r"eval.groups: unknown value 'imagenet'; expected one of \['demo', 'mmeb'\]"):
        registry.resolve(registry.EVAL_GROUPS, "imagenet", "eval.groups")
