"""Serving load benchmark on 127.0.0.1: latency and throughput, measured in one run.

    python bench/serve_load.py [--requests 120] [--concurrency 8]

Deploys the app (tiny checkpoints, demo index) on a local Ray cluster and sends a bounded
load (a fixed number of requests from a fixed number of client threads, each request with
a timeout): /v1/search without and with rerank, and /v1/embeddings with the embedder's
``@serve.batch`` at batch size 16 against batch size 1. Prints p50/p99 latency and
requests/second for each, and the batching gain.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    from unime import demo_data, tiny
    from unime.config import load_config
    from unime.pipeline import build_index, ingest
    from unime.pipeline.deploy import app_for_run

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        demo_data.build(corpus, demo_data.DemoCorpusConfig(train_images=100, grounding_images=10, eval_queries=2))
        models = tiny.build(Path(tmp) / "tiny")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        search = [{"query": {"text": QUERIES[k % len(QUERIES)]}, "top_k": 10, "rerank_k": 10}
                  for k in range(args.requests)]
        embed = [{"input": [{"text": QUERIES[k % len(QUERIES)] + f" #{k}"}]} for k in range(args.requests)]
        for batch_size in (16, 1):
            config = load_config(None, [
                f"run_dir={tmp}/run", f"data.train=[{corpus}/train]", f"data.image_root={corpus}",
                f"models.embedder={models['embedder']}", f"models.reranker={models['reranker']}",
                "models.dtype=float32", "models.device=cpu", "embed.actors.num_cpus=0.5",
                "serve.replica_cpus=0.1", "serve.rerank_mode=pairwise", f"serve.batch_size={batch_size}",
                "serve.batch_wait_s=0.005"])
            if batch_size == 16:
                ingest.run(config.data, config.run_dir)
                build_index.run(config)
            serve.run(app_for_run(config), name="unime", route_prefix="/")
            load(base + "/v1/search", search[:8], 4)  # warm-up
            if batch_size == 16:
                rows["search, rerank off"] = load(base + "/v1/search", [p | {"rerank": False} for p in search],
                                                  args.concurrency)
                rows["search, rerank on (pairwise, top-10)"] = load(base + "/v1/search", search, args.concurrency)
            rows[f"embeddings, serve.batch max {batch_size}"] = load(base + "/v1/embeddings", embed, args.concurrency)
            serve.delete("unime")
        serve.shutdown()
        ray.shutdown()
    print(f"serving load on 127.0.0.1 ({args.requests} requests per row, {args.concurrency} client threads; "
          f"tiny checkpoints; CPU, {os.cpu_count()} cores)")
    print("| route | p50 (ms) | p99 (ms) | requests/s |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} |")
    gain = rows["embeddings, serve.batch max 16"]["rps"] / rows["embeddings, serve.batch max 1"]["rps"]
    cost = rows["search, rerank on (pairwise, top-10)"]["p50_ms"] / rows["search, rerank off"]["p50_ms"]
    print(f"ratios: @serve.batch (16 vs 1) throughput {gain:.2f}x; rerank on/off p50 latency {cost:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
