"""Losses against hand-computed values, edge cases and gradient checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unime.losses import IGNORE_INDEX, answer_cross_entropy, choice_cross_entropy, info_nce, soft_kl_alignment


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def kl(a, b):
    return float(np.sum(a * (np.log(a) - np.log(b))))


def test_soft_kl_hand_computed():
    sims = np.array([[0.5, 0.3, 0.1]])
    judge = np.array([[0.9, 0.5, 0.2]])
    t = 0.1
    p, q = softmax(sims[0] / t), softmax(judge[0] / t)
    want = 0.5 * (kl(q, p) + kl(p, q))
    got = soft_kl_alignment(torch.tensor(sims), torch.tensor(judge), temperature=t)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_soft_kl_uniform_judge_scores_pull_towards_uniform():
    sims = torch.tensor([[0.2, 0.1, 0.0, -0.1]])
    uniform = torch.full((1, 4), 0.5)
    t = 0.05
    p = softmax(sims.numpy()[0] / t)
    q = np.full(4, 0.25)
    assert soft_kl_alignment(sims, uniform, t).item() == pytest.approx(0.5 * (kl(q, p) + kl(p, q)), rel=1e-5)
    # equal similarities match uniform judge scores exactly
    assert soft_kl_alignment(torch.zeros(1, 4), uniform, t).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_kl_one_hot_judge_scores():
    """Judge certain about the positive only: Q is (almost) one-hot at t=0.02."""
    sims = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1]])
    judge = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    loss = soft_kl_alignment(sims, judge, temperature=0.02)
    q = softmax(np.array([1.0, 0.0, 0.0]) / 0.02)
    per_query = []
    for row in sims.numpy():
        p = softmax(row / 0.02)
        per_query.append(0.5 * (kl(q, p) + kl(p, q)))
    assert loss.item() == pytest.approx(np.mean(per_query), rel=1e-4)
    assert per_query[1] > per_query[0]  # ranking the wrong candidate first costs more


def test_soft_kl_is_symmetric_in_its_two_kls_and_validates_shapes():
    a, b = torch.randn(3, 5, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64)
    assert soft_kl_alignment(a, b, 0.3).item() == pytest.approx(soft_kl_alignment(b, a, 0.3).item(), rel=1e-9)
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        soft_kl_alignment(torch.zeros(2, 3), torch.zeros(2, 4))


def test_soft_kl_gradcheck():
    sims = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    judge = torch.rand(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: soft_kl_alignment(s, judge, 0.5), (sims,), eps=1e-6, atol=1e-5)


def test_info_nce_hand_computed_with_and_without_in_batch_negatives():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.8, 0.6]]])
    t = 0.5
    own = [-math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0.6 / t))),
           -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0.6 / t)))]
    assert info_nce(q, c, t, in_batch_negatives=False).item() == pytest.approx(np.mean(own), rel=1e-6)
    # with in-batch negatives, query 0 also sees query 1's candidates (0.0 and 0.8)
    denom0 = math.exp(1 / t) + math.exp(0.6 / t) + math.exp(0.0) + math.exp(0.8 / t)
    denom1 = math.exp(0.0) + math.exp(0.8 / t) + math.exp(1 / t) + math.exp(0.6 / t)
    want = np.mean([-math.log(math.exp(1 / t) / denom0), -math.log(math.exp(1 / t) / denom1)])
    assert info_nce(q, c, t, in_batch_negatives=True).item() == pytest.approx(want, rel=1e-6)
    # positives-only form
    assert info_nce(q, c[:, 0], t).item() == pytest.approx(
        np.mean([-math.log(math.exp(2) / (math.exp(2) + 1))] * 2), rel=1e-6)


def test_info_nce_gradcheck():
    q = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, 0.7), (q, c), eps=1e-6, atol=1e-5)


def test_answer_cross_entropy_ignores_prompt_tokens():
    vocab = 5
    logits = torch.randn(1, 4, vocab)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1]])
    want = -(torch.log_softmax(logits[0, 1], -1)[3] + torch.log_softmax(logits[0, 2], -1)[1]) / 2
    assert answer_cross_entropy(logits, labels).item() == pytest.approx(want.item(), rel=1e-6)
    # changing a prompt position's logits changes nothing
    changed = logits.clone()
    changed[0, 0] += 10
    assert answer_cross_entropy(changed, labels).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="every label is masked"):
        answer_cross_entropy(logits, torch.full((1, 4), IGNORE_INDEX))


def test_choice_cross_entropy_is_the_two_way_softmax_at_the_first_answer_token():
    vocab, yes, no = 6, 4, 2
    logits = torch.randn(2, 5, vocab)
    # row 0 answers "yes" at position 3 (then an end token), row 1 answers "no" at position 4
    labels = torch.tensor([[IGNORE_INDEX] * 3 + [yes, 5], [IGNORE_INDEX] * 4 + [no]])
    want = -(torch.log_softmax(logits[0, 2, [yes, no]], -1)[0] + torch.log_softmax(logits[1, 3, [yes, no]], -1)[1]) / 2
    assert choice_cross_entropy(logits, labels, [yes, no]).item() == pytest.approx(want.item(), rel=1e-6)
    # the rest of the vocabulary, and the tokens after the answer, change nothing
    changed = logits.clone()
    changed[:, :, [0, 1, 3, 5]] += 10
    changed[0, 3] += 5
    assert choice_cross_entropy(changed, labels, [yes, no]).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"rows \[1\]: first answer token \[2\] is not one of the choices \[4, 3\]"):
        choice_cross_entropy(logits, labels, [yes, 3])
    with pytest.raises(ValueError, match=r"rows \[0\] have no answer token"):
        choice_cross_entropy(logits, torch.full((1, 5), IGNORE_INDEX), [yes, no])
