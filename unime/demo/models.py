"""Trained tiny checkpoints for the embedded default, built here by the project's own recipes.

``python -m unime.demo.models build [--config configs/demo_models.yaml] [--corpus artifacts/demo_data]``
writes under the config's ``out_dir`` (the pipeline builds them itself when its
``demo.models_config`` names that file):

- ``chat/``: the tiny Qwen2.5-VL, random init at ``chat.init_std``, then caption pre-training
  on the demo corpus's training split (each image query answered by its positive text), then
  judgement training (the judge prompt, "Yes" for a pair's positive and "No" for a random
  positive of the same dataset, the loss on P(Yes) against P(No)). It is the stand-in for the
  paper's pretrained Qwen2.5-VL: the demo's frozen judge and its reranker's starting point;
- ``embedder/``: the tiny Qwen2-VL trained with InfoNCE and in-batch negatives from random
  init (VLM2Vec style): the off-the-shelf embedder that retrieves the mining pools and that
  the pipeline fine-tunes the UniME-V2 way.

Each folder loads through ``from_pretrained`` and carries a model card (``README.md``) saying
how it was made and what it scores against the corpus's ground truth (the judge's AUC on
held-out eval pairs, the embedder's Precision@1 on the demo eval). The build is keyed by a
fingerprint of the recipe, the corpus and the code that trains and feeds the models: an
unchanged key reuses the folder, a changed one rebuilds it. The two models train side by
side in two processes, a CPU thread each (the chat model, which takes longest, takes both
from a fixed caption step, ``threads_from_step``, so that every build trains alike). The random-init checkpoints of :mod:`unime.demo.tiny`
stay what unit tests use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from unime.config import EmbedderTrainConfig, OptimConfig, TrainPlacement
from unime.demo import recipes
from unime.demo.recipes import JudgeRecipe, PretrainRecipe

# the code whose change changes what a build produces (paths relative to the package; the corpus's
# manifest records its config, its renderer is demo/corpus.py)
RECIPE_CODE = ("demo/models.py", "demo/corpus.py", "demo/recipes.py", "train", "losses.py", "demo/tiny.py",
               "models/embedder.py", "models/loading.py", "models/processor.py", "models/recipes.py", "prompts.py", "judge/prompts.py", "judge/hf.py", "rerank/encoding.py", "rerank/prompts.py",
               "data/images.py", "data/ordering.py", "eval/harness.py", "eval/metrics.py")
ROLES = ("chat", "embedder")
SCORES = "unime_scores.json"  # in each checkpoint folder: what its model card says, for programs


def _embedder_training() -> EmbedderTrainConfig:
    return EmbedderTrainConfig(placement=TrainPlacement(num_workers=1, use_gpu=False), queries_per_worker=32,
                               num_hard_negatives=0, soft_label_weight=0.0, infonce_weight=1.0,
                               in_batch_negatives=True, optim=OptimConfig(lr=3e-4, max_grad_norm=1.0),
                               warmup_steps=30, max_steps=600, temperature=0.05,
                               full_finetune=True, bf16=False, gradcache_chunk=0)


@dataclass
class DemoModelsConfig:
    """How the demo's trained checkpoints are made. ``chat``: caption pre-training (steps,
    chats per step, optimiser, init std); ``judge``: the judgement training that follows;
    ``chat_pixels``: the chat model's image bounds (min = max: every demo image becomes the
    same number of tokens; the pipeline's judge and reranker read them from the checkpoint's
    processor); ``embedder``: the InfoNCE training of the off-the-shelf embedder."""

    out_dir: str = "artifacts/demo_models"
    size: str = "tiny"
    seed: int = 0
    chat: PretrainRecipe = field(default_factory=lambda: PretrainRecipe(steps=800))
    judge: JudgeRecipe = field(default_factory=lambda: JudgeRecipe(steps=800))
    chat_pixels: int = 16 * 28 * 28
    embedder: EmbedderTrainConfig = field(default_factory=_embedder_training)
    # processes training side by side (1: one after the other); each gets one CPU thread
    parallel: int = 2
    # the chat model's caption step from which it trains on `parallel` threads (part of the
    # recipe: the build is reproducible only for a fixed switch; the embedder's training is
    # done by about here)
    threads_from_step: int = 400


def code_digest(package: Path | None = None) -> str:
    package = package or Path(__file__).resolve().parents[1]  # unime/
    digest = hashlib.sha256()
    for entry in RECIPE_CODE:
        for path in sorted((package / entry).rglob("*.py")) if (package / entry).is_dir() else [package / entry]:
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build_key(config: DemoModelsConfig, corpus_dir: Path) -> str:
    """What the checkpoints depend on: recipe, corpus, code, and the numeric libraries."""
    import torch
    import transformers

    corpus = json.loads((corpus_dir / "manifest.json").read_text())
    recipe = {k: v for k, v in asdict(config).items() if k not in ("out_dir", "parallel")}
    parts = {"recipe": recipe, "corpus": corpus, "code": code_digest(),
             "versions": [torch.__version__, transformers.__version__]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_built(config: DemoModelsConfig, corpus_dir: str | Path) -> bool:
    manifest = Path(config.out_dir) / "manifest.json"
    return manifest.exists() and json.loads(manifest.read_text()).get("key") == build_key(config, Path(corpus_dir))


def paths(config: DemoModelsConfig) -> dict[str, Path]:
    return {role: Path(config.out_dir) / role for role in ROLES}


# ---------------------------------------------------------------- the two trainings


def _training_pairs(corpus_dir: Path):
    """The corpus's good training pairs and eval subsets (its deliberately broken rows are
    the quarantine's business, not the models')."""
    from unime.data.readers import read_eval, read_pairs

    pairs, _ = read_pairs(str(corpus_dir / "train"), image_root=str(corpus_dir))
    tables, _ = read_eval(str(corpus_dir / "eval"), image_root=str(corpus_dir))
    return pairs, tables


class ThreadsFromStep:
    """Raise this process's torch threads at a fixed training step (the chat model trains
    longest: it takes the embedder's core once that one is done). A fixed step, not "when the
    other process finishes": the thread count changes the order of float sums, so a switch
    timed by the machine's load made two builds of one recipe train different judges."""

    def __init__(self, from_step: int, threads: int):
        self.from_step, self.threads, self.raised = from_step, threads, False

    def __call__(self, step: int) -> None:
        import torch

        if not self.raised and step >= self.from_step:
            torch.set_num_threads(self.threads)
            self.raised = True


def train_chat(config: DemoModelsConfig, corpus_dir: Path, init: Path, out: Path) -> dict:
    """Caption pre-training then judgement training; the judge's held-out AUC."""
    import torch

    from unime.demo.truth import DemoTruth

    torch.set_num_threads(1)
    started = time.perf_counter()
    pairs, tables = _training_pairs(corpus_dir)
    options = {"min_pixels": config.chat_pixels, "max_pixels": config.chat_pixels,
              "after_step": ThreadsFromStep(config.threads_from_step, config.parallel)}
    captioned, caption_losses = recipes.train_chat_model(init, recipes.caption_examples(pairs), config.chat, corpus_dir,
                                                    out.parent / "chat_captioned", seed=config.seed, **options)
    caption_seconds = time.perf_counter() - started
    rounds = -(-config.judge.steps * config.judge.chats_per_step // (2 * pairs.num_rows))
    matches = DemoTruth.load(str(corpus_dir)).matches if config.judge.truthful_negatives else None
    examples = recipes.judge_examples(pairs, config.seed, rounds, config.judge.near_miss_share, matches,
                                 config.judge.other_dataset_share)
    _, judge_losses = recipes.train_chat_model(captioned, examples, config.judge, corpus_dir, out, seed=config.seed,
                                          **options)
    shutil.rmtree(captioned)
    seconds = time.perf_counter() - started
    return {"seconds": {"caption": caption_seconds, "judge": seconds - caption_seconds},
            "losses": {"caption": [caption_losses[0], caption_losses[-1]], "judge": [judge_losses[0], judge_losses[-1]]},
            "auc": judge_quality(out, corpus_dir, tables, config)}


def judge_quality(folder: Path, corpus_dir: Path, tables, config: DemoModelsConfig) -> dict:
    """AUC of the judge's P(Yes) against the ground truth on held-out eval pairs (each eval
    row's query with its first ``judge.auc_candidates`` candidates), overall and per subset."""
    import numpy as np

    from unime.data.images import ImageCache, ImageLimits
    from unime.demo.truth import DemoTruth
    from unime.judge import HFJudge

    truth, images = DemoTruth.load(str(corpus_dir)), ImageCache(str(corpus_dir), ImageLimits())
    judge = HFJudge(str(folder), device="cpu")
    per_subset, every_pair, every_score = {}, [], []
    for name, table in tables.items():
        pairs = recipes.eval_pairs({name: table}, config.judge.auc_candidates)
        scores = recipes.score_pairs(judge, pairs, images, config.judge.score_batch)
        per_subset[name] = recipes.judge_auc(scores, pairs, truth)
        every_pair += pairs
        every_score += list(scores)
    return {"held_out": recipes.judge_auc(np.array(every_score), every_pair, truth), "pairs": len(every_pair),
            "per_subset": per_subset}


def train_off_the_shelf_embedder(config: DemoModelsConfig, corpus_dir: Path, init: Path, out: Path) -> dict:
    """InfoNCE with in-batch negatives from random init; Precision@1 on the demo eval."""
    import torch


    torch.set_num_threads(1)
    started = time.perf_counter()
    pairs, tables = _training_pairs(corpus_dir)
    trainer = recipes.train_embedder(init, recipes.plain_records(pairs), config.embedder, corpus_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out)
    trainer.embedder.processor.save_pretrained(out)
    seconds = time.perf_counter() - started
    quality = embedder_quality(out, corpus_dir, tables)
    return {"seconds": {"train": seconds}, "losses": [trainer.losses[0], trainer.losses[-1]],
            "precision_at_1": quality}


def embedder_quality(folder: Path, corpus_dir: Path, tables) -> dict:
    from unime.data.images import ImageCache, ImageLimits
    from unime.demo.corpus import EVAL_GROUPS
    from unime.eval.mmeb import aggregate
    from unime.models import Embedder

    per_subset, _ = recipes.evaluate(Embedder(str(folder), device="cpu"), tables,
                                ImageCache(str(corpus_dir), ImageLimits()), 64)
    return {"per_subset": per_subset, "overall": aggregate(per_subset, EVAL_GROUPS)["scores"]["Overall"]}


# ---------------------------------------------------------------- build


def build(config: DemoModelsConfig, corpus_dir: str | Path, log=print) -> dict[str, Path]:
    """The trained checkpoints, built unless a build with the same key is in place."""
    from unime.models.checkpoints import node_lock

    corpus_dir, out = Path(corpus_dir), Path(config.out_dir)
    if is_built(config, corpus_dir):
        return paths(config)
    with node_lock(out.with_name(out.name + ".lock")):  # one build at a time (a demo and a test run)
        if not is_built(config, corpus_dir):
            _build(config, corpus_dir, out, log)
    return paths(config)


def _build(config: DemoModelsConfig, corpus_dir: Path, out: Path, log) -> None:
    from unime.demo import tiny

    key = build_key(config, corpus_dir)
    log(f"building the demo's trained checkpoints in {out} (key {key}; a few minutes, once)")
    scratch = out.with_name(out.name + ".building")
    shutil.rmtree(scratch, ignore_errors=True)
    size = tiny.SIZES[config.size]
    tokenizer = tiny.train_tokenizer(size.vocab_size)
    inits = {"chat": scratch / "init_chat", "embedder": scratch / "init_embedder"}
    tiny.build_checkpoint(inits["chat"], "qwen2_5_vl", size, tokenizer, config.seed + 101, init_std=config.chat.init_std)
    tiny.build_checkpoint(inits["embedder"], "qwen2_vl", size, tokenizer, config.seed)
    jobs = {"chat": (train_chat, inits["chat"], scratch / "chat"),
            "embedder": (train_off_the_shelf_embedder, inits["embedder"], scratch / "embedder")}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, config.parallel), mp_context=get_context("spawn")) as pool:
        futures = {role: pool.submit(job, config, corpus_dir, init, folder)
                   for role, (job, init, folder) in jobs.items()}
        results = {role: future.result() for role, future in futures.items()}
    for leftover in inits.values():
        shutil.rmtree(leftover)
    manifest = {"key": key, "recipe": asdict(config), "seconds": time.perf_counter() - started, "results": results}
    for role in ROLES:
        (scratch / role / "README.md").write_text(model_card(role, config, results[role], key))
        (scratch / role / SCORES).write_text(json.dumps(results[role], indent=2) + "\n")
    (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    scratch.rename(out)
    log(summary_line(manifest))


def summary_line(manifest: dict) -> str:
    chat, embedder = manifest["results"]["chat"], manifest["results"]["embedder"]
    return (f"demo checkpoints: judge held-out AUC {chat['auc']['held_out']:.3f}, off-the-shelf embedder "
            f"Overall P@1 {embedder['precision_at_1']['overall']:.1f} ({manifest['seconds']:.0f}s)")


def negatives_described(judge) -> str:
    """The judge recipe's negatives, in words (model card)."""
    kind = "another positive of the same dataset"
    if judge.truthful_negatives:
        kind += " that the corpus's ground truth says does not answer the query"
    if judge.other_dataset_share:
        kind += f" ({judge.other_dataset_share:.0%} of the time of any dataset)"
    if judge.near_miss_share:
        kind += (f": {judge.near_miss_share:.0%} of the time the near miss (of 16 drawn, the one whose pair "
                 f"shares most words), otherwise a random one")
    return kind


def model_card(role: str, config: DemoModelsConfig, result: dict, key: str) -> str:
    if role == "chat":
        chat, judge = config.chat, config.judge
        made = (f"Tiny Qwen2.5-VL (`unime.demo.tiny` size `{config.size}`), random init with std {chat.init_std}; "
                f"{chat.steps} steps of caption pre-training ({chat.chats_per_step} chats per step, lr {chat.lr}, "
                f"next-token loss) on the demo corpus's training split, then {judge.steps} steps of judgement "
                f"training ({judge.chats_per_step} chats per step, lr {judge.lr}; the judge prompt, \"Yes\" for a "
                f"pair's positive and \"No\" for {negatives_described(judge)}, both in one batch, the "
                f"loss on P(Yes) against P(No)). Every image is {config.chat_pixels} pixels "
                f"({config.chat_pixels // (28 * 28)} tokens).")
        use = "The demo's frozen judge (`models.judge`) and the reranker's starting point (`models.reranker`)."
        scores = [f"- held-out AUC of P(Yes) against the ground truth: **{result['auc']['held_out']:.3f}** "
                  f"({result['auc']['pairs']} eval pairs)"]
        scores += [f"  - {name}: {auc:.3f}" for name, auc in result["auc"]["per_subset"].items()]
        title, tag = "unime demo chat model (judge and reranker start)", "image-text-to-text"
    else:
        train = config.embedder
        made = (f"Tiny Qwen2-VL (`unime.demo.tiny` size `{config.size}`), random init; {train.max_steps} steps of "
                f"InfoNCE with in-batch negatives ({train.queries_per_worker} queries per step, lr {train.optim.lr}, "
                f"temperature {train.temperature}, full fine-tuning) on the demo corpus's training pairs.")
        use = "The demo's off-the-shelf embedder (`models.embedder`): it retrieves the mining pools and is fine-tuned."
        scores = [f"- Overall Precision@1 on the demo eval: **{result['precision_at_1']['overall']:.1f}**"]
        scores += [f"  - {name}: {p:.1f}" for name, p in result["precision_at_1"]["per_subset"].items()]
        title, tag = "unime demo off-the-shelf embedder", "feature-extraction"
    seconds = ", ".join(f"{name} {s:.0f}s" for name, s in result["seconds"].items())
    return "\n".join([
        "---", "library_name: transformers", f"pipeline_tag: {tag}", "tags: [unime, demo, tiny]", "---", "",
        f"# {title}", "", "## How it was made", "", made,
        f"Built by `python -m unime.demo.models build` (`unime/demo/models.py`), build key `{key}`; "
        f"training time on the building machine: {seconds}.", "", "## Use", "", use, "",
        "## What it scores", "", *scores, "",
        "A toy model for the embedded demo corpus only: it knows shapes, colours, counts and positions.", ""])


def main(argv: list[str] | None = None) -> int:
    from unime.config import load_config

    parser = argparse.ArgumentParser(prog="python -m unime.demo.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build (or reuse) the demo's trained checkpoints")
    build_cmd.add_argument("--config", default="configs/demo_models.yaml")
    build_cmd.add_argument("--corpus", default="artifacts/demo_data", help="the demo corpus (python -m unime.demo.corpus)")
    build_cmd.add_argument("overrides", nargs="*", help="dotted overrides, e.g. judge.steps=500")
    args = parser.parse_args(argv)
    built = build(load_config(args.config, args.overrides, cls=DemoModelsConfig), args.corpus)
    for role, folder in built.items():
        print(f"{role}: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
