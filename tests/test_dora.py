"""DoRA's weight norms computed once per step: PEFT's own per-forward path is the reference."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.test_gradcache import gradients_at_the_optimiser_step

BATCH = {"query_text": ["a red circle", "what colour?"], "query_image": ["", ""],
         "cand_texts": [["x", "y", "z"], ["u", "v", "w"]], "cand_images": [["", "", ""], ["", "", ""]],
         "judge_scores": [[0.9, 0.2, 0.4], [0.8, 0.1, 0.3]]}


def norm_computations(monkeypatch) -> list[str]:
    """Grows by one each time any DoRA layer really computes a weight norm in a forward."""
    from peft.tuners.lora.dora import DoraLinearLayer

    computed, real = [], DoraLinearLayer.get_weight_norm

    def counted(self, *args, **kwargs):
        if kwargs.get("adapter_name") is not None:
            computed.append(kwargs["adapter_name"])
        return real(self, *args, **kwargs)
    monkeypatch.setattr(DoraLinearLayer, "get_weight_norm", counted)
    return computed


def two_steps(tiny_dir, monkeypatch, cached: bool):
    from unime.config import EmbedderTrainConfig, LoraConfig, OptimConfig
    from unime.train import embedder as embedder_module
    from unime.train.embedder import EmbedderTrainer

    if not cached:
        monkeypatch.setattr(embedder_module, "dora_norms_once", lambda model: contextlib.nullcontext())
    computed = norm_computations(monkeypatch)
    config = EmbedderTrainConfig(optim=OptimConfig(lr=1e-2), warmup_steps=0, max_steps=5,
                                 lora=LoraConfig(dropout=0.0, use_dora=True), gradcache_chunk=2)
    trainer = EmbedderTrainer(str(tiny_dir / "embedder"), config, device="cpu", seed=0)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # random adapters: every A, B and magnitude gets a gradient
        for name, param in trainer.model.named_parameters():
            if param.requires_grad and "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    steps = []
    for _ in range(2):
        computed.clear()
        grads = gradients_at_the_optimiser_step(trainer)
        loss = trainer.step(BATCH)
        steps.append((loss, dict(grads), len(computed)))
    return trainer, steps


def test_norms_once_per_step_give_pefts_gradients_exactly(tiny_dir, monkeypatch):
    """GradCache with chunks of 2 runs 8 forwards a step (4 chunks, twice): each DoRA layer
    computes its norm once instead of 8 times, and both steps' loss and gradients are PEFT's
    bit for bit: the second step proves the first step's norms were forgotten."""
    _, reference = two_steps(tiny_dir, monkeypatch, cached=False)
    monkeypatch.undo()
    trainer, cached = two_steps(tiny_dir, monkeypatch, cached=True)
    from unime.train.dora import dora_layers

    layers = len(dora_layers(trainer.model))
    assert layers > 10
    for (ref_loss, ref_grads, ref_norms), (loss, grads, norms) in zip(reference, cached):
        assert (ref_norms, norms) == (8 * layers, layers)
        assert loss == ref_loss
        assert grads.keys() == ref_grads.keys() and any("magnitude" in n for n in grads)
        for name, grad in ref_grads.items():
            assert float(grad.abs().max()) > 0, name
            assert torch.equal(grads[name], grad), name
    assert reference[0][1].keys() and not all(
        torch.equal(reference[0][1][n], reference[1][1][n]) for n in reference[0][1])  # the weights moved


def test_leaving_the_block_restores_pefts_methods(tiny_dir):
    from unime.config import EmbedderTrainConfig, LoraConfig, OptimConfig
    from unime.train.dora import dora_layers, dora_norms_once
    from unime.train.embedder import EmbedderTrainer

    config = EmbedderTrainConfig(optim=OptimConfig(lr=1e-3), warmup_steps=0, max_steps=5, lora=LoraConfig(use_dora=True))
    trainer = EmbedderTrainer(str(tiny_dir / "embedder"), config, device="cpu", seed=0)
    layer = dora_layers(trainer.model)[0]
    with pytest.raises(RuntimeError, match="inside"), dora_norms_once(trainer.model):
        assert "get_weight_norm" in vars(layer)
        raise RuntimeError("inside")
    assert "get_weight_norm" not in vars(layer) and "get_lora_weight" not in vars(layer)


def test_no_dora_layers_without_dora(tiny_dir):
    from unime.config import EmbedderTrainConfig, LoraConfig, OptimConfig
    from unime.train.dora import dora_layers
    from unime.train.embedder import EmbedderTrainer

    config = EmbedderTrainConfig(optim=OptimConfig(lr=1e-3), warmup_steps=0, max_steps=5, lora=LoraConfig(use_dora=False))
    trainer = EmbedderTrainer(str(tiny_dir / "embedder"), config, device="cpu", seed=0)
    assert dora_layers(trainer.model) == []
