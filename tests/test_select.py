"""select_hard_negatives: the false-negative filter, rank order, cyclic fill, skips."""

import pytest

from unime.mining import select_hard_negatives


def test_filter_keeps_rank_order_and_drops_near_positive_scores():
    ids = ["a", "b", "c", "d", "e"]
    scores = [0.95, 0.2, 0.891, 0.889, 0.1]
    chosen, chosen_scores = select_hard_negatives(ids, scores, positive_score=0.9, num_negatives=3, beta=0.01)
    # a (0.95) and c (0.891 > 0.89) are false negatives; d (0.889) survives
    assert chosen == ["b", "d", "e"] and chosen_scores == [0.2, 0.889, 0.1]


def test_exactly_at_the_threshold_survives():
    chosen, _ = select_hard_negatives(["a"], [0.5], positive_score=0.75, num_negatives=1, beta=0.25)
    assert chosen == ["a"]  # dropped only when score > positive_score - beta


def test_cyclic_fill_and_truncation():
    assert select_hard_negatives(["A", "B"], [0.1, 0.2], 0.9, num_negatives=5)[0] == ["A", "B", "A", "B", "A"]
    assert select_hard_negatives(list("abcdefghijkl"), [0.0] * 12, 0.9, num_negatives=10)[0] == list("abcdefghij")


def test_none_survive_means_skip():
    assert select_hard_negatives(["a", "b"], [0.99, 0.98], positive_score=0.5) == ([], [])
    assert select_hard_negatives([], [], positive_score=0.5) == ([], [])


def test_misaligned_inputs():
    with pytest.raises(ValueError, match="2 candidates but 1 scores"):
        select_hard_negatives(["a", "b"], [0.1], 0.5)


def test_pool_filter_flags_apply_the_filter_to_every_pool_in_order():
    import pyarrow as pa

    from unime.mining import pool_filter_flags, score_lookup

    pools = pa.table({"query_id": ["q", "r"], "pos_id": ["p", "s"], "pool_ids": [["a", "b"], ["c"]]})
    scores = pa.table({"query_id": ["q", "q", "q", "r", "r"], "candidate_id": ["p", "a", "b", "s", "c"],
                       "score": [0.9, 0.95, 0.2, 0.5, 0.495]})
    dropped, values = pool_filter_flags(pools, score_lookup(scores), beta=0.01)
    assert dropped == [True, False, True] and values == [0.95, 0.2, 0.495]
