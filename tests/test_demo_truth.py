"""Ground truth of the demo corpus, ROC AUC and the false-negative filter's quality."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from unime.demo.corpus import INSTRUCTIONS, Scene
from unime.demo.truth import Caption, DemoTruth, filter_quality, parse_caption, pool_truth, roc_auc


def test_parse_caption_levels_and_rejects():
    assert parse_caption("a red circle") == Caption("red", "circle", frozenset({1}), None)
    assert parse_caption("red circles") == Caption("red", "circle", frozenset({2, 3, 4}), None)
    assert parse_caption("three blue squares") == Caption("blue", "square", frozenset({3}), None)
    assert parse_caption("one green diamond on the left") == Caption("green", "diamond", frozenset({1}), "left")
    for text in ("one red circles", "two red circle", "a red circles", "circle", "red", "a cat", ""):
        assert parse_caption(text) is None, text


def test_caption_fits_scene():
    scene = Scene("circle", "red", 3, "left")
    assert parse_caption("red circles").fits(scene)
    assert parse_caption("three red circles on the left").fits(scene)
    assert not parse_caption("three red circles on the right").fits(scene)
    assert not parse_caption("two red circles").fits(scene)
    assert not parse_caption("a red circle").fits(scene)


@pytest.fixture(scope="module")
def truth(demo_dir):
    return DemoTruth.load(str(demo_dir))


def test_every_training_pair_is_a_match(truth, demo_dir):
    import json

    for path in sorted((demo_dir / "train").glob("Demo*/train-00000.parquet")):
        for row in pq.read_table(path).to_pylist():
            assert truth.matches(row["qry"], row["qry_image_path"], row["pos_text"], row["pos_image_path"]), (path, row)
    noisy = [json.loads(line) for line in (demo_dir / "train" / "DemoNoisy.jsonl").read_text().splitlines()[:2]]
    for row in noisy:  # the good rows beside the broken ones
        assert truth.matches(row["query_text"], row["query_image"], row["pos_text"], row["pos_image"]), row


def test_eval_targets_first_one_matches_the_rest_do_not(truth, demo_dir):
    for path in sorted((demo_dir / "eval").glob("Demo*/test-00000.parquet")):
        for row in pq.read_table(path).to_pylist():
            verdicts = [truth.matches(row["qry_text"], row["qry_img_path"], text, image)
                        for text, image in zip(row["tgt_text"], row["tgt_img_path"])]
            assert verdicts[0] and not any(verdicts[1:]), (path.parent.name, row["qry_text"], verdicts)


def test_cross_task_candidates_never_match(truth, demo_dir):
    rows = pq.read_table(demo_dir / "train" / "DemoShapeCls" / "train-00000.parquet").to_pylist()
    image = rows[0]["qry_image_path"]
    scene = truth.scene(image)
    assert not truth.matches(INSTRUCTIONS["i2t"], image, scene.shape, "")  # a label is no caption
    assert not truth.matches(INSTRUCTIONS["colour_cls"], image, scene.shape, "")
    assert truth.matches(INSTRUCTIONS["i2t"], image, scene.caption(0), "")


def brute_force_auc(scores, labels) -> float:
    positives, negatives = scores[labels], scores[~labels]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return wins / (len(positives) * len(negatives))


def test_roc_auc_matches_pairwise_definition():
    assert roc_auc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9], [1, 1, 0]) == 0.0
    assert roc_auc([0.5] * 4, [1, 0, 1, 0]) == 0.5
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])


def test_filter_quality():
    quality = filter_quality([True, True, False, False], [True, False, True, False])
    assert quality == {"candidates": 4, "filtered": 2, "false_negatives": 2, "caught": 1, "base_rate": 0.5,
                       "precision": 0.5, "recall": 0.5}
    rare = filter_quality([True, False, False, False, False], [True, False, False, False, False])
    assert rare["base_rate"] == 0.2 and rare["precision"] == 1.0


def test_pool_truth_marks_true_false_negatives(truth, demo_dir):
    import pyarrow as pa

    rows = pq.read_table(demo_dir / "train" / "DemoI2T" / "train-00000.parquet").to_pylist()
    image = rows[0]["qry_image_path"]
    scene = truth.scene(image)
    wrong = next(s for s in (Scene(scene.shape, c, scene.count, scene.position) for c in ("red", "blue"))
                 if s.colour != scene.colour)
    items = pa.table({"id": ["q", "fits", "detail", "wrong"], "text": [INSTRUCTIONS["i2t"], scene.caption(0),
                                                                       scene.caption(2), wrong.caption(2)],
                      "image": [image, "", "", ""]})
    pools = pa.table({"query_id": ["q"], "pool_ids": [["fits", "detail", "wrong"]]})
    assert pool_truth(pools, items, truth) == [[True, True, False]]


def test_the_judge_stage_picks_the_label_judge_by_name(demo_dir):
    """``judge.backend: label`` is the judge stage's (demo scaffolding); the judge library's own
    factory knows only the MLLM backends."""
    from unime.demo.label_judge import LabelJudge
    from unime.judge import make_judge
    from unime.pipeline.judge import make_stage_judge

    judge = make_stage_judge("label", str(demo_dir), storage_options=None)
    assert isinstance(judge, LabelJudge) and judge.needs_pixels is False
    row = pq.read_table(demo_dir / "train" / "DemoI2T" / "train-00000.parquet").to_pylist()[0]
    other = Scene("circle" if judge.truth.scene(row["qry_image_path"]).shape != "circle" else "square",
                  "red", 1, "left").caption(2)
    pairs = [(row["qry"], row["qry_image_path"], row["pos_text"], row["pos_image_path"]),
             (row["qry"], row["qry_image_path"], other, "")]
    assert judge.score(pairs).tolist() == [0.95, 0.05]
    with pytest.raises(ValueError, match="make_stage_judge"):
        make_judge("label", str(demo_dir))


@pytest.mark.integration
def test_label_judge_filters_exactly_the_true_false_negatives(ray_cluster, demo_dir, tiny_dir, tmp_path, truth):
    """Mining with the label judge: the filter removes every true match from the pools and
    nothing else, so no mined hard negative truly answers its query."""
    import numpy as np

    from tests.helpers import mining_config, run_all
    from unime.mining import is_false_negative
    from unime.pipeline import embed, ingest, judge, mine, retrieve
    from unime.pipeline.common import read_parquet_dir

    config = mining_config(demo_dir, tiny_dir, tmp_path, "judge.backend=label", f"judge.model={demo_dir}",
                           "mining.beta=0.01")
    run_all(config)
    pools = read_parquet_dir(retrieve.output_path(config.run_dir))
    items = embed.unique_items(read_parquet_dir(ingest.output_paths(config.run_dir)["pairs"]))
    true_matches = pool_truth(pools, items, truth)
    scores = judge.read_scores(config.run_dir)
    score = dict(zip(zip(scores["query_id"].to_pylist(), scores["candidate_id"].to_pylist()),
                     scores["score"].to_pylist()))
    filtered = [drop for q, p, pool in
                zip(pools["query_id"].to_pylist(), pools["pos_id"].to_pylist(), pools["pool_ids"].to_pylist())
                for drop in is_false_negative([score[(q, c)] for c in pool], score[(q, p)], 0.01)]
    flat = np.array([v for row in true_matches for v in row])
    assert flat.sum() > 0, "the test corpus's pools should hold some true false negatives"
    quality = filter_quality(np.array(filtered), flat)
    assert quality["precision"] == quality["recall"] == 1.0, quality
    records = read_parquet_dir(mine.output_paths(config.run_dir)["mined_table"]).to_pylist()
    item = dict(zip(items["id"].to_pylist(), zip(items["text"].to_pylist(), items["image"].to_pylist())))
    for record in records:
        query = item[record["query_id"]]
        assert not any(truth.matches(*query, *item[n]) for n in record["hard_negative_ids"])
