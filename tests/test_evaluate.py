"""The evaluate stage on a local Ray cluster: reports, rerank before/after, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import mining_config
from unime.pipeline import evaluate

pytestmark = pytest.mark.integration


def eval_config(demo_dir, tiny_dir, run_dir):
    return mining_config(demo_dir, tiny_dir, run_dir, f"data.eval_dir={demo_dir}/eval",
                         f"data.global_eval={demo_dir}/eval_global",
                         f"models.reranker={tiny_dir}/reranker", "eval.groups=demo", "eval.rerank_k=4",
                         "eval.actors.num_cpus=0.5", "eval.compare_with=UniME-V2 Qwen2-VL-2B")


def test_eval_writes_reports_and_is_reproducible(ray_cluster, demo_dir, tiny_dir, tmp_path):
    first = evaluate.run(eval_config(demo_dir, tiny_dir, tmp_path / "a"))
    second = evaluate.run(eval_config(demo_dir, tiny_dir, tmp_path / "b"))
    paths_a, paths_b = evaluate.output_paths(str(tmp_path / "a")), evaluate.output_paths(str(tmp_path / "b"))
    per_a = json.loads(Path(paths_a["per_dataset"]).read_text())
    assert per_a == json.loads(Path(paths_b["per_dataset"]).read_text())
    assert first["rows"] == second["rows"]
    assert set(per_a) == {"DemoI2T", "DemoT2I", "DemoShapeCls", "DemoColourCls", "DemoVQA", "DemoGrounding"}
    for metrics in per_a.values():
        assert 0 <= metrics["P@1"] <= 100 and metrics["rows"] == 12
        assert set(metrics["rerank"]) == {"listwise-greedy", "listwise", "pairwise"}
    summary = json.loads(Path(paths_a["summary"]).read_text())
    assert summary["items"]["unique"] < summary["items"]["references"]  # shared targets embedded once
    assert summary["aggregate"]["scores"]["Overall"] is not None and not summary["aggregate"]["missing"]
    # the headline is the paper's inference, every mode is reported on its own
    assert summary["reranked"]["mode"] == "listwise-greedy"
    assert set(summary["reranked"]["by_mode"]) == {"listwise-greedy", "listwise", "pairwise"}
    markdown = Path(paths_a["markdown"]).read_text()
    assert all(f"+ rerank ({mode})" in markdown for mode in summary["reranked"]["by_mode"])
    assert "| embedder |" in markdown and "UniME-V2 Qwen2-VL-2B (published)" in markdown and "+ rerank" in markdown
    assert Image.open(paths_a["chart"]).size == (700, 320)
    recall = summary["global"]
    assert recall["captions"] == 2 * recall["images"] == 24
    assert 0 <= recall["t2i_R@1"] <= recall["t2i_R@5"] <= recall["t2i_R@10"] <= 100
    assert "Global image-text retrieval" in markdown
    assert evaluate.run(eval_config(demo_dir, tiny_dir, tmp_path / "a"))["skipped"]


def test_released_model_eval_config_runs_on_tiny_checkpoints(ray_cluster, demo_dir, tiny_dir, tmp_path):
    """configs/eval_unime_v2_qwen2vl_2b.yaml end to end with the authors' input recipe, only the
    model paths, data and placement overridden (tiny checkpoints, demo corpus, CPU actors)."""
    from unime.config import load_config
    from unime.pipeline.runner import run_stages

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "eval_unime_v2_qwen2vl_2b.yaml", [
        f"run_dir={tmp_path}", f"data.eval_dir={demo_dir}/eval", f"data.image_root={demo_dir}",
        f"data.global_eval={demo_dir}/eval_global", f"models.embedder={tiny_dir}/embedder",
        f"models.reranker={tiny_dir}/reranker", f"models.judge={tiny_dir}/judge", "models.dtype=float32",
        "models.device=cpu", "eval.groups=demo", "eval.rerank_k=3", "eval.rerank_backend=hf",
        "eval.actors={num_actors: 1, num_gpus: 0, num_cpus: 0.5}", "embed.actors.num_cpus=0.5"])
    assert config.models.input_format == "unime-v2"
    results = run_stages(config, log=lambda _: None)
    summary = json.loads(Path(evaluate.output_paths(str(tmp_path))["summary"]).read_text())
    assert results["evaluate"]["rows"]["overall_P@1"] == summary["aggregate"]["scores"]["Overall"]
    assert summary["reranked"]["mode"] == "listwise-greedy"
    assert summary["global"]["captions"] == 24
    assert Path(tmp_path, "report", "report.html").exists()
