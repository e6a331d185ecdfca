"""GradCache: contrastive losses over large batches with bounded activation memory.

A plain step keeps the activations of every query and candidate until ``backward``; with 9
candidates per query that caps the batch. GradCache (Gao et al., 2021) splits the step:

1. embed every sub-batch (chunk) without a graph, remembering each chunk's RNG state;
2. compute the loss on those embeddings and its gradient with respect to the embeddings
   only (cheap: no model graph);
3. re-embed each chunk with a graph, replaying its RNG state (so dropout masks match), and
   backpropagate the cached embedding gradient through it.

Peak memory is one chunk's activations instead of the whole batch's; loss and parameter
gradients equal the plain step's (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from unime.train.distributed import reduce_on_last

EmbedFn = Callable[[Sequence[Any]], torch.Tensor]


class RandomState:
    """The CPU and CUDA RNG states at one moment, to replay a forward's dropout exactly."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    @contextlib.contextmanager
    def replay(self):
        saved = RandomState()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        try:
            yield
        finally:
            torch.set_rng_state(saved.cpu)
            if saved.cuda is not None:
                torch.cuda.set_rng_state_all(saved.cuda)


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def embed_without_graph(embed: EmbedFn, items: Sequence[Any], chunk_size: int,
                        prepare: Callable[[Sequence[Any]], Any] | None = None
                        ) -> tuple[torch.Tensor, list[RandomState], list[Any]]:
    """Embeddings of every chunk of ``items``, the RNG state before each, and the chunks as
    ``embed`` takes them (``prepare``d once each, so the re-forward reuses them)."""
    pieces = chunks(items, chunk_size)
    if prepare is not None:
        pieces = [prepare(piece) for piece in pieces]
    parts, states = [], []
    with torch.no_grad():
        for piece in pieces:
            states.append(RandomState())
            parts.append(embed(piece))
    return torch.cat(parts), states, pieces


def plain_step(embed: EmbedFn, queries: Sequence[Any], candidates: Sequence[Any],
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The reference: embed everything with a graph, backward once. Returns the loss."""
    loss = loss_fn(embed(queries), embed(candidates))
    loss.backward()
    return loss.detach()


def gradcache_step(embed: EmbedFn, queries: Sequence[Any], candidates: Sequence[Any],
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk_size: int,
                   no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
                   prepare: Callable[[Sequence[Any]], Any] | None = None) -> torch.Tensor:
    """One GradCache step; accumulates parameter gradients like ``plain_step``.

    Args:
        embed: maps a chunk (its items, or what ``prepare`` made of them) to ``[n, D]``
            embeddings (differentiable).
        queries, candidates: the step's items; ``loss_fn`` sees their embeddings in order.
        loss_fn: ``(query_embeddings, candidate_embeddings) -> scalar``.
        chunk_size: items per sub-batch forward.
        no_sync: DDP's ``model.no_sync``: gradients are all-reduced once, on the last chunk.
        prepare: turns a chunk of items into what ``embed`` takes (e.g. the processor's
            collation); run once per chunk, its output serves both forwards. Without it,
            ``embed`` takes the items themselves.

    Returns:
        The loss (detached).
    """
    query_reps, query_states, query_chunks = embed_without_graph(embed, queries, chunk_size, prepare)
    cand_reps, cand_states, cand_chunks = embed_without_graph(embed, candidates, chunk_size, prepare)
    query_reps.requires_grad_()
    cand_reps.requires_grad_()
    loss = loss_fn(query_reps, cand_reps)
    loss.backward()
    replays = list(zip(query_chunks, query_states, query_reps.grad.split(chunk_size))) + \
        list(zip(cand_chunks, cand_states, cand_reps.grad.split(chunk_size)))
    for index, (piece, state, grad) in enumerate(replays):
        with reduce_on_last(no_sync, last=index == len(replays) - 1), state.replay():
            torch.dot(embed(piece).flatten(), grad.flatten()).backward()
    return loss.detach()
