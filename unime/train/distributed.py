"""Collectives for losses that span the workers of a data-parallel run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _ScaledGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every worker's ``tensor`` (the same shape on each) concatenated along dim 0 in rank
    order; only this worker's own slice carries a gradient, the others are constants.

    A loss over the gathered tensors is the same global loss on every worker, but its
    gradient reaches each slice only on the worker that owns it, and DDP then averages the
    workers' gradients. The local slice's gradient is therefore scaled by the world size,
    so DDP's average equals the gradient of the global loss (one worker over the whole
    batch). VLM2Vec scales its gathered loss by the world size to the same end; scaling the
    gradient instead keeps the logged loss the global one. One worker: the tensor itself.
    """
    world = world_size()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.get_rank()] = _ScaledGradient.apply(tensor, float(world))
    return torch.cat(parts)


def reduce_on_last(no_sync: Callable[[], contextlib.AbstractContextManager] | None, last: bool):
    """The context of one backward pass of several that accumulate into one step: DDP's
    ``no_sync`` for every pass but the last, so gradients are all-reduced once per step.
    ``no_sync`` None (no DDP): nothing to skip."""
    return contextlib.nullcontext() if last or no_sync is None else no_sync()
