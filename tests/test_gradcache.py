"""GradCache parity: the same loss and parameter gradients as the plain step."""

from __future__ import annotations

import pytest
import torch

from unime.losses import soft_kl_alignment
from unime.train.gradcache import gradcache_step, plain_step


def toy_model(dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(16, 8))


def make_embed(model):
    def embed(items):
        return torch.nn.functional.normalize(model(torch.stack(list(items))), dim=-1)
    return embed


def kl_loss(judge: torch.Tensor, per_query: int):
    def loss(q, c):
        sims = torch.einsum("bd,bcd->bc", q, c.reshape(q.shape[0], per_query, -1))
        return soft_kl_alignment(sims, judge, temperature=0.05)
    return loss


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def batch(seed=1, queries=6, per_query=3):
    g = torch.Generator().manual_seed(seed)
    return (list(torch.randn(queries, 6, generator=g)), list(torch.randn(queries * per_query, 6, generator=g)),
            torch.rand(queries, per_query, generator=g))


def test_without_dropout_equals_the_plain_step():
    queries, cands, judge = batch()
    plain_model, cached_model = toy_model(0.0), toy_model(0.0)
    plain_loss = plain_step(make_embed(plain_model), queries, cands, kl_loss(judge, 3))
    cached_loss = gradcache_step(make_embed(cached_model), queries, cands, kl_loss(judge, 3), chunk_size=4)
    assert torch.allclose(plain_loss, cached_loss, atol=1e-6)
    for a, b in zip(grads(plain_model), grads(cached_model)):
        assert torch.allclose(a, b, atol=1e-6)


def test_dropout_masks_are_replayed():
    """With dropout, GradCache equals a plain step over the same chunks and RNG stream; without
    the RNG replay it would not (the replayed forwards would draw fresh masks)."""
    queries, cands, judge = batch()
    chunk = 4
    reference_model, cached_model = toy_model(0.5), toy_model(0.5)
    torch.manual_seed(7)
    embed = make_embed(reference_model)
    q = torch.cat([embed(queries[i: i + chunk]) for i in range(0, len(queries), chunk)])
    c = torch.cat([embed(cands[i: i + chunk]) for i in range(0, len(cands), chunk)])
    reference_loss = kl_loss(judge, 3)(q, c)
    reference_loss.backward()
    torch.manual_seed(7)
    cached_loss = gradcache_step(make_embed(cached_model), queries, cands, kl_loss(judge, 3), chunk_size=chunk)
    assert torch.allclose(reference_loss, cached_loss, atol=1e-6)
    for a, b in zip(grads(reference_model), grads(cached_model)):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("input_format", ["qwen2-vl-native", "unime-v2"])
def test_tiny_embedder_gradcache_matches_plain(tiny_dir, input_format):
    """Image and text items mixed: each chunk collates its own pixels and (unime-v2) positions."""
    from PIL import Image

    from unime.models import Embedder, EmbedItem

    texts = ["a red circle", "two blue squares on the left", "three", "what colour are the shapes?",
             "one green triangle at the top", "purple", "four yellow diamonds in the center", "no"]
    items = [EmbedItem(t) for t in texts]
    items[1] = EmbedItem("<|image_1|>\nRepresent the given image.\n", Image.new("RGBA", (60, 40), (9, 90, 200, 128)))
    items[5] = EmbedItem("<|image_1|>\n", Image.new("RGB", (30, 70), (200, 20, 20)))
    queries, cands = items[:2], items[2:]
    judge = torch.tensor([[0.9, 0.2, 0.4], [0.8, 0.1, 0.3]])
    results = []
    for step in (plain_step, lambda *a: gradcache_step(*a, chunk_size=2)):
        embedder = Embedder(str(tiny_dir / "embedder"), device="cpu", input_format=input_format)
        embedder.model.train()  # the tiny config has no dropout, so train mode is deterministic

        def embed(items, e=embedder):
            return e.forward(e.collate(list(items)))

        loss = step(embed, queries, cands, kl_loss(judge, 3))
        results.append((loss, {n: p.grad.clone() for n, p in embedder.model.named_parameters() if p.grad is not None}))
    (plain_loss, plain_grads), (cached_loss, cached_grads) = results
    assert torch.allclose(plain_loss, cached_loss, atol=1e-5)
    assert plain_grads.keys() == cached_grads.keys() and len(plain_grads) > 10
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], cached_grads[name], atol=1e-5, rtol=1e-3), name


def gradients_at_the_optimiser_step(trainer) -> dict[str, torch.Tensor]:
    """A dict that the trainer's next step fills with its trainable gradients as the optimiser
    is about to use them (after backward and clipping, before any weight moves)."""
    captured: dict[str, torch.Tensor] = {}
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]

    def capture(_optimizer, _args, _kwargs):
        captured.update({n: p.grad.detach().clone() for n, p in named if p.grad is not None})
    trainer.optimizer.register_step_pre_hook(capture)
    return captured


def count_forwards(module: torch.nn.Module) -> list[int]:
    """Grows by one on every run of ``module.forward``, a checkpointed recomputation included
    (which forward hooks do not see)."""
    runs, forward = [], module.forward

    def counted(*args, **kwargs):
        runs.append(1)
        return forward(*args, **kwargs)
    module.forward = counted
    return runs


def test_gradient_checkpointing_keeps_gradients(tiny_dir):
    """Recomputing activations in backward (gradient checkpointing) changes memory, not math:
    the loss and every trainable gradient of the trainer's own step are unchanged. Gradients,
    not weights after the step: AdamW's first step moves each weight by about lr * sign(g), so
    a mis-scaled gradient would leave the weights as they were."""
    from unime.config import EmbedderTrainConfig, LoraConfig, OptimConfig
    from unime.train.embedder import EmbedderTrainer

    batch = {"query_text": ["a red circle", "what colour?"], "query_image": ["", ""],
             "cand_texts": [["x", "y", "z"], ["u", "v", "w"]], "cand_images": [["", "", ""], ["", "", ""]],
             "judge_scores": [[0.9, 0.2, 0.4], [0.8, 0.1, 0.3]]}
    results = []
    for checkpointing in (False, True):
        config = EmbedderTrainConfig(optim=OptimConfig(lr=1e-3), warmup_steps=0, max_steps=5, lora=LoraConfig(dropout=0.0),
                                     gradcache_chunk=0,
                                     gradient_checkpointing=checkpointing)
        trainer = EmbedderTrainer(str(tiny_dir / "embedder"), config, device="cpu", seed=0)
        assert trainer.model.is_gradient_checkpointing == checkpointing
        # LoRA's B starts at zero, which leaves every A without a gradient: the same random
        # adapters in both runs, so that every trainable tensor has one to compare
        generator = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, param in trainer.model.named_parameters():
                if param.requires_grad and "lora_B" in name:
                    param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        forwards = count_forwards(next(m for m in trainer.model.modules()
                                       if type(m).__name__ == "Qwen2VLDecoderLayer"))
        grads = gradients_at_the_optimiser_step(trainer)
        loss = trainer.step(batch)
        assert grads.keys() == trainer.trainable_state().keys()
        results.append((loss, grads, len(forwards)))
    (plain_loss, plain, plain_forwards), (checkpointed_loss, checkpointed, checkpointed_forwards) = results
    # queries and candidates: one forward each, and checkpointing recomputes both in backward
    assert (plain_forwards, checkpointed_forwards) == (2, 4)
    assert checkpointed_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    assert all(float(g.abs().max()) > 0 for g in plain.values())  # A, B and DoRA magnitudes
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-7, rtol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_the_trainers_gradcache_step_collates_each_chunk_once_and_keeps_the_plain_gradients(tiny_dir, demo_dir):
    """The trainer's own step, images among the items: GradCache (chunks of 2) gives the plain
    step's loss and gradients, and its two forwards share one collation per chunk."""
    from unime.config import EmbedderTrainConfig, LoraConfig, OptimConfig
    from unime.train.embedder import EmbedderTrainer

    image = "images/train/scene_00000.png"
    batch = {"query_text": ["<|image_1|>\nRepresent the given image.\n", "what colour?"], "query_image": [image, ""],
             "cand_texts": [["x", "<|image_1|>\n", "z"], ["u", "v", "w"]],
             "cand_images": [["", image, ""], ["", "", ""]], "judge_scores": [[0.9, 0.2, 0.4], [0.8, 0.1, 0.3]]}
    results = []
    for chunk in (0, 2):
        config = EmbedderTrainConfig(optim=OptimConfig(lr=1e-3), warmup_steps=0, max_steps=5, lora=LoraConfig(dropout=0.0),
                                     gradcache_chunk=chunk)
        trainer = EmbedderTrainer(str(tiny_dir / "embedder"), config, device="cpu", seed=0, image_root=str(demo_dir))
        generator = torch.Generator().manual_seed(5)
        with torch.no_grad():  # random adapters, so that every trainable tensor has a gradient
            for name, param in trainer.model.named_parameters():
                if param.requires_grad and "lora_B" in name:
                    param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        collations, collate = [], trainer.embedder.collate
        trainer.embedder.collate = lambda items, log=collations, real=collate, **kw: (
            log.append(len(items)) or real(items, **kw))
        grads = gradients_at_the_optimiser_step(trainer)
        results.append((trainer.step(batch), grads, collations))
    (plain_loss, plain, plain_collations), (cached_loss, cached, cached_collations) = results
    assert plain_collations == [2, 6]
    assert cached_collations == [2, 2, 2, 2]  # 1 query chunk + 3 candidate chunks, once each
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain.keys() == cached.keys() and all(float(g.abs().max()) > 0 for g in plain.values())
    for name, grad in plain.items():  # chunks pad to their own longest item: float noise, scaled
        torch.testing.assert_close(cached[name], grad, atol=1e-3 * float(grad.abs().max()), rtol=1e-3,
                                   msg=lambda m, n=name: f"{n}: {m}")
