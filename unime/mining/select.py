"""Hard-negative selection with the judge's false-negative filter (docs/method.md section 4)."""

from __future__ import annotations

from collections.abc import Sequence


def is_false_negative(scores: Sequence[float], positive_score: float, beta: float = 0.01) -> list[bool]:
    """The false-negative filter: a candidate scoring above ``positive_score - beta``."""
    threshold = positive_score - beta
    return [bool(s > threshold) for s in scores]


def score_lookup(scores) -> dict[tuple[str, str], float]:
    """``(query id, candidate id) -> score`` of a judge stage's scores table."""
    return dict(zip(zip(scores["query_id"].to_pylist(), scores["candidate_id"].to_pylist()),
                    scores["score"].to_pylist()))


def pool_filter_flags(pools, score_of: dict[tuple[str, str], float], beta: float = 0.01
                      ) -> tuple[list[bool], list[float]]:
    """Every pool candidate of a retrieve stage's ``pools`` table, in pool order: whether the
    false-negative filter drops it, and its judge score."""
    dropped, scores = [], []
    for query, positive, pool in zip(pools["query_id"].to_pylist(), pools["pos_id"].to_pylist(),
                                     pools["pool_ids"].to_pylist()):
        cand_scores = [score_of[(query, c)] for c in pool]
        dropped += is_false_negative(cand_scores, score_of[(query, positive)], beta)
        scores += cand_scores
    return dropped, scores


def select_hard_negatives(candidate_ids: Sequence, scores: Sequence[float], positive_score: float,
                          num_negatives: int = 10, beta: float = 0.01) -> tuple[list, list[float]]:
    """Choose a query's hard negatives from its judged pool.

    Args:
        candidate_ids: the pool in retrieval-rank order (best first).
        scores: judge P(Yes) of each candidate, aligned with ``candidate_ids``.
        positive_score: judge P(Yes) of the query's positive.
        num_negatives: how many to return.
        beta: false-negative margin: a candidate with ``score > positive_score - beta``
            is treated as a false negative and dropped.

    Returns:
        ``(ids, scores)``: the first ``num_negatives`` survivors in rank order; when fewer
        survive they repeat cyclically (A, B, A, B, ...) to fill; when none survive both
        lists are empty and the caller skips the query.
    """
    if len(candidate_ids) != len(scores):
        raise ValueError(f"{len(candidate_ids)} candidates but {len(scores)} scores")
    dropped = is_false_negative(scores, positive_score, beta)
    survivors = [(cid, float(s)) for cid, s, drop in zip(candidate_ids, scores, dropped) if not drop]
    if not survivors:
        return [], []
    chosen = [survivors[i % len(survivors)] for i in range(num_negatives)]
    return [cid for cid, _ in chosen], [s for _, s in chosen]
