"""Global-retrieval benchmark: exact flat (one array, and streamed in shards) vs IVF.

    python bench/retrieval.py            # 200k x 256 candidates, 10k queries, top-50

Each mode runs in its own process so its peak memory (max RSS) is its own. Queries are
noisy copies of their positives, as in real data where the positive ranks near the top.
Prints time, peak memory, IVF recall@50 against flat, and the ratios, all from this run.
"""

from __future__ import annotations

import argparse
import json
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
    noise = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    candidates = _unit(centres[rng.integers(0, len(centres), n)] + 0.6 * noise)
    positives = rng.choice(n, size=queries, replace=False)
    q = _unit(candidates[positives] + 0.3 * rng.standard_normal((queries, dim), dtype=np.float32) / np.sqrt(dim))
    np.save(folder / "queries.npy", q)
    np.save(folder / "positives.npy", positives)
    for k, part in enumerate(np.array_split(candidates, shards)):
        np.save(folder / f"shard-{k:03d}.npy", part)


def child(mode: str, folder: Path, k: int, nlist: int, nprobe: int) -> dict:
    from unime.mining import IndexSpec, retrieve_pool

    queries, positives = np.load(folder / "queries.npy"), np.load(folder / "positives.npy")
    files = sorted(folder.glob("shard-*.npy"))
    if mode == "flat":
        candidates = np.concatenate([np.load(f) for f in files])
        spec = IndexSpec("flat")
    elif mode == "flat-sharded":
        candidates = [lambda f=f: np.load(f) for f in files]
        spec = IndexSpec("flat")
    else:
        candidates = [lambda f=f: np.load(f) for f in files]
        spec = IndexSpec("ivf", nlist=nlist, nprobe=nprobe)
    started = time.perf_counter()
    rows, _ = retrieve_pool(queries, candidates, positives, k=k, index=spec)
    seconds = time.perf_counter() - started
    np.save(folder / f"rows-{mode}.npy", rows)
    return {"mode": mode, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's own high-water RSS (VmHWM; ru_maxrss would include the parent's at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recall(rows: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(rows, exact)]
    return float(np.mean(hits))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, Path(args.folder), args.k, args.nlist, args.nprobe)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(folder, args.candidates, args.dim, args.queries, args.shards)
        results = {}
        for mode in ("flat", "flat-sharded", "ivf"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", tmp, "--k", str(args.k),
                                  "--nlist", str(args.nlist), "--nprobe", str(args.nprobe)],
                                 check=True, capture_output=True, text=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
        exact = np.load(folder / "rows-flat.npy")
        for mode in results:
            results[mode]["recall_at_k"] = recall(np.load(folder / f"rows-{mode}.npy"), exact)
    pool_mb = args.candidates * args.dim * 4 / 2**20
    print(f"retrieval: {args.candidates} x {args.dim} candidates ({pool_mb:.0f} MB), {args.queries} queries, "
          f"top-{args.k}; IVF nlist={args.nlist} nprobe={args.nprobe}; {args.shards} shards")
    print(f"| mode | seconds | queries/s | peak RSS (MB) | recall@{args.k} vs flat |")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['seconds']:.2f} | {args.queries / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['recall_at_k']:.4f} |")
    flat, sharded, ivf = results["flat"], results["flat-sharded"], results["ivf"]
    print(f"ratios: ivf speed-up over flat {flat['seconds'] / ivf['seconds']:.2f}x; "
          f"sharded flat peak memory {sharded['peak_rss_mb'] / flat['peak_rss_mb']:.2f}x of one-array flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
