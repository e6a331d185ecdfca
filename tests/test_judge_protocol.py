"""Every judge backend the judge stage can pick is a :class:`unime.judge.Judge`: the stage calls
``warm_up``, ``prepare_image``, ``needs_pixels`` and ``score`` without asking what it holds."""

from __future__ import annotations

from unime.judge import HFJudge, Judge


def test_the_hf_judge_is_a_judge_and_batches_itself(tiny_dir):
    from PIL import Image

    from unime.judge import build_judge_messages

    judge = HFJudge(str(tiny_dir / "judge"), device="cpu", batch_size=2)
    assert isinstance(judge, Judge) and judge.needs_pixels
    judge.warm_up()
    chats = [build_judge_messages("q", Image.new("RGB", (56, 56)), f"candidate {k}", None) for k in range(5)]
    batches = []
    original = judge._score_batch
    judge._score_batch = lambda chunk: batches.append(len(chunk)) or original(chunk)
    assert judge.score(chats).shape == (5,) and batches == [2, 2, 1]


def test_the_vllm_and_label_judges_declare_the_protocol():
    from unime.demo.label_judge import LabelJudge
    from unime.judge.vllm_backend import VLLMJudge

    for backend in (VLLMJudge, LabelJudge):  # the classes: an engine or a corpus to load otherwise
        for member in ("needs_pixels", "prepare_image", "warm_up", "score"):
            assert hasattr(backend, member), (backend.__name__, member)
    assert VLLMJudge.needs_pixels and not LabelJudge.needs_pixels and LabelJudge.prepare_image is None
