"""The demo's ground-truth checks pass and fail where they should (fake run dirs)."""

import json

import pyarrow.parquet as pq
import pytest

from unime.config import load_config
from unime.demo.models import SCORES
from unime.pipeline import demo_checks
from unime.pipeline.train_reranker import shuffled_by_record

IMAGE_TARGET = "<|image_1|>\nRepresent the given image.\n"


@pytest.fixture
def run(tmp_path, demo_dir):
    config = load_config("configs/demo.yaml", [f"run_dir={tmp_path / 'run'}", f"data.image_root={demo_dir}",
                                               f"models.judge={tmp_path / 'judge'}"])
    return config, tmp_path / "run"


def write(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def scenes(demo_dir) -> dict[str, dict]:
    rows = pq.read_table(demo_dir / "attributes.parquet").to_pylist()
    return {r["image"]: json.loads(r["attributes"]) for r in rows if "count" in json.loads(r["attributes"])}


def test_a_corpus_without_ground_truth_has_no_checks(tmp_path):
    config = load_config("configs/demo.yaml", [f"run_dir={tmp_path}", f"data.image_root={tmp_path}"])
    assert demo_checks.demo_checks(config) is None


@pytest.mark.parametrize("off_the_shelf, fine_tuned, passed", [(45.0, 63.0, True), (58.0, 61.0, False),
                                                                (40.0, 59.0, False)])
def test_fine_tuning_must_reach_the_bar_and_gain_on_the_start(run, off_the_shelf, fine_tuned, passed):
    config, run_dir = run
    write(run_dir / "evaluate" / "summary.json", {"aggregate": {"scores": {"Overall": fine_tuned}},
                                                  "off_the_shelf": {"aggregate": {"scores": {"Overall": off_the_shelf}}}})
    (check,) = demo_checks.evaluation_checks(config)
    assert check.passed is passed and f"{off_the_shelf:.1f} -> fine-tuned {fine_tuned:.1f}" in check.measured


def test_the_judge_check_reads_the_checkpoint_scores(run, tmp_path):
    config, _ = run
    write(tmp_path / "judge" / SCORES, {"auc": {"held_out": 0.84, "pairs": 10}})
    assert not demo_checks.judge_checks(config)[0].passed
    write(tmp_path / "judge" / SCORES, {"auc": {"held_out": 0.9, "pairs": 10}})
    assert demo_checks.judge_checks(config)[0].passed


def test_search_results_are_marked_against_the_image_attributes(run, demo_dir):
    from collections import Counter

    config, run_dir = run
    by_image = scenes(demo_dir)
    (colour, shape), _ = Counter((s["colour"], s["shape"]) for s in by_image.values() if s["count"] > 1).most_common(1)[0]
    config.serve.example_query = f"Find an image that matches the given caption: {colour} {shape}s\n"
    fitting = [i for i, s in by_image.items() if (s["colour"], s["shape"]) == (colour, shape) and s["count"] > 1]
    other = next(i for i, s in by_image.items() if s["shape"] != shape)
    results = [{"text": IMAGE_TARGET, "image": image} for image in (fitting * 3)[:3]]
    write(run_dir / "serve" / "example_search_retrieval.json", {"results": results})
    write(run_dir / "serve" / "example_search.json", {"results": results[:2] + [{"text": IMAGE_TARGET, "image": other}]})
    retrieval, reranked = demo_checks.search_checks(config)
    assert retrieval.passed and retrieval.measured.count("right:") == 3
    assert not reranked.passed and f"WRONG: {other}" in reranked.measured


def test_reranker_chats_are_shuffled_by_record_and_keep_their_pairs():
    import pyarrow as pa

    records = 20
    table = pa.table({"record": [r for r in range(records) for _ in range(3)],
                      "kind": ["pairwise", "pairwise", "listwise"] * records})
    shuffled = shuffled_by_record(table, records, seed=0)
    order = shuffled["record"].to_pylist()
    assert sorted(order) == sorted(table["record"].to_pylist()) and order != table["record"].to_pylist()
    assert all(order[k] == order[k + 1] == order[k + 2] for k in range(0, len(order), 3))
    pairwise = shuffled_by_record(table, records, seed=0, pairwise_only=True)
    assert set(pairwise["kind"].to_pylist()) == {"pairwise"} and pairwise.num_rows == 2 * records
    assert pairwise["record"].to_pylist() == [r for r in order[::3] for _ in range(2)]


@pytest.mark.parametrize("negatives, passed", [([["a", ""], ["b", ""], ["c", ""]], True),
                                               ([["a", ""], ["a", ""], ["c", ""]], False)])
def test_the_gallery_check_catches_a_repeated_negative(negatives, passed):
    import pyarrow as pa

    from unime.pipeline.report import GALLERY_NEGATIVES, gallery_records

    records = pa.table({"hard_negatives": [[["x", ""], ["y", ""]], negatives],
                        "hard_negatives_scores": [[0.1, 0.2], [0.3] * len(negatives)]})
    shown = gallery_records(records)
    (check,) = demo_checks.gallery_checks(shown)
    assert check.passed is passed and all(len(r["hard_negatives"]) <= GALLERY_NEGATIVES for r in shown)
    assert demo_checks.gallery_checks(gallery_records(None)) == []
