"""Load Qwen2-VL family checkpoints by hub id or path, the same way for tiny and real ones."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def ray_gpu_ids() -> list:
    """GPUs Ray assigned to this worker (empty outside Ray or when none were asked for)."""
    import sys

    if "ray" not in sys.modules:  # never import Ray just to learn that it is not running
        return []
    import ray

    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def no_cuda_error(why: str) -> RuntimeError:
    import socket

    return RuntimeError(
        f"{why}, but torch sees no CUDA device on node {socket.gethostname()} (torch {torch.__version__}, built "
        f"for CUDA {torch.version.cuda}): the node's driver or image does not match the installed torch "
        "(README, Clusters: the driver and CUDA versions the images need). Refusing to run on the CPU instead.")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU, except in a Ray worker that was given a GPU:
    there a missing CUDA is an error, never a silent CPU run. ``cuda`` without CUDA: an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        assigned = ray_gpu_ids()
        if assigned:
            raise no_cuda_error(f"this Ray worker was given GPU(s) {assigned}")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise no_cuda_error(f"device {name!r} was asked for")
    return torch.device(name)


def load_model(name_or_path: str, dtype: str = "float32", device: str = "auto", **kwargs):
    """An image-text-to-text model (Qwen2-VL, Qwen2.5-VL, ...) in eval mode on ``device``."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=resolve_dtype(dtype), **kwargs)
    return model.to(resolve_device(device)).eval()
