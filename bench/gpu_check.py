"""GPU check: a Qwen2-VL-2B-sized random-init embedder through the UniME-V2 training step.

    python bench/gpu_check.py [--queries 8] [--steps 5]

Builds the model from a config (Qwen2-VL-2B's dimensions: hidden 1536, 28 layers, 12 heads,
2 KV heads, MLP 8960, vision depth 32 x 1280; no download), applies LoRA r16 / DoRA on the
language model, and times the embedder step (9 candidates per query, soft-KL loss, GradCache)
in bf16 autocast on the CUDA GPU. Prints step time, queries/second and MFU against the card's
dense bf16 peak. Exits 0 with a message when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import sys
import time

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of cards this may run on.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def card_peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def qwen2_vl_2b_config():
    from transformers import Qwen2VLConfig

    text = {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
            "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
    vision = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4}
    return Qwen2VLConfig(text_config=text, vision_config=vision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per text-only sequence")
    parser.add_argument("--chunk", type=int, default=24)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; skipped")
        return 0
    from transformers import AutoModelForImageTextToText

    from unime.losses import soft_kl_alignment
    from unime.models.embedder import PooledEncoder
    from unime.train.base import apply_lora
    from unime.train.gradcache import gradcache_step

    torch.manual_seed(0)
    device = torch.device("cuda")
    model = AutoModelForImageTextToText.from_config(qwen2_vl_2b_config(), dtype=torch.bfloat16).to(device)
    apply_lora(model, r=16, alpha=64, dropout=0.1, use_dora=True)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    encoder = PooledEncoder(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.text_config.vocab_size
    queries = [torch.randint(100, vocab - 100, (args.tokens,), device=device) for _ in range(args.queries)]
    candidates = [torch.randint(100, vocab - 100, (args.tokens,), device=device)
                  for _ in range(args.queries * args.candidates)]
    judge = torch.rand(args.queries, args.candidates, device=device)

    def embed(items):
        ids = torch.stack(list(items))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return encoder(input_ids=ids, attention_mask=torch.ones_like(ids))

    def loss_fn(q, c):
        sims = torch.einsum("bd,bcd->bc", q, c.reshape(args.queries, args.candidates, -1))
        return soft_kl_alignment(sims, judge, 0.02)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = gradcache_step(embed, queries, candidates, loss_fn, args.chunk)
        optimizer.step()
        return loss

    step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.steps
    params = sum(p.numel() for n, p in model.named_parameters()
                 if "embed_tokens" not in n and "lm_head" not in n and "lora_" not in n and "visual" not in n)
    tokens = args.tokens * args.queries * (1 + args.candidates)
    flops = 8 * params * tokens  # 6NT + GradCache's extra forward (gradient checkpointing adds one more, uncounted)
    name = torch.cuda.get_device_name()
    peak = card_peak(name)
    print(f"gpu_check on {name}: Qwen2-VL-2B-sized embedder ({params / 1e9:.2f}B LM params), "
          f"{args.queries} queries x {args.candidates} candidates x {args.tokens} tokens, bf16, LoRA r16 DoRA, "
          f"GradCache chunk {args.chunk}, gradient checkpointing")
    print(f"step {seconds:.3f} s; {args.queries / seconds:.1f} queries/s; {flops / seconds / 1e12:.1f} TFLOP/s model "
          f"FLOPs; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if peak:
        print(f"MFU {flops / seconds / (peak * 1e12):.1%} of the card's {peak:.0f} TFLOP/s dense bf16 peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
