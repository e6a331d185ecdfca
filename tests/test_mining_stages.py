"""The mining pipeline (ingest -> embed -> retrieve -> judge -> mine) on a local Ray cluster."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.faults import judge_failing_after
from tests.helpers import STAGES, load_script, mining_config, mining_overrides, run_all
from unime.data import read_mined
from unime.data.mined import dumps
from unime.pipeline import embed, ingest, judge, manifest, mine, retrieve

pytestmark = pytest.mark.integration


def test_every_pair_is_a_record_or_a_counted_skip(mined_run):
    config, results = mined_run
    counts = results["mine"]["rows"]
    assert counts["pairs_in"] == results["ingest"]["rows"]["good_rows"]
    assert counts["records_out"] + counts["skipped"] == counts["pairs_in"]
    assert counts["records_out"] > 0
    paths = mine.output_paths(config.run_dir)
    assert pq.read_table(paths["mined_table"]).num_rows == counts["records_out"]
    assert pq.read_table(paths["skipped"]).num_rows == counts["skipped"]
    # ingest's quarantine + mined + skipped accounts for every input row
    ingest_rows = results["ingest"]["rows"]
    assert ingest_rows["input_rows"] == ingest_rows["quarantined_rows"] + counts["records_out"] + counts["skipped"]


def test_negatives_respect_the_method(mined_run):
    config, _ = mined_run
    table = pq.read_table(mine.output_paths(config.run_dir)["mined_table"]).to_pylist()
    scores = judge.read_scores(config.run_dir)
    score_of = dict(zip(zip(scores["query_id"].to_pylist(), scores["candidate_id"].to_pylist()),
                        scores["score"].to_pylist()))
    for record in table:
        assert record["pos_id"] not in record["hard_negative_ids"]
        assert len(record["hard_negatives"]) == config.mining.num_negatives
        assert all(s <= record["query_pos_scores"] - config.mining.beta for s in record["hard_negatives_scores"])
        assert record["query_pos_scores"] == score_of[(record["query_id"], record["pos_id"])]
        assert record["hard_negatives_scores"] == [score_of[(record["query_id"], c)] for c in
                                                   record["hard_negative_ids"]]


def test_records_validate_against_the_released_format(mined_run, demo_dir):
    config, results = mined_run
    path = mine.output_paths(config.run_dir)["mined"]
    records, style, result = read_mined(path, image_root=str(demo_dir),
                                        expected_negatives=config.mining.num_negatives)
    assert not result.quarantine and len(records) == results["mine"]["rows"]["records_out"]
    assert dumps(records, style).encode() == Path(path).read_bytes()  # our own output round-trips too
    assert all(list(r) == ["query_text", "query_image", "pos_text", "pos_image", "query_pos_scores",
                           "hard_negatives", "hard_negatives_scores"] for r in records)


def test_reruns_skip_every_stage(mined_run):
    config, results = mined_run
    again = run_all(config)
    assert all(again[name]["skipped"] for name in again)
    assert again["mine"]["rows"] == results["mine"]["rows"]


# every knob that says where work runs or how big its engines and caches are
PLACEMENT = ["embed.actors.num_actors=2", "embed.actors.num_cpus=1", "embed.image_cpus=0.25",
             "judge.actors.num_actors=3", "judge.actors.num_cpus=1.5", "judge.engine.kv_cache_gib=3",
             "data.image_cache_mib=64", "mining.placement.num_cpus=2", "index.placement.num_cpus=2",
             "eval.actors.num_actors=2", "eval.rerank_engine.kv_cache_gib=3",
             "train_embedder.placement.num_workers=3", "train_embedder.placement.cpus_per_worker=0.5",
             "train_embedder.checkpoint_every=7", "train_reranker.placement.num_workers=5", "train_reranker.placement.max_failures=9"]


def test_moving_the_work_reruns_no_stage(mined_run, demo_dir, tiny_dir):
    """With every placement knob changed, each stage's fingerprint is the one its manifest
    records (the mining stages) or the one it would have been (the rest): nothing reruns.
    A knob that changes results does change its stage's payload (and through it the stages
    after, whose fingerprints include their inputs')."""
    from unime.pipeline.runner import STAGES as REGISTRY
    from unime.pipeline.stage import stage_fingerprint

    config, _ = mined_run
    moved = mining_config(demo_dir, tiny_dir, config.run_dir, *PLACEMENT)
    changed = mining_config(demo_dir, tiny_dir, config.run_dir, "mining.pool_size=7")
    for name, stage in REGISTRY.items():
        if stage.cached:
            assert stage.fingerprint(moved) == stage.fingerprint(config), name
    for name in ("ingest", "embed", "retrieve", "judge", "mine"):
        stage, recorded = REGISTRY[name], manifest.read_manifest(config.run_dir, name)
        inputs = {i: manifest.read_manifest(config.run_dir, i) for i in stage.inputs}
        assert stage_fingerprint(stage, moved, inputs) == recorded["fingerprint"], name
    assert REGISTRY["retrieve"].fingerprint(changed) != REGISTRY["retrieve"].fingerprint(config)


def test_embed_deduplicates_shared_candidates(mined_run):
    config, results = mined_run
    ids = pq.read_table(embed.output_path(config.run_dir), columns=["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids)) == results["embed"]["rows"]["items"]
    pairs = pq.read_table(ingest.output_paths(config.run_dir)["pairs"])
    assert set(ids) == set(pairs["query_id"].to_pylist()) | set(pairs["pos_id"].to_pylist())


def test_killed_judge_resumes_without_rescoring(ray_cluster, demo_dir, tiny_dir, tmp_path, mined_run, monkeypatch):
    reference_config, _ = mined_run
    config = mining_config(demo_dir, tiny_dir, tmp_path / "crash")
    for _name, stage in STAGES[:3]:
        stage(config)
    with monkeypatch.context() as patched:
        patched.setattr(judge, "JudgeShards", judge_failing_after(2))
        with pytest.raises(Exception, match="injected judge failure after 2 shards"):
            judge.run(config)
    committed = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "crash/judge/scores").iterdir()}
    assert sorted(committed) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert manifest.read_manifest(config.run_dir, "judge") is None

    resumed = judge.run(config)
    assert resumed["rows"]["shards_reused"] == 2
    assert resumed["rows"]["shards_scored_this_run"] == resumed["rows"]["shards"] - 2
    for name, (mtime, content) in committed.items():
        path = tmp_path / "crash/judge/scores" / name
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    mine.run(config)
    crashed = (tmp_path / "crash/mine/mined.json").read_bytes()
    assert crashed == Path(mine.output_paths(reference_config.run_dir)["mined"]).read_bytes()


def test_per_dataset_pools_stay_inside_their_dataset(ray_cluster, demo_dir, tiny_dir, tmp_path):
    config = mining_config(demo_dir, tiny_dir, tmp_path, "mining.global_pool=false")
    for _name, stage in STAGES[:3]:
        stage(config)
    pools = pq.read_table(retrieve.output_path(config.run_dir)).to_pylist()
    pairs = pq.read_table(ingest.output_paths(config.run_dir)["pairs"]).to_pylist()
    positives_of: dict[str, set] = {}
    for pair in pairs:
        positives_of.setdefault(pair["dataset"], set()).add(pair["pos_id"])
    assert any(pool["pool_ids"] for pool in pools)
    for pool in pools:
        assert set(pool["pool_ids"]) <= positives_of[pool["dataset"]]
        assert pool["pos_id"] not in pool["pool_ids"]


def test_mine_job_runs_from_a_config_on_s3(ray_cluster, s3_server, demo_dir, tiny_dir):
    """ray_jobs/mine.py end to end with corpus, images and run dir on a (local) S3 API."""
    import fsspec

    s3 = fsspec.filesystem("s3", **s3_server)
    s3.put(str(demo_dir / "train" / "DemoShapeCls"), "unime-test/corpus/train/", recursive=True)
    s3.put(str(demo_dir / "images"), "unime-test/corpus/", recursive=True)
    job = load_script("ray_jobs/mine.py")
    options = [f"data.storage_options.{k}={v}" for k, v in s3_server.items()]
    overrides = [o.replace(f"{demo_dir}/train", "s3://unime-test/corpus/train").replace(
        f"data.image_root={demo_dir}", "data.image_root=s3://unime-test/corpus")
        for o in mining_overrides(demo_dir, tiny_dir, "s3://unime-test/run")]
    assert job.main(["--config", str(Path(__file__).parent.parent / "configs" / "demo.yaml"),
                     "demo.enabled=false", *overrides, *options]) == 0
    summary = s3.cat("unime-test/run/mine/summary.json")
    assert b'"pairs_in"' in summary
    records, _, result = read_mined("s3://unime-test/run/mine/mined.json", image_root="s3://unime-test/corpus",
                                    storage_options=s3_server)
    assert not result.quarantine and len(records) > 0
