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


def minimum_driver(cuda: str | None) -> int | None:
    """The oldest NVIDIA driver (major) that runs a CUDA build (NVIDIA's minor-version
    compatibility: 13.x from 580, 12.x from 525)."""
    if not cuda:
        return None
    return {"13": 580, "12": 525}.get(cuda.split(".")[0])


def installed_driver() -> str:
    """This node's NVIDIA kernel driver version, or why there is none."""
    from pathlib import Path

    version = Path("/proc/driver/nvidia/version")
    if not version.exists():
        return "no NVIDIA driver loaded"
    words = version.read_text().split()
    return next((w for w in words if w[:1].isdigit() and "." in w), "unknown")


def no_cuda_error(why: str) -> RuntimeError:
    import socket

    needed = minimum_driver(torch.version.cuda)
    build = (f"built for CUDA {torch.version.cuda}, which needs NVIDIA driver >= {needed}" if needed
             else "a CPU-only build: install the project's gpu extra")
    return RuntimeError(
        f"{why}, but torch sees no CUDA device on node {socket.gethostname()} (torch {torch.__version__}, {build}; "
        f"this node: {installed_driver()}): the node's driver or image does not match the installed torch "
        "(cluster/gpu_stack.yaml). Refusing to run on the CPU instead.")


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
