"""What every trainer shares: optimiser state, data position, checkpoints, the worker loop."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from unime.monitoring import record

if TYPE_CHECKING:
    from unime.config import LoraConfig

# The language model's attention and MLP projections (not the vision tower's, which share names).
LM_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def apply_lora(model, lora: LoraConfig, full_finetune: bool = False):
    """LoRA/DoRA (PEFT) on the LM projections, vision tower frozen; or unfreeze everything.
    ``lora``: a :class:`unime.config.LoraConfig`, or anything with its four fields (the GPU
    check builds one without importing the config, which needs pyarrow)."""
    if full_finetune:
        model.requires_grad_(True)
        return None
    import peft

    adapters = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_dora=lora.use_dora,
                               target_modules=LM_PROJECTIONS, bias="none")
    return peft.get_peft_model(model, adapters)  # injects the adapters into ``model`` in place


class TrainerBase:
    """One worker's optimisation state. Subclasses set ``model``, ``peft``, ``optimizer``,
    ``scheduler``, ``images`` (an :class:`unime.data.images.ImageCache`) and implement
    ``step(batch) -> loss``."""

    model: torch.nn.Module
    peft = None
    images = None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def __init__(self):
        self.step_count = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.losses: list[float] = []
        self.resumed_at: list[int] = []  # steps this run restarted from (after a failure)
        self.skipped_examples = 0  # left out of training (over the model's token budget)

    def prefetch(self, batch: dict) -> None:
        """Load a batch's images (its ``query_image`` and ``cand_images``) into the cache; the
        worker loop runs this for the next batch while the current one trains."""
        for path in batch.get("query_image", []):
            self.images.get(str(path))
        for paths in batch.get("cand_images", []):
            for path in paths:
                self.images.get(str(path))

    def clip_gradients(self, max_norm: float | None) -> None:
        """Clip the trainable parameters' gradient norm before an optimiser step (None: off)."""
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], max_norm)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}

    def save_state(self, folder: str | Path) -> None:
        """Everything a resume needs: trainable weights, optimiser, scheduler, RNG, data position."""
        folder = Path(folder)
        # on a GPU, dropout draws from the device's generator: a resume needs its state too
        cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        torch.save({"weights": self.trainable_state(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state(),
                    "cuda_rng": cuda_rng}, folder / "state.pt")
        (folder / "progress.json").write_text(json.dumps({
            "step": self.step_count, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
            "losses": self.losses, "resumed_at": self.resumed_at, "skipped_examples": self.skipped_examples}))
        if self.peft is not None:
            self.peft.save_pretrained(folder / "adapter")

    def load_state(self, folder: str | Path) -> None:
        folder = Path(folder)
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["weights"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        progress = json.loads((folder / "progress.json").read_text())
        self.step_count, self.epoch = progress["step"], progress["epoch"]
        self.batches_in_epoch, self.losses = progress["batches_in_epoch"], progress["losses"]
        self.resumed_at = progress.get("resumed_at", [])
        self.skipped_examples = progress.get("skipped_examples", 0)


def run_worker_loop(trainer: TrainerBase, max_steps: int, batch_size: int, checkpoint_every: int) -> None:
    """The Ray Train worker loop: resume, iterate the worker's shard, checkpoint, stop.

    ``batch_size`` rows make one ``trainer.step``; epochs repeat the shard until
    ``max_steps``. A resumed worker skips the batches its checkpoint had consumed.
    """
    import ray.train

    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state(folder)
        trainer.resumed_at.append(trainer.step_count)
    shard = ray.train.get_dataset_shard("train")
    model, world = type(trainer).__name__.removesuffix("Trainer").lower(), context.get_world_size()
    progress = _progress_bar(context.get_world_rank(), model, trainer.step_count, max_steps)
    while trainer.step_count < max_steps:
        batches = shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True)
        # batches consumed before the checkpoint this run resumed from are skipped
        for batch in prefetched(batches, trainer.batches_in_epoch, trainer.prefetch):
            started = time.perf_counter()
            loss = trainer.step(batch)
            _record_step(model, loss, batch_size * world / (time.perf_counter() - started), progress)
            if trainer.step_count % checkpoint_every == 0 or trainer.step_count == max_steps:
                report(trainer, context.get_world_rank(), loss)
            if trainer.step_count >= max_steps:
                break
        else:
            if trainer.batches_in_epoch == 0:
                raise RuntimeError("the worker's data shard yielded no full batch; lower the batch size")
            trainer.epoch, trainer.batches_in_epoch = trainer.epoch + 1, 0
    if progress is not None:
        progress.close()


def prefetched(batches: Iterable[dict], skip: int, prefetch: Callable[[dict], None]) -> Iterator[dict]:
    """The batches after the first ``skip``, each handed out once ``prefetch`` (image fetch and
    decode) has run for it; the next batch's ``prefetch`` runs on a background thread while
    the consumer uses the current one, so the step never waits on images it could have had."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        upcoming = (batch for index, batch in enumerate(batches) if index >= skip)
        current = next(upcoming, None)
        loading = pool.submit(prefetch, current) if current is not None else None
        while current is not None:
            following = next(upcoming, None)
            loading.result()  # the current batch's images are in the cache (or its error raises)
            loading = pool.submit(prefetch, following) if following is not None else None
            yield current
            current = following


def _progress_bar(rank: int, model: str, done: int, total: int):
    """A progress bar on rank 0 only (its lines reach the driver's console through Ray's log)."""
    if rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"train {model}", unit="step", mininterval=5.0)


def _record_step(model: str, loss: float, examples_per_second: float, progress) -> None:
    record("unime_train_loss", loss, model=model)
    record("unime_train_steps_total", 1, model=model)
    record("unime_train_examples_per_second", examples_per_second, model=model)
    if progress is not None:
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", refresh=False)


def report(trainer: TrainerBase, rank: int, loss: float) -> None:
    """Report metrics from every worker and a checkpoint from rank 0."""
    import ray.train

    metrics = {"step": trainer.step_count, "loss": loss, "lr": trainer.scheduler.get_last_lr()[0]}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            trainer.save_state(folder)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def materialise_full(base_model: str, state_file: str | Path, out_dir: str | Path, dtype: str = "float32",
                     device: str = "cpu") -> Path:
    """Base checkpoint + fully fine-tuned weights (``state.pt``) -> a checkpoint ``from_pretrained``
    loads, in ``dtype`` (the trained fp32 weights are cast)."""
    from unime.models import load_model, load_processor

    model = load_model(base_model, dtype=dtype, device=device)
    weights = torch.load(state_file, map_location="cpu", weights_only=False)["weights"]
    missing = set(weights) - {name for name, _ in model.named_parameters()}
    if missing:
        raise KeyError(f"trained weights not in {base_model}: {sorted(missing)[:5]}")
    model.load_state_dict(weights, strict=False)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    load_processor(base_model).save_pretrained(out_dir)
    return out_dir


def merge_adapter(base_model: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32",
                  device: str = "cpu") -> Path:
    """Base checkpoint + LoRA adapter -> a merged checkpoint ``from_pretrained`` loads, merged
    and saved in ``dtype`` on ``device``."""
    from peft import PeftModel

    from unime.models import load_model, load_processor

    model = PeftModel.from_pretrained(load_model(base_model, dtype=dtype, device=device), str(adapter_dir))
    out_dir = Path(out_dir)
    model.merge_and_unload().save_pretrained(out_dir)
    load_processor(base_model).save_pretrained(out_dir)
    os.sync()
    return out_dir
