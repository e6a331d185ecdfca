"""What a run's app serves, resolved by the pipeline and handed to the serving library (fast, no Ray)."""

from __future__ import annotations

from unime.config import load_config
from unime.pipeline import build_index, deploy, manifest, train_embedder, train_reranker


def run_config(run_dir, *overrides):
    return load_config(None, [f"run_dir={run_dir}", "models.embedder=base-embedder", "models.reranker=base-reranker",
                              *overrides])


def test_a_run_serves_its_models_until_it_trained_its_own(tmp_path):
    config = run_config(tmp_path)
    assert deploy.served_models(config) == {"embedder": "base-embedder", "reranker": "base-reranker",
                                            "index_dir": build_index.output_path(str(tmp_path))}
    manifest.write_manifest(str(tmp_path), train_embedder.STAGE, "f", {})
    served = deploy.served_models(config)
    assert served["embedder"] == train_embedder.output_paths(str(tmp_path))["merged"]
    assert served["reranker"] == "base-reranker"  # its stage has not finished
    manifest.write_manifest(str(tmp_path), train_reranker.STAGE, "f", {})
    assert deploy.served_models(config)["reranker"] == train_reranker.output_paths(str(tmp_path))["merged"]


def test_explicit_serve_settings_win_over_the_run(tmp_path):
    manifest.write_manifest(str(tmp_path), train_embedder.STAGE, "f", {})
    config = run_config(tmp_path, "serve.embedder=mine", "serve.reranker=theirs", "serve.index_dir=/elsewhere")
    assert deploy.served_models(config) == {"embedder": "mine", "reranker": "theirs", "index_dir": "/elsewhere"}


def test_the_app_is_built_on_the_resolved_models(tmp_path, monkeypatch):
    from unime.serving import deployments

    calls = []
    monkeypatch.setattr(deployments, "build_app", lambda config, **resolved: calls.append(resolved) or "app")
    config = run_config(tmp_path)
    assert deploy.app_for_run(config) == "app"
    assert calls == [deploy.served_models(config)]
