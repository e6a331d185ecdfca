"""Global-retrieval benchmark: exact flat (one array, and streamed in shards) vs IVF, at the
embedders' real width.

    python bench/retrieval.py                                  # 200k x 1536, 10k queries, top-50
    python bench/retrieval.py --candidates 1000000 --queries 2000 --modes flat-sharded,ivf

1,536 dimensions is Qwen2-VL-2B's embedding width (the 7B's is 3,584). Each mode runs in its
own process so its peak memory (max RSS) is its own. Queries are noisy copies of their
positives, as in real data where the positive ranks near the top. IVF's build (k-means
training of the coarse quantiser on a uniform sample, then adding every shard) and its
search are timed apart, the search at several ``nprobe`` on one built index, each with its
recall@k against exact search. Mining searches once per training query, so the query count
decides whether the build pays: the bench prints, from the measured times, the query count
from which IVF (build included) is 5x faster than exact search.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_data(folder: Path, n: int, dim: int, queries: int, shards: int, seed: int = 0) -> None:
    """Clustered unit vectors (embeddings of real corpora cluster by topic and task)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((max(1, n // 50), dim), dtype=np.float32))
    # in place, the same values in the same order: a 1M x 1,536 pool is 6 GB a copy
    candidates = rng.standard_normal((n, dim), dtype=np.float32)
    candidates /= np.float32(np.sqrt(dim))
    candidates *= np.float32(0.6)
    candidates += centres[rng.integers(0, len(centres), n)]
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    positives = rng.choice(n, size=queries, replace=False)
    q = _unit(candidates[positives] + 0.3 * rng.standard_normal((queries, dim), dtype=np.float32) / np.sqrt(dim))
    np.save(folder / "queries.npy", q)
    np.save(folder / "positives.npy", positives)
    for k, part in enumerate(np.array_split(candidates, shards)):
        np.save(folder / f"shard-{k:03d}.npy", part)


def child(mode: str, folder: Path, k: int, ivf: dict) -> dict:
    from unime.mining import IndexSpec, retrieve_pool
    from unime.mining.retrieval import build_ivf, positive_similarities, search_ivf

    queries, positives = np.load(folder / "queries.npy"), np.load(folder / "positives.npy")
    files = sorted(folder.glob("shard-*.npy"))
    shards = [lambda f=f: np.load(f) for f in files]
    if mode in ("flat", "flat-sharded"):
        candidates = np.concatenate([np.load(f) for f in files]) if mode == "flat" else shards
        started = time.perf_counter()
        rows, _ = retrieve_pool(queries, candidates, positives, k=k, index=IndexSpec("flat"))
        seconds = time.perf_counter() - started
        np.save(folder / f"rows-{mode}.npy", rows)
        return {"mode": mode, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    spec = IndexSpec("ivf", nlist=ivf["nlist"], train_size=ivf["train_size"], train_iterations=ivf["iterations"])
    started = time.perf_counter()
    index = build_ivf(shards, spec)
    build = time.perf_counter() - started
    pos_sims = positive_similarities(queries, shards, positives)
    searches = {}
    for nprobe in ivf["nprobes"]:
        index.nprobe = nprobe
        started = time.perf_counter()
        rows, _ = search_ivf(index, queries, pos_sims, positives, k, spec)
        searches[nprobe] = time.perf_counter() - started
        np.save(folder / f"rows-ivf-{nprobe}.npy", rows)
    return {"mode": mode, "build_seconds": build, "search_seconds": searches, "nlist": index.nlist,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's own high-water RSS (VmHWM; ru_maxrss would include the parent's at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recall(rows: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(rows, exact)]
    return float(np.mean(hits))


def crossover_queries(flat_per_query: float, build: float, ivf_per_query: float, ratio: float = 5.0) -> float | None:
    """The query count from which IVF, build included, is ``ratio`` x faster than exact search:
    ``flat_per_query * Q >= ratio * (build + ivf_per_query * Q)``; None if never."""
    margin = flat_per_query - ratio * ivf_per_query
    return ratio * build / margin if margin > 0 else None


def run_mode(mode: str, tmp: str, args) -> dict:
    ivf = {"nlist": args.nlist, "train_size": args.train_size, "iterations": args.iterations,
           "nprobes": [int(n) for n in args.nprobes.split(",")]}
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", tmp, "--k", str(args.k),
                          "--ivf", json.dumps(ivf)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(results: dict, folder: Path, args) -> None:
    exact_mode = "flat" if "flat" in results else "flat-sharded"
    exact, q = np.load(folder / f"rows-{exact_mode}.npy"), args.queries
    pool_mb = args.candidates * args.dim * 4 / 2**20
    print(f"retrieval: {args.candidates} x {args.dim} candidates ({pool_mb:.0f} MB), {q} queries, top-{args.k}; "
          f"{args.shards} shards; CPU, {os.cpu_count()} cores")
    print(f"| mode | build (s) | search (s) | queries/s | peak RSS (MB) | recall@{args.k} vs exact | "
          f"search speed-up | speed-up, build included | 5x, build included, from | list vectors read (GB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("flat", "flat-sharded"):
        if mode in results:
            r = results[mode]
            print(f"| {mode} | - | {r['seconds']:.2f} | {q / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | 1.0000 "
                  f"| - | - | - | - |")
    flat_per_query = results[exact_mode]["seconds"] / q
    exact_flops = 2 * q * args.candidates * args.dim
    print(f"exact search: {exact_flops / 1e12:.1f} TFLOP of inner products, "
          f"{exact_flops / results[exact_mode]['seconds'] / 1e9:.0f} GFLOP/s achieved")
    if "flat" in results and "flat-sharded" in results:
        print(f"ratios: sharded flat peak memory {results['flat-sharded']['peak_rss_mb'] / results['flat']['peak_rss_mb']:.2f}x "
              f"of one-array flat")
    if "ivf" not in results:
        return
    ivf = results["ivf"]
    print(f"exact search: {exact_mode}; ivf: nlist={ivf['nlist']}, coarse quantiser trained on {args.train_size} sampled rows, "
          f"{args.iterations} k-means passes; build {ivf['build_seconds']:.1f} s (peak RSS {ivf['peak_rss_mb']:.0f} MB)")
    for nprobe, seconds in ivf["search_seconds"].items():
        found = recall(np.load(folder / f"rows-ivf-{nprobe}.npy"), exact)
        cross = crossover_queries(flat_per_query, ivf["build_seconds"], seconds / q)
        where = f"{cross:,.0f} queries" if cross is not None else "never"
        scanned_gb = q * int(nprobe) * (args.candidates / ivf["nlist"]) * args.dim * 4 / 1e9  # lists of mean size
        exact_seconds = results[exact_mode]["seconds"]
        print(f"| ivf nprobe={nprobe} | {ivf['build_seconds']:.1f} | {seconds:.2f} | {q / seconds:.0f} | - | "
              f"{found:.4f} | {exact_seconds / seconds:.1f}x | "
              f"{exact_seconds / (seconds + ivf['build_seconds']):.2f}x | {where} | {scanned_gb:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--modes", default="flat,flat-sharded,ivf")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobes", default="8,16,32,64")
    parser.add_argument("--train-size", type=int, default=65_536)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--ivf", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, Path(args.folder), args.k, json.loads(args.ivf))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp), args.candidates, args.dim, args.queries, args.shards)
        results = {mode: run_mode(mode, tmp, args) for mode in args.modes.split(",")}
        report(results, Path(tmp), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
