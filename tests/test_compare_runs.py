"""tools/compare_runs.py: the refactor check sees a changed output and ignores row layout."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from tests.helpers import load_script


def make_run(root, scores, losses):
    for folder in ("judge/scores", "mine", "train_embedder", "train_reranker", "evaluate"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for shard, rows in enumerate(scores):
        pq.write_table(pa.Table.from_pylist(rows), root / "judge/scores" / f"shard-{shard:05d}.parquet")
    (root / "mine/mined.json").write_text('[{"qry": "a", "hard_negatives_scores": [0.50]}]')
    (root / "mine/summary.json").write_text(json.dumps({"records_out": 1}))
    (root / "train_embedder/losses.json").write_text(json.dumps(losses))
    (root / "train_reranker/losses.json").write_text("[0.3]")
    (root / "evaluate/per_dataset.json").write_text(json.dumps({"b": 1.0, "a": 2.0}))
    return root


def test_same_outputs_in_another_row_layout_compare_equal(tmp_path):
    tool = load_script("tools/compare_runs.py")
    a, b = {"query_id": "q", "score": 0.25}, {"query_id": "r", "score": 0.75}
    before = make_run(tmp_path / "before", [[a, b]], [2.0, 1.5])
    after = make_run(tmp_path / "after", [[b], [a]], [2.0, 1.5])
    (after / "evaluate/per_dataset.json").write_text('{"a": 2.0, "b": 1.0}')  # same value, other key order
    assert tool.main([str(before), str(after)]) == 0


def test_a_changed_loss_a_respelled_number_or_a_missing_output_fails(tmp_path, capsys):
    tool = load_script("tools/compare_runs.py")
    row = {"query_id": "q", "score": 0.25}
    before = make_run(tmp_path / "before", [[row]], [2.0, 1.5])
    after = make_run(tmp_path / "after", [[row]], [2.0, 1.4])
    assert tool.main([str(before), str(after)]) == 1
    assert "DIFFERENT  embedder losses" in capsys.readouterr().out
    after = make_run(tmp_path / "respelled", [[row]], [2.0, 1.5])
    (after / "mine/mined.json").write_text('[{"qry": "a", "hard_negatives_scores": [0.5]}]')
    assert dict(tool.compare(before, after))["mined records (released JSON)"] == "DIFFERENT"
    shutil.rmtree(after / "train_reranker")
    assert dict(tool.compare(before, after))["reranker losses"].startswith("missing in ")
