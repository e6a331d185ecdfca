"""DoRA's column norms computed once per optimiser step instead of once per forward.

DoRA (Liu et al., 2024) rescales each adapted projection by ``m / ||W + s * B A||``, with the
norm detached from the graph (the paper's section 4.3). PEFT recomputes that norm on every
forward in training mode: it materialises ``B A`` (a full weight-sized matrix, built by
pushing an identity matrix through both adapters) and takes the norm over every weight,
work proportional to the model's parameters rather than to the tokens. A GradCache step runs
two forwards per chunk, so at small chunks this fixed cost dominates the step (measured in
``bench/train_step.py``).

Within one optimiser step the weights do not change, so every forward of the step sees the
same norm: computing it once and reusing it gives bit-identical outputs and gradients
(tested against PEFT's own uncached path). Only the norm vector is kept (one value per
output row), never ``B A`` itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def dora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's DoRA magnitude modules (empty without PEFT or without DoRA)."""
    try:
        from peft.tuners.lora.dora import DoraLinearLayer
    except ImportError:
        return []
    return [module for module in model.modules() if isinstance(module, DoraLinearLayer)]


@contextlib.contextmanager
def dora_norms_once(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, each DoRA layer computes its weight norm on its first forward and
    reuses it after; leaving the block forgets them (the optimiser step changes them)."""
    layers = dora_layers(model)
    for layer in layers:
        _memoise(layer)
    try:
        yield
    finally:
        for layer in layers:
            vars(layer).pop("get_lora_weight", None)
            vars(layer).pop("get_weight_norm", None)


def _memoise(layer: torch.nn.Module) -> None:
    norms: dict[tuple[str, torch.dtype], torch.Tensor] = {}
    adapters: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}
    build_lora_weight, weight_norm = layer.get_lora_weight, layer.get_weight_norm

    def deferred_lora_weight(*, lora_A, lora_B, adapter_name=None):
        if adapter_name is None:  # initialisation and merging: not a training forward
            return build_lora_weight(lora_A=lora_A, lora_B=lora_B, adapter_name=adapter_name)
        adapters[adapter_name] = (lora_A, lora_B)
        return torch.empty(0)  # B A only feeds the norm: built there, and only when missing

    def cached_weight_norm(*, weight, lora_weight, scaling, adapter_name=None):
        if adapter_name is None:
            return weight_norm(weight=weight, lora_weight=lora_weight, scaling=scaling, adapter_name=adapter_name)
        key = (adapter_name, weight.dtype)
        if key not in norms:
            # without a graph on every forward, the first included: gradient checkpointing's
            # recomputation must save the same tensors as the forward it repeats
            with torch.no_grad():
                lora_A, lora_B = adapters[adapter_name]
                built = build_lora_weight(lora_A=lora_A, lora_B=lora_B, adapter_name=adapter_name).to(weight.dtype)
                norms[key] = weight_norm(weight=weight, lora_weight=built, scaling=scaling, adapter_name=adapter_name)
        return norms[key]

    # instance attributes shadow the class's methods for this layer only
    object.__setattr__(layer, "get_lora_weight", deferred_lora_weight)
    object.__setattr__(layer, "get_weight_norm", cached_weight_norm)
