"""Training losses, one per function (docs/method.md sections 5 and 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """Half-precision activations (bf16 autocast) are upcast; float32/float64 pass through."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def soft_kl_alignment(similarities: torch.Tensor, judge_scores: torch.Tensor, temperature: float = 0.02) -> torch.Tensor:
    """UniME-V2's soft-label alignment: symmetric KL between the embedder's and the judge's
    distributions over each query's candidates.

    For query i with candidates j (column 0 the positive, then the hard negatives)::

        P_ij = softmax_j(s_ij / t)        s_ij: cosine similarity of query i and candidate j
        Q_ij = softmax_j(g_ij / t)        g_ij: judge score P(Yes) of the same pair
        loss = mean_i 0.5 * (KL(Q_i || P_i) + KL(P_i || Q_i))

    Args:
        similarities: ``[B, C]`` query-candidate similarities (differentiable).
        judge_scores: ``[B, C]`` judge scores of the same pairs (targets; no gradient).
        temperature: ``t`` for both distributions (paper: 0.02).

    Returns:
        Scalar loss, averaged over the ``B`` queries.
    """
    if similarities.shape != judge_scores.shape or similarities.dim() != 2:
        raise ValueError(f"expected two [B, C] tensors, got {tuple(similarities.shape)} and {tuple(judge_scores.shape)}")
    log_p = F.log_softmax(_full_precision(similarities) / temperature, dim=-1)
    log_q = F.log_softmax(_full_precision(judge_scores.detach()).to(log_p.dtype) / temperature, dim=-1)
    kl_q_p = (log_q.exp() * (log_q - log_p)).sum(-1)
    kl_p_q = (log_p.exp() * (log_p - log_q)).sum(-1)
    return 0.5 * (kl_q_p + kl_p_q).mean()


def info_nce(query_emb: torch.Tensor, cand_emb: torch.Tensor, temperature: float = 0.02,
             in_batch_negatives: bool = True) -> torch.Tensor:
    """InfoNCE (VLM2Vec style): each query against its positive, as a softmax classification.

    ``loss = mean_i -log( exp(<q_i, c_i+>/t) / sum_{c in N(i)} exp(<q_i, c>/t) )`` where
    ``N(i)`` is the query's own candidates, plus every candidate of every other query in
    the batch when ``in_batch_negatives``.

    Args:
        query_emb: ``[B, D]`` L2-normalised query embeddings.
        cand_emb: ``[B, C, D]`` L2-normalised candidates per query (column 0 the positive,
            then hard negatives), or ``[B, D]`` positives only.
        temperature: ``t``.
        in_batch_negatives: also contrast against the other queries' candidates.

    Returns:
        Scalar loss, averaged over the ``B`` queries.
    """
    if cand_emb.dim() == 2:
        cand_emb = cand_emb[:, None]
    batch, per_query, _ = cand_emb.shape
    if in_batch_negatives:
        logits = query_emb @ cand_emb.reshape(batch * per_query, -1).T
        targets = torch.arange(batch, device=query_emb.device) * per_query
    else:
        logits = torch.einsum("bd,bcd->bc", query_emb, cand_emb)
        targets = torch.zeros(batch, dtype=torch.long, device=query_emb.device)
    return F.cross_entropy(_full_precision(logits) / temperature, targets)


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens only (the reranker's SFT loss).

    ``labels`` equals ``input_ids`` on answer tokens and :data:`IGNORE_INDEX` on every prompt
    and padding token; position ``k``'s logits predict token ``k + 1``.

    Args:
        logits: ``[B, L, V]`` model outputs.
        labels: ``[B, L]`` targets with prompt tokens masked.
        reduction: ``"mean"`` over the answer tokens, or their ``"sum"`` (to divide by the
            answer tokens of a whole accumulated batch).

    Returns:
        The cross-entropy over the unmasked (answer) tokens, reduced.
    """
    shifted_logits = _full_precision(logits[:, :-1].reshape(-1, logits.shape[-1]))
    shifted_labels = labels[:, 1:].reshape(-1)
    if not (shifted_labels != IGNORE_INDEX).any():
        raise ValueError("no answer tokens to train on: every label is masked")
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction=reduction)


def choice_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, choice_ids: list[int],
                         reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over a closed set of one-token answers (the judge's "Yes" against "No").

    For row ``i`` whose answer starts at position ``k_i`` (its first unmasked label)::

        loss = mean_i -log softmax_{c in choices}(z_i)[answer_i]    z_i = logits[i, k_i - 1, choices]

    The judge's score is exactly ``softmax(z)[Yes]``, so this trains the quantity it reads,
    without the rest of the vocabulary.

    Args:
        logits: ``[B, L, V]`` model outputs.
        labels: ``[B, L]`` targets with prompt tokens masked (as for :func:`answer_cross_entropy`).
        choice_ids: token ids of the allowed answers; every row's first answer token must be one.
        reduction: ``"mean"`` over the ``B`` rows, or their ``"sum"``.

    Returns:
        The cross-entropy over the ``B`` rows, reduced.
    """
    answered = labels != IGNORE_INDEX
    if not answered.any(dim=1).all():
        raise ValueError(f"rows {(~answered.any(dim=1)).nonzero().flatten().tolist()} have no answer token")
    first = answered.int().argmax(dim=1)
    rows = torch.arange(labels.shape[0], device=labels.device)
    answers = labels[rows, first]
    choices = torch.tensor(choice_ids, device=labels.device)
    matches = answers[:, None] == choices[None]
    if not matches.any(dim=1).all():
        bad = (~matches.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {bad}: first answer token {answers[bad].tolist()} is not one of the choices {choice_ids}")
    choice_logits = _full_precision(logits[rows, first - 1][:, choices])
    return F.cross_entropy(choice_logits, matches.int().argmax(dim=1), reduction=reduction)
