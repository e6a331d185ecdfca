"""Serving load benchmark on 127.0.0.1: latency and throughput, measured in one run.

    python bench/serve_load.py [--requests 120] [--concurrency 8] [--batch-size-model base100m]

Deploys the app on a local Ray cluster and sends a bounded load (a fixed number of requests
from a fixed number of client threads, each request with a timeout): /v1/search without and
with rerank on the tiny checkpoints, then /v1/embeddings with the embedder's
``@serve.batch`` at batch size 16 against batch size 1 on the tiny and on a ~100M-parameter
embedder (random init from a config; its own index), from enough client threads that full
batches can form. Prints p50/p99 latency, requests/second and the embedder replica's mean
batch for each row, the batching gain per model, and how many Serve configuration warnings
(a batch size its ``max_ongoing_requests`` can never fill) the session's logs hold.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

QUERIES = ["two red circles on the left", "a blue square", "four green triangles at the top", "purple diamonds",
           "one yellow circle in the center", "three orange squares at the bottom"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load(url: str, payloads: list[dict], concurrency: int) -> dict:
    import requests

    def one(payload):
        started = time.perf_counter()
        response = requests.post(url, json=payload, timeout=60)
        response.raise_for_status()
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = np.array(list(pool.map(one, payloads)))
    wall = time.perf_counter() - started
    return {"p50_ms": 1000 * np.percentile(latencies, 50), "p99_ms": 1000 * np.percentile(latencies, 99),
            "rps": len(payloads) / wall}


def app_config(tmp: str, corpus: Path, models: dict, run: str, batch_size: int):
    from unime.config import load_config

    return load_config(None, [
        f"run_dir={tmp}/{run}", f"data.train=[{corpus}/train]", f"data.image_root={corpus}",
        f"models.embedder={models['embedder']}", f"models.reranker={models['reranker']}",
        "models.dtype=float32", "models.device=cpu", "embed.actors.num_cpus=0.5",
        "serve.replica_cpus=0.1", "serve.rerank_mode=pairwise", f"serve.batch_size={batch_size}",
        "serve.batch_wait_s=0.005"])


def embedder_stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("EmbedderDeployment", app_name="unime").stats.remote().result()


def config_warnings() -> int:
    """Serve's warnings, in this session's logs, that a batch can never fill."""
    logs = Path("/tmp/ray/session_latest/logs")
    return sum(path.read_text(errors="replace").count("is larger than max_ongoing_requests")
               for path in logs.rglob("*.log")) if logs.exists() else 0


def measure(tmp: str, corpus: Path, args) -> dict[str, dict]:
    from ray import serve

    from unime.demo import tiny
    from unime.pipeline import build_index, ingest
    from unime.pipeline.deploy import app_for_run

    rows = {}
    search = [{"query": {"text": QUERIES[k % len(QUERIES)]}, "top_k": 10, "rerank_k": 10} for k in range(args.requests)]
    embed = [{"input": [{"text": QUERIES[k % len(QUERIES)] + f" #{k}"}]} for k in range(args.requests)]
    for size in ("tiny", args.batch_size_model):
        models = tiny.build(Path(tmp) / size, size=size)
        for batch_size in (16, 1):
            config = app_config(tmp, corpus, models, f"run-{size}", batch_size)
            if batch_size == 16:  # each model its own index: the retriever refuses a foreign one
                ingest.run(config.data, config.run_dir)
                build_index.run(config)
            serve.run(app_for_run(config), name="unime", route_prefix="/")
            load(args.base + "/v1/search", search[:8], 4)  # warm-up
            if size == "tiny" and batch_size == 16:
                rows["search, rerank off (tiny)"] = load(args.base + "/v1/search",
                                                         [p | {"rerank": False} for p in search], args.concurrency)
                rows["search, rerank on (pairwise, top-10; tiny)"] = load(args.base + "/v1/search", search,
                                                                          args.concurrency)
            before = embedder_stats()
            row = load(args.base + "/v1/embeddings", embed, args.batch_concurrency)
            after = embedder_stats()
            batches = after["batches"] - before["batches"]
            row["mean_batch"] = (after["mean_batch"] * after["batches"] - before["mean_batch"] * before["batches"]) / max(
                1, batches)
            rows[f"embeddings, serve.batch max {batch_size} ({size})"] = row
            serve.delete("unime")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-concurrency", type=int, default=32,
                        help="client threads for the batching rows (enough to fill batches of 16)")
    parser.add_argument("--batch-size-model", default="base100m")
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    from unime.demo import corpus as demo_data

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        demo_data.build(corpus, demo_data.DemoCorpusConfig(train_images=100, grounding_images=10, eval_queries=2))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args.base = f"http://127.0.0.1:{port}"
        rows = measure(tmp, corpus, args)
        warnings = config_warnings()
        serve.shutdown()
        ray.shutdown()
    print(f"serving load on 127.0.0.1 ({args.requests} requests per row; {args.concurrency} client threads for "
          f"search, {args.batch_concurrency} for embeddings; CPU, {os.cpu_count()} cores)")
    print("| route | p50 (ms) | p99 (ms) | requests/s | mean embedder batch |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "-"
        print(f"| {name} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | {batch} |")
    for size in ("tiny", args.batch_size_model):
        gain = rows[f"embeddings, serve.batch max 16 ({size})"]["rps"] / rows[f"embeddings, serve.batch max 1 ({size})"]["rps"]
        print(f"ratios {size}: @serve.batch (16 vs 1) throughput {gain:.2f}x")
    cost = rows["search, rerank on (pairwise, top-10; tiny)"]["p50_ms"] / rows["search, rerank off (tiny)"]["p50_ms"]
    print(f"rerank on/off p50 latency (tiny) {cost:.2f}x; Serve configuration warnings in the logs: {warnings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
