"""The embedded default on its trained checkpoints shows the system working: every check
against the demo corpus's ground truth holds, and the job prints them.

One run of ``configs/demo.yaml`` as ``make demo`` runs it (the trained checkpoints built, or
reused, under ``artifacts/demo_models``), reduced for CI where a reduction does not touch
what is checked: one rerank mode in evaluation.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from tests.helpers import ROOT, free_port, load_script

pytestmark = pytest.mark.integration

CHECKS = ("judge AUC vs ground truth, held-out eval pairs", "false-negative filter vs ground truth",
          "records mined", "Overall P@1 on the demo eval", "example search top 3, retrieval only",
          "example search top 3, reranked")


@pytest.fixture(scope="module")
def demo_run(ray_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo_run")
    printed = io.StringIO()
    overrides = [f"run_dir={run_dir}", f"serve.port={free_port()}", "ray.metrics_export_port=null",
                 "eval.rerank_modes=[pairwise]"]
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(printed):
        assert load_script("ray_jobs/full_pipeline.py").main(["--config", "configs/demo.yaml", *overrides]) == 0
    return run_dir, printed.getvalue()


def test_every_ground_truth_check_passes(demo_run):
    run_dir, _ = demo_run
    checks = json.loads((run_dir / "report" / "demo_checks.json").read_text())
    assert [c["name"] for c in checks] == list(CHECKS)
    failed = [c for c in checks if not c["passed"]]
    assert not failed, json.dumps(failed, indent=1)


def test_the_job_prints_the_checks_and_the_report_shows_them(demo_run):
    run_dir, printed = demo_run
    assert "Checked against the demo corpus's ground truth" in printed
    for name in CHECKS:
        assert f"| {name} |" in printed, name
    assert '<section id="demo-checks">' in (run_dir / "report" / "report.html").read_text()


def test_the_gallery_shows_distinct_hard_negatives(demo_run):
    run_dir, _ = demo_run
    mined = json.loads((run_dir / "mine" / "mined.json").read_text())
    for record in mined[:6]:
        negatives = [tuple(n) if isinstance(n, list) else n for n in record["hard_negatives"]]
        assert len(set(map(str, negatives))) > 1, record


def test_the_fine_tuned_embedder_starts_from_the_trained_off_the_shelf_one(demo_run):
    run_dir, _ = demo_run
    summary = json.loads((run_dir / "evaluate" / "summary.json").read_text())
    assert summary["off_the_shelf"]["embedder"].endswith("artifacts/demo_models/embedder")
    assert summary["embedder"].endswith("train_embedder/merged")
