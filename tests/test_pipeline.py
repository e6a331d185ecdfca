"""The full pipeline job: in process, through ``ray job submit`` after a crash, its metrics and its report."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import (
    PIPELINE_STAGES,
    ROOT,
    MetricsWatcher,
    chromium_dom,
    free_port,
    load_script,
    pipeline_overrides,
)

pytestmark = pytest.mark.integration
CONFIG = "configs/demo.yaml"
MINING_STAGES = "ingest,embed,retrieve,judge,mine"
SECTIONS = ("stages", "judge-scores", "false-negatives", "gallery", "training", "evaluation")


def job_args(demo_dir, tiny_dir, run_dir, stages: str = PIPELINE_STAGES) -> list[str]:
    return ["--config", CONFIG, "--stages", stages, *pipeline_overrides(demo_dir, tiny_dir, run_dir)]


@pytest.fixture(scope="module")
def full_run(ray_cluster, metrics_port, demo_dir, tiny_dir, tmp_path_factory):
    """One uninterrupted run of every stage but serve, in this process, with its metrics
    endpoint watched meanwhile: (run dir, stdout, watcher)."""
    run_dir = tmp_path_factory.mktemp("pipeline")
    printed = io.StringIO()
    watcher = MetricsWatcher(metrics_port)
    watcher.start()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(printed):
        assert load_script("ray_jobs/full_pipeline.py").main(job_args(demo_dir, tiny_dir, run_dir)) == 0
    watcher.finish()
    return run_dir, printed.getvalue(), watcher


def mining_outputs(run_dir: Path) -> dict:
    """What the mining stages produce: every later stage is a function of these and the config."""
    return {
        "judge scores": pq.read_table(run_dir / "judge/scores").sort_by([("query_id", "ascending"),
                                                                          ("candidate_id", "ascending")]),
        "mined.json": (run_dir / "mine/mined.json").read_bytes(),
        "mined table": pq.read_table(run_dir / "mine/mined.parquet"),
        "skipped": pq.read_table(run_dir / "mine/skipped.parquet"),
    }


def test_pipeline_prints_summary_and_report_path(full_run):
    run_dir, printed, _ = full_run
    assert f"report: {run_dir / 'report' / 'report.html'}" in printed
    assert "| embedder |" in printed and "[train_reranker] done" in printed


def test_pipeline_metrics_reach_the_prometheus_endpoint(full_run):
    run_dir, _, watcher = full_run

    def series(name: str, *labels: str) -> list[str]:
        return [s for s in watcher.seen if s.startswith(name + "{") and all(label in s for label in labels)]

    def added(name: str, *labels: str) -> float:
        """What this run added to a counter (summed over the processes that report it)."""
        return sum(watcher.seen[s] - watcher.before.get(s, 0.0) for s in series(name, *labels))

    manifests = {stage: json.loads((run_dir / stage / "manifest.json").read_text())["rows"]
                 for stage in ("ingest", "judge", "mine")}
    assert added("ray_unime_stage_rows_total", 'stage="mine"', 'count="false_negatives_filtered"') == (
        manifests["mine"]["false_negatives_filtered"])
    assert added("ray_unime_stage_rows_total", 'stage="ingest"', 'count="quarantined_rows"') == (
        manifests["ingest"]["quarantined_rows"])
    assert added("ray_unime_stage_rows_total", 'stage="judge"', 'count="pairs"') == manifests["judge"]["pairs"]
    assert added("ray_unime_judge_pairs_total") == manifests["judge"]["pairs"]
    assert added("ray_unime_judge_call_seconds_count") > 0
    assert added("ray_unime_items_embedded_total", 'stage="embed"') > 0
    assert added("ray_unime_stage_seconds_total", 'stage="train_embedder"') > 0
    for model in ("embedder", "reranker"):  # live gauges, seen while training ran
        assert series("ray_unime_train_loss", f'model="{model}"'), model
        assert series("ray_unime_train_examples_per_second", f'model="{model}"'), model
        assert added("ray_unime_train_steps_total", f'model="{model}"') > 0, model


def test_report_renders_in_headless_chromium(full_run, tmp_path):
    run_dir, _, _ = full_run
    report = run_dir / "report" / "report.html"
    dom = chromium_dom(report.as_uri(), tmp_path / "profile", budget_ms=5000)
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    for stage in PIPELINE_STAGES.split(",")[:-1]:
        assert f"<td>{stage}</td>" in dom, stage
    assert dom.count('class="figure"') == 3  # judge histograms, loss curves, P@1 by meta-task
    assert dom.count('class="example"') == 6 and 'class="card negative"' in dom
    assert "P@1 + rerank (pairwise)" in dom
    assert "filter recall vs. ground truth" in dom  # the demo corpus records its ground truth
    assert (run_dir / "report/judge_scores.png").stat().st_size > 1000
    assert (run_dir / "report/losses.png").stat().st_size > 1000


# ----- ray job submit against a `ray start --head` cluster, with a crash in the middle of the judge


def stop_cluster(temp_dir: Path) -> None:
    """``ray stop`` would stop every Ray on the machine (the test session's too): kill only
    the processes of the cluster started under ``temp_dir``."""
    import psutil

    doomed = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and any(str(temp_dir) in part for part in process.info["cmdline"] or []):
            doomed.append(process)
    for process in doomed:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(doomed, timeout=20)


@pytest.fixture(scope="module")
def ray_head():
    """A head started with ``ray start --head`` on 127.0.0.1; yields the dashboard (Jobs API) address."""
    temp_dir = Path(tempfile.mkdtemp(prefix="uh", dir="/tmp"))  # Ray's socket paths must stay short
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                    f"--port={free_port()}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
                    "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                    # the session's cluster holds the default agent port already
                    f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"],
                   check=True, env=env, capture_output=True, timeout=180)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        yield address
    finally:
        stop_cluster(temp_dir)


def submit(address: str, submission_id: str, args: list[str]) -> None:
    """The user's command: ``ray job submit --working-dir . -- python ray_jobs/full_pipeline.py ...``."""
    command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address,
               "--submission-id", submission_id, "--working-dir", str(ROOT), "--no-wait", "--",
               sys.executable, "ray_jobs/full_pipeline.py", *args]
    deadline = time.time() + 90
    while True:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        # a fresh head accepts submissions only once its job agent is up
        if done.returncode == 0 or "No available agent" not in done.stderr or time.time() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def wait_for(client, submission_id: str, timeout_s: float = 600):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout_s
    while (status := client.get_job_status(submission_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                  JobStatus.STOPPED}:
        assert time.time() < deadline, f"job {submission_id} still {status}"
        time.sleep(1)
    return status


def kill_driver_during_judge(client, submission_id: str, run_dir: Path, after_shards: int = 2) -> None:
    """SIGKILL the job's driver once ``after_shards`` judge shards are committed."""
    scores = run_dir / "judge" / "scores"
    deadline = time.time() + 300
    while len(list(scores.glob("*.parquet"))) < after_shards:
        assert time.time() < deadline and client.get_job_status(submission_id) in ("PENDING", "RUNNING"), (
            client.get_job_logs(submission_id)[-3000:])
        time.sleep(0.05)
    os.kill(int(client.get_job_info(submission_id).driver_info.pid), signal.SIGKILL)


def test_crashed_job_reruns_to_the_uninterrupted_outputs(ray_head, full_run, demo_dir, tiny_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head)
    run_dir = tmp_path / "run"
    # Through mine: the crash lands in the judge, and every later stage is a function of mine's
    # outputs and the config (the full run covers those stages)
    args = job_args(demo_dir, tiny_dir, run_dir, MINING_STAGES)
    submit(ray_head, "unime-crash", args)
    kill_driver_during_judge(client, "unime-crash", run_dir)
    assert wait_for(client, "unime-crash") == JobStatus.FAILED
    assert not (run_dir / "judge" / "manifest.json").exists(), "the crash was meant to land inside the judge"
    committed = {p.name: p.stat().st_mtime_ns for p in (run_dir / "judge" / "scores").glob("*.parquet")}
    total = json.loads((run_dir / "judge" / "progress.json").read_text())["shards"]
    assert 2 <= len(committed) < total

    submit(ray_head, "unime-rerun", args)  # the same command again
    assert wait_for(client, "unime-rerun") == JobStatus.SUCCEEDED, client.get_job_logs("unime-rerun")[-5000:]
    logs = client.get_job_logs("unime-rerun")
    for stage in ("ingest", "embed", "retrieve"):
        assert f"[{stage}] skipped (manifest matches)" in logs, stage
    judged = json.loads((run_dir / "judge" / "manifest.json").read_text())["rows"]
    assert judged["shards_reused"] == len(committed) and judged["shards_scored_this_run"] == total - len(committed)
    for name, mtime in committed.items():
        assert (run_dir / "judge" / "scores" / name).stat().st_mtime_ns == mtime, f"{name} was rescored"
    reference, rerun = mining_outputs(full_run[0]), mining_outputs(run_dir)
    assert rerun.keys() == reference.keys()
    for key in reference:
        assert rerun[key] == reference[key], key
