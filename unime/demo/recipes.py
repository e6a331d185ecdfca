"""The demo's training recipes, shared by its trained checkpoints (:mod:`unime.demo.models`)
and the method experiment: caption pre-training of the tiny chat model (the stand-in for a
pretrained MLLM), its training into the yes/no judge, in-process embedder training on plain
records, and the judge's held-out AUC against the corpus's ground truth.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from unime.config import EmbedderTrainConfig, RerankerTrainConfig, TrainPlacement
from unime.prompts import NO, YES


@dataclass
class ChatRecipe:
    """Training of a chat model (judge or reranker): steps, chats per step, optimiser, loss."""

    steps: int = 1500
    chats_per_step: int = 32
    lr: float = 3e-4
    max_grad_norm: float | None = 1.0
    # see RerankerTrainConfig.answer_loss: from random init only "yes_no" learns the judgement
    answer_loss: Literal["next_token", "yes_no"] = "yes_no"


@dataclass
class PretrainRecipe(ChatRecipe):
    """The stand-in for a pretrained MLLM: random init at ``init_std`` (Qwen's 0.02 is sized for
    widths in the thousands; at width 128 the chat model never learns to read its image), then
    ``steps`` of caption pre-training on the training split (each image query answered by its
    positive text: captions, colours, shapes, VQA answers; next-token loss). Judge and reranker
    start from it, as the paper's judge and reranker both start from Qwen2.5-VL."""

    answer_loss: Literal["next_token", "yes_no"] = "next_token"
    init_std: float = 0.08

    def __post_init__(self):
        from unime.config import ConfigError

        if self.answer_loss != "next_token":
            raise ConfigError("chat_model.answer_loss: captions are generated text; only next_token applies")


@dataclass
class JudgeRecipe(ChatRecipe):
    """The judge MLLM trained here (yes/no on positives and negatives of the same dataset,
    fresh negatives each pass over the pairs); held-out AUC sample and scoring batch.
    ``near_miss_share`` and ``other_dataset_share``: see :func:`judge_examples`;
    ``truthful_negatives`` passes it the corpus's ground truth as ``matches``."""

    score_batch: int = 64
    auc_candidates: int = 5  # per held-out eval row: the positive and the next four
    near_miss_share: float = 0.0
    truthful_negatives: bool = False
    other_dataset_share: float = 0.0


def plain_records(pairs: pa.Table, negatives: dict[str, list[tuple[str, str]]] | None = None) -> list[dict]:
    """Pairs as mined-record rows for the judge-free arms: the positive labelled 1 and each
    hard negative 0 (the contrastive loss reads only which column is the positive). With
    ``negatives``, pairs without any (an empty pool) are left out, as the miner skips them."""
    records = []
    for row in pairs.to_pylist():
        chosen = (negatives or {}).get(row["query_id"] + row["pos_id"], [])
        if negatives is not None and not chosen:
            continue
        records.append({**row, "query_pos_scores": 1.0, "hard_negatives": [list(n) for n in chosen],
                        "hard_negatives_scores": [0.0] * len(chosen)})
    return records


def train_embedder(checkpoint: Path, records: list[dict], train: EmbedderTrainConfig, image_root: Path):
    """Train one arm in process: ``train.max_steps`` steps of ``queries_per_worker`` queries,
    epochs reshuffled by ``train.seed``. Returns the trainer (its embedder is trained)."""
    from unime.train.embedder import EmbedderTrainer, training_examples

    examples = training_examples(pa.Table.from_pylist(records), train.num_hard_negatives).to_pylist()
    if not examples:
        raise ValueError("no training examples: every pair was skipped")
    trainer = EmbedderTrainer(str(checkpoint), train, image_root=str(image_root), seed=train.seed)
    for batch in batches(examples, train.queries_per_worker, train.max_steps, train.seed):
        trainer.step(batch)
    trainer.model.eval()
    return trainer


def batches(rows: list[dict], size: int, steps: int, seed: int, group: int = 1):
    """``steps`` column batches of ``size`` rows (all rows when fewer), each epoch a fresh
    shuffle of the rows in runs of ``group`` consecutive rows, which stay in one batch."""
    if len(rows) % group or size % group:
        raise ValueError(f"{len(rows)} rows in batches of {size} do not split into groups of {group}")
    rng, units = random.Random(seed), min(size, len(rows)) // group
    order: list[int] = []
    for _ in range(steps):
        if len(order) < units:
            order = list(range(len(rows) // group))
            rng.shuffle(order)
        chunk, order = order[:units], order[units:]
        picked = [k * group + offset for k in chunk for offset in range(group)]
        yield {key: [rows[k][key] for k in picked] for key in rows[0]}


def score_pairs(judge, pairs: list[tuple[str, str, str, str]], images, batch_size: int) -> np.ndarray:
    """P(Yes) of an MLLM judge (:class:`unime.judge.HFJudge`) for ``(query text, query image,
    candidate text, candidate image)`` pairs (image paths), the judge chat of docs/method.md section 3."""
    from unime.judge.prompts import build_judge_messages

    chats = [build_judge_messages(qt, images.get(qi), ct, images.get(ci)) for qt, qi, ct, ci in pairs]
    return judge.score(chats, batch_size)


def caption_examples(pairs: pa.Table) -> list[dict]:
    """Caption pre-training chats from the training split: every pair with an image query and a
    text positive, the query item as the user turn and the positive text as the answer."""
    return [{"kind": "generate", "query_text": row["query_text"], "query_image": row["query_image"],
             "cand_texts": [], "cand_images": [], "answer": row["pos_text"]}
            for row in pairs.to_pylist() if row["query_image"] and row["pos_text"] and not row["pos_image"]]


def _description(row: dict) -> set[str]:
    """The words that say what a training pair is about: its text positive, or for an image
    positive its query (a caption, a grounding label)."""
    return set((row["query_text"] if row["pos_image"] else row["pos_text"]).split())


def judge_examples(pairs: pa.Table, seed: int, rounds: int = 1, near_miss_share: float = 0.0,
                   matches: Callable[[str, str, str, str], bool] | None = None,
                   other_dataset_share: float = 0.0) -> list[dict]:
    """The judge's training chats from the training split only, ``rounds`` passes over the
    pairs: each pair's positive -> "Yes" followed by, drawn afresh each pass, the positive of
    another pair of the same dataset -> "No".

    The negative is random, or with probability ``near_miss_share`` a near miss: of 16 drawn,
    the one whose pair shares most words with this pair's (its text positive, or for an image
    positive its query), so the judge learns the fine differences a retrieved pool holds.
    ``matches(query_text, query_image, candidate_text, candidate_image)``, when given, keeps
    candidates that truly answer the query out of the negatives (another pair's caption can
    fit this image too). With probability ``other_dataset_share`` the negatives are drawn from
    every dataset instead (the global retrieval's pools mix tasks: a caption among the
    candidates of a colour-classification query)."""
    rng = random.Random(seed)
    every_row = pairs.to_pylist()
    by_dataset: dict[str, list[dict]] = {}
    for row in every_row:
        by_dataset.setdefault(row["dataset"], []).append(row)
    drawn = 16 if near_miss_share else 8
    examples = []
    for _ in range(rounds):
        for rows in by_dataset.values():
            for row in rows:
                source = every_row if other_dataset_share and rng.random() < other_dataset_share else rows
                others = [o for o in rng.sample(source, min(drawn, len(source))) if o["pos_id"] != row["pos_id"]
                          and not (matches and matches(row["query_text"], row["query_image"], o["pos_text"],
                                                       o["pos_image"]))]
                if not others:
                    continue
                negative = others[0]
                if near_miss_share and rng.random() < near_miss_share:
                    words = _description(row)
                    negative = max(others, key=lambda other: len(words & _description(other)))
                base = {"kind": "pairwise", "query_text": row["query_text"], "query_image": row["query_image"]}
                examples.append(base | {"cand_texts": [row["pos_text"]], "cand_images": [row["pos_image"]],
                                        "answer": YES})
                examples.append(base | {"cand_texts": [negative["pos_text"]],
                                        "cand_images": [negative["pos_image"]], "answer": NO})
    return examples


def train_chat_model(checkpoint: Path, examples: list[dict], recipe: ChatRecipe, image_root: Path, out_dir: Path,
                     seed: int = 0, min_pixels: int | None = None, max_pixels: int | None = None,
                     after_step: Callable[[int], None] | None = None) -> tuple[Path, list[float]]:
    """Full fine-tuning with the reranker trainer (vision tower included, since the model starts
    from random init), saved where ``from_pretrained`` loads it; returns the folder and the
    loss curve. ``min/max_pixels`` override the processor's image bounds, and are saved with
    it; ``after_step(step)`` runs after every optimiser step."""
    from unime.train.reranker import RerankerTrainer

    answer_loss = recipe.answer_loss
    train = RerankerTrainConfig(placement=TrainPlacement(num_workers=1, use_gpu=False),
                                effective_batch_size=recipe.chats_per_step, micro_batch_size=recipe.chats_per_step,
                                # the reranker trainer's AdamW (its weight decay kept), at the recipe's rate
                                optim=replace(RerankerTrainConfig().optim, lr=recipe.lr,
                                              max_grad_norm=recipe.max_grad_norm),
                                full_finetune=True, freeze_vision=False, answer_loss=answer_loss, seed=seed)
    group = 1
    if answer_loss == "yes_no":
        # (positive, negative) chats of one query stay in one batch: the query's own pull on
        # P(Yes) then cancels within the batch. Shuffled apart, a judge trained from random
        # init stayed at chance (held-out AUC 0.49 against 0.92, one-off probe; docs/method-experiment.md).
        examples, group = [row for row in examples if row["kind"] == "pairwise"], 2
    trainer = RerankerTrainer(str(checkpoint), train, max_steps=recipe.steps, image_root=str(image_root), seed=seed,
                              min_pixels=min_pixels, max_pixels=max_pixels)
    for batch in batches(examples, recipe.chats_per_step, recipe.steps, seed, group):
        trainer.step(batch)
        if after_step:
            after_step(trainer.step_count)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out_dir)
    trainer.processor.save_pretrained(out_dir)
    return out_dir, trainer.losses


def eval_pairs(tables: dict[str, pa.Table], per_row: int) -> list[tuple[str, str, str, str]]:
    """Held-out judge pairs: each eval row's query with its first ``per_row`` candidates."""
    return [(row["qry_text"], row["qry_img_path"], text, image)
            for table in tables.values() for row in table.to_pylist()
            for text, image in list(zip(row["tgt_text"], row["tgt_img_path"]))[:per_row]]


def judge_auc(scores: np.ndarray, pairs: list[tuple[str, str, str, str]], truth) -> float:
    from unime.demo.truth import roc_auc

    return roc_auc(scores, np.array([truth.matches(*pair) for pair in pairs]))


def embed(embedder, items: list[tuple[str, str]], images, batch_size: int) -> np.ndarray:
    """L2-normalised embeddings of ``(text, image path)`` items, batched shortest first by the
    embed stage's length estimate (:func:`unime.data.ordering.input_lengths`)."""
    import torch

    from unime.data.ordering import input_lengths
    from unime.models import EmbedItem

    lengths = input_lengths(pa.table({"text": [t for t, _ in items], "image": [i for _, i in items]}))
    order = np.argsort(lengths.to_numpy(), kind="stable").tolist()
    vectors = None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            encoded = embedder.encode([EmbedItem(items[k][0], images.get(items[k][1])) for k in chunk])
            if vectors is None:
                vectors = np.zeros((len(items), encoded.shape[1]), dtype=np.float32)
            vectors[chunk] = encoded
    return vectors if vectors is not None else np.zeros((0, 0), dtype=np.float32)


def evaluate(embedder, tables: dict[str, pa.Table], images, batch_size: int
             ) -> tuple[dict[str, float], dict[str, list[np.ndarray]]]:
    """MMEB Precision@1 per subset (each row against its own candidates) and the row scores."""
    from unime.eval.harness import eval_items, row_scores, subset_metrics

    items, _ = eval_items(tables)
    vectors = embed(embedder, list(zip(items["text"].to_pylist(), items["image"].to_pylist())), images, batch_size)
    by_id = dict(zip(items["id"].to_pylist(), vectors))
    scores = {name: [row_scores(row, by_id) for row in table.to_pylist()] for name, table in tables.items()}
    return {name: subset_metrics(rows)["P@1"] for name, rows in scores.items()}, scores
