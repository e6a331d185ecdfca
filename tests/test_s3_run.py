"""The stages after mining with their run dir on S3 (a local S3 server): training checkpoints
through pyarrow's native S3 client, merged checkpoints published from a Ray task in the run's
dtype, and every later stage (evaluate, index, serve) loading the trained models from S3. The
mining stages on S3 are test_mining_stages' (a mine job from a config on S3); here the session's
mined run is uploaded as the run's ingest and mine stages."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from safetensors import safe_open

from tests.helpers import ROOT, free_port, load_script, pipeline_overrides

pytestmark = pytest.mark.integration
RUN = "unime-test/s3-run"
STAGES = "train_embedder,train_reranker,evaluate,index,serve"


@pytest.fixture(scope="module")
def s3_run(ray_cluster, s3_server, mined_run, demo_dir, tiny_dir, tmp_path_factory):
    import fsspec

    s3 = fsspec.filesystem("s3", **s3_server)
    for stage in ("ingest", "mine"):  # the index's corpus is ingest's; training reads mine's
        s3.put(f"{mined_run[0].run_dir}/{stage}", f"{RUN}/", recursive=True)
    overrides = pipeline_overrides(demo_dir, tiny_dir, f"s3://{RUN}") + [
        f"data.storage_options.{key}={value}" for key, value in s3_server.items()] + [
        "models.dtype=bfloat16", f"serve.port={free_port()}", "serve.keep_running=false", "serve.replica_cpus=0.1"]
    printed = io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(printed):
        code = load_script("ray_jobs/full_pipeline.py").main(
            ["--config", "configs/demo.yaml", "--stages", STAGES, *overrides])
    assert code == 0, printed.getvalue()
    return s3, printed.getvalue()


def test_training_checkpoints_and_merged_models_live_on_s3(s3_run):
    s3, _ = s3_run
    for stage in ("train_embedder", "train_reranker"):
        assert s3.exists(f"{RUN}/{stage}/merged/config.json") and s3.exists(f"{RUN}/{stage}/losses.json")
        assert any(path.endswith(".pkl") or "checkpoint_" in path for path in s3.find(f"{RUN}/{stage}/ray")), stage


def test_merged_checkpoints_are_published_by_a_ray_task_in_the_runs_dtype(s3_run, tmp_path):
    import os

    s3, _ = s3_run
    for stage in ("train_embedder", "train_reranker"):
        published = json.loads(s3.cat(f"{RUN}/{stage}/manifest.json"))["published_by"]
        assert published["task"] and published["pid"] != os.getpid(), published  # not in the driver
        assert (published["dtype"], published["device"]) == ("bfloat16", "cpu")
        weights = tmp_path / f"{stage}.safetensors"
        s3.get(f"{RUN}/{stage}/merged/model.safetensors", str(weights))
        with safe_open(str(weights), "pt") as handle:
            dtypes = {str(handle.get_slice(key).get_dtype()) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        assert dtypes == {"BF16"}, (stage, dtypes)


def test_evaluate_index_and_serve_used_the_trained_models_from_s3(s3_run, s3_server):
    from unime.index.artifact import checkpoint_fingerprint

    s3, printed = s3_run
    summary = json.loads(s3.cat(f"{RUN}/evaluate/summary.json"))
    assert summary["embedder"] == f"s3://{RUN}/train_embedder/merged"
    assert summary["reranker"] == f"s3://{RUN}/train_reranker/merged"
    index = json.loads(s3.cat(f"{RUN}/index/artifact/manifest.json"))
    assert index["embedder"] == f"s3://{RUN}/train_embedder/merged"
    assert index["embedder_fingerprint"] == checkpoint_fingerprint(index["embedder"], s3_server)
    assert not index["embedder_fingerprint"].startswith("hub:")
    search = json.loads(s3.cat(f"{RUN}/serve/example_search.json"))
    assert len(search["results"]) == 5 and "[serve] done" in printed
