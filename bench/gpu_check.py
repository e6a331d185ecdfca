"""GPU check: the paper's training and reranking shapes on one GPU, in one run.

    python bench/gpu_check.py                       # a CUDA machine: every section, ~5 min on an H100
    python bench/gpu_check.py --tiny --device cpu   # the same code at toy shapes (CI runs this)
    PYTHONPATH=. python bench/gpu_check.py          # from a checkout where unime is not installed

Needs torch, transformers and peft only (random-init models built from configs: no download,
no Ray, no vLLM). Exits 0 with a message where there is no CUDA device. Sections:

1. environment: torch and the CUDA it was built for, the driver, the device and its memory;
2. embedder step at the production chunk: Qwen2-VL-2B's shape in bf16, DoRA r16 on the
   language model, gradient checkpointing, the UniME-V2 step (a query and 9 candidates,
   soft-label KL) through GradCache chunks of 16, queries with a 672x672 image (the training
   recipe's ``mid``: 576 image tokens), a third of the candidates images: peak memory, step
   time, queries/s, MFU;
3. GradCache against the plain step over the same chunks and RNG stream, in bf16 with LoRA
   dropout on: cosine and relative error of the adapter gradients;
4. one reranker micro-batch of Qwen2.5-VL-7B's shape: LoRA r128, vision frozen, 4 listwise
   chats of 6 images at the recipe's bounds (476x476, 289 tokens each), the LM head on the
   answer window only; with and without gradient checkpointing;
5. the listwise scorer at k=10 (``unime.rerank.reranker.score_continuations``): peak memory
   of one 11-image prompt, next to the ``[k, L, vocab]`` fp32 logits the per-candidate copies
   would need;

then what fits in 80, 48 and 24 GB.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of cards this may run on.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
MEMORY_CLASSES_GB = (80, 48, 24)
IMAGE_TOKEN, VISION_START, VISION_END = 151655, 151652, 151653


@dataclass
class Shapes:
    """The model and batch shapes of one run (the paper's, or toy ones for a CPU smoke run)."""

    embedder_text: dict
    embedder_vision: dict
    reranker_text: dict
    reranker_vision: dict
    embed_grid: int = 48  # 672 px / 14: 48x48 patches, 576 tokens after the 2x2 merge
    rerank_grid: int = 34  # 476 px / 14: 34x34 patches, 289 tokens
    queries: int = 16
    candidates: int = 9
    chunk: int = 16
    parity_queries: int = 4
    rerank_micro_batch: int = 4
    rerank_images: int = 6
    listwise_k: int = 10
    text_tokens: int = 32
    lora: dict = field(default_factory=lambda: {"embedder": 16, "reranker": 128})


def paper_shapes() -> Shapes:
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
    return Shapes(
        embedder_text={"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                       "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                       "rope_parameters": rope},
        embedder_vision={"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4},
        reranker_text={"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                       "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
                       "rope_parameters": rope},
        reranker_vision={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                         "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31]})


def tiny_shapes() -> Shapes:
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
    text = {"vocab_size": 151936, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "rope_parameters": rope}
    return Shapes(embedder_text=text, embedder_vision={"depth": 2, "embed_dim": 64, "hidden_size": 128,
                                                       "num_heads": 4, "mlp_ratio": 2},
                  reranker_text=text | {"vocab_size": 152064},
                  reranker_vision={"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
                                   "out_hidden_size": 128, "fullatt_block_indexes": [1]},
                  embed_grid=4, rerank_grid=4, queries=4, chunk=8, parity_queries=2, rerank_micro_batch=2,
                  text_tokens=8, lora={"embedder": 4, "reranker": 4})


class Run:
    """The device, its memory accounting and the results table."""

    def __init__(self, device: str):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.rows: list[tuple[str, float | None, str]] = []  # (what, peak GiB, details)

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def autocast(self):
        import contextlib

        return self.torch.autocast("cuda", dtype=self.torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def dtype(self):
        return self.torch.bfloat16 if self.cuda else self.torch.float32

    def timed(self, function, repeats: int = 1) -> float:
        function()  # warm-up (kernels, allocator)
        self.sync()
        started = time.perf_counter()
        for _ in range(repeats):
            function()
        self.sync()
        return (time.perf_counter() - started) / repeats

    def record(self, what: str, details: str) -> None:
        peak = self.peak_gib()
        self.rows.append((what, peak, details))
        print(f"  {what}: {details}" + (f"; peak {peak:.1f} GiB" if peak is not None else ""), flush=True)


def driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


def environment(run: Run) -> None:
    import transformers

    torch = run.torch
    print(f"torch {torch.__version__} built for CUDA {torch.version.cuda}; transformers {transformers.__version__}")
    if run.cuda:
        props = torch.cuda.get_device_properties(run.device)
        print(f"device {props.name}, {props.total_memory / 2**30:.0f} GiB; NVIDIA driver {driver_version()}")


# -- synthetic inputs ---------------------------------------------------------------------
def image_item(torch, grid: int, text_tokens: int, bare: bool, generator) -> dict:
    """One image+text sequence the way the processor makes it: ``grid x grid`` patches of
    3x2x14x14 values, (grid/2)^2 image tokens (bare ``<|image_pad|>`` as the unime-v2 recipe
    renders them, or inside vision start/end as Qwen's chat template does), then text."""
    image_tokens = (grid // 2) ** 2
    text = torch.randint(100, 150000, (text_tokens,), generator=generator)
    pads = torch.full((image_tokens,), IMAGE_TOKEN)
    ids = torch.cat([pads, text]) if bare else torch.cat([torch.tensor([VISION_START]), pads,
                                                           torch.tensor([VISION_END]), text])
    return {"input_ids": ids, "pixel_values": torch.randn(grid * grid, 1176, generator=generator),
            "image_grid_thw": torch.tensor([[1, grid, grid]])}


def text_item(torch, text_tokens: int, generator) -> dict:
    return {"input_ids": torch.randint(100, 150000, (text_tokens,), generator=generator)}


def collate(torch, items: list[dict], device, one_d_positions: bool) -> dict:
    """Left-padded batch with pixels, grids and the token types transformers 5 wants; the
    unime-v2 recipe's 1-D positions when asked (unime.models.recipes)."""
    from unime.models.recipes import get_recipe

    length = max(len(item["input_ids"]) for item in items)
    ids = torch.zeros(len(items), length, dtype=torch.long)
    mask = torch.zeros(len(items), length, dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, length - len(item["input_ids"]):] = item["input_ids"]
        mask[row, length - len(item["input_ids"]):] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == IMAGE_TOKEN).int()}
    images = [item for item in items if "pixel_values" in item]
    if images:
        batch["pixel_values"] = torch.cat([item["pixel_values"] for item in images])
        batch["image_grid_thw"] = torch.cat([item["image_grid_thw"] for item in images])
    if one_d_positions:
        batch["position_ids"] = get_recipe("unime-v2").position_ids(mask)
    return {k: v.to(device) for k, v in batch.items()}


def adapters(**fields):
    """The fields of a unime.config.LoraConfig, without importing the config (it needs pyarrow,
    which a lent GPU machine may not have)."""
    return SimpleNamespace(**fields)


def random_model(run: Run, config_class, text: dict, vision: dict):
    """A random-init image-text model of these shapes on the run's device (no download)."""
    from transformers import AutoModelForImageTextToText

    config = config_class(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN,
                          vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    run.torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config, dtype=run.dtype()).to(run.device)


# -- 2 and 3: the embedder -----------------------------------------------------------------
def embedder_model(run: Run, shapes: Shapes, dropout: float):
    from transformers import Qwen2VLConfig

    from unime.train.base import apply_lora

    model = random_model(run, Qwen2VLConfig, shapes.embedder_text, shapes.embedder_vision)
    rank = shapes.lora["embedder"]
    apply_lora(model, adapters(r=rank, alpha=4 * rank, dropout=dropout, use_dora=True))
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    return model.train()


def embedder_batch(run: Run, shapes: Shapes, queries: int, seed: int):
    generator = run.torch.Generator().manual_seed(seed)
    query_items = [image_item(run.torch, shapes.embed_grid, shapes.text_tokens, True, generator)
                   for _ in range(queries)]
    cand_items = [image_item(run.torch, shapes.embed_grid, shapes.text_tokens // 2, True, generator) if k % 3 == 0
                  else text_item(run.torch, shapes.text_tokens, generator) for k in range(queries * shapes.candidates)]
    judge = run.torch.rand(queries, shapes.candidates, generator=generator).to(run.device)
    return query_items, cand_items, judge


def soft_kl(judge, candidates: int):
    """The UniME-V2 loss over each query's candidates (column 0 the positive)."""
    import torch

    from unime.losses import soft_kl_alignment

    def loss(q, c):
        return soft_kl_alignment(torch.einsum("bd,bcd->bc", q, c.reshape(q.shape[0], candidates, -1)), judge, 0.02)
    return loss


def embed_fn(run: Run, model):
    from unime.models.embedder import PooledEncoder

    encoder = PooledEncoder(model)

    def embed(items):
        with run.autocast():
            return encoder(**collate(run.torch, list(items), run.device, one_d_positions=True))
    return embed


def lm_params(model, vision_key: str = "visual") -> tuple[int, int]:
    language = sum(p.numel() for n, p in model.named_parameters()
                   if vision_key not in n and "lora_" not in n and "embed_tokens" not in n and "lm_head" not in n)
    vision = sum(p.numel() for n, p in model.named_parameters() if vision_key in n and "lora_" not in n)
    return language, vision


def embedder_step(run: Run, shapes: Shapes) -> None:
    from unime.train.gradcache import gradcache_step

    print(f"2. embedder step: Qwen2-VL-2B shape, {shapes.queries} queries x (1 + {shapes.candidates}) items, "
          f"GradCache chunk {shapes.chunk}, DoRA r{shapes.lora['embedder']}, gradient checkpointing", flush=True)
    run.reset_peak()
    model = embedder_model(run, shapes, dropout=0.1)
    optimizer = run.torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    queries, candidates, judge = embedder_batch(run, shapes, shapes.queries, seed=1)
    embed, loss_fn = embed_fn(run, model), soft_kl(judge, shapes.candidates)

    def step():
        optimizer.zero_grad(set_to_none=True)
        gradcache_step(embed, queries, candidates, loss_fn, shapes.chunk)
        optimizer.step()

    seconds = run.timed(step)
    language, vision = lm_params(model)
    text_tokens = sum(len(i["input_ids"]) for i in queries + candidates)
    patches = sum(len(i["pixel_values"]) for i in queries + candidates if "pixel_values" in i)
    # language model: GradCache's no-grad pass, the re-forward, its backward (activation
    # gradients through the frozen weights) and the checkpointed recompute: 4 x 2N; the
    # frozen vision tower: the two forwards only, 2 x 2N
    flops = 8 * language * text_tokens + 4 * vision * patches
    details = f"step {seconds:.2f} s, {shapes.queries / seconds:.1f} queries/s, {flops / seconds / 1e12:.1f} TFLOP/s"
    peak = card_peak(run)
    if peak:
        details += f", MFU {flops / seconds / (peak * 1e12):.1%}"
    run.record("embedder step (GradCache chunk)", details)


def gradcache_parity(run: Run, shapes: Shapes) -> None:
    """GradCache against the plain step over the same chunks and RNG stream (dropout on)."""
    from unime.train.gradcache import gradcache_step

    print("3. GradCache vs plain (same chunks, same RNG stream), bf16 autocast, LoRA dropout 0.1", flush=True)
    run.reset_peak()
    model = embedder_model(run, shapes, dropout=0.1)
    queries, candidates, judge = embedder_batch(run, shapes, shapes.parity_queries, seed=2)
    embed, loss_fn = embed_fn(run, model), soft_kl(judge, shapes.candidates)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def gradients(use_gradcache: bool) -> list:
        model.zero_grad(set_to_none=True)
        run.torch.manual_seed(7)
        if run.cuda:
            run.torch.cuda.manual_seed_all(7)
        if use_gradcache:
            gradcache_step(embed, queries, candidates, loss_fn, shapes.chunk)
        else:
            pieces = [embed(items[i: i + shapes.chunk]) for items in (queries, candidates)
                      for i in range(0, len(items), shapes.chunk)]
            split = math.ceil(len(queries) / shapes.chunk)
            loss_fn(run.torch.cat(pieces[:split]), run.torch.cat(pieces[split:])).backward()
        return [p.grad.detach().float().flatten().clone() for _, p in trainable]

    plain, cached = run.torch.cat(gradients(False)), run.torch.cat(gradients(True))
    cosine = float(run.torch.nn.functional.cosine_similarity(plain, cached, dim=0))
    relative = float((plain - cached).norm() / plain.norm().clamp_min(1e-30))
    verdict = "ok" if cosine > 0.999 and relative < 0.05 else "MISMATCH"
    run.record("GradCache parity", f"{len(trainable)} adapter tensors, cosine {cosine:.6f}, relative error "
               f"{relative:.2e}: {verdict}")


# -- 4 and 5: the reranker -----------------------------------------------------------------
def reranker_model(run: Run, shapes: Shapes, checkpointing: bool):
    from transformers import Qwen2_5_VLConfig

    from unime.train.base import apply_lora

    model = random_model(run, Qwen2_5_VLConfig, shapes.reranker_text, shapes.reranker_vision)
    rank = shapes.lora["reranker"]
    apply_lora(model, adapters(r=rank, alpha=2 * rank, dropout=0.05, use_dora=False))
    model.model.visual.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model


def listwise_item(run: Run, shapes: Shapes, images: int, generator, answer_tokens: int = 5) -> dict:
    """A listwise chat: instruction and query text, then each candidate's number, image and text."""
    torch = run.torch
    parts, pixels, grids = [torch.randint(100, 150000, (60,), generator=generator)], [], []
    for _ in range(images):
        image = image_item(torch, shapes.rerank_grid, shapes.text_tokens // 2, False, generator)
        parts.append(image["input_ids"])
        pixels.append(image["pixel_values"])
        grids.append(image["image_grid_thw"])
    parts.append(torch.randint(100, 150000, (answer_tokens,), generator=generator))
    return {"input_ids": torch.cat(parts), "pixel_values": torch.cat(pixels), "image_grid_thw": torch.cat(grids)}


def reranker_step(run: Run, shapes: Shapes, checkpointing: bool) -> None:
    from unime.losses import IGNORE_INDEX, answer_cross_entropy
    from unime.train.reranker import answer_window

    run.reset_peak()
    try:
        model = reranker_model(run, shapes, checkpointing)
        optimizer = run.torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
        generator = run.torch.Generator().manual_seed(3)
        items = [listwise_item(run, shapes, shapes.rerank_images, generator) for _ in range(shapes.rerank_micro_batch)]
        batch = collate(run.torch, items, run.device, one_d_positions=False)
        labels = run.torch.full_like(batch["input_ids"], IGNORE_INDEX)
        labels[:, -5:] = batch["input_ids"][:, -5:]  # "Ans: (k)" + end of turn

        def step():
            optimizer.zero_grad(set_to_none=True)
            keep = answer_window(labels)
            with run.autocast():
                logits = model(**batch, use_cache=False, logits_to_keep=keep).logits
            answer_cross_entropy(logits, labels[:, -keep:]).backward()
            optimizer.step()

        seconds = run.timed(step)
        tokens = batch["attention_mask"].sum(1).tolist()
        run.record(f"reranker micro-batch, checkpointing {'on' if checkpointing else 'off'}",
                   f"{len(items)} listwise chats x {shapes.rerank_images} images, {min(tokens)}-{max(tokens)} tokens "
                   f"each, step {seconds:.2f} s")
    except run.torch.OutOfMemoryError:
        run.rows.append((f"reranker micro-batch, checkpointing {'on' if checkpointing else 'off'}", math.inf, "OOM"))
        print(f"  reranker micro-batch, checkpointing {'on' if checkpointing else 'off'}: out of memory", flush=True)
    if run.cuda:
        run.torch.cuda.empty_cache()


def listwise_scorer(run: Run, shapes: Shapes) -> None:
    from unime.rerank.reranker import score_continuations

    k = shapes.listwise_k
    print(f"5. listwise scorer: one prompt of the query's and {k} candidates' images", flush=True)
    run.reset_peak()
    model = reranker_model(run, shapes, checkpointing=False).eval()
    generator = run.torch.Generator().manual_seed(4)
    prompt = listwise_item(run, shapes, k + 1, generator, answer_tokens=4)  # ... "Ans: ("
    batch = collate(run.torch, [prompt], run.device, one_d_positions=False)
    answers = [[100 + n, 101] for n in range(1, k + 1)]  # each "n" then ")"
    with run.autocast():
        seconds = run.timed(lambda: score_continuations(model, batch, answers))
    length = int(batch["input_ids"].shape[1])
    vocab = shapes.reranker_text["vocab_size"]
    per_copy_gib = k * length * vocab * (4 + 2) / 2**30  # fp32 log-softmax + bf16 logits of k prompt copies
    run.record(f"listwise scorer, k={k}", f"{length}-token prompt, {seconds:.2f} s; scoring k copies would hold "
               f"[{k}, {length}, {vocab}] logits: {per_copy_gib:.1f} GiB on top")


def card_peak(run: Run) -> float | None:
    if not run.cuda:
        return None
    name = run.torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def fits_table(run: Run) -> None:
    if not run.cuda:
        return
    print("\nfits (peak memory + 10% headroom) in " + " / ".join(f"{g} GB" for g in MEMORY_CLASSES_GB) + ":")
    for what, peak, _ in run.rows:
        if peak is None:
            continue
        marks = ["yes" if peak * 1.1 * 2**30 <= gb * 1e9 else "no" for gb in MEMORY_CLASSES_GB]
        shown = "OOM" if math.isinf(peak) else f"{peak:.1f} GiB"
        print(f"  {what:<45} {shown:>9}   " + "  ".join(f"{gb} GB: {m:<3}" for gb, m in zip(MEMORY_CLASSES_GB, marks)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy shapes: the same code paths in seconds")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: embedder,parity,reranker,scorer")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; skipped")
        return 0
    run, shapes = Run(args.device), tiny_shapes() if args.tiny else paper_shapes()
    skip = set(filter(None, args.skip.split(",")))
    print("1. environment")
    environment(run)
    if "embedder" not in skip:
        embedder_step(run, shapes)
    if "parity" not in skip:
        gradcache_parity(run, shapes)
    if "reranker" not in skip:
        print(f"4. reranker micro-batch: Qwen2.5-VL-7B shape, LoRA r{shapes.lora['reranker']}, vision frozen",
              flush=True)
        for checkpointing in (True, False):
            reranker_step(run, shapes, checkpointing)
    if "scorer" not in skip:
        listwise_scorer(run, shapes)
    fits_table(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
