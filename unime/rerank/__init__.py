"""The UniME-V2 reranker: prompts, training examples and inference."""

from unime.rerank.prompts import (
    build_listwise_messages,
    build_pairwise_messages,
    listwise_answer,
    training_chats,
)
from unime.rerank.reranker import MODES, Ranking, Reranker, parse_choice

__all__ = ["MODES", "Ranking", "Reranker", "build_listwise_messages", "build_pairwise_messages",
           "listwise_answer", "parse_choice", "training_chats"]
