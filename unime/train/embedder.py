"""The UniME-V2 embedder trainer: soft-label alignment over mined records (docs/method.md section 5).

Per query the candidates are [positive, hn_1..hn_K] with judge scores [s_pos, s_1..s_K];
the loss is :func:`unime.losses.soft_kl_alignment` (plus an optional InfoNCE term, or InfoNCE
alone for a contrastive baseline). LoRA or
DoRA through PEFT on the language model's projections (or full fine-tuning), AdamW with
linear warm-up and decay, GradCache sub-batches, bf16 autocast on GPU.

:class:`EmbedderTrainer` is one worker's state (model, optimiser, scheduler, step) and is
usable without Ray; :func:`train_loop_per_worker` runs it under Ray Train (DDP, data shards,
checkpoints, resume).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import torch

from unime.config import EmbedderTrainConfig, from_dict
from unime.data.images import ImageCache, ImageLimits
from unime.losses import info_nce, soft_kl_alignment
from unime.models import Embedder, EmbedItem
from unime.train.base import TrainerBase, apply_lora, run_worker_loop
from unime.train.distributed import all_gather_with_grad
from unime.train.dora import dora_norms_once
from unime.train.gradcache import gradcache_step, plain_step


def training_examples(records: pa.Table, num_hard_negatives: int) -> pa.Table:
    """Mined records -> one row per query: its candidates [pos, hn_1..hn_K] and judge scores."""
    rows = records.to_pylist()
    short = [k for k, r in enumerate(rows) if len(r["hard_negatives"]) < num_hard_negatives]
    if short:
        raise ValueError(f"records {short[:5]} have fewer than {num_hard_negatives} hard negatives")
    return pa.table({
        "query_text": [r["query_text"] for r in rows],
        "query_image": [r["query_image"] or "" for r in rows],
        "cand_texts": [[r["pos_text"]] + [n[0] for n in r["hard_negatives"][:num_hard_negatives]] for r in rows],
        "cand_images": [[r["pos_image"] or ""] + [n[1] or "" for n in r["hard_negatives"][:num_hard_negatives]]
                        for r in rows],
        "judge_scores": [[float(r["query_pos_scores"])] + [float(s) for s in
                                                          r["hard_negatives_scores"][:num_hard_negatives]]
                         for r in rows],
    })


class EmbedderTrainer(TrainerBase):
    """One worker's training state; ``step(batch)`` runs one optimisation step."""

    def __init__(self, model: str, train: EmbedderTrainConfig, dtype: str = "float32", device: str = "auto",
                 min_pixels: int | None = None, max_pixels: int | None = None, image_root: str = "",
                 limits: dict | None = None, storage_options: dict | None = None, seed: int = 0,
                 input_format: str = "qwen2-vl-native", image_resolution: str | None = None,
                 image_cache_mib: int = 2048):
        super().__init__()
        torch.manual_seed(seed)
        self.config = train
        self.embedder = Embedder(model, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels,
                                 input_format=input_format, image_resolution=image_resolution, use="train_embedder",
                                 storage_options=storage_options)
        self.model = self.embedder.model.train()
        self.peft = apply_lora(self.model, train.lora, train.full_finetune)
        if train.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            self.model.enable_input_require_grads()
        self.module: torch.nn.Module = self.embedder.encoder  # DDP wraps this under Ray Train
        self.images = ImageCache(image_root, ImageLimits(**(limits or {})), storage_options, image_cache_mib << 20,
                                 prepare=self.embedder.prepare_image)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=train.optim.lr, weight_decay=train.optim.weight_decay)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, train.warmup_steps, train.max_steps)

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    def _autocast(self):
        if self.device.type == "cuda" and self.config.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, items) -> torch.Tensor:
        return self.embed_collated(self.collate(items))

    def collate(self, items) -> dict[str, torch.Tensor]:
        return self.embedder.collate(list(items))

    def embed_collated(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self._autocast():
            return self.module(**batch)

    def items(self, texts, images) -> list[EmbedItem]:
        return [EmbedItem(str(text), self.images.get(str(image)) if image else None) for text, image in zip(texts, images)]

    def loss_fn(self, judge_scores: torch.Tensor):
        batch, per_query = judge_scores.shape

        def loss(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
            candidates = candidates.reshape(batch, per_query, -1)
            value = queries.new_zeros(())
            if self.config.soft_label_weight:
                sims = torch.einsum("bd,bcd->bc", queries, candidates)
                value = value + self.config.soft_label_weight * soft_kl_alignment(
                    sims, judge_scores, self.config.temperature)
            if self.config.infonce_weight:
                value = value + self.config.infonce_weight * contrastive(queries, candidates)
            return value

        def contrastive(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
            """InfoNCE; with in-batch negatives over the global batch, every worker's queries
            and candidates gathered (the soft-label term is per query: local)."""
            if self.config.in_batch_negatives:
                queries, candidates = all_gather_with_grad(queries), all_gather_with_grad(candidates)
            return info_nce(queries, candidates, self.config.temperature, self.config.in_batch_negatives)
        return loss

    def step(self, batch: dict) -> float:
        """One optimisation step on a batch of :func:`training_examples` rows."""
        queries = self.items(batch["query_text"], batch["query_image"])
        candidates = self.items([t for ts in batch["cand_texts"] for t in ts],
                                [i for imgs in batch["cand_images"] for i in imgs])
        judge = torch.tensor(np.stack([np.asarray(s, dtype=np.float32) for s in batch["judge_scores"]]),
                             device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        chunk = self.config.gradcache_chunk
        with dora_norms_once(self.model):  # the weights hold still until the optimiser step
            if chunk and chunk < len(candidates):
                no_sync = getattr(self.module, "no_sync", None)
                # each chunk collated once: the re-forward with a graph reuses its tensors
                loss = gradcache_step(self.embed_collated, queries, candidates, self.loss_fn(judge), chunk,
                                      no_sync, prepare=self.collate)
            else:
                loss = plain_step(self.embed, queries, candidates, self.loss_fn(judge))
        self.clip_gradients(self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        self.batches_in_epoch += 1
        self.losses.append(float(loss))
        return float(loss)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: the embedder under DDP over this worker's data shard."""
    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    train = from_dict(EmbedderTrainConfig, loop_config["train"])
    trainer = EmbedderTrainer(loop_config["model"], train, **loop_config["trainer_kwargs"])
    if ray.train.get_context().get_world_size() > 1:
        trainer.module = DistributedDataParallel(trainer.module, find_unused_parameters=train.full_finetune)
    run_worker_loop(trainer, train.max_steps, train.queries_per_worker, train.checkpoint_every)
