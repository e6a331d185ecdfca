"""Does the method work? UniME-V2 against InfoNCE on the demo corpus (issue 9).

    python bench/method_effect.py                       # configs/method_effect.yaml, ~40 min here
    python bench/method_effect.py seeds=[0] embedder.steps=20 ...   # dotted overrides

Trains a judge MLLM on the training split, mines the training pairs with it (and with the
label judge, the upper bound), trains every arm for each seed from the same random init,
and evaluates P@1 on every eval subset (in-distribution and held-out compositions). Writes
under ``out_dir``: ``results.json``, ``table.md``, ``method_effect.png`` and ``report.html``,
and prints the table. Reruns reuse finished parts whose configuration is unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unime.config import load_config  # noqa: E402
from unime.experiments import method_effect as me  # noqa: E402
from unime.experiments import method_effect_report as report  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "method_effect.yaml"
NOT_TRAINABLE = "the judge's false-negative filter removed every pool candidate of every pair: no mined record"


class Clock:
    """Wall seconds per phase, kept in ``phases.json`` across reruns: a phase reused from an
    earlier run keeps the time it took when it ran, so the total is the from-scratch cost."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def time(self, phase: str, fn, *args, **kwargs):
        started = time.perf_counter()
        value = fn(*args, **kwargs)
        self.seconds[phase] = time.perf_counter() - started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.seconds, indent=1))
        print(f"[method_effect] {phase}: {self.seconds[phase]:.0f} s", flush=True)
        return value


def train_judge(config, paths, pairs, clock) -> tuple[Path, list[float]]:
    out = Path(config.out_dir) / "models" / "judge_trained"
    key = me.fingerprint(asdict(config.corpus), config.model_size, asdict(config.judge))

    def compute():
        folder, losses = clock.time("train judge", me.train_chat_model, paths["judge"], me.judge_examples(pairs, seed=0),
                                    config.judge.steps, config.judge.chats_per_step, config.judge.lr, paths["corpus"],
                                    out)
        return {"losses": losses}
    losses = me.cached_json(out / "unime_result.json", key, compute)["losses"]
    return out, losses


def train_base(config, paths, pairs, seed: int, clock) -> tuple[Path, str]:
    """The seed's base embedder (InfoNCE, ``embedder.base_steps`` from random init), saved
    where ``from_pretrained`` loads it; returns the folder and its cache key."""
    folder = Path(config.out_dir) / "models" / f"base_seed{seed}"
    key = me.fingerprint(asdict(config.corpus), config.model_size, asdict(config.embedder), seed)

    def compute():
        train = me.arm_train_config("infonce", config.embedder, seed, steps=config.embedder.base_steps)
        trainer = clock.time(f"train base seed {seed}", me.train_embedder, paths[f"embedder_seed{seed}"],
                             me.plain_records(pairs), train, paths["corpus"])
        trainer.model.save_pretrained(folder)
        trainer.embedder.processor.save_pretrained(folder)
        return {"losses": trainer.losses}
    me.cached_json(folder / "unime_result.json", key, compute)
    return folder, key


def cached_pools(config, retriever: Path, pairs, images, key: str, clock) -> me.pa.Table:
    """The global retrieval pools of the training pairs, by the retriever (stored as parquet)."""
    import pyarrow.parquet as pq

    from unime.models import Embedder

    path = Path(config.out_dir) / "mining" / "pools.parquet"
    stamp = path.with_suffix(".key")
    if path.exists() and stamp.exists() and stamp.read_text() == key:
        return pq.read_table(path)
    embedder = Embedder(str(retriever), dtype="float32", device="cpu")
    pools = clock.time("global retrieval", me.retrieval_pools, embedder, pairs, images, config.mining.pool_size,
                       config.embed_batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pools, path)
    stamp.write_text(key)
    return pools


def judge_scores(config, judge_name, judge, pools, items, images, key, clock) -> me.pa.Table:
    """The pool's judge scores, stored as parquet under the run (recomputed when ``key`` changes)."""
    import pyarrow.parquet as pq

    path = Path(config.out_dir) / "mining" / f"scores_{judge_name}.parquet"
    stamp = path.with_suffix(".key")
    if path.exists() and stamp.exists() and stamp.read_text() == key:
        return pq.read_table(path)
    requests = me.judge_requests(pools)
    pairs = [(*items[q], *items[c]) for q, c in requests]
    phase = f"{judge_name} judge scores the pools"
    if judge_name == "label":
        scores = clock.time(phase, judge.score, pairs)
    else:
        scores = clock.time(phase, me.score_pairs, judge, pairs, images, config.judge.score_batch)
    table = me.scores_table(requests, scores)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    stamp.write_text(key)
    return table


def run(config: me.MethodEffectConfig) -> dict:
    import torch

    from unime.data.images import ImageLimits
    from unime.demo_truth import DemoTruth
    from unime.judge import HFJudge
    from unime.judge.label import LabelJudge
    from unime.pipeline.common import ImageCache

    torch.set_num_threads(config.torch_threads)
    out = Path(config.out_dir)
    clock = Clock(out / "phases.json")
    paths = clock.time("prepare corpus and checkpoints", me.prepare, config)
    pairs, tables = me.read_corpus(paths["corpus"])
    images = ImageCache(str(paths["corpus"]), ImageLimits(), capacity=1 << 16)
    truth, items = DemoTruth.load(str(paths["corpus"])), me.item_lookup(pairs)
    results: dict = {"config": asdict(config), "train_pairs": pairs.num_rows,
                     "eval_rows": {name: table.num_rows for name, table in tables.items()}, "arms": {}, "judges": {}}

    judge_dir, results["judge_losses"] = train_judge(config, paths, pairs, clock)
    trained_judge = HFJudge(str(judge_dir), dtype="float32", device="cpu")
    label_judge = LabelJudge(str(paths["corpus"]))
    held_out = me.eval_pairs(tables, config.judge.auc_candidates)
    held_out_scores = clock.time("judge held-out pairs", me.score_pairs, trained_judge, held_out, images,
                                 config.judge.score_batch)
    results["judges"]["trained"] = {"held_out_auc": me.judge_auc(held_out_scores, held_out, truth),
                                    "held_out_pairs": len(held_out)}
    results["judges"]["label"] = {"held_out_auc": me.judge_auc(label_judge.score(held_out), held_out, truth),
                                  "held_out_pairs": len(held_out)}

    # Every seed's base: InfoNCE from that seed's random init (the analogue of the paper's
    # pretrained backbone); the first seed's base is the off-the-shelf retriever of the
    # mining pool (METHOD.md section 2). Every arm then fine-tunes its seed's base.
    bases = {seed: train_base(config, paths, pairs, seed, clock) for seed in config.seeds}
    retrieval_key = me.fingerprint(bases[config.seeds[0]][1], config.mining.pool_size)
    pools = cached_pools(config, bases[config.seeds[0]][0], pairs, images, retrieval_key, clock)

    def arm_key(arm, seed, *extra):
        return me.fingerprint(arm, seed, bases[seed][1], asdict(config.embedder), *extra)

    def fine_tune(arm, seed, records, rerank=None):
        trainer = clock.time(f"train {arm} seed {seed}", me.train_embedder, bases[seed][0], records,
                             me.arm_train_config(arm, config.embedder, seed), paths["corpus"])
        p_at_1, row_scores = clock.time(f"evaluate {arm} seed {seed}", me.evaluate, trainer.embedder, tables, images,
                                        config.embed_batch)
        value = {"p_at_1": p_at_1, "losses": trainer.losses, "records": len(records)}
        if rerank is not None:
            from unime.rerank import Reranker
            reranker = Reranker(str(rerank), backend="hf", dtype="float32", device="cpu")
            value["rerank"] = {mode: clock.time(f"rerank {mode} seed {seed}", me.rerank_precision, reranker, tables,
                                                row_scores, images, config.reranker.rerank_k, mode)
                               for mode in config.reranker.modes}
        return value

    base_records = me.plain_records(pairs)
    for seed in config.seeds:
        path = out / "results" / f"infonce_seed{seed}.json"
        results["arms"].setdefault("infonce", {})[seed] = me.cached_json(
            path, arm_key("infonce", seed), lambda seed=seed: fine_tune("infonce", seed, base_records))

    judge_keys = {"trained": me.fingerprint(retrieval_key, asdict(config.judge)), "label": retrieval_key}
    mined = {}
    for name, judge in (("trained", trained_judge), ("label", label_judge)):
        key = judge_keys[name]
        scores = judge_scores(config, name, judge, pools, items, images, key, clock)
        records, stats = me.mine(pairs, pools, scores, config.mining)
        mined[name] = records
        results["judges"][name] |= {"filter": me.filter_statistics(pools, scores, items, truth, config.mining.beta),
                                    "records": len(records), "skipped": stats["skipped"],
                                    "pool_pairs": stats["pool_pairs"]}

    reranker_dir = None
    source = config.reranker.judge
    if "unime_rerank" in config.arms and mined[source]:
        reranker_dir = out / "models" / "reranker_trained"
        reranker_key = me.fingerprint(judge_keys[source], asdict(config.reranker))

        def train_reranker():
            from unime.train.reranker import reranker_examples
            examples = reranker_examples(me.pa.Table.from_pylist(mined[source]), seed=0).to_pylist()
            _, losses = clock.time("train reranker", me.train_chat_model, paths["reranker"], examples,
                                   config.reranker.steps, config.reranker.chats_per_step, config.reranker.lr,
                                   paths["corpus"], reranker_dir)
            return {"losses": losses}
        results["reranker_losses"] = me.cached_json(reranker_dir / "unime_result.json", reranker_key,
                                                    train_reranker)["losses"]

    retrieved = me.retrieval_negatives(pools, items, config.embedder.num_hard_negatives)
    arm_data = {"infonce_hard": (me.plain_records(pairs, retrieved), retrieval_key),
                "unime": (mined["trained"], judge_keys["trained"]), "unime_label": (mined["label"], retrieval_key),
                "unime_label_inbatch": (mined["label"], retrieval_key)}
    for arm in arm_data:
        if arm not in config.arms:
            continue
        records, data_key = arm_data[arm]
        rerank = arm == config.reranked_arm and reranker_dir is not None
        for seed in config.seeds:
            if not records:
                results["arms"].setdefault(arm, {})[seed] = {"records": 0, "not_trained": NOT_TRAINABLE}
                continue
            extra = (data_key, asdict(config.reranker) if rerank else None)
            compute = partial(fine_tune, arm, seed, records, reranker_dir if rerank else None)
            path = out / "results" / f"{arm}_seed{seed}.json"
            value = me.cached_json(path, arm_key(arm, seed, *extra), compute)
            results["arms"].setdefault(arm, {})[seed] = value
            if rerank:
                results["arms"].setdefault("unime_rerank", {})[seed] = {
                    "p_at_1": value["rerank"][config.reranker.modes[0]], "modes": value["rerank"]}
    if "unime_rerank" in config.arms and reranker_dir is None:
        results["arms"]["unime_rerank"] = {seed: {"records": 0, "not_trained": f"no {source}-judge records to train "
                                                  "the reranker on"} for seed in config.seeds}
    # phases of this configuration only (a changed config leaves stale names behind)
    results["seconds"] = {k: v for k, v in clock.seconds.items() if _current_phase(k, config)}
    return results


def _current_phase(phase: str, config) -> bool:
    words = phase.split()
    if "seed" in words and int(words[words.index("seed") + 1]) not in config.seeds:
        return False
    return not (words[0] in ("train", "evaluate") and words[1] in me.ARMS and words[1] not in config.arms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. embedder.steps=20")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides, cls=me.MethodEffectConfig)
    results = run(config)
    results["total_seconds"] = sum(results["seconds"].values())
    command = "python bench/method_effect.py" + "".join(f" {o}" for o in args.overrides)
    written = report.write(results, Path(config.out_dir), command)
    print(written["table"].read_text())
    print(f"report: {written['html']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
