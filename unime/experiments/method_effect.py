"""The method experiment: UniME-V2 against InfoNCE on the demo corpus, where the
ground truth of every pair is known.

Components, each usable alone; ``bench/method_effect.py`` is the recipe that runs them:

- :func:`prepare` builds the corpus (held-out compositions for out-of-distribution subsets)
  and random-init checkpoints (one embedder init per seed; one chat model);
- :func:`caption_examples` pre-train the chat model on the training split (the stand-in for
  a pretrained MLLM); :func:`judge_examples` then train it into the judge (the reranker's
  pairwise recipe: "Yes" for a positive, "No" for a random negative of the same dataset),
  which is frozen and scores pools exactly as an off-the-shelf judge would;
- :func:`train_embedder` trains one arm for a fixed number of steps;
- :func:`mine` runs the pipeline's own pieces in process: global retrieval
  (:func:`unime.mining.retrieve_pool`), judge scores, the false-negative filter and
  hard-negative selection (:func:`unime.pipeline.mine.mine_pairs`);
- :func:`evaluate` and :func:`rerank_precision` give MMEB Precision@1 per eval subset.

The arms share data, model size, steps and seeds:

- ``infonce``: InfoNCE with in-batch negatives (VLM2Vec style);
- ``infonce_hard``: InfoNCE with in-batch negatives plus the top retrieved pool candidates
  as hard negatives, no judge (so no false-negative filter);
- ``unime``: judge-filtered hard negatives and the soft-label symmetric KL (UniME-V2);
- ``unime_inbatch``: ``unime`` plus ``infonce_hard``'s InfoNCE with in-batch negatives
  (docs/method.md: not in the released trainer, a reasonable option): separates what the judge
  adds from what in-batch negatives add;
- ``unime_label`` and ``unime_label_inbatch``: the same two with the label judge (ground
  truth): the upper bound;
- ``unime_rerank``: the ``unime`` (or ``unime_label``, see :class:`RerankerRecipe`) embedder,
  its top-k reordered by the reranker trained on that arm's mined records.

An arm whose judge mines no record (its filter removes every candidate) is reported as
not trainable, with the counts, rather than trained on nothing.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from unime.config import EmbedderTrainConfig, MiningConfig, RerankerTrainConfig
from unime.demo_data import DemoCorpusConfig
from unime.prompts import NO, YES

ArmName = Literal["infonce", "infonce_hard", "unime", "unime_inbatch", "unime_rerank", "unime_label",
                  "unime_label_inbatch"]
ARMS: tuple[str, ...] = ("infonce", "infonce_hard", "unime", "unime_inbatch", "unime_rerank", "unime_label",
                         "unime_label_inbatch")


def _arm_training() -> EmbedderTrainConfig:
    return EmbedderTrainConfig(num_workers=1, use_gpu=False, queries_per_worker=32, lr=3e-4, warmup_steps=40,
                               max_steps=600, temperature=0.05, max_grad_norm=1.0, full_finetune=True, bf16=False,
                               gradcache_chunk=0)


@dataclass
class EmbedderRecipe:
    """What every arm shares: the base (``base_steps`` of InfoNCE from random init, per seed),
    then ``train`` (steps, queries per step, optimiser, temperature, hard negatives per
    query) with the arm's own loss and negatives set by :func:`arm_train_config`."""

    base_steps: int = 800
    train: EmbedderTrainConfig = field(default_factory=_arm_training)


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


@dataclass
class RerankerRecipe(ChatRecipe):
    """The reranker trained on judge-mined records (docs/method.md section 6). ``judge``: whose
    records train it; it reorders the matching arm's embedder (``unime`` for the trained
    judge, ``unime_label`` for the label judge). With ``answer_loss: yes_no`` it trains on the
    records' pairwise chats only."""

    judge: Literal["trained", "label"] = "trained"
    rerank_k: int = 10
    modes: list[Literal["pairwise", "listwise", "listwise-greedy"]] = field(default_factory=lambda: ["pairwise"])


def _corpus() -> DemoCorpusConfig:
    return DemoCorpusConfig(seed=1, train_images=1000, grounding_images=200, eval_queries=150,
                            noisy_rows=False, held_out_combos=3)


@dataclass
class MethodEffectConfig:
    """One experiment: corpus, model size, seeds, arms and each component's recipe."""

    out_dir: str = "runs/method_effect"
    corpus: DemoCorpusConfig = field(default_factory=_corpus)
    model_size: str = "tiny"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[ArmName] = field(default_factory=lambda: list(ARMS))
    embedder: EmbedderRecipe = field(default_factory=EmbedderRecipe)
    chat_model: PretrainRecipe = field(default_factory=PretrainRecipe)
    judge: JudgeRecipe = field(default_factory=JudgeRecipe)
    reranker: RerankerRecipe = field(default_factory=RerankerRecipe)
    mining: MiningConfig = field(default_factory=lambda: MiningConfig(pool_size=20, num_negatives=10))
    embed_batch: int = 64
    torch_threads: int = 2

    def __post_init__(self):
        from unime.config import ConfigError
        from unime.tiny import SIZES

        if self.model_size not in SIZES:
            raise ConfigError(f"model_size: {self.model_size!r} is not one of {sorted(SIZES)}")
        if not self.seeds:
            raise ConfigError("seeds: at least one seed")
        if "unime_rerank" in self.arms and self.reranked_arm not in self.arms:
            raise ConfigError(f"arms: unime_rerank reranks the {self.reranked_arm} arm's embedder "
                              f"(reranker.judge={self.reranker.judge}); list it too")

    @property
    def reranked_arm(self) -> str:
        return "unime" if self.reranker.judge == "trained" else "unime_label"


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_json(path: Path, key: str, compute: Callable[[], dict]) -> dict:
    """``compute()`` once per key: a rerun of the same configuration reuses the stored result."""
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "value": value}, indent=1) + "\n")
    return value


# ---------------------------------------------------------------- set-up


def prepare(config: MethodEffectConfig) -> dict[str, Path]:
    """The corpus and the random-init checkpoints under ``out_dir``: ``corpus``, ``chat`` (the
    judge's and reranker's initialisation) and ``embedder_seed<N>`` (one per seed)."""
    from unime import demo_data, tiny

    out = Path(config.out_dir)
    corpus = out / "corpus"
    manifest = corpus / "manifest.json"
    if not manifest.exists() or json.loads(manifest.read_text())["config"] != asdict(config.corpus):
        demo_data.build(corpus, config.corpus)
    size = tiny.SIZES[config.model_size]
    paths = {"corpus": corpus}
    wanted = {"chat": ("qwen2_5_vl", 101, config.chat_model.init_std)}
    wanted |= {f"embedder_seed{seed}": ("qwen2_vl", seed, None) for seed in config.seeds}
    tokenizer = None
    for name, (architecture, seed, init_std) in wanted.items():
        folder = out / "checkpoints" / name
        stamp = folder / "unime_init.json"
        spec = {"architecture": architecture, "seed": seed, "size": asdict(size)}
        spec |= {} if init_std is None else {"init_std": init_std}
        if not stamp.exists() or json.loads(stamp.read_text()) != spec:
            tokenizer = tokenizer or tiny.train_tokenizer(size.vocab_size)
            tiny.build_checkpoint(folder, architecture, size, tokenizer, seed, init_std=init_std)
            stamp.write_text(json.dumps(spec))
        paths[name] = folder
    return paths


def read_corpus(corpus: Path) -> tuple[pa.Table, dict[str, pa.Table]]:
    """Training pairs (with their content ids) and eval subsets, through the data layer's readers."""
    from unime.data.readers import read_eval, read_pairs

    pairs, result = read_pairs(str(corpus / "train"), image_root=str(corpus))
    if result.quarantine:
        raise ValueError(f"the experiment corpus has bad rows: {result.quarantine[:3]}")
    tables, _ = read_eval(str(corpus / "eval"), image_root=str(corpus))
    return pairs, tables


# ---------------------------------------------------------------- embedders


def embed(embedder, items: list[tuple[str, str]], images, batch_size: int) -> np.ndarray:
    """L2-normalised embeddings of ``(text, image path)`` items, similar lengths batched together."""
    import torch

    from unime.models import EmbedItem

    order = sorted(range(len(items)), key=lambda k: (bool(items[k][1]), len(items[k][0])))
    vectors = None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            encoded = embedder.encode([EmbedItem(items[k][0], images.get(items[k][1])) for k in chunk])
            if vectors is None:
                vectors = np.zeros((len(items), encoded.shape[1]), dtype=np.float32)
            vectors[chunk] = encoded
    return vectors if vectors is not None else np.zeros((0, 0), dtype=np.float32)


def arm_train_config(arm: str, recipe: EmbedderRecipe, seed: int, steps: int | None = None) -> EmbedderTrainConfig:
    """The shared ``recipe.train`` with the arm's loss and negatives (``steps`` overrides
    ``max_steps``, for the base)."""
    soft_labels = arm.startswith("unime")
    in_batch = arm in ("infonce", "infonce_hard", "unime_inbatch", "unime_label_inbatch")
    return replace(recipe.train, num_hard_negatives=0 if arm == "infonce" else recipe.train.num_hard_negatives,
                   soft_label_weight=1.0 if soft_labels else 0.0, infonce_weight=1.0 if in_batch else 0.0,
                   in_batch_negatives=in_batch, max_steps=steps or recipe.train.max_steps, seed=seed)


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
    for batch in _batches(examples, train.queries_per_worker, train.max_steps, train.seed):
        trainer.step(batch)
    trainer.model.eval()
    return trainer


def _batches(rows: list[dict], size: int, steps: int, seed: int, group: int = 1):
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


# ---------------------------------------------------------------- mining


def retrieval_pools(embedder, pairs: pa.Table, images, pool_size: int, batch_size: int) -> pa.Table:
    """The global pool of every pair (docs/method.md section 2) as the retrieve stage writes it."""
    from unime.mining import retrieve_pool

    rows = pairs.to_pylist()
    queries = list(dict.fromkeys((r["query_id"], r["query_text"], r["query_image"]) for r in rows))
    candidates = list(dict.fromkeys((r["pos_id"], r["pos_text"], r["pos_image"]) for r in rows))
    query_vectors = embed(embedder, [(t, i) for _, t, i in queries], images, batch_size)
    candidate_vectors = embed(embedder, [(t, i) for _, t, i in candidates], images, batch_size)
    query_row = {q[0]: k for k, q in enumerate(queries)}
    candidate_row = {c[0]: k for k, c in enumerate(candidates)}
    found, _ = retrieve_pool(query_vectors[[query_row[r["query_id"]] for r in rows]], candidate_vectors,
                             np.array([candidate_row[r["pos_id"]] for r in rows]), k=pool_size)
    ids = [c[0] for c in candidates]
    return pa.table({
        "source": [r["source"] for r in rows], "row_index": [r["row_index"] for r in rows],
        "dataset": [r["dataset"] for r in rows], "query_id": [r["query_id"] for r in rows],
        "pos_id": [r["pos_id"] for r in rows],
        "pool_ids": [[ids[j] for j in found_row if j >= 0] for found_row in found]})


def item_lookup(items: pa.Table) -> dict[str, tuple[str, str]]:
    """Content id -> ``(text, image)`` of an item table (:func:`unime.pipeline.embed.unique_items`)."""
    return dict(zip(items["id"].to_pylist(), zip(items["text"].to_pylist(), items["image"].to_pylist())))


def judge_requests(pools: pa.Table, items: pa.Table) -> list[tuple[str, str]]:
    """Every (query id, candidate id) the judge stage scores: each query's positives and pool
    candidates, once each (the stage's own :func:`unime.pipeline.judge.judge_requests`, flat)."""
    from unime.pipeline.judge import judge_requests as stage_requests

    requests = stage_requests(pools, items)
    return [(query, candidate) for query, candidates in
            zip(requests["query_id"].to_pylist(), requests["candidate_ids"].to_pylist()) for candidate in candidates]


def score_pairs(judge, pairs: list[tuple[str, str, str, str]], images, batch_size: int) -> np.ndarray:
    """P(Yes) of an MLLM judge (:class:`unime.judge.HFJudge`) for ``(query text, query image,
    candidate text, candidate image)`` pairs (image paths), the judge chat of docs/method.md section 3."""
    from unime.judge.prompts import build_judge_messages

    chats = [build_judge_messages(qt, images.get(qi), ct, images.get(ci)) for qt, qi, ct, ci in pairs]
    return judge.score(chats, batch_size)


def scores_table(requests: list[tuple[str, str]], scores: np.ndarray) -> pa.Table:
    return pa.table({"query_id": [q for q, _ in requests], "candidate_id": [c for _, c in requests],
                     "score": pa.array(scores, pa.float64())})


def mine(pairs: pa.Table, pools: pa.Table, scores: pa.Table, mining: MiningConfig) -> tuple[list[dict], dict]:
    """The mine stage's pure function: filtered, selected hard negatives as mined records."""
    from unime.pipeline.mine import mine_pairs

    records, skipped, stats = mine_pairs(pairs, pools, scores, mining.num_negatives, mining.beta)
    if len(records) + len(skipped) != pools.num_rows:
        raise RuntimeError(f"mining lost pairs: {stats}")
    return records, stats


def retrieval_negatives(pools: pa.Table, items: dict, count: int) -> dict[str, list[tuple[str, str]]]:
    """The judge-free arm's hard negatives: each pair's top ``count`` pool candidates, cycled
    when the pool is shorter (as the miner fills); none for an empty pool."""
    negatives = {}
    for query, positive, pool in zip(pools["query_id"].to_pylist(), pools["pos_id"].to_pylist(),
                                     pools["pool_ids"].to_pylist()):
        if not pool:
            continue
        negatives[query + positive] = [items[pool[k % len(pool)]] for k in range(count)]
    return negatives


def filter_statistics(pools: pa.Table, scores: pa.Table, items: pa.Table, truth, beta: float) -> dict:
    """The false-negative filter against the ground truth; the judge's AUC and score range
    over the pools."""
    from unime.demo_truth import filter_quality, pool_truth, roc_auc
    from unime.mining import pool_filter_flags, score_lookup

    filtered, pool_scores = pool_filter_flags(pools, score_lookup(scores), beta)
    truly = np.array([match for row in pool_truth(pools, items, truth) for match in row], dtype=bool)
    quality = filter_quality(np.array(filtered), truly)
    quality["pool_auc"] = roc_auc(np.array(pool_scores), truly) if 0 < truly.sum() < len(truly) else None
    quality["score_range"] = [min(pool_scores), max(pool_scores)] if pool_scores else None
    return quality


# ---------------------------------------------------------------- judge and reranker training


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
    train = RerankerTrainConfig(num_workers=1, use_gpu=False, effective_batch_size=recipe.chats_per_step,
                                micro_batch_size=recipe.chats_per_step, lr=recipe.lr, full_finetune=True,
                                freeze_vision=False, answer_loss=answer_loss, max_grad_norm=recipe.max_grad_norm,
                                seed=seed)
    group = 1
    if answer_loss == "yes_no":
        # (positive, negative) chats of one query stay in one batch: the query's own pull on
        # P(Yes) then cancels within the batch. Shuffled apart, a judge trained from random
        # init stayed at chance (held-out AUC 0.49 against 0.92, one-off probe; docs/method-experiment.md).
        examples, group = [row for row in examples if row["kind"] == "pairwise"], 2
    trainer = RerankerTrainer(str(checkpoint), train, max_steps=recipe.steps, image_root=str(image_root), seed=seed,
                              min_pixels=min_pixels, max_pixels=max_pixels)
    for batch in _batches(examples, recipe.chats_per_step, recipe.steps, seed, group):
        trainer.step(batch)
        if after_step:
            after_step(trainer.step_count)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out_dir)
    trainer.processor.save_pretrained(out_dir)
    return out_dir, trainer.losses


# ---------------------------------------------------------------- evaluation


def eval_pairs(tables: dict[str, pa.Table], per_row: int) -> list[tuple[str, str, str, str]]:
    """Held-out judge pairs: each eval row's query with its first ``per_row`` candidates."""
    return [(row["qry_text"], row["qry_img_path"], text, image)
            for table in tables.values() for row in table.to_pylist()
            for text, image in list(zip(row["tgt_text"], row["tgt_img_path"]))[:per_row]]


def judge_auc(scores: np.ndarray, pairs: list[tuple[str, str, str, str]], truth) -> float:
    from unime.demo_truth import roc_auc

    return roc_auc(scores, np.array([truth.matches(*pair) for pair in pairs]))


def evaluate(embedder, tables: dict[str, pa.Table], images, batch_size: int
             ) -> tuple[dict[str, float], dict[str, list[np.ndarray]]]:
    """MMEB Precision@1 per subset (each row against its own candidates) and the row scores."""
    from unime.eval.harness import eval_items, row_scores, subset_metrics

    items, _ = eval_items(tables)
    vectors = embed(embedder, list(zip(items["text"].to_pylist(), items["image"].to_pylist())), images, batch_size)
    by_id = dict(zip(items["id"].to_pylist(), vectors))
    scores = {name: [row_scores(row, by_id) for row in table.to_pylist()] for name, table in tables.items()}
    return {name: subset_metrics(rows)["P@1"] for name, rows in scores.items()}, scores


def rerank_precision(reranker, tables: dict[str, pa.Table], scores: dict[str, list[np.ndarray]], images,
                     k: int, mode: str) -> dict[str, float]:
    """P@1 after the reranker reorders each row's embedder top-``k``."""
    from unime.eval.harness import top_k

    result = {}
    for name, table in tables.items():
        hits = 0
        for row, row_score in zip(table.to_pylist(), scores[name]):
            chosen = top_k(row_score, k)
            candidates = [(row["tgt_text"][j], images.get(row["tgt_img_path"][j])) for j in chosen]
            ranking = reranker.rank((row["qry_text"], images.get(row["qry_img_path"])), candidates, mode)
            hits += int(chosen[ranking.order[0]] == 0)
        result[name] = 100.0 * hits / max(1, table.num_rows)
    return result
