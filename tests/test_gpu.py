"""GPU tier: runs only where CUDA is present."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_gpu_check_runs_a_bf16_training_step(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--queries", "2", "--steps", "1", "--tokens", "64"]) == 0
    assert "queries/s" in capsys.readouterr().out
