"""Evaluation throughput: the Ray eval job vs a plain single-process loop, same model, one run.

    python bench/eval_throughput.py [--eval-queries 60]

The plain loop embeds each row's query and candidates as it meets them (what a simple
evaluation script does); the job embeds every unique item once on a Ray Data actor pool and
scores rows from the cached vectors. Both compute the same Precision@1 (checked); the
de-duplication saving is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def plain_loop(tables, embedder_path: str, image_root: str) -> dict[str, float]:
    from unime.data.images import ImageCache, ImageLimits
    from unime.eval.harness import subset_metrics
    from unime.models import Embedder, EmbedItem

    embedder = Embedder(embedder_path, device="cpu")
    images = ImageCache(image_root, ImageLimits())
    results = {}
    for name, table in tables.items():
        rows = []
        for row in table.to_pylist():
            items = [EmbedItem(row["qry_text"], images.get(row["qry_img_path"]))]
            items += [EmbedItem(t, images.get(i)) for t, i in zip(row["tgt_text"], row["tgt_img_path"])]
            vectors = embedder.encode(items)
            rows.append(vectors[1:] @ vectors[0])
        results[name] = subset_metrics(rows)["P@1"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-queries", type=int, default=60)
    parser.add_argument("--sizes", default="tiny,base100m")
    args = parser.parse_args(argv)
    import ray

    from unime.config import load_config
    from unime.data import read_eval
    from unime.demo import corpus as demo_data
    from unime.demo import tiny
    from unime.pipeline import evaluate

    lines, all_same = [], True
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        demo_data.build(corpus, demo_data.DemoCorpusConfig(train_images=10, grounding_images=2,
                                                           eval_queries=args.eval_queries))
        tables, _ = read_eval(str(corpus / "eval"), image_root=str(corpus))
        rows = sum(t.num_rows for t in tables.values())
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for size in args.sizes.split(","):
            embedder = str(tiny.build(Path(tmp) / size, size=size)["embedder"])
            started = time.perf_counter()
            plain = plain_loop(tables, embedder, str(corpus))
            plain_seconds = time.perf_counter() - started
            config = load_config(None, [f"run_dir={tmp}/run-{size}", f"data.eval_dir={corpus}/eval",
                                        f"data.image_root={corpus}", f"models.embedder={embedder}",
                                        "models.dtype=float32", "models.device=cpu", "embed.actors.num_cpus=0.5",
                                        "embed.actors.num_actors=2", "eval.rerank=false", "eval.groups=demo"])
            started = time.perf_counter()
            result = evaluate.run(config)
            job_seconds = time.perf_counter() - started
            job = {n: d["P@1"] for n, d in json.loads(Path(evaluate.output_paths(config.run_dir)["per_dataset"])
                                                       .read_text()).items()}
            same = all(abs(job[n] - plain[n]) < 1e-6 for n in plain)
            all_same &= same
            unique, references = result["rows"]["unique_items"], result["rows"]["item_references"]
            lines.append(f"| {size} | plain loop (embeds every reference) | {plain_seconds:.1f} | {rows / plain_seconds:.1f} | |")
            lines.append(f"| {size} | Ray eval job (unique items once, 2 actors, incl. start-up) | {job_seconds:.1f} | "
                         f"{rows / job_seconds:.1f} | {plain_seconds / job_seconds:.2f}x |")
            print(f"{size}: P@1 {dict(sorted(job.items()))}; same as plain loop: {same}", file=sys.stderr)
        ray.shutdown()
    print(f"eval throughput on the demo subsets ({rows} rows, {len(tables)} subsets; CPU, {os.cpu_count()} cores)")
    print("| embedder | path | seconds | rows/s | job/plain |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"de-duplication: {unique} unique items embedded for {references} item references "
          f"({1 - unique / references:.0%} fewer forwards); same P@1 on both paths: {all_same}")
    return 0 if all_same else 1



if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
