"""Precision@1 with ties, ranking metrics, global recall, and MMEB aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unime.eval import metrics
from unime.eval.mmeb import ALL_DATASETS, GROUPS, aggregate, summary_markdown


def test_precision_at_1_hand_built():
    rows = [np.array([0.9, 0.1, 0.3]),   # positive clearly first
            np.array([0.2, 0.5, 0.1]),   # positive second
            np.array([0.5, 0.5, 0.1]),   # tie with a negative: counted against the positive
            np.array([0.7])]             # a single candidate
    ranks = metrics.ranks_with_positive_first(rows)
    assert ranks.tolist() == [1, 2, 2, 1]
    assert metrics.precision_at_1(ranks) == 0.5
    assert metrics.hit_at_k(ranks, 2) == 1.0
    assert metrics.mrr(ranks) == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
    assert metrics.ndcg_at_k(ranks, 1) == pytest.approx(0.5)
    assert metrics.ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) * 2 + 1) / 4)


def test_constant_embedder_scores_zero_not_hundred():
    ranks = metrics.ranks_with_positive_first([np.full(10, 0.3) for _ in range(5)])
    assert ranks.tolist() == [10] * 5
    assert metrics.precision_at_1(ranks) == 0.0


def test_global_recall_with_several_captions_per_image():
    # 3 images, 2 captions each; captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2
    caption_image = np.array([0, 0, 1, 1, 2, 2])
    sim = np.array([
        [0.9, 0.1, 0.0],   # caption 0: its image first
        [0.2, 0.8, 0.1],   # caption 1: image 0 second
        [0.1, 0.9, 0.2],
        [0.3, 0.3, 0.2],   # caption 3: tie between image 0 and its image 1 -> rank 2
        [0.0, 0.1, 0.2],
        [0.5, 0.4, 0.1],   # caption 5: its image 2 last
    ])
    recall = metrics.image_text_recall(sim, caption_image, ks=(1, 2))
    assert recall["t2i_R@1"] == pytest.approx(3 / 6)
    assert recall["t2i_R@2"] == pytest.approx(5 / 6)
    # image 0: its best caption (0) scores 0.9 and no other caption reaches it -> rank 1
    # image 1: caption 2 scores 0.9 -> rank 1
    # image 2: its best caption (4) scores 0.2, tied by captions 2 and 3 -> rank 3
    assert recall["i2t_R@1"] == pytest.approx(2 / 3)
    assert recall["i2t_R@2"] == pytest.approx(2 / 3)
    # t2i ranks: 1, 2, 1, 2, 1, 3; i2t ranks: 1, 1, 3
    assert recall["t2i_MRR"] == pytest.approx((1 + 0.5 + 1 + 0.5 + 1 + 1 / 3) / 6)
    assert recall["i2t_MRR"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert recall["i2t_NDCG@10"] == pytest.approx((1 + 1 + 1 / math.log2(4)) / 3)


def test_aggregate_full_36():
    scores = {name: float(i) for i, name in enumerate(ALL_DATASETS)}
    result = aggregate(scores)
    assert len(ALL_DATASETS) == 36 and not result["missing"] and not any(result["partial"].values())
    for task, (ind, ood) in GROUPS.items():
        assert result["scores"][task] == pytest.approx(np.mean([scores[n] for n in ind + ood]))
    assert result["scores"]["Overall"] == pytest.approx(np.mean(list(scores.values())))
    ind = [n for i, o in GROUPS.values() for n in i]
    assert result["scores"]["IND"] == pytest.approx(np.mean([scores[n] for n in ind])) and len(ind) == 20


def test_aggregate_partial_never_averages_missing_as_zero():
    result = aggregate({"ImageNet-1K": 80.0, "N24News": 60.0, "MSCOCO": 50.0, "DemoI2T": 99.0})
    assert result["scores"]["Classification"] == 70.0 and result["partial"]["Classification"]
    assert result["scores"]["VQA"] is None and not result["partial"]["VQA"]
    assert result["scores"]["Grounding"] == 50.0 and result["partial"]["Grounding"]
    assert result["counts"]["Grounding"] == "1/4"
    assert result["scores"]["Overall"] == pytest.approx((80 + 60 + 50) / 3)
    assert "OK-VQA" in result["missing"] and result["unknown"] == ["DemoI2T"]
    table = summary_markdown(result, published="UniME-V2 Qwen2-VL-2B")
    assert "| this run | 70.0* | - | - |" in table and "63.6" in table and "partial" in table


# -- rerank evaluation as the UniME-V2 authors define it ------------------------------------
def test_unparseable_answer_is_a_miss_even_when_the_embedder_was_right():
    from unime.eval.harness import reranked_hit

    candidates = [("pos", ""), ("neg", "")]
    assert reranked_hit([0, 1], True, candidates, ("pos", ""), 0)
    assert not reranked_hit([0, 1], False, candidates, ("pos", ""), 0)


def test_positive_counts_by_content_as_well_as_by_slot():
    from unime.eval.harness import reranked_hit

    # the positive's text and image repeated under another index of the candidate list
    candidates = [("neg", "a.png"), ("cat", "b.png"), ("cat", "b.png")]
    assert reranked_hit([2, 0, 1], True, candidates, ("cat", "b.png"), 1)
    assert not reranked_hit([0, 1, 2], True, candidates, ("cat", "b.png"), 1)
    assert not reranked_hit([2, 0, 1], True, [("neg", "a.png"), ("cat", "b.png"), ("cat", "c.png")],
                            ("cat", "b.png"), 1)


def test_headline_mode_is_never_chosen_on_the_test_data():
    from unime.eval.harness import headline_mode

    assert headline_mode(["pairwise", "listwise", "listwise-greedy"]) == "listwise-greedy"
    assert headline_mode(["pairwise", "listwise"]) == "pairwise"


def test_rerank_batch_counts_an_unparsed_answer_as_a_miss():
    """The evaluate stage's actor, wired to a reranker whose greedy answer names nothing."""
    import pyarrow as pa

    from unime.pipeline.evaluate import RerankBatch
    from unime.rerank import Ranking, Reranker

    class Unparsed(Reranker):  # the real refusal wrapper around a fake model's answer
        def __init__(self):
            pass

        def rank(self, query, candidates, mode):
            return Ranking(order=list(range(len(candidates))), scores=[0.0] * len(candidates), parsed=False)

    class Images:
        def get(self, path):
            return None

    actor = RerankBatch.__new__(RerankBatch)
    actor.reranker, actor.modes, actor.images = Unparsed(), ["listwise-greedy"], Images()
    rows = pa.Table.from_pylist([{"dataset": "D", "row_index": 0, "qry_text": "q", "qry_img_path": "",
                                  "cand_index": [0, 3], "cand_texts": ["pos", "neg"], "cand_images": ["", ""],
                                  "pos_text": "pos", "pos_image": ""}])
    out = actor(rows).to_pylist()[0]
    assert out["listwise-greedy_hit"] is False and out["listwise-greedy_parsed"] is False


def test_global_prompts_follow_the_input_recipe():
    from unime.config import load_config
    from unime.pipeline.evaluate import global_prompts

    assert global_prompts(load_config(None, ["models.input_format=unime-v2"])) == (
        "{caption}", "<|image_1|> Find an image caption describing the given image.")
    assert global_prompts(load_config(None))[1] == "<|image_1|>\nRepresent the given image.\n"
    assert global_prompts(load_config(None, ["eval.global_image_prompt=<|image_1|> x"]))[1] == "<|image_1|> x"
