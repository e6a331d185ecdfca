"""The reranker's chats (docs/method.md section 6): pairwise (the judge prompt) and listwise."""

from __future__ import annotations

import random
from typing import Any

from unime.judge.prompts import build_judge_messages, item_parts
from unime.prompts import LISTWISE_PROMPT, NO, YES


def build_pairwise_messages(query_text: str | None, query_image: Any, cand_text: str | None,
                            cand_image: Any) -> list[dict]:
    """The judge's one-user-turn chat; the reranker answers "Yes" or "No"."""
    return build_judge_messages(query_text, query_image, cand_text, cand_image)


def build_listwise_messages(query_text: str | None, query_image: Any,
                            candidates: list[tuple[str | None, Any]]) -> list[dict]:
    """One user turn: the listwise prompt, "Query:", the query, "Candidates:", then "(i) " and
    each candidate's image and text, numbered from 1. Same message shape as the judge's."""
    content = [{"type": "text", "text": LISTWISE_PROMPT}, {"type": "text", "text": "Query:"}]
    content += item_parts(query_text, query_image)
    content.append({"type": "text", "text": "Candidates:"})
    for number, (text, image) in enumerate(candidates, start=1):
        content.append({"type": "text", "text": f"({number}) "})
        content += item_parts(text, image)
    return [{"role": "user", "content": content}]


def listwise_answer(position: int) -> str:
    """The listwise target for the 1-based ``position`` of the best candidate."""
    return f"Ans: ({position})"


def training_chats(record: dict, rng: random.Random, listwise_candidates: int = 5) -> list[dict]:
    """The three reranker examples of one mined record (images as stored paths).

    a) pairwise positive -> "Yes"; b) pairwise with ``hard_negatives[0]`` -> "No";
    c) listwise over ``hard_negatives[:listwise_candidates]`` with the positive inserted at a
    uniformly random position among all of them -> "Ans: (k)".
    """
    query = (record["query_text"], record["query_image"] or "")
    positive = (record["pos_text"], record["pos_image"] or "")
    negatives = [(text, image or "") for text, image in record["hard_negatives"][:listwise_candidates]]
    slot = rng.randrange(len(negatives) + 1)
    listwise = negatives[:slot] + [positive] + negatives[slot:]
    return [
        {"kind": "pairwise", "query": query, "candidates": [positive], "answer": YES},
        {"kind": "pairwise", "query": query, "candidates": [negatives[0]], "answer": NO},
        {"kind": "listwise", "query": query, "candidates": listwise, "answer": listwise_answer(slot + 1)},
    ]
