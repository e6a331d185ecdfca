"""Global retrieval and hard-negative mining."""

from unime.mining.retrieval import IndexSpec, positive_similarities, retrieve_pool
from unime.mining.select import is_false_negative, pool_filter_flags, score_lookup, select_hard_negatives

__all__ = ["IndexSpec", "is_false_negative", "pool_filter_flags", "positive_similarities", "retrieve_pool",
           "score_lookup", "select_hard_negatives"]
