"""The UniME-V2 embedder trainer: soft-label alignment over mined records (METHOD.md section 5).

Per query the candidates are [positive, hn_1..hn_K] with judge scores [s_pos, s_1..s_K];
the loss is :func:`unime.losses.soft_kl_alignment` (plus an optional InfoNCE term). LoRA or
DoRA through PEFT on the language model's projections (or full fine-tuning), AdamW with
linear warm-up and decay, GradCache sub-batches, bf16 autocast on GPU.

:class:`EmbedderTrainer` is one worker's state (model, optimiser, scheduler, step) and is
usable without Ray; :func:`train_loop_per_worker` runs it under Ray Train (DDP, data shards,
checkpoints, resume).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from unime.config import EmbedderTrainConfig
from unime.data.images import ImageLimits
from unime.losses import info_nce, soft_kl_alignment
from unime.models import Embedder, EmbedItem
from unime.pipeline.common import ImageCache
from unime.train.gradcache import gradcache_step, plain_step

# The language model's attention and MLP projections (not the vision tower's, which share names).
LM_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


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


def apply_adapters(model, config: EmbedderTrainConfig):
    """Wrap ``model`` with LoRA/DoRA on the LM projections (PEFT), or unfreeze it all."""
    if config.full_finetune:
        model.requires_grad_(True)
        return None
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      use_dora=config.use_dora, target_modules=LM_PROJECTIONS, bias="none")
    return get_peft_model(model, lora)  # injects the adapters into ``model`` in place


class EmbedderTrainer:
    """One worker's training state; ``step(batch)`` runs one optimisation step."""

    def __init__(self, model: str, train: EmbedderTrainConfig, dtype: str = "float32", device: str = "auto",
                 min_pixels: int | None = None, max_pixels: int | None = None, image_root: str = "",
                 limits: dict | None = None, storage_options: dict | None = None, seed: int = 0):
        torch.manual_seed(seed)
        self.config = train
        self.embedder = Embedder(model, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels)
        self.embedder.model.train()
        self.peft = apply_adapters(self.embedder.model, train)
        if train.gradient_checkpointing:
            self.embedder.model.gradient_checkpointing_enable()
            self.embedder.model.enable_input_require_grads()
        self.module: torch.nn.Module = self.embedder.encoder  # DDP wraps this under Ray Train
        self.images = ImageCache(image_root, ImageLimits(**(limits or {})), storage_options)
        trainable = [p for p in self.embedder.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, train.warmup_steps, train.max_steps)
        self.step_count = 0
        self.batches_in_epoch = 0
        self.epoch = 0
        self.losses: list[float] = []
        self.resumed_at: list[int] = []  # steps this run restarted from (after a failure)

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    def _autocast(self):
        if self.device.type == "cuda" and self.config.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, items) -> torch.Tensor:
        with self._autocast():
            return self.module(**self.embedder.collate(list(items)))

    def items(self, texts, images) -> list[EmbedItem]:
        return [EmbedItem(str(text), self.images.get(str(image)) if image else None) for text, image in zip(texts, images)]

    def loss_fn(self, judge_scores: torch.Tensor):
        batch, per_query = judge_scores.shape

        def loss(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
            candidates = candidates.reshape(batch, per_query, -1)
            sims = torch.einsum("bd,bcd->bc", queries, candidates)
            value = soft_kl_alignment(sims, judge_scores, self.config.temperature)
            if self.config.infonce_weight:
                value = value + self.config.infonce_weight * info_nce(
                    queries, candidates, self.config.temperature, self.config.in_batch_negatives)
            return value
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
        if chunk and chunk < len(candidates):
            no_sync = getattr(self.module, "no_sync", None)
            loss = gradcache_step(self.embed, queries, candidates, self.loss_fn(judge), chunk, no_sync)
        else:
            loss = plain_step(self.embed, queries, candidates, self.loss_fn(judge))
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        self.batches_in_epoch += 1
        self.losses.append(float(loss))
        return float(loss)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu() for n, p in self.embedder.model.named_parameters() if p.requires_grad}

    def save_state(self, folder: str | Path) -> None:
        """Everything a resume needs: trainable weights, optimiser, scheduler, data position."""
        folder = Path(folder)
        torch.save({"weights": self.trainable_state(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state()}, folder / "state.pt")
        (folder / "progress.json").write_text(json.dumps({
            "step": self.step_count, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
            "losses": self.losses, "resumed_at": self.resumed_at}))
        if self.peft is not None:
            self.peft.save_pretrained(folder / "adapter")

    def load_state(self, folder: str | Path) -> None:
        folder = Path(folder)
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        params = dict(self.embedder.model.named_parameters())
        with torch.no_grad():
            for name, value in state["weights"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        progress = json.loads((folder / "progress.json").read_text())
        self.step_count, self.epoch = progress["step"], progress["epoch"]
        self.batches_in_epoch, self.losses = progress["batches_in_epoch"], progress["losses"]
        self.resumed_at = progress.get("resumed_at", [])


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker loop: DDP, the worker's data shard, periodic checkpoints, resume."""
    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    train = EmbedderTrainConfig(**loop_config["train"])
    context = ray.train.get_context()
    trainer = EmbedderTrainer(loop_config["model"], train, **loop_config["trainer_kwargs"])
    if context.get_world_size() > 1:
        trainer.module = DistributedDataParallel(trainer.module, find_unused_parameters=train.full_finetune)
    checkpoint = ray.train.get_checkpoint()
    resumed = checkpoint is not None
    if resumed:
        with checkpoint.as_directory() as folder:
            trainer.load_state(folder)
        trainer.resumed_at.append(trainer.step_count)
    shard = ray.train.get_dataset_shard("train")
    fail_at = loop_config.get("fail_after_step")
    while trainer.step_count < train.max_steps:
        batches = shard.iter_batches(batch_size=train.queries_per_worker, batch_format="numpy", drop_last=True)
        for index, batch in enumerate(batches):
            if index < trainer.batches_in_epoch:
                continue  # consumed before the checkpoint this run resumed from
            loss = trainer.step(batch)
            if fail_at is not None and not resumed and trainer.step_count == fail_at:
                raise RuntimeError(f"injected training failure after step {fail_at} (faults config)")
            if trainer.step_count % train.checkpoint_every == 0 or trainer.step_count == train.max_steps:
                _report(trainer, context.get_world_rank(), loss)
            if trainer.step_count >= train.max_steps:
                break
        else:
            if trainer.batches_in_epoch == 0:
                raise RuntimeError("the worker's data shard yielded no full batch; lower queries_per_worker")
            trainer.epoch, trainer.batches_in_epoch = trainer.epoch + 1, 0


def _report(trainer: EmbedderTrainer, rank: int, loss: float) -> None:
    import ray.train

    metrics = {"step": trainer.step_count, "loss": loss, "lr": trainer.scheduler.get_last_lr()[0]}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            trainer.save_state(folder)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def merge_adapter(base_model: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Base checkpoint + LoRA adapter -> a merged checkpoint ``from_pretrained`` loads."""
    from peft import PeftModel

    from unime.models import load_model, load_processor

    model = PeftModel.from_pretrained(load_model(base_model, dtype=dtype, device="cpu"), str(adapter_dir))
    merged = model.merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    load_processor(base_model).save_pretrained(out_dir)
    os.sync()
    return out_dir
