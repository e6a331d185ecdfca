"""Does the method work? UniME-V2 against InfoNCE on the demo corpus.

    python -m experiments.method_effect.run                       # configs/method_effect.yaml, ~55 min here
    python -m experiments.method_effect.run seeds=[0] embedder.train.max_steps=20 ...   # dotted overrides

Pre-trains a chat model on the training split's captions and trains it into a judge MLLM
(yes/no on the training split), mines the training pairs with it (and with the
label judge, the upper bound), fine-tunes every arm from each seed's base embedder, and
evaluates P@1 on every eval subset (in-distribution and held-out compositions). Writes
under ``out_dir``: ``results.json``, ``table.md``, ``method_effect.png`` and ``report.html``,
and prints the table. Reruns reuse finished parts whose configuration is unchanged.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from experiments.method_effect import components as me
from experiments.method_effect import report
from unime.config import load_config
from unime.demo import recipes

ROOT = Path(__file__).resolve().parents[2]

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


@dataclass
class Experiment:
    """What every phase of one run shares."""

    config: me.MethodEffectConfig
    clock: Clock
    paths: dict[str, Path]
    pairs: Any  # pa.Table of training pairs with content ids
    tables: dict  # eval subset -> pa.Table
    images: Any  # ImageCache over the corpus
    items: Any  # pa.Table of the pairs' unique items (id, text, image)
    truth: Any  # DemoTruth

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)

    @cached_property
    def item_of(self) -> dict[str, tuple[str, str]]:
        return me.item_lookup(self.items)


def setup(config: me.MethodEffectConfig) -> Experiment:
    import torch

    from unime.data.images import ImageCache, ImageLimits
    from unime.demo.truth import DemoTruth
    from unime.pipeline.embed import unique_items

    torch.set_num_threads(config.torch_threads)
    clock = Clock(Path(config.out_dir) / "phases.json")
    paths = clock.time("prepare corpus and checkpoints", me.prepare, config)
    pairs, tables = me.read_corpus(paths["corpus"])
    return Experiment(config, clock, paths, pairs, tables, ImageCache(str(paths["corpus"]), ImageLimits(),
                                                                      max_bytes=8 << 30),
                      unique_items(pairs), DemoTruth.load(str(paths["corpus"])))


def cached_table(path: Path, key: str, compute):
    """A parquet table computed once per key (the key is stored beside it)."""
    import pyarrow.parquet as pq

    stamp = path.with_suffix(".key")
    if path.exists() and stamp.exists() and stamp.read_text() == key:
        return pq.read_table(path)
    table = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    stamp.write_text(key)
    return table


def pretrain_chat_model(exp: Experiment) -> tuple[Path, str, list[float]]:
    """The judge's and reranker's common start: caption pre-training on the training split."""
    config, folder = exp.config, exp.out / "models" / "chat_pretrained"
    key = me.fingerprint(asdict(config.corpus), config.model_size, asdict(config.chat_model))

    def compute():
        _, losses = exp.clock.time("caption pre-training", recipes.train_chat_model, exp.paths["chat"],
                                   recipes.caption_examples(exp.pairs), config.chat_model, exp.paths["corpus"], folder)
        return {"losses": losses}
    return folder, key, me.cached_json(folder / "unime_result.json", key, compute)["losses"]


def train_judge(exp: Experiment, chat: Path, chat_key: str) -> tuple[Path, str, list[float]]:
    """The judge MLLM trained on the training split (yes/no, the reranker's pairwise recipe),
    fresh negatives for every pass over the pairs."""
    config, folder = exp.config, exp.out / "models" / "judge_trained"
    key = me.fingerprint(chat_key, asdict(config.judge))
    rounds = -(-config.judge.steps * config.judge.chats_per_step // (2 * exp.pairs.num_rows))

    def compute():
        _, losses = exp.clock.time("train judge", recipes.train_chat_model, chat, recipes.judge_examples(exp.pairs, 0, rounds),
                                   config.judge, exp.paths["corpus"], folder)
        return {"losses": losses}
    return folder, key, me.cached_json(folder / "unime_result.json", key, compute)["losses"]


def held_out_agreement(exp: Experiment, judges: dict) -> dict[str, dict]:
    """Each judge's AUC against the ground truth on held-out eval pairs."""
    per_table = {name: recipes.eval_pairs({name: table}, exp.config.judge.auc_candidates) for name, table in exp.tables.items()}
    pairs = [pair for table_pairs in per_table.values() for pair in table_pairs]
    novel = np.repeat([name.endswith("Novel") for name in per_table], [len(v) for v in per_table.values()])
    ood_pairs = [pair for pair, is_novel in zip(pairs, novel) if is_novel]
    scores = {"trained": exp.clock.time("judge held-out pairs", recipes.score_pairs, judges["trained"], pairs, exp.images,
                                        exp.config.judge.score_batch),
              "label": judges["label"].score(pairs)}
    return {name: {"held_out_auc": recipes.judge_auc(value, pairs, exp.truth), "held_out_pairs": len(pairs),
                   "held_out_auc_ood": recipes.judge_auc(value[novel], ood_pairs, exp.truth) if ood_pairs else None}
            for name, value in scores.items()}


def train_base(exp: Experiment, seed: int) -> tuple[Path, str]:
    """The seed's base embedder (InfoNCE, ``embedder.base_steps`` from random init), saved
    where ``from_pretrained`` loads it; returns the folder and its cache key."""
    config, folder = exp.config, exp.out / "models" / f"base_seed{seed}"
    key = me.fingerprint(asdict(config.corpus), config.model_size, asdict(config.embedder), seed)

    def compute():
        train = me.arm_train_config("infonce", config.embedder, seed, steps=config.embedder.base_steps)
        trainer = exp.clock.time(f"train base seed {seed}", recipes.train_embedder, exp.paths[f"embedder_seed{seed}"],
                                 recipes.plain_records(exp.pairs), train, exp.paths["corpus"])
        trainer.model.save_pretrained(folder)
        trainer.embedder.processor.save_pretrained(folder)
        return {"losses": trainer.losses}
    me.cached_json(folder / "unime_result.json", key, compute)
    return folder, key


def retrieval(exp: Experiment, retriever: Path, key: str):
    """The global retrieval pools of the training pairs, by the retriever."""
    from unime.models import Embedder

    def compute():
        embedder = Embedder(str(retriever), dtype="float32", device="cpu")
        return exp.clock.time("global retrieval", me.retrieval_pools, embedder, exp.pairs, exp.images,
                              exp.config.mining.pool_size, exp.config.embed_batch)
    return cached_table(exp.out / "mining" / "pools.parquet", key, compute)


def judge_and_mine(exp: Experiment, name: str, judge, pools, key: str) -> tuple[list[dict], dict]:
    """One judge scores every pool; the mine stage's filter and selection; its statistics."""
    requests = me.judge_requests(pools, exp.items)
    pairs = [(*exp.item_of[q], *exp.item_of[c]) for q, c in requests]

    def compute():
        phase = f"{name} judge scores the pools"
        scores = (exp.clock.time(phase, judge.score, pairs) if name == "label" else
                  exp.clock.time(phase, recipes.score_pairs, judge, pairs, exp.images, exp.config.judge.score_batch))
        return me.scores_table(requests, scores)
    scores = cached_table(exp.out / "mining" / f"scores_{name}.parquet", key, compute)
    records, stats = me.mine(exp.pairs, pools, scores, exp.config.mining)
    return records, {"filter": me.filter_statistics(pools, scores, exp.items, exp.truth, exp.config.mining.beta),
                     "records": len(records), "skipped": stats["skipped"], "pool_pairs": stats["pool_pairs"]}


def train_reranker(exp: Experiment, chat: Path, records: list[dict], key: str) -> tuple[Path, list[float]]:
    """The reranker, from the same pre-trained chat model as the judge, on mined records."""
    from unime.train.reranker import reranker_examples

    config, folder = exp.config, exp.out / "models" / "reranker_trained"

    def compute():
        examples = reranker_examples(me.pa.Table.from_pylist(records), seed=0).to_pylist()
        _, losses = exp.clock.time("train reranker", recipes.train_chat_model, chat, examples, config.reranker,
                                   exp.paths["corpus"], folder)
        return {"losses": losses}
    return folder, me.cached_json(folder / "unime_result.json", key, compute)["losses"]


def fine_tune(exp: Experiment, base: Path, arm: str, seed: int, records: list[dict], reranker: Path | None) -> dict:
    """One arm, one seed: fine-tune the base, evaluate, and rerank its top-k if asked."""
    config, clock = exp.config, exp.clock
    trainer = clock.time(f"train {arm} seed {seed}", recipes.train_embedder, base, records,
                         me.arm_train_config(arm, config.embedder, seed), exp.paths["corpus"])
    p_at_1, row_scores = clock.time(f"evaluate {arm} seed {seed}", recipes.evaluate, trainer.embedder, exp.tables,
                                    exp.images, config.embed_batch)
    value = {"p_at_1": p_at_1, "losses": trainer.losses, "records": len(records)}
    if reranker is not None:
        from unime.rerank import Reranker

        model = Reranker(str(reranker), backend="hf", dtype="float32", device="cpu")
        value["rerank"] = {mode: clock.time(f"rerank {mode} seed {seed}", me.rerank_precision, model, exp.tables,
                                            row_scores, exp.images, config.reranker.rerank_k, mode)
                           for mode in config.reranker.modes}
    return value


def run(config: me.MethodEffectConfig) -> dict:
    from unime.demo.label_judge import LabelJudge
    from unime.judge import HFJudge

    exp = setup(config)
    results: dict = {"config": asdict(config), "train_pairs": exp.pairs.num_rows, "arms": {},
                     "eval_rows": {name: table.num_rows for name, table in exp.tables.items()}}
    chat, chat_key, results["caption_losses"] = pretrain_chat_model(exp)
    judge_dir, judge_key, results["judge_losses"] = train_judge(exp, chat, chat_key)
    judges = {"trained": HFJudge(str(judge_dir), dtype="float32", device="cpu"),
              "label": LabelJudge(str(exp.paths["corpus"]))}
    results["judges"] = held_out_agreement(exp, judges)

    # Every seed's base: InfoNCE from that seed's random init (the analogue of the paper's
    # pretrained backbone); the first seed's base is the off-the-shelf retriever of the
    # mining pool (docs/method.md section 2). Every arm then fine-tunes its seed's base.
    bases = {seed: train_base(exp, seed) for seed in config.seeds}
    retrieval_key = me.fingerprint(bases[config.seeds[0]][1], config.mining.pool_size)
    pools = retrieval(exp, bases[config.seeds[0]][0], retrieval_key)
    judge_keys = {"trained": me.fingerprint(retrieval_key, judge_key), "label": retrieval_key}
    mined = {}
    for name, judge in judges.items():
        mined[name], statistics = judge_and_mine(exp, name, judge, pools, judge_keys[name])
        results["judges"][name] |= statistics

    reranker = None
    source = config.reranker.judge
    if "unime_rerank" in config.arms and mined[source]:
        reranker, results["reranker_losses"] = train_reranker(
            exp, chat, mined[source], me.fingerprint(judge_keys[source], chat_key, asdict(config.reranker)))

    retrieved = me.retrieval_negatives(pools, exp.item_of, config.embedder.train.num_hard_negatives)
    arm_data = {"infonce": (recipes.plain_records(exp.pairs), None),
                "infonce_hard": (recipes.plain_records(exp.pairs, retrieved), retrieval_key),
                "unime": (mined["trained"], judge_keys["trained"]),
                "unime_inbatch": (mined["trained"], judge_keys["trained"]), "unime_label": (mined["label"], retrieval_key),
                "unime_label_inbatch": (mined["label"], retrieval_key)}
    for arm, (records, data_key) in arm_data.items():
        if arm not in config.arms:
            continue
        rerank = reranker if arm == config.reranked_arm else None
        for seed in config.seeds:
            extra = () if data_key is None else (data_key, asdict(config.reranker) if rerank else None)
            results["arms"].setdefault(arm, {})[seed] = value = arm_result(
                exp, bases[seed], arm, seed, records, rerank, extra)
            if rerank is not None:
                results["arms"].setdefault("unime_rerank", {})[seed] = {
                    "p_at_1": value["rerank"][config.reranker.modes[0]], "modes": value["rerank"]}
    if "unime_rerank" in config.arms and reranker is None:
        results["arms"]["unime_rerank"] = {seed: {"records": 0, "not_trained": f"no {source}-judge records to train "
                                                  "the reranker on"} for seed in config.seeds}
    # phases of this configuration only (a changed config leaves stale names behind)
    results["seconds"] = {k: v for k, v in exp.clock.seconds.items() if _current_phase(k, config)}
    return results


def arm_result(exp: Experiment, base: tuple[Path, str], arm: str, seed: int, records: list[dict],
               reranker: Path | None, extra: tuple) -> dict:
    """The arm's cached result for a seed (keyed by its base, recipe and ``extra``: the data's
    and the reranker's keys), or why it could not train."""
    if not records:
        return {"records": 0, "not_trained": NOT_TRAINABLE}
    key = me.fingerprint(arm, seed, base[1], asdict(exp.config.embedder), *extra)
    return me.cached_json(exp.out / "results" / f"{arm}_seed{seed}.json", key,
                          partial(fine_tune, exp, base[0], arm, seed, records, reranker))


def _current_phase(phase: str, config) -> bool:
    words = phase.split()
    if "seed" in words and int(words[words.index("seed") + 1]) not in config.seeds:
        return False
    return not (words[0] in ("train", "evaluate") and words[1] in me.ARMS and words[1] not in config.arms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. embedder.train.max_steps=20")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides, cls=me.MethodEffectConfig)
    results = run(config)
    results["total_seconds"] = sum(results["seconds"].values())
    command = "python -m experiments.method_effect.run" + "".join(f" {o}" for o in args.overrides)
    written = report.write(results, Path(config.out_dir), command)
    print(written["table"].read_text())
    print(f"report: {written['html']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
