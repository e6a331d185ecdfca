"""Helpers shared by the pipeline tests."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from unime.config import load_config
from unime.pipeline.runner import MINING_STAGES
from unime.pipeline.runner import STAGES as REGISTRY
from unime.pipeline.stage import run_stage

STAGES = [(name, functools.partial(run_stage, REGISTRY[name])) for name in MINING_STAGES]


def config_classes() -> dict[str, type]:
    """YAMLs under configs/ that configure another entry point than the pipeline, by name."""
    from experiments.method_effect.components import MethodEffectConfig
    from unime.demo.models import DemoModelsConfig

    return {"method_effect.yaml": MethodEffectConfig, "demo_models.yaml": DemoModelsConfig}
ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """A script of the repo (``ray_jobs/...``, ``bench/...``) as a module, to call its ``main``."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def mining_config(demo_dir, tiny_dir, run_dir, *overrides):
    """A small, fast mining config over a demo corpus and tiny checkpoints."""
    return load_config(None, mining_overrides(demo_dir, tiny_dir, run_dir, *overrides))


def mining_overrides(demo_dir, tiny_dir, run_dir, *overrides) -> list[str]:
    return [
        f"run_dir={run_dir}", f"data.train=[{demo_dir}/train]", f"data.image_root={demo_dir}",
        f"models.embedder={tiny_dir}/embedder", f"models.judge={tiny_dir}/judge", "models.dtype=float32",
        "models.device=cpu", "embed.actors.num_cpus=0.5", "judge.actors.num_cpus=0.5", "judge.actors.num_gpus=0",
        "judge.backend=hf", "judge.shard_size=40", "judge.max_model_len=1024",
        "mining.pool_size=8", "mining.num_negatives=4",
        # random-init judges score everything alike; beta=0 keeps about half the pool
        "mining.beta=0.0", *overrides]


def run_all(config):
    return {name: stage(config) for name, stage in STAGES}


# Every stage but serve, on the small test corpus: small pools, a few training steps.
PIPELINE_STAGES = "ingest,embed,retrieve,judge,mine,train_embedder,train_reranker,evaluate,index,report"


def pipeline_overrides(demo_dir, tiny_dir, run_dir) -> list[str]:
    return mining_overrides(
        demo_dir, tiny_dir, run_dir, "demo.enabled=false", f"data.eval_dir={demo_dir}/eval",
        f"data.global_eval={demo_dir}/eval_global", f"models.reranker={tiny_dir}/reranker", "judge.shard_size=20",
        "train_embedder.num_hard_negatives=3", "train_embedder.gradcache_chunk=8", "train_embedder.max_steps=6",
        "train_embedder.checkpoint_every=3", "train_reranker.epochs=1", "train_reranker.max_steps=12", "train_reranker.listwise_candidates=3",
        "train_reranker.checkpoint_every=1000", "eval.rerank_k=4", "eval.rerank_modes=[pairwise]",
        "eval.actors.num_cpus=0.5", "index.faiss.kind=flat", "index.corpus=[]",
        # the session's cluster may hold Serve replicas: trainers take half a CPU, not both
        "train_embedder.placement.cpus_per_worker=0.5", "train_reranker.placement.cpus_per_worker=0.5")


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range. A port the kernel hands out (bind to
    0) is free only until the next process's outgoing connection takes it, and a test binds it
    later: Ray's own workers took one between the choice and the dashboard's bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, max(20001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 20000..{low}")


def chromium_dom(url: str, profile_dir, budget_ms: int = 20000) -> str:
    """The DOM headless Chromium (Debian's ``chromium``, installed by ``make test``) builds for ``url``."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by `make test` (Debian package chromium)"
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile_dir}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=True).stdout


def read_metrics(port: int, wait_s: float = 30) -> dict[str, float]:
    """Every sample of a Ray node's Prometheus endpoint: ``{'name{labels}': value}``; waits
    for the endpoint, which the metrics agent opens a few seconds after the node starts."""
    deadline = time.time() + wait_s
    while True:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    samples = (line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#"))
    return {series: float(value) for series, value in samples}


def scrape_metrics(port: int, names: list[str], timeout_s: float = 30,
                   until: Callable[[list[str]], bool] = bool) -> dict[str, list[str]]:
    """The series of each metric in ``names``, polling until ``until`` holds for every one's
    series (by default: some appear; the agent exports every few seconds) or the timeout passes."""
    deadline = time.time() + timeout_s
    while True:
        samples = read_metrics(port)
        found = {name: [series for series in samples if series.startswith(name + "{")] for name in names}
        if all(until(series) for series in found.values()) or time.time() > deadline:
            return found
        time.sleep(1)


class MetricsWatcher(threading.Thread):
    """Polls an endpoint while something runs and keeps the last value of every series seen:
    Ray drops a gauge ~2 s after its process stops setting it (a live value, like the loss)."""

    def __init__(self, port: int, interval_s: float = 0.5, settle_s: float = 3.0):
        super().__init__(daemon=True)
        self.port, self.interval_s, self.settle_s, self.seen = port, interval_s, settle_s, {}
        time.sleep(settle_s)  # what earlier work recorded is exported before the baseline is read
        self.before = read_metrics(port)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.seen.update(read_metrics(self.port))
            self._stop_event.wait(self.interval_s)

    def finish(self) -> dict[str, float]:
        """Stop after a few export intervals; the last value of every series seen."""
        time.sleep(self.settle_s)
        self._stop_event.set()
        self.join()
        self.seen.update(read_metrics(self.port))
        return self.seen


@contextlib.contextmanager
def restored_environment():
    """Undo what an in-process vLLM engine writes to ``os.environ`` (``LD_PRELOAD`` of torch's
    libgomp among others): a Ray cluster started later by the same test session inherits it
    and computes with another OpenMP runtime, so its floats stop matching the session's."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
