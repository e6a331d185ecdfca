"""Tiny random-init checkpoints built offline: an embedder, a judge and a reranker.

``python -m unime.demo.tiny build DIR`` writes ``DIR/embedder`` (Qwen2-VL architecture),
``DIR/judge`` and ``DIR/reranker`` (Qwen2.5-VL architecture). Each folder is an ordinary
Hugging Face checkpoint: config, safetensors weights, a byte-level BPE tokenizer trained
here with Qwen's special tokens and chat template, and image/video processor configs with
small pixel bounds. They load through ``from_pretrained`` with ``HF_HUB_OFFLINE=1``, by
the same code that loads ``Qwen/Qwen2-VL-2B-Instruct`` on a cluster.

The weights are random: the models run every code path with real shapes, but their
embeddings and judge scores carry no meaning until something trains them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from unime.prompts import JUDGE_PROMPT, LISTWISE_PROMPT, MMEB_IMAGE_PLACEHOLDER, NO, YES

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat layout: a default system turn, images as vision_start/image_pad/vision_end.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ModelSize:
    """Dimensions of one random-init checkpoint family."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_dim: int
    vision_depth: int
    vision_heads: int
    min_pixels: int
    max_pixels: int

    @property
    def mrope_section(self) -> list[int]:
        # The three M-RoPE sections (time, height, width) must sum to head_dim / 2.
        # Qwen2-VL splits them 1/4, 3/8, 3/8 (16, 24, 24 for head_dim 128).
        half = self.hidden // self.heads // 2
        spatial = (half - half // 4) // 2
        return [half - 2 * spatial, spatial, spatial]


SIZES = {
    # a few MB: every test and the demo
    "tiny": ModelSize(1024, 128, 2, 4, 2, 256, 64, 2, 4, 28 * 28 * 4, 28 * 28 * 16),
    # ~100M parameters: benchmarks that need real arithmetic per token
    "base100m": ModelSize(8192, 768, 10, 12, 4, 2688, 384, 4, 6, 28 * 28 * 4, 28 * 28 * 64),
}


def tokenizer_corpus() -> list[str]:
    """Text the tokenizer learns merges from: the method's prompts and the demo vocabulary."""
    from unime.demo.corpus import vocabulary_sentences

    answers = [YES, NO] * 200 + [f"Ans: ({i})" for i in range(1, 21)] * 10
    prompts = [JUDGE_PROMPT, LISTWISE_PROMPT, "Query:", "Candidate:", "Candidates:", MMEB_IMAGE_PLACEHOLDER]
    return answers + prompts * 20 + vocabulary_sentences()


def train_tokenizer(vocab_size: int):
    """Byte-level BPE with Qwen's special tokens; "Yes" and "No" come out as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )
    for word in (YES, NO):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer splits {word!r} into {ids}; the judge needs one token")
    return tokenizer


def token_ids(tokenizer) -> dict[str, int]:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ]}
    return ids


def text_config(size: ModelSize, tokenizer) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": size.hidden,
        "intermediate_size": size.intermediate,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": size.mrope_section},
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def qwen2_vl_config(size: ModelSize, tokenizer):
    from transformers import Qwen2VLConfig

    vision = {
        "depth": size.vision_depth,
        "embed_dim": size.vision_dim,
        "hidden_size": size.hidden,  # Qwen2-VL's merger projects straight into the text width
        "num_heads": size.vision_heads,
        "mlp_ratio": 2,
    }
    return Qwen2VLConfig(text_config=text_config(size, tokenizer), vision_config=vision, **token_ids(tokenizer))


def qwen2_5_vl_config(size: ModelSize, tokenizer):
    from transformers import Qwen2_5_VLConfig

    vision = {
        "depth": size.vision_depth,
        "hidden_size": size.vision_dim,
        "intermediate_size": 2 * size.vision_dim,
        "num_heads": size.vision_heads,
        "out_hidden_size": size.hidden,  # Qwen2.5-VL's merger output width
        "fullatt_block_indexes": [size.vision_depth - 1],
    }
    return Qwen2_5_VLConfig(text_config=text_config(size, tokenizer), vision_config=vision, **token_ids(tokenizer))


def save_processor_configs(out: Path, size: ModelSize, processor_class: str) -> None:
    """Image and video preprocessor configs as a real Qwen2-VL checkpoint ships them."""
    image_config = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": processor_class,
        "min_pixels": size.min_pixels,
        "max_pixels": size.max_pixels,
        "size": {"shortest_edge": size.min_pixels, "longest_edge": size.max_pixels},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
    }
    video_config = {**image_config, "video_processor_type": "Qwen2VLVideoProcessor"}
    del video_config["image_processor_type"]
    for name, payload in (("preprocessor_config.json", image_config), ("video_preprocessor_config.json", video_config)):
        (out / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def build_checkpoint(out: Path, architecture: str, size: ModelSize, tokenizer, seed: int,
                     init_std: float | None = None) -> None:
    """One random-init checkpoint; ``init_std`` overrides the weights' initialisation std
    (Qwen's default 0.02 is sized for widths in the thousands)."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = qwen2_vl_config(size, tokenizer) if architecture == "qwen2_vl" else qwen2_5_vl_config(size, tokenizer)
    if init_std is not None:
        config.text_config.initializer_range = config.vision_config.initializer_range = init_std
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor_class = "Qwen2VLProcessor" if architecture == "qwen2_vl" else "Qwen2_5_VLProcessor"
    save_processor_configs(out, size, processor_class)


ROLES = {"embedder": ("qwen2_vl", 0), "judge": ("qwen2_5_vl", 1), "reranker": ("qwen2_5_vl", 2)}


def fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build(out_dir: str | Path, seed: int = 0, size: str = "tiny") -> dict[str, Path]:
    """Write the three checkpoints under ``out_dir``; returns role -> folder."""
    out_dir = Path(out_dir)
    model_size = SIZES[size]
    tokenizer = train_tokenizer(model_size.vocab_size)
    folders = {}
    for role, (architecture, offset) in ROLES.items():
        folders[role] = out_dir / role
        build_checkpoint(folders[role], architecture, model_size, tokenizer, seed + offset)
    manifest = {
        "seed": seed,
        "size": size,
        "random_init": True,
        "checkpoints": {role: {"architecture": ROLES[role][0], "sha256": fingerprint(path)} for role, path in folders.items()},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unime.demo.tiny", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="write embedder/, judge/ and reranker/ under DIR")
    build_cmd.add_argument("dir")
    build_cmd.add_argument("--seed", type=int, default=0)
    build_cmd.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args(argv)
    folders = build(args.dir, seed=args.seed, size=args.size)
    for role, folder in folders.items():
        print(f"{role}: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
