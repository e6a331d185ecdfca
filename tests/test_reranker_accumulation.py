"""Reranker gradient accumulation: micro-batches add up to the effective batch's gradient, and a
run resumed from a checkpoint continues as if it had never stopped."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.faults import fail_after_step
from unime.config import LoraConfig, OptimConfig, RerankerTrainConfig
from unime.losses import IGNORE_INDEX
from unime.train.reranker import RerankerTrainer, reranker_examples

COLOURS = ["red", "green", "blue", "yellow", "purple"]


def record(k: int) -> dict:
    """A mined record; queries and candidates alternate between text, image and both."""
    image = f"images/train/pair_{k:05d}.png"
    return {"query_text": f"<|image_1|>\nWhat colour is shape {k}?" if k % 2 == 0 else f"shapes of query {k}",
            "query_image": image if k % 2 == 0 else "", "pos_text": COLOURS[k % 5],
            "pos_image": "" if k % 2 == 0 else image,
            "hard_negatives": [[f"colour {k}.{j}", f"images/train/pair_{(k + j + 1) % 20:05d}.png" if j % 2 else ""]
                               for j in range(4)],
            "hard_negatives_scores": [0.1] * 4}


def examples(records: int) -> list[dict]:
    """Three chats per record, in record order: "Yes", "No", then the listwise "Ans: (k)"."""
    return reranker_examples(pa.Table.from_pylist([record(k) for k in range(records)]), listwise_candidates=3,
                             seed=0).to_pylist()


def config(dropout: float = 0.0, **train) -> RerankerTrainConfig:
    return RerankerTrainConfig(**{"effective_batch_size": 4, "micro_batch_size": 2,
                                  "lora": LoraConfig(r=4, alpha=8, dropout=dropout, use_dora=False),
                                  "optim": OptimConfig(lr=1e-3, weight_decay=0.01), **train})


def columns(rows: list[dict]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in rows[0]}


def random_adapters(run: RerankerTrainer) -> None:
    """LoRA's B starts at zero, which leaves every A without a gradient: random B matrices, so
    that every trainable tensor has a gradient to compare."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in run.model.named_parameters():
            if param.requires_grad and "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def trainable_gradients(run: RerankerTrainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad and p.grad is not None}


def effective_batch_reference(run: RerankerTrainer, rows: list[dict]) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of the whole effective batch in one forward, from the documented loss:
    next-token cross-entropy averaged over every answer token of the batch ("next_token"), or
    the Yes/No cross-entropy averaged over its rows ("yes_no"). Full logits and labels by hand."""
    from unime.rerank.encoding import encode_with_answers
    from unime.train.reranker import chat_of

    chats = run.inputs.prepare([chat_of(r, run.images) for r in rows])
    batch = encode_with_answers(run.processor, chats, [r["answer"] for r in rows])
    labels = batch.pop("labels")
    run.model.zero_grad(set_to_none=True)
    logits = run.model(**batch, use_cache=False).logits.double()
    answer_positions = [[p for p in range(labels.shape[1]) if labels[b, p] != IGNORE_INDEX] for b in range(len(rows))]
    if run.config.answer_loss == "next_token":
        terms = [-torch.log_softmax(logits[b, p - 1], -1)[labels[b, p]]
                 for b, positions in enumerate(answer_positions) for p in positions]
    else:
        tokenizer = run.processor.tokenizer
        yes, no = (tokenizer.encode(word, add_special_tokens=False)[0] for word in ("Yes", "No"))
        terms = []
        for b, positions in enumerate(answer_positions):
            first = positions[0]
            pair = torch.log_softmax(logits[b, first - 1, [yes, no]], -1)
            terms.append(-pair[0 if int(labels[b, first]) == yes else 1])
    loss = torch.stack(terms).mean()
    loss.backward()
    return float(loss.detach()), trainable_gradients(run)


def accumulated_step(run: RerankerTrainer, rows: list[dict]) -> tuple[float, dict[str, torch.Tensor]]:
    """The trainer's own step and the gradients its optimiser is handed (before weights move)."""
    captured = {}
    handle = run.optimizer.register_step_pre_hook(lambda *_: captured.update(trainable_gradients(run)))
    try:
        loss = run.step(columns(rows))
    finally:
        handle.remove()
    return loss, captured


def answer_lengths(run: RerankerTrainer, rows: list[dict]) -> list[int]:
    return [len(run.processor.tokenizer.encode(r["answer"] + run.processor.tokenizer.eos_token,
                                               add_special_tokens=False)) for r in rows]


def check_accumulation(tiny_dir, demo_dir, rows: list[dict], answer_tokens: list[int], **train) -> None:
    """``answer_tokens``: how many answer tokens each of the two micro-batches holds."""
    run = RerankerTrainer(str(tiny_dir / "reranker"), config(**train), max_steps=4, device="cpu",
                          image_root=str(demo_dir), seed=0)
    assert run.accumulation == 2 and len(rows) == 4
    lengths = answer_lengths(run, rows)
    assert [lengths[0] + lengths[1], lengths[2] + lengths[3]] == answer_tokens
    random_adapters(run)
    want_loss, want = effective_batch_reference(run, rows)
    got_loss, got = accumulated_step(run, rows)
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    assert got.keys() == want.keys() == run.trainable_state().keys() and len(want) > 20
    assert all(float(g.abs().max()) > 0 for g in want.values())
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_accumulated_yes_no_gradient_equals_the_effective_batchs(tiny_dir, demo_dir):
    rows = [r for r in examples(2) if r["kind"] == "pairwise"]
    check_accumulation(tiny_dir, demo_dir, rows, [4, 4], answer_loss="yes_no")


def test_accumulated_next_token_gradient_equals_the_effective_batchs(tiny_dir, demo_dir):
    """Micro-batches with equally many answer tokens ("Yes" + listwise, "No" + listwise): the mean
    over micro-batches of each one's token mean is then the effective batch's token mean."""
    yes, no, listwise, _, _, other_listwise = examples(2)
    rows = [yes, listwise, no, other_listwise]
    check_accumulation(tiny_dir, demo_dir, rows, [8, 8])


def test_accumulated_next_token_gradient_with_unequal_answer_lengths(tiny_dir, demo_dir):
    """[Yes, No] then two listwise chats: 4 answer tokens in one micro-batch, 12 in the other."""
    yes, no, listwise, _, _, other_listwise = examples(2)
    rows = [yes, no, listwise, other_listwise]
    check_accumulation(tiny_dir, demo_dir, rows, [4, 12])


class FakeCheckpoint:
    """``ray.train.Checkpoint`` over a local folder."""

    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def from_directory(cls, path):
        return cls(path)

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.path)


class FakeRayTrain:
    """What ``run_worker_loop`` asks of ``ray.train`` on a single worker: the data shard (in a
    fixed order every epoch, as Ray Data's unshuffled iteration), the latest reported checkpoint
    at start-up, and ``report``, which keeps a copy of every checkpoint as Ray Train's storage."""

    def __init__(self, rows: list[dict], storage: Path):
        self.rows, self.storage = rows, storage
        self.latest: FakeCheckpoint | None = None
        self.reported: list[dict] = []

    def iter_batches(self, batch_size: int, batch_format: str, drop_last: bool):
        assert batch_format == "numpy" and drop_last
        for start in range(0, len(self.rows) - batch_size + 1, batch_size):
            chunk = self.rows[start: start + batch_size]
            yield {key: object_array([row[key] for row in chunk]) for key in chunk[0]}

    def report(self, metrics: dict, checkpoint: FakeCheckpoint | None = None) -> None:
        self.reported.append(dict(metrics))
        if checkpoint is not None:
            kept = self.storage / f"step_{metrics['step']}"
            shutil.copytree(checkpoint.path, kept)
            self.latest = FakeCheckpoint(kept)

    def install(self, monkeypatch) -> None:
        import ray.train

        monkeypatch.setattr(ray.train, "get_context", lambda: SimpleNamespace(get_world_size=lambda: 1,
                                                                             get_world_rank=lambda: 0))
        monkeypatch.setattr(ray.train, "get_checkpoint", lambda: self.latest)
        monkeypatch.setattr(ray.train, "get_dataset_shard", lambda name: self)
        monkeypatch.setattr(ray.train, "report", self.report)
        monkeypatch.setattr(ray.train, "Checkpoint", FakeCheckpoint)


def object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        out[index] = value
    return out


def final_checkpoint(storage: Path, step: int) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = storage / f"step_{step}"
    progress = json.loads((folder / "progress.json").read_text())
    return progress, torch.load(folder / "state.pt", weights_only=False)["weights"]


def test_a_resumed_run_with_accumulation_continues_the_uninterrupted_one(tiny_dir, demo_dir, tmp_path, monkeypatch):
    """Effective batch 4 in micro-batches of 2, 9 chats (two batches an epoch), 5 steps. The
    interrupted run fails after step 4, after a checkpoint at step 3 (mid-way through the
    second epoch); Ray Train restarts the worker, which builds a fresh trainer from that
    checkpoint. With LoRA dropout on, the dropout masks must continue where they were too."""
    from unime.train.reranker import train_loop_per_worker

    rows = examples(3)
    loop_config = {"model": str(tiny_dir / "reranker"), "train": asdict(config(dropout=0.3)), "max_steps": 5,
                   "checkpoint_every": 3, "trainer_kwargs": {"device": "cpu", "image_root": str(demo_dir), "seed": 0}}
    runs = {}
    for name, fail_after in (("uninterrupted", None), ("interrupted", 4)):
        storage = tmp_path / name
        storage.mkdir()
        ray_train = FakeRayTrain(rows, storage)
        ray_train.install(monkeypatch)
        if fail_after is not None:
            with monkeypatch.context() as patched:
                patched.setattr(RerankerTrainer, "step", RerankerTrainer.step)  # restored on exit
                fail_after_step(RerankerTrainer, fail_after)
                with pytest.raises(RuntimeError, match="injected training failure after step 4"):
                    train_loop_per_worker(loop_config)
            assert [m["step"] for m in ray_train.reported] == [3]
        train_loop_per_worker(loop_config)
        runs[name] = ray_train, final_checkpoint(storage, 5)
    (uninterrupted, (progress, weights)), (interrupted, (resumed_progress, resumed_weights)) = \
        runs["uninterrupted"], runs["interrupted"]
    assert [m["step"] for m in uninterrupted.reported] == [3, 5]
    assert [m["step"] for m in interrupted.reported] == [3, 5]
    assert resumed_progress["resumed_at"] == [3] and progress["resumed_at"] == []
    assert (resumed_progress["step"], resumed_progress["epoch"], resumed_progress["batches_in_epoch"]) == \
        (progress["step"], progress["epoch"], progress["batches_in_epoch"]) == (5, 2, 1)
    # steps 4 and 5 ran again in the resumed worker: the same batches, masks and optimiser state
    assert len(set(progress["losses"])) == 5
    np.testing.assert_allclose(resumed_progress["losses"], progress["losses"], rtol=1e-6, atol=0)
    assert resumed_weights.keys() == weights.keys() and len(weights) > 20
    for name, value in weights.items():
        torch.testing.assert_close(resumed_weights[name], value, atol=1e-7, rtol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")
