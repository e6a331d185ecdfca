"""The UniME-V2 reranker trainer (docs/method.md section 6).

Each mined record yields three chats (pairwise positive -> "Yes", pairwise with the first
hard negative -> "No", listwise over the first five hard negatives with the positive at a
random position -> "Ans: (k)"), trained with next-token cross-entropy on the answer tokens
only. LoRA on the language model's projections, vision tower frozen, AdamW with cosine decay
after a warm-up, gradient accumulation up to the effective batch.

A step's loss is the mean over every answer token of the worker's share of the effective
batch (``answer_loss: yes_no``: over every row), however the micro-batches split it: each
micro-batch's summed loss is divided by the share's total, counted before the first forward.
That is the Hugging Face Trainer's ``num_items_in_batch`` rule; a mean per micro-batch
divided by the number of micro-batches would weigh a token by the size of its micro-batch.
"""

from __future__ import annotations

import random

import pyarrow as pa
import torch

from unime.config import RerankerTrainConfig, from_dict
from unime.data.images import ImageCache, ImageLimits
from unime.judge.hf import ChatInputs, over_budget, yes_no_token_ids
from unime.judge.prompts import item_parts
from unime.losses import IGNORE_INDEX, answer_cross_entropy, choice_cross_entropy
from unime.models import load_model
from unime.rerank.encoding import encode_with_answers
from unime.rerank.prompts import build_listwise_messages, build_pairwise_messages, training_chats
from unime.train.base import TrainerBase, apply_lora, run_worker_loop
from unime.train.distributed import reduce_on_last


def reranker_examples(records: pa.Table, listwise_candidates: int = 5, seed: int = 0) -> pa.Table:
    """Mined records -> three training chats each (deterministic for a seed)."""
    rng = random.Random(seed)
    rows = [chat for record in records.to_pylist() for chat in training_chats(record, rng, listwise_candidates)]
    return pa.table({
        "kind": [r["kind"] for r in rows],
        "query_text": [r["query"][0] for r in rows],
        "query_image": [r["query"][1] for r in rows],
        "cand_texts": [[c[0] for c in r["candidates"]] for r in rows],
        "cand_images": [[c[1] for c in r["candidates"]] for r in rows],
        "answer": [r["answer"] for r in rows],
    })


def chat_of(row: dict, images: ImageCache) -> list[dict]:
    """A training row's chat: "pairwise" and "listwise" (the reranker's), or "generate" (the
    query item alone, answered by the target text: caption pre-training of a chat model)."""
    query = (row["query_text"], images.get(row["query_image"]))
    if row["kind"] == "generate":
        return [{"role": "user", "content": item_parts(*query)}]
    candidates = [(text, images.get(image)) for text, image in zip(row["cand_texts"], row["cand_images"])]
    if row["kind"] == "pairwise":
        return build_pairwise_messages(*query, *candidates[0])
    return build_listwise_messages(*query, candidates)


def answer_window(labels: torch.Tensor) -> int:
    """Positions at the end of every row that hold the answers and the one before each (whose
    logits predict the first answer token); the answers must end their rows (left padding)."""
    answered = labels != IGNORE_INDEX
    lengths = answered.sum(dim=1)
    columns = torch.arange(labels.shape[1], device=labels.device)
    at_end = answered == (columns[None] >= labels.shape[1] - lengths[:, None])
    if not bool(at_end.all()):
        raise ValueError("answer tokens must end each row (left padding)")
    return min(labels.shape[1], int(lengths.max()) + 1)


class RerankerTrainer(TrainerBase):
    """One worker's reranker state; ``step`` accumulates micro-batches up to the effective batch."""

    def __init__(self, model: str, train: RerankerTrainConfig, max_steps: int, world_size: int = 1,
                 dtype: str = "float32", device: str = "auto", min_pixels: int | None = None,
                 max_pixels: int | None = None, image_root: str = "", limits: dict | None = None,
                 storage_options: dict | None = None, seed: int = 0, input_format: str = "qwen2-vl-native",
                 image_resolution: str | None = None, max_model_len: int | None = None, image_cache_mib: int = 2048):
        super().__init__()
        from unime.models.checkpoints import local_checkpoint

        torch.manual_seed(seed)
        self.config = train
        model = local_checkpoint(model, storage_options)  # a base model on an object store: copied here once
        self.model = load_model(model, dtype=dtype, device=device).train()
        # the input recipe's texts and images, at its reranker-training resolution, within the
        # reranker's token budget
        self.inputs = ChatInputs(model, min_pixels, max_pixels, input_format, image_resolution, use="train_reranker",
                                 max_model_len=max_model_len)
        self.processor = self.inputs.processor
        self.choice_ids = list(yes_no_token_ids(self.processor.tokenizer)) if train.answer_loss == "yes_no" else None
        self.peft = apply_lora(self.model, train.lora, full_finetune=train.full_finetune)
        if train.freeze_vision:  # LoRA or full fine-tuning of the language model only
            self.model.model.visual.requires_grad_(False)
        if train.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            # frozen embeddings give the checkpointed blocks inputs without grad: PEFT's hook
            # makes them require it, so the adapters inside still get gradients
            self.model.enable_input_require_grads()
        self.module: torch.nn.Module = self.model
        self.images = ImageCache(image_root, ImageLimits(**(limits or {})), storage_options, image_cache_mib << 20,
                                 prepare=self.inputs.prepare_image)
        per_step = train.micro_batch_size * world_size
        if train.effective_batch_size % per_step:
            raise ValueError(f"effective_batch_size {train.effective_batch_size} is not a multiple of "
                             f"micro_batch_size x workers = {per_step}")
        self.accumulation = train.effective_batch_size // per_step
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=train.optim.lr, weight_decay=train.optim.weight_decay)
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, int(train.warmup_ratio * max_steps), max_steps)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, rows: list[dict]) -> dict | None:
        """Model inputs of training rows; an example over the token budget is left out and
        counted (``skipped_examples``, in the stage's manifest), None if none is left."""
        chats = self.inputs.prepare([chat_of(r, self.images) for r in rows])
        answers = [r["answer"] for r in rows]
        batch = encode_with_answers(self.processor, chats, answers)
        over = {k for k, _ in over_budget(batch["attention_mask"], self.inputs.max_model_len, generated=0)}
        if not over:
            return batch
        self.skipped_examples += len(over)
        kept = [k for k in range(len(rows)) if k not in over]
        return encode_with_answers(self.processor, [chats[k] for k in kept], [answers[k] for k in kept]) if kept else None

    def micro_loss(self, rows: list[dict]) -> torch.Tensor | None:
        """The mean loss over the answer targets of ``rows``; None if every row is over budget."""
        batch = self.encode(self.checked(rows))
        return None if batch is None else self.summed_loss(batch) / self.target_count(batch)

    def checked(self, rows: list[dict]) -> list[dict]:
        if self.config.answer_loss == "yes_no":
            other = next((r["kind"] for r in rows if r["kind"] != "pairwise"), None)
            if other is not None:
                raise ValueError(f"answer_loss=yes_no trains pairwise chats only; got a {other!r} row")
        return rows

    def target_count(self, batch: dict) -> int:
        """What the loss averages over: answer tokens (their predicting positions), or rows."""
        if self.config.answer_loss == "yes_no":
            return int(batch["labels"].shape[0])
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def summed_loss(self, batch: dict) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        # Answers end every (left-padded) row: the LM head runs on the positions that predict
        # them only, never on the whole [B, L, vocab].
        keep = answer_window(labels)
        logits = self.module(**batch, use_cache=False, logits_to_keep=keep).logits
        labels = labels[:, -keep:]
        if self.config.answer_loss == "yes_no":
            return choice_cross_entropy(logits, labels, self.choice_ids, reduction="sum")
        return answer_cross_entropy(logits, labels, reduction="sum")

    def step(self, batch: dict) -> float:
        """One optimiser step over ``effective_batch / workers`` rows, in micro-batches."""
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        rows = self.checked([{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()} for r in rows])
        self.optimizer.zero_grad(set_to_none=True)
        size = self.config.micro_batch_size
        # a micro-batch whose every example is over the token budget is None: nothing to learn
        encoded = [b for b in (self.encode(rows[s: s + size]) for s in range(0, len(rows), size)) if b is not None]
        targets = sum(self.target_count(b) for b in encoded)
        total, no_sync = 0.0, getattr(self.module, "no_sync", None)
        for index, micro_batch in enumerate(encoded):
            with reduce_on_last(no_sync, last=index == len(encoded) - 1):
                loss = self.summed_loss(micro_batch) / targets
                loss.backward()
            total += float(loss.detach())
        self.clip_gradients(self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        self.batches_in_epoch += 1
        self.losses.append(total)
        return total


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: the reranker under DDP over this worker's data shard."""
    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    train = from_dict(RerankerTrainConfig, loop_config["train"])
    world = ray.train.get_context().get_world_size()
    trainer = RerankerTrainer(loop_config["model"], train, loop_config["max_steps"], world,
                              **loop_config["trainer_kwargs"])
    if world > 1:
        trainer.module = DistributedDataParallel(trainer.module)
    run_worker_loop(trainer, loop_config["max_steps"], train.effective_batch_size // world,
                    loop_config.get("checkpoint_every", loop_config["max_steps"]))
