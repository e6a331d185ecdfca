"""Scale on paper: judging MMEB-train and training on N GPU nodes, from efficiencies measured here.

    python bench/scale_on_paper.py [--queries 1000000] [--pairs-per-query 51] [--nodes 1:1,4:1,16:2,64:8]

Measured on this machine in this run: the dense matmul peak; the model FLOP utilisation
(MFU) of the judge's forward (HF, a query's 51 pairs per batch, on prompts at the paper's
shapes as bench/judge_throughput.py builds them) and of an embedder training step
(GradCache, bench/train_step.py's batch), both on the ~100M-parameter Qwen2-VL/Qwen2.5-VL
configs; the FLOP rate of exact FAISS search; the text tokens and images of a judge prompt
and the bytes per judge score row. Carried to the cluster: the same MFUs at H100 dense BF16
peak, the paper's models and image sizes (docs/method.md), MMEB-train's size, and the share
of judge prompt tokens vLLM's prefix cache reuses (``--prefix-reuse``; by default what
bench/judge_throughput.py measured at these shapes). Stated assumptions: DDP and judge
sharding scale linearly in nodes (global batch and steps fixed), exact FAISS search scales
linearly in cores. Everything printed is either measured here or a stated constant.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmarks' measuring functions

H100_BF16_PEAK = 989e12  # dense, SXM
JUDGE_PARAMS = 8.3e9  # Qwen2.5-VL-7B-Instruct, language model + vision tower
EMBEDDER_PARAMS = 2.2e9  # Qwen2-VL-2B-Instruct
JUDGE_IMAGE_TOKENS = 235200 // (28 * 28)  # judge.max_pixels in configs/qwen2vl_2b.yaml
TRAIN_IMAGE_TOKENS = 451584 // (28 * 28)  # 672x672 training images (docs/method.md)
EMBED_DIM = 1536  # Qwen2-VL-2B hidden size: the pooled embedding
CANDIDATES_PER_QUERY = 1.0  # MMEB-train: about one distinct positive per query (the global pool)
# vLLM's prefix cache at the paper's judge shapes with 32-token blocks: 72.2% of the prompt
# tokens reused (bench/judge_throughput.py --block-size 32; docs/benchmarks.md)
PREFIX_REUSE = 0.722
TRAIN = {"gpus_per_node": 8, "queries_per_gpu": 64, "sequences_per_query": 10, "steps": 2000}  # 1 + pos + 8 negs


def measure_judge(model_dir: Path, corpus: Path, queries: int) -> dict:
    """MFU of the judge forward (FLOPs ~ 2 x params x prompt tokens) and a prompt's make-up, at
    the paper's shapes: prompts built as bench/judge_throughput.py builds them (the judge
    recipe, every image squashed to 1344 and fitted to the judge's budget, MMEB-train's task
    mix, a pool of 50), scored by HF in a query's 51 pairs per forward."""
    from judge_throughput import judge_inputs, mmeb_requests, query_chats, released_processor_bounds

    from unime.data.images import ImageCache, ImageLimits
    from unime.judge import HFJudge
    from unime.judge.prompts import message_images

    inputs = judge_inputs()
    released_processor_bounds(model_dir, inputs["min_pixels"], inputs["max_pixels"])
    judge = HFJudge(str(model_dir), device="cpu", **inputs)
    images = ImageCache(str(corpus), ImageLimits(), prepare=judge.prepare_image)
    per_query = query_chats(mmeb_requests(corpus, queries, pool=50), images)
    judge.score(per_query[0][:4])  # warm-up
    image_pad = judge.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    tokens = image_tokens = images_seen = 0
    for chats in per_query:
        ids = judge.encode(chats)["input_ids"]
        tokens += ids.numel()  # padded: what the forward computes
        image_tokens += int((ids == image_pad).sum())
        images_seen += sum(len(message_images(chat)) for chat in chats)
    started = time.perf_counter()
    for chats in per_query:
        judge.score(chats)
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in judge.model.parameters())
    pairs = sum(len(chats) for chats in per_query)
    return {"params": params, "tokens_per_pair": tokens / pairs, "text_tokens_per_pair": (tokens - image_tokens) / pairs,
            "images_per_pair": images_seen / pairs, "flop_rate": 2 * params * tokens / seconds, "pairs_per_s": pairs / seconds}


def measure_training(model: str, corpus: Path, size: str) -> dict:
    from train_step import BATCHES, child

    queries, chunk = BATCHES[size]
    result = child({"model": model, "corpus": str(corpus), "queries": queries, "workers": 1, "chunk": chunk,
                    "steps": 3})
    return {"flop_rate": result["flops"] / result["seconds"]}


def measure_faiss(candidates: int = 50_000, queries: int = 2_000, dim: int = 256) -> float:
    import faiss

    rng = np.random.default_rng(0)
    index = faiss.IndexFlatIP(dim)
    index.add(rng.standard_normal((candidates, dim), dtype=np.float32))
    search = rng.standard_normal((queries, dim), dtype=np.float32)
    started = time.perf_counter()
    index.search(search, 50)
    return 2 * candidates * queries * dim / (time.perf_counter() - started)


def score_row_bytes(rows: int = 100_000) -> float:
    """Parquet bytes per (query_id, candidate_id, score) row, ids as the pipeline makes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    ids = [f"{v:016x}" for v in rng.integers(0, 2**63, rows // 51 + 1)]
    table = pa.table({"query_id": np.repeat(ids, 51)[:rows], "candidate_id": [f"{v:016x}" for v in
                                                                               rng.integers(0, 2**63, rows)],
                      "score": rng.random(rows)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return len(buffer.getvalue()) / rows


def plan(measured: dict, queries: int, pairs_per_query: int, nodes: list[tuple[int, int]], cpu_node_cores: int,
         mfu_scale: float = 1.0, prefix_reuse: float = 0.0) -> list[str]:
    """The cluster hours table. ``prefix_reuse``: the share of judge prompt tokens the engine's
    prefix cache serves instead of computing (0: every token computed, as HF does)."""
    peak = measured["matmul_peak"]
    judge_mfu = measured["judge"]["flop_rate"] / peak * mfu_scale
    train_mfu = measured["train"]["flop_rate"] / peak * mfu_scale
    # A judge prompt: the measured template, texts and images per pair, each image at the paper's size.
    judge = measured["judge"]
    text_tokens, images_per_pair = judge["text_tokens_per_pair"], judge["images_per_pair"]
    pair_tokens = text_tokens + images_per_pair * JUDGE_IMAGE_TOKENS
    pairs = queries * pairs_per_query
    judge_flops = 2 * JUDGE_PARAMS * pair_tokens * pairs * (1 - prefix_reuse)
    judge_gpu_hours = judge_flops / (judge_mfu * H100_BF16_PEAK) / 3600
    # An embedded item (query or candidate): half a pair's text and images, images at training size.
    item_tokens = text_tokens / 2 + images_per_pair / 2 * TRAIN_IMAGE_TOKENS
    items = queries * (1 + CANDIDATES_PER_QUERY)
    embed_gpu_hours = 2 * EMBEDDER_PARAMS * item_tokens * items / (judge_mfu * H100_BF16_PEAK) / 3600
    candidates = queries * CANDIDATES_PER_QUERY
    faiss_rate = measured["faiss_flop_rate"] * cpu_node_cores / (os.cpu_count() or 1)
    retrieval_hours = 2 * queries * candidates * EMBED_DIM / faiss_rate / 3600
    embeddings_gb = items * EMBED_DIM * 4 / 1e9
    sequences = TRAIN["gpus_per_node"] * TRAIN["queries_per_gpu"] * TRAIN["sequences_per_query"]
    step_flops = 8 * EMBEDDER_PARAMS * sequences * item_tokens  # 2N per pass; GradCache: 4 passes
    train_hours = TRAIN["steps"] * step_flops / (TRAIN["gpus_per_node"] * train_mfu * H100_BF16_PEAK) / 3600
    lines = [
        f"measured here: matmul peak {peak / 1e9:.0f} GFLOP/s; judge forward MFU {judge_mfu:.1%} "
        f"({judge['params'] / 1e6:.1f}M params, {judge['pairs_per_s']:.1f} pairs/s); "
        f"training step MFU {train_mfu:.1%}; FAISS flat search {measured['faiss_flop_rate'] / 1e9:.0f} GFLOP/s; "
        f"judge prompt {judge['tokens_per_pair']:.0f} tokens padded, {text_tokens:.0f} text tokens and "
        f"{images_per_pair:.2f} images per pair; {measured['score_row_bytes']:.1f} parquet bytes per judge score",
        f"carried: {pair_tokens:.0f} tokens per pair ({text_tokens:.0f} text + {images_per_pair:.2f} x "
        f"{JUDGE_IMAGE_TOKENS} image), {item_tokens:.0f} per embedded item ({TRAIN_IMAGE_TOKENS} per training "
        f"image); "
        f"judge {JUDGE_PARAMS / 1e9:.1f}B, embedder {EMBEDDER_PARAMS / 1e9:.1f}B params; H100 BF16 peak "
        f"{H100_BF16_PEAK / 1e12:.0f} TFLOP/s at the MFUs above",
        f"MMEB-train: {queries:,} queries x {pairs_per_query} = {pairs / 1e6:.1f}M pairs, "
        f"{1 - prefix_reuse:.1%} of their prompt tokens computed (prefix reuse {prefix_reuse:.1%}), "
        f"{judge_flops:.2e} judge FLOPs = {judge_gpu_hours:,.0f} H100-hours "
        f"({pairs / (judge_gpu_hours * 3600):.0f} pairs/s per GPU); embedding {embed_gpu_hours:,.1f} H100-hours; "
        f"exact global retrieval {retrieval_hours:,.1f} h on one {cpu_node_cores}-core CPU node "
        f"({candidates * EMBED_DIM * 4 / 1e9:.1f} GB of candidates at dim {EMBED_DIM}; {embeddings_gb:.1f} GB of "
        f"embeddings through the object store); "
        f"scores {pairs * measured['score_row_bytes'] / 1e9:.1f} GB of parquet "
        f"({pairs * measured['score_row_bytes'] / (judge_gpu_hours * 3600) / 1e3:.1f} kB/s per judge GPU); "
        f"training {TRAIN['steps']} steps x {sequences:,} sequences = {train_hours:,.1f} h on one 8xH100 node",
        "| judge-gpu nodes (1 GPU) | train-gpu nodes (8 GPUs) | judge (h) | embed (h) | retrieval (h) | train (h) "
        "| total (h) | bottleneck |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for judges, trainers in nodes:
        stages = {"judge": judge_gpu_hours / judges, "embed": embed_gpu_hours / judges, "retrieval": retrieval_hours,
                  "train": train_hours / trainers}
        lines.append(f"| {judges} | {trainers} | " + " | ".join(f"{hours:,.2f}" for hours in stages.values())
                     + f" | {sum(stages.values()):,.1f} | {max(stages, key=stages.get)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--pairs-per-query", type=int, default=51)
    parser.add_argument("--nodes", default="1:1,4:1,16:2,64:8", help="judge-gpu:train-gpu node counts per row")
    parser.add_argument("--cpu-node-cores", type=int, default=32, help="cores of a cpu-worker (m6i.8xlarge: 32)")
    parser.add_argument("--judge-queries", type=int, default=2, help="queries (x51 pairs) timed for the judge MFU")
    parser.add_argument("--size", default="base100m", help="checkpoint size the MFUs are measured on")
    parser.add_argument("--prefix-reuse", type=float, default=PREFIX_REUSE,
                        help="share of judge prompt tokens vLLM's prefix cache reuses (default: the share "
                             "bench/judge_throughput.py --block-size 32 measured at these shapes)")
    args = parser.parse_args(argv)
    from train_step import matmul_peak_gflops

    from unime.demo import corpus as demo_data
    from unime.demo import tiny

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        # enough text-to-image rows for the training batch, grounding images for the judge's task mix
        demo_data.build(corpus, demo_data.DemoCorpusConfig(train_images=200, grounding_images=30, eval_queries=2))
        checkpoints = tiny.build(Path(tmp) / args.size, size=args.size)
        measured = {"matmul_peak": matmul_peak_gflops(threads=os.cpu_count() or 1) * 1e9,
                    "judge": measure_judge(Path(checkpoints["judge"]), corpus, args.judge_queries),
                    "train": measure_training(str(checkpoints["embedder"]), corpus, args.size),
                    "faiss_flop_rate": measure_faiss(), "score_row_bytes": score_row_bytes()}
    print(f"scale on paper ({os.cpu_count()}-core CPU measured, {args.size} checkpoints)")
    nodes = [tuple(int(n) for n in row.split(":")) for row in args.nodes.split(",")]
    for line in plan(measured, args.queries, args.pairs_per_query, nodes, args.cpu_node_cores,
                     prefix_reuse=args.prefix_reuse):
        print(line)
    print("the same at half the measured MFUs (GPU kernels less efficient than this CPU's GEMMs):")
    for line in plan(measured, args.queries, args.pairs_per_query, nodes, args.cpu_node_cores, mfu_scale=0.5,
                     prefix_reuse=args.prefix_reuse)[-len(nodes):]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
