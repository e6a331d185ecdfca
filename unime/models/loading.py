"""Load Qwen2-VL family checkpoints by hub id or path, the same way for tiny and real ones."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(name_or_path: str, dtype: str = "float32", device: str = "auto", **kwargs):
    """An image-text-to-text model (Qwen2-VL, Qwen2.5-VL, ...) in eval mode on ``device``."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=resolve_dtype(dtype), **kwargs)
    return model.to(resolve_device(device)).eval()
