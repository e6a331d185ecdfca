"""How much of the soft-label KL the demo's fine-tuning can take: P@1 against its weight.

    python bench/soft_label_weight.py                         # runs/demo after `make demo`
    python bench/soft_label_weight.py run_dir=/other/run --weights 1,0.25,0

Fine-tunes the off-the-shelf embedder (``models.embedder``) in this process on one run's mined
records with ``configs/demo.yaml``'s ``train_embedder`` recipe, once per KL weight (the
InfoNCE term with in-batch and hard negatives stays at ``infonce_weight``), and prints each
one's Overall and per-subset Precision@1 on the demo eval beside the starting checkpoint's,
all measured in this run. The tiny judge's soft scores are weak labels: this is what picked
the demo's ``soft_label_weight``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unime.config import load_config  # noqa: E402
from unime.demo import recipes  # noqa: E402
from unime.demo.models import _training_pairs, embedder_quality  # noqa: E402
from unime.pipeline import mine  # noqa: E402
from unime.pipeline.common import read_parquet_dir  # noqa: E402


def fine_tuned_quality(start: Path, records: list[dict], train, corpus: Path, tables) -> tuple[dict, float]:
    started = time.perf_counter()
    trainer = recipes.train_embedder(start, records, train, corpus)
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        trainer.model.save_pretrained(folder)
        trainer.embedder.processor.save_pretrained(folder)
        return embedder_quality(Path(folder), corpus, tables), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--weights", default="1,0.25,0", help="soft_label_weight values, comma-separated")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    corpus, start = Path(config.demo.corpus_dir), Path(config.models.embedder)
    records = read_parquet_dir(mine.output_paths(config.run_dir)["mined_table"]).to_pylist()
    _, tables = _training_pairs(corpus)
    start_quality = embedder_quality(start, corpus, tables)
    subsets = list(start_quality["per_subset"])
    print(f"{len(records)} mined records of {config.run_dir}; {config.train_embedder.max_steps} steps from {start}\n")
    print("| soft_label_weight | Overall P@1 | " + " | ".join(subsets) + " | train s |")
    print("|---" * (len(subsets) + 3) + "|")
    print(f"| (start) | {start_quality['overall']:.1f} | "
          + " | ".join(f"{start_quality['per_subset'][s]:.1f}" for s in subsets) + " | - |")
    for weight in (float(w) for w in args.weights.split(",")):
        train = replace(config.train_embedder, soft_label_weight=weight)
        quality, seconds = fine_tuned_quality(start, records, train, corpus, tables)
        print(f"| {weight:g} | {quality['overall']:.1f} | "
              + " | ".join(f"{quality['per_subset'][s]:.1f}" for s in subsets) + f" | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
