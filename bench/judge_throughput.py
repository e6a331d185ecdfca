"""Judge throughput: pairs/second for every way unime can run the judge, measured in one run.

    python bench/judge_throughput.py [--sizes tiny,base100m] [--queries 8]

Modes, on the same (query, candidate) pairs from the demo corpus, each query with its
positive and a pool of 50 (51 pairs per query, the method's shape):
- hf-single: transformers, one pair per forward;
- hf-batched: transformers, a query's 51 pairs per forward;
- vllm-no-prefix: vLLM, all pairs in one call, automatic prefix caching off;
- vllm-prefix: the same with prefix caching on (a query's shared prefix computed once);
- ray-1-actor / ray-2-actors: the judge stage's actor pool (vLLM engines) over shards.
Checkpoints are random-init (tiny, and a ~100M-parameter config built from a config).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the CPU worker warns once per step


def demo_requests(corpus: Path, queries: int, pool: int):
    """Judge requests like the stage's: query + [positive, pool...] with texts and images."""
    import pyarrow as pa

    from unime.data import read_pairs
    from unime.pipeline.embed import unique_items
    from unime.pipeline.judge import judge_requests

    pairs, _ = read_pairs([str(corpus / "train" / "DemoI2T"), str(corpus / "train" / "DemoT2I")],
                          image_root=str(corpus))
    pairs = pairs.take(list(range(0, pairs.num_rows, max(1, pairs.num_rows // queries)))[:queries])
    rng = np.random.default_rng(0)
    items = unique_items(read_pairs([str(corpus / "train")], image_root=str(corpus))[0])
    candidate_ids = [i for i, c in zip(items["id"].to_pylist(), items["is_candidate"].to_pylist()) if c]
    pools = [list(rng.choice([c for c in candidate_ids if c != p], size=pool, replace=False))
             for p in pairs["pos_id"].to_pylist()]
    table = pa.table({"query_id": pairs["query_id"], "pos_id": pairs["pos_id"], "pool_ids": pools})
    return judge_requests(table, items)


def chats_of(requests, image_root: Path):
    from unime.data.images import ImageCache, ImageLimits
    from unime.judge import build_judge_messages

    images = ImageCache(str(image_root), ImageLimits())
    per_query = []
    for row in requests.to_pylist():
        query_image = images.get(row["query_image"])
        per_query.append([build_judge_messages(row["query_text"], query_image, t, images.get(i))
                          for t, i in zip(row["candidate_texts"], row["candidate_images"])])
    return per_query


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_in_process(model: str, per_query: list, pairs: int) -> dict[str, float]:
    from unime.judge import HFJudge
    from unime.judge.vllm_backend import VLLMJudge

    flat = [chat for chats in per_query for chat in chats]
    results = {}
    hf = HFJudge(model, device="cpu")
    hf.score(flat[:4])  # warm-up
    results["hf-single"] = pairs / timed(lambda: hf.score(flat, batch_size=1))
    results["hf-batched"] = pairs / timed(lambda: [hf.score(chats) for chats in per_query])
    for mode, caching in (("vllm-no-prefix", False), ("vllm-prefix", True)):
        judge = VLLMJudge(model, max_model_len=2048, prefix_caching=caching, kv_cache_gib=2)
        judge.warm_up()  # the first call compiles; not part of the measurement
        judge.llm.reset_prefix_cache()
        results[mode] = pairs / timed(lambda j=judge: j.score(flat))
        # Release this engine before the next starts: a dying engine tears down the
        # process-wide parallel state that a live one would be using.
        judge = None
        gc.collect()
    return results


def bench_ray(model: str, requests, image_root: Path, shards: int) -> dict[str, float]:
    import ray
    import ray.data

    from unime.config import ActorConfig
    from unime.pipeline.common import actor_options, write_parquet
    from unime.pipeline.judge import JudgeShards, shard_path

    results = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for actors in (1, 2):
            with tempfile.TemporaryDirectory() as run_dir:
                size = -(-requests.num_rows // shards)
                for shard in range(shards):
                    write_parquet(requests.slice(shard * size, size), shard_path(run_dir, "requests", shard))
                dataset = ray.data.from_items([{"shard": s} for s in range(shards)], override_num_blocks=shards)
                kwargs = {"backend": "vllm", "model": model, "dtype": "float32", "device": "cpu",
                          "judge_options": {"max_model_len": 2048, "engine": {"kv_cache_gib": 1}}, "run_dir": run_dir,
                          "image_root": str(image_root), "limits": {}, "storage_options": {},
                          "queries_per_call": 8, "hf_batch_size": 16}
                out = dataset.map_batches(JudgeShards, batch_size=1, batch_format="numpy", fn_constructor_kwargs=kwargs,
                                          **actor_options(ActorConfig(num_actors=actors, num_cpus=1.0)))
                started = time.perf_counter()
                rows = out.take_all()
                wall = time.perf_counter() - started
                pairs = sum(int(r["pairs"]) for r in rows)
                # from the first shard's start to the last shard's commit: excludes engine start-up
                judging = max(float(r["finished_at"]) for r in rows) - min(float(r["started_at"]) for r in rows)
                results[f"ray-{actors}-actor{'s' if actors > 1 else ''}"] = pairs / judging
                results[f"ray-{actors}-actor{'s' if actors > 1 else ''} (wall, incl. start-up)"] = pairs / wall
    finally:
        ray.shutdown()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,base100m")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--pool", type=int, default=50)
    parser.add_argument("--ray-shards", type=int, default=8)
    args = parser.parse_args(argv)

    from unime import demo_data, tiny

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        demo_data.build(corpus, demo_data.DemoCorpusConfig(train_images=120, grounding_images=10, eval_queries=2))
        requests = demo_requests(corpus, args.queries, args.pool)
        pairs = sum(len(c) for c in requests["candidate_ids"].to_pylist())
        per_query = chats_of(requests, corpus)
        table = {}
        for size in args.sizes.split(","):
            model = str(tiny.build(Path(tmp) / size, size=size)["judge"])
            from transformers import AutoModelForImageTextToText

            params = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(model).parameters())
            label = f"{size} ({params / 1e6:.1f}M params)"
            table[label] = bench_in_process(model, per_query, pairs)
            ray_requests = requests if size == "tiny" else requests.slice(0, max(2, args.queries // 2))
            table[label].update(bench_ray(model, ray_requests, corpus, args.ray_shards if size == "tiny" else 2))
            print(f"done {label}", file=sys.stderr)
    print(f"judge throughput, pairs/second ({args.queries} queries x {args.pool + 1} pairs; CPU, {os.cpu_count()} cores)")
    modes = list(next(iter(table.values())))
    print("| mode | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for mode in modes:
        print(f"| {mode} | " + " | ".join(f"{row[mode]:.1f}" for row in table.values()) + " |")
    for label, row in table.items():
        print(f"ratios {label}: batched/single {row['hf-batched'] / row['hf-single']:.2f}x; "
              f"vllm-prefix/no-prefix {row['vllm-prefix'] / row['vllm-no-prefix']:.2f}x; "
              f"vllm-prefix/hf-batched {row['vllm-prefix'] / row['hf-batched']:.2f}x; "
              f"2/1 ray actors {row['ray-2-actors'] / row['ray-1-actor']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
