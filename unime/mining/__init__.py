"""Global retrieval and hard-negative mining."""

from unime.mining.retrieval import IndexSpec, positive_similarities, retrieve_pool
from unime.mining.select import select_hard_negatives

__all__ = ["IndexSpec", "positive_similarities", "retrieve_pool", "select_hard_negatives"]
