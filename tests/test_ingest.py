"""The ingest stage on a local Ray cluster matches the plain reader and accounts for every row."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from unime.config import DataConfig
from unime.data import read_pairs
from unime.pipeline import ingest

pytestmark = pytest.mark.integration


def _sorted_rows(table):
    return sorted(table.to_pylist(), key=lambda r: (r["source"], r["row_index"]))


def test_ray_ingest_equals_the_reference_and_reruns_are_skipped(ray_cluster, demo_dir, tmp_path):
    data = DataConfig(train=[str(demo_dir / "train")], image_root=str(demo_dir))
    manifest = ingest.run(data, str(tmp_path / "run"))
    rows = manifest["rows"]
    assert not manifest["skipped"]
    assert rows["input_rows"] == rows["good_rows"] + rows["quarantined_rows"]
    # the noisy file's six broken rows, and the second of its two identical good rows
    assert rows["quarantined_rows"] == 7 and rows["duplicates"] == 1

    reference, result = read_pairs(str(demo_dir / "train"), image_root=str(demo_dir))
    noisy = str(demo_dir / "train" / "DemoNoisy.jsonl")
    duplicate = {"source": noisy, "row_index": 1, "field": "<row>", "reason": f"duplicate of {noisy} row 0"}
    paths = ingest.output_paths(str(tmp_path / "run"))
    written = pq.read_table(paths["pairs"])
    expected = [r for r in reference.to_pylist() if (r["source"], r["row_index"]) != (noisy, 1)]
    assert _sorted_rows(written) == sorted(expected, key=lambda r: (r["source"], r["row_index"]))
    quarantined = pq.read_table(paths["quarantine"]).to_pylist()
    assert sorted(quarantined, key=lambda r: r["row_index"]) == sorted(
        [*result.quarantine, duplicate], key=lambda r: r["row_index"])
    assert rows["input_rows"] == result.input_rows == sum(rows["per_source"].values())

    again = ingest.run(data, str(tmp_path / "run"))
    assert again["skipped"] and again["rows"] == rows


def test_changed_config_reruns(ray_cluster, demo_dir, tmp_path):
    data = DataConfig(train=[str(demo_dir / "train" / "DemoNoisy.jsonl")], image_root=str(demo_dir))
    first = ingest.run(data, str(tmp_path / "run"))
    data.limits.max_pixels = 100  # every 64x64 image is now too big
    second = ingest.run(data, str(tmp_path / "run"))
    assert not second["skipped"]
    assert second["rows"]["good_rows"] < first["rows"]["good_rows"]
    assert pq.read_table(ingest.output_paths(str(tmp_path / "run"))["quarantine"]).num_rows == \
        second["rows"]["quarantined_rows"]


def test_duplicates_across_parallel_read_tasks_match_the_plain_steps(ray_cluster, tmp_path):
    """Files read by parallel tasks: the first occurrence is still the first in file order,
    then row order, as the same steps on plain tables (tests.test_bad_input) decide it."""
    from tests.test_bad_input import ingest_without_ray, png, write_duplicates_corpus

    (tmp_path / "ok.png").write_bytes(png())
    write_duplicates_corpus(tmp_path)
    data = DataConfig(train=[str(tmp_path / "train")], image_root=str(tmp_path))
    manifest = ingest.run(data, str(tmp_path / "run"))
    pairs, quarantine, counts = ingest_without_ray(str(tmp_path / "train"), tmp_path)
    assert {k: manifest["rows"][k] for k in counts} == counts
    assert counts["duplicates"] == 7
    paths = ingest.output_paths(str(tmp_path / "run"))
    assert _sorted_rows(pq.read_table(paths["pairs"])) == _sorted_rows(pairs)
    assert _sorted_rows(pq.read_table(paths["quarantine"])) == sorted(
        quarantine, key=lambda r: (r["source"], r["row_index"]))
