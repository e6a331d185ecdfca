"""Reranker prompts, training examples, answer-only labels and inference modes (HF path)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from unime.judge import HFJudge, build_judge_messages
from unime.losses import IGNORE_INDEX
from unime.models.recipes import get_recipe
from unime.prompts import JUDGE_PROMPT, LISTWISE_PROMPT
from unime.rerank import (
    Reranker,
    build_listwise_messages,
    build_pairwise_messages,
    parse_choice,
    training_chats,
)
from unime.rerank.encoding import encode_with_answers
from unime.rerank.reranker import greedy_order

IMAGE = Image.new("RGB", (56, 56), (200, 10, 10))


def test_listwise_messages_exact_layout():
    messages = build_listwise_messages("<|image_1|>\nWhat is shown?", IMAGE, [("a cat", None), ("", IMAGE), ("x", IMAGE)])
    assert len(messages) == 1 and messages[0]["role"] == "user"
    parts = [(p["type"], p.get("text")) for p in messages[0]["content"]]
    # item texts stay raw until an input recipe prepares the chat
    assert parts[3] == ("text", "<|image_1|>\nWhat is shown?")
    prepared = get_recipe("qwen2-vl-native").prepare_chat(messages, "native")
    parts = [(p["type"], p.get("text")) for p in prepared[0]["content"]]
    assert parts == [("text", LISTWISE_PROMPT), ("text", "Query:"), ("image", None), ("text", "What is shown?"),
                     ("text", "Candidates:"), ("text", "(1) "), ("text", "a cat"), ("text", "(2) "), ("image", None),
                     ("text", "(3) "), ("image", None), ("text", "x")]


def test_pairwise_is_the_judge_prompt():
    assert build_pairwise_messages("q", None, "c", IMAGE) == build_judge_messages("q", None, "c", IMAGE)
    assert build_pairwise_messages("q", None, "c", None)[0]["content"][0]["text"] == JUDGE_PROMPT


RECORD = {"query_text": "q", "query_image": "", "pos_text": "POS", "pos_image": "",
          "hard_negatives": [[f"neg{k}", ""] for k in range(10)], "hard_negatives_scores": [0.1] * 10}


def test_three_training_chats_per_record():
    chats = training_chats(RECORD, random.Random(0))
    assert [c["answer"] for c in chats[:2]] == ["Yes", "No"]
    assert chats[0]["candidates"] == [("POS", "")] and chats[1]["candidates"] == [("neg0", "")]
    listwise = chats[2]
    assert len(listwise["candidates"]) == 6
    k = int(listwise["answer"][len("Ans: ("):-1])
    assert listwise["candidates"][k - 1] == ("POS", "")
    assert [c for c in listwise["candidates"] if c != ("POS", "")] == [(f"neg{i}", "") for i in range(5)]


def test_positive_position_is_uniform():
    rng = random.Random(1)
    answers = [training_chats(RECORD, rng)[2]["answer"] for _ in range(600)]
    counts = {a: answers.count(a) for a in set(answers)}
    assert sorted(counts) == [f"Ans: ({k})" for k in range(1, 7)]
    assert min(counts.values()) > 60  # 100 expected each


def test_labels_cover_the_answer_only(tiny_dir):
    from unime.models import load_processor

    processor = load_processor(str(tiny_dir / "reranker"))
    chats = [build_pairwise_messages("q", IMAGE, "c", None), build_listwise_messages("a longer query", None,
                                                                                      [("x", None), ("y", IMAGE)])]
    batch = encode_with_answers(processor, chats, ["Yes", "Ans: (2)"])
    for row, answer in enumerate(["Yes", "Ans: (2)"]):
        kept = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert processor.tokenizer.decode(kept) == answer + "<|im_end|>"
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()


def test_parse_choice_and_greedy_order():
    assert parse_choice("Ans: (3)", 5) == 2
    assert parse_choice("I think (2) then (4)", 5) == 1
    assert parse_choice("Ans: (7)", 5) is None and parse_choice("Yes", 5) is None and parse_choice("(0)", 5) is None
    assert greedy_order(2, 4) == [2, 0, 1, 3] and greedy_order(None, 3) == [0, 1, 2]


@pytest.fixture(scope="module")
def reranker(tiny_dir):
    return Reranker(str(tiny_dir / "reranker"), device="cpu")


CANDIDATES = [("two red circles", None), ("a blue square", None), ("", IMAGE), ("four green triangles", IMAGE)]


def test_pairwise_mode_orders_by_p_yes(reranker, tiny_dir):
    ranking = reranker.rank(("<|image_1|>\nFind a caption.", IMAGE), CANDIDATES, mode="pairwise")
    judge = HFJudge(str(tiny_dir / "reranker"), device="cpu")
    expected = judge.score([build_pairwise_messages("<|image_1|>\nFind a caption.", IMAGE, *c) for c in CANDIDATES])
    np.testing.assert_allclose(ranking.scores, expected, atol=1e-6)
    assert ranking.order == list(np.argsort(-expected, kind="stable"))


def test_listwise_mode_scores_every_candidate(reranker):
    ranking = reranker.rank(("query", IMAGE), CANDIDATES, mode="listwise")
    assert sorted(ranking.order) == [0, 1, 2, 3]
    assert sum(ranking.scores) == pytest.approx(1.0) and all(s > 0 for s in ranking.scores)
    assert ranking.scores[ranking.order[0]] == max(ranking.scores)


def test_listwise_scores_are_answer_probabilities(reranker):
    """The score of k is P("k)" | prompt + "Ans: ("), computed here by an independent full forward."""
    backend = reranker.backend
    chat = build_listwise_messages("query", None, CANDIDATES[:2])
    got = backend.continuation_logprobs(chat, "Ans: (", ["1)", "2)"])
    prompt = backend.judge.prompt_texts(backend.judge.prepare([chat]))[0] + "Ans: ("
    for k, continuation in enumerate(["1)", "2)"]):
        ids = backend.processor(text=[prompt + continuation], return_tensors="pt")["input_ids"]
        n = len(backend.processor.tokenizer.encode(continuation, add_special_tokens=False))
        with torch.no_grad():
            logits = backend.model(input_ids=ids).logits[0]
        want = sum(float(torch.log_softmax(logits[pos - 1], -1)[ids[0, pos]]) for pos in range(ids.shape[1] - n, ids.shape[1]))
        assert got[k] == pytest.approx(want, abs=1e-4)


def test_greedy_mode_reports_misses(reranker):
    ranking = reranker.rank(("query", None), CANDIDATES, mode="listwise-greedy")
    choice = parse_choice(ranking.answer, len(CANDIDATES))
    assert ranking.parsed == (choice is not None)
    assert ranking.order == greedy_order(choice, len(CANDIDATES))  # a miss keeps the retrieved order
    with pytest.raises(ValueError, match="unknown rerank mode"):
        reranker.rank(("q", None), CANDIDATES, mode="bogus")


@pytest.mark.parametrize("input_format", ["qwen2-vl-native", "unime-v2"])
def test_every_reranker_of_a_run_gets_the_judges_image_budget(tiny_dir, input_format):
    """Training, evaluation and Serve build their rerankers from ``reranker_inputs()``: a large
    image never becomes more than max_pixels / 28^2 tokens, whichever recipe."""
    from unime.config import load_config

    config = load_config(None, [f"models.input_format={input_format}", "judge.max_pixels=6272"])
    inputs = config.reranker_inputs()
    assert (inputs["min_pixels"], inputs["max_pixels"]) == (3136, 6272)  # below the checkpoint's 12544
    reranker = Reranker(str(tiny_dir / "reranker"), device="cpu", **inputs)
    huge = Image.new("RGB", (1700, 2200), (10, 20, 30))
    batch = reranker.backend.judge.encode([build_pairwise_messages("q", None, "c", huge)])
    assert int(batch["image_grid_thw"][0].prod()) * 14 * 14 <= 6272
