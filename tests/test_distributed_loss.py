"""The embedder's loss under data parallelism: 2 workers x B/2 give 1 x B's loss and
gradients, with and without in-batch negatives, plain and GradCache. Two gloo processes
run the trainer's own loss under DDP; the reference is written out here, on one process."""

from __future__ import annotations

import datetime
import gc
import time
import types

import pytest
import torch
import torch.nn.functional as F

BATCH, PER_QUERY, DIM, TEMPERATURE = 8, 3, 6, 0.05


def inputs():
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(BATCH, DIM, generator=generator)
    candidates = torch.randn(BATCH * PER_QUERY, DIM, generator=generator)
    judge = torch.rand(BATCH, PER_QUERY, generator=generator)
    return queries, candidates, judge


def encoder() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(DIM, 4)


def train_config(in_batch: bool):
    from unime.config import EmbedderTrainConfig

    return EmbedderTrainConfig(temperature=TEMPERATURE, in_batch_negatives=in_batch, soft_label_weight=0.5,
                               infonce_weight=1.0)


def worker(rank: int, world: int, in_batch: bool, chunk: int, out: str) -> None:
    import torch.distributed as dist

    # a file store, not a TCP port that another process (a Ray node) may take between choosing
    # it and binding it; a short timeout, so a worker that cannot join fails instead of waiting
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        # the DDP model dies inside this call, while the process group is still registered:
        # a DDP reducer holding the group's last reference destroys it without releasing
        # the GIL, and that deadlocks against a gloo thread that needs the GIL to finish
        one_step(rank, world, in_batch, chunk, out)
        gc.collect()
    finally:
        dist.destroy_process_group()


def one_step(rank: int, world: int, in_batch: bool, chunk: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from unime.train.embedder import EmbedderTrainer
    from unime.train.gradcache import gradcache_step, plain_step

    model = DistributedDataParallel(encoder())
    queries, candidates, judge = inputs()
    per_worker = BATCH // world
    mine = slice(rank * per_worker, (rank + 1) * per_worker)
    own_candidates = candidates[rank * per_worker * PER_QUERY: (rank + 1) * per_worker * PER_QUERY]
    loss_fn = EmbedderTrainer.loss_fn(types.SimpleNamespace(config=train_config(in_batch)), judge[mine])

    def embed(rows):
        return F.normalize(model(torch.stack(list(rows))), dim=-1)

    if chunk:
        loss = gradcache_step(embed, queries[mine], own_candidates, loss_fn, chunk, model.no_sync)
    else:
        loss = plain_step(embed, queries[mine], own_candidates, loss_fn)
    torch.save({"loss": float(loss), "grads": [p.grad.clone() for p in model.module.parameters()]},
               f"{out}/rank{rank}.pt")


def reference(in_batch: bool) -> tuple[float, list[torch.Tensor]]:
    """One worker over the whole batch, the loss written from its formula."""
    from unime.losses import soft_kl_alignment

    model = encoder()
    queries, candidates, judge = inputs()
    q = F.normalize(model(queries), dim=-1)
    c = F.normalize(model(candidates), dim=-1)
    own = torch.einsum("bd,bcd->bc", q, c.reshape(BATCH, PER_QUERY, -1))
    if in_batch:  # every candidate of the batch; query i's positive is candidate i * PER_QUERY
        logits, targets = q @ c.T, torch.arange(BATCH) * PER_QUERY
    else:
        logits, targets = own, torch.zeros(BATCH, dtype=torch.long)
    loss = F.cross_entropy(logits / TEMPERATURE, targets) + 0.5 * soft_kl_alignment(own, judge, TEMPERATURE)
    loss.backward()
    return float(loss.detach()), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("chunk", [0, 2], ids=["plain", "gradcache"])
@pytest.mark.parametrize("in_batch", [True, False], ids=["in-batch", "own-candidates"])
def test_two_workers_give_one_workers_loss_and_gradients(tmp_path, in_batch, chunk):
    import torch.multiprocessing as mp

    context = mp.spawn(worker, args=(2, in_batch, chunk, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):  # raises a worker's error; never waits without bound
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo workers did not finish within 120 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected_loss, expected_grads = reference(in_batch)
    # each worker's loss: the global InfoNCE plus its own queries' soft-label term
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(expected_loss, rel=1e-5)
    for rank in ranks:  # DDP's averaged gradient on every worker
        for got, expected in zip(rank["grads"], expected_grads):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_one_worker_gathers_nothing():
    from unime.train.distributed import all_gather_with_grad

    tensor = torch.ones(2, 3, requires_grad=True)
    assert all_gather_with_grad(tensor) is tensor
