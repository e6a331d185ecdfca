"""Embedder training-step benchmark: queries/second, peak memory and MFU, measured in one run.

    python bench/train_step.py [--sizes tiny,base100m] [--steps 3]

For each random-init embedder size (tiny; ~100M parameters built from a config) it times
the UniME-V2 step (9 candidates per query, soft-KL loss, LoRA) with and without GradCache,
on 1 worker and on 2 DDP workers (gloo, the backend Ray Train sets up on CPU). Each
configuration runs in its own process so its peak RSS is its own. MFU compares the step's
model FLOPs (6 x trainable-path params x tokens, plus GradCache's extra forward) with a
matmul peak measured on this machine in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def make_batch(corpus: Path, queries: int, candidates: int, seed: int) -> dict:
    import pyarrow.parquet as pq

    rows = pq.read_table(corpus / "train" / "DemoI2T" / "train-00000.parquet").to_pylist()
    t2i = pq.read_table(corpus / "train" / "DemoT2I" / "train-00000.parquet").to_pylist()
    import random

    rng = random.Random(seed)
    batch = {"query_text": [], "query_image": [], "cand_texts": [], "cand_images": [], "judge_scores": []}
    for q in range(queries):
        row = rows[q]
        cands = [(row["pos_text"], "")] + [(r["pos_text"], r["pos_image_path"]) if k % 3 == 0 else (rows[-k]["pos_text"], "")
                                           for k, r in enumerate(t2i[q * candidates: q * candidates + candidates - 1], 1)]
        batch["query_text"].append(row["qry"])
        batch["query_image"].append(row["qry_image_path"])
        batch["cand_texts"].append([c[0] for c in cands])
        batch["cand_images"].append([c[1] for c in cands])
        batch["judge_scores"].append([0.9] + [rng.random() * 0.8 for _ in cands[1:]])
    return batch


def time_forwards(trainer) -> list[float]:
    """A list that grows by the seconds of each of the trainer's model forwards."""
    seconds: list[float] = []
    embed = trainer.embed_collated

    def timed(batch):
        started = time.perf_counter()
        out = embed(batch)
        seconds.append(time.perf_counter() - started)
        return out

    trainer.embed_collated = timed
    return seconds


def worker(rank: int, world: int, port: int, args: dict, results) -> None:
    import torch
    import torch.distributed as dist

    from unime.config import EmbedderTrainConfig, OptimConfig
    from unime.train.embedder import EmbedderTrainer

    torch.set_num_threads(max(1, 2 // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    config = EmbedderTrainConfig(optim=OptimConfig(lr=1e-4), warmup_steps=0, max_steps=100, gradcache_chunk=args["chunk"],
                                 lora=replace(EmbedderTrainConfig().lora, dropout=0.0))
    trainer = EmbedderTrainer(args["model"], config, device="cpu", image_root=args["corpus"])
    if world > 1:
        trainer.module = torch.nn.parallel.DistributedDataParallel(trainer.module)
    per_rank = args["queries"] // world
    full = make_batch(Path(args["corpus"]), args["queries"], 9, 0)
    batch = {k: v[rank * per_rank:(rank + 1) * per_rank] for k, v in full.items()}
    forward_seconds = time_forwards(trainer)
    trainer.step(batch)  # warm-up
    forward_seconds.clear()
    started = time.perf_counter()
    for _ in range(args["steps"]):
        trainer.step(batch)
    seconds = (time.perf_counter() - started) / args["steps"]
    tokens = sum(int(trainer.embedder.collate(trainer.items(t, i))["attention_mask"].sum())
                 for t, i in [(batch["query_text"], batch["query_image"]),
                              ([t for ts in batch["cand_texts"] for t in ts], [i for im in batch["cand_images"] for i in im])])
    # parameters that do matmuls per token (not the embedding lookup; the LM head is never run)
    params = sum(p.numel() for n, p in trainer.model.named_parameters()
                 if "embed_tokens" not in n and "lm_head" not in n and "lora_" not in n)
    results.put({"rank": rank, "seconds": seconds, "tokens": tokens, "params": params, "rss": peak_rss_mb(),
                 "forward_seconds": sum(forward_seconds) / args["steps"]})
    if world > 1:
        # the DDP reducer must not hold the group's last reference: destroyed there, the
        # group joins its threads without releasing the GIL and can deadlock
        del trainer
        gc.collect()
        dist.destroy_process_group()


def child(args: dict) -> dict:
    import torch.multiprocessing as mp

    world = args["workers"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=worker, args=(r, world, port, args, results)) for r in range(world)]
    for p in processes:
        p.start()
    out = [results.get() for _ in processes]
    for p in processes:
        p.join()
    seconds = max(o["seconds"] for o in out)
    tokens = sum(o["tokens"] for o in out)
    forwards = 4 if args["chunk"] else 3  # 6NT convention (forward + 2x backward); GradCache adds a forward
    return {"queries_per_s": args["queries"] / seconds, "seconds": seconds, "tokens": tokens,
            "forward_seconds": max(o["forward_seconds"] for o in out),
            "flops": 2 * forwards * out[0]["params"] * tokens, "peak_rss_mb": sum(o["rss"] for o in out),
            "params": out[0]["params"]}


# queries per step and GradCache chunk per size: the ~100M step is large enough that its
# activations, not the weights, dominate the plain step's memory (what GradCache is for)
BATCHES = {"tiny": (8, 6), "base100m": (16, 32)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,base100m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    from unime.demo import corpus as demo_data
    from unime.demo import tiny

    peak = matmul_peak_gflops(threads=2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        demo_data.build(corpus, demo_data.DemoCorpusConfig(train_images=200, grounding_images=4, eval_queries=2))
        for size in args.sizes.split(","):
            model = str(tiny.build(Path(tmp) / size, size=size)["embedder"])
            queries, chunk_size = BATCHES[size]
            for workers in (1, 2):
                for chunk in (0, chunk_size):
                    spec = {"model": model, "corpus": str(corpus), "queries": queries, "workers": workers,
                            "chunk": chunk, "steps": args.steps}
                    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
                    result = json.loads(out)
                    rows.append({"size": size, "workers": workers, "gradcache": bool(chunk), **result})
                    print(f"done {size} workers={workers} gradcache={bool(chunk)}", file=sys.stderr)
    shapes = "; ".join(f"{size}: {BATCHES[size][0]} queries, GradCache chunk {BATCHES[size][1]}"
                       for size in args.sizes.split(","))
    print(f"embedder training step ({shapes}; 9 candidates per query; LoRA r16 DoRA; CPU, {os.cpu_count()} cores; "
          f"measured matmul peak {peak:.0f} GFLOP/s fp32)")
    print("| size | workers | GradCache | queries/s | step (s) | peak RSS (MB, all workers) | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        chunk = f"chunk {BATCHES[r['size']][1]}" if r["gradcache"] else "off"
        mfu = r["flops"] / r["seconds"] / (peak * 1e9)
        print(f"| {r['size']} ({r['params'] / 1e6:.1f}M) | {r['workers']} | {chunk} | "
              f"{r['queries_per_s']:.2f} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {mfu:.1%} |")
    for size in args.sizes.split(","):
        by = {(r["workers"], r["gradcache"]): r for r in rows if r["size"] == size}
        print(f"ratios {size}: GradCache peak memory {by[(1, True)]['peak_rss_mb'] / by[(1, False)]['peak_rss_mb']:.2f}x "
              f"of plain; GradCache speed {by[(1, True)]['queries_per_s'] / by[(1, False)]['queries_per_s']:.2f}x; "
              f"2/1 workers {by[(2, False)]['queries_per_s'] / by[(1, False)]['queries_per_s']:.2f}x")
        plain, cached = by[(1, False)], by[(1, True)]
        bound = (plain["seconds"] + plain["forward_seconds"]) / plain["seconds"]
        print(f"GradCache's bound {size}: the step takes {cached['seconds'] / plain['seconds']:.2f}x the plain step's "
              f"time; its one extra forward alone makes {bound:.2f}x (the plain step's forwards "
              f"{plain['forward_seconds']:.2f} s of {plain['seconds']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
