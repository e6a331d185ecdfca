"""GPU tier: runs only where CUDA is present."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_gpu_check_runs_a_bf16_training_step(capsys):
    from tests.helpers import load_script

    assert load_script("bench/gpu_check.py").main(["--queries", "2", "--steps", "1", "--tokens", "64"]) == 0
    assert "queries/s" in capsys.readouterr().out
