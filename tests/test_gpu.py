"""bench/gpu_check.py: skips cleanly without CUDA, runs every section at toy shapes on the CPU
(so the script a lent GPU runs first is known to work), and at toy shapes on CUDA where present."""

import pytest
import torch

from tests.helpers import load_script

SECTIONS = ("embedder step (GradCache chunk)", "GradCache parity", "reranker micro-batch, checkpointing on",
            "reranker micro-batch, checkpointing off", "listwise scorer, k=10")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_check_skips_cleanly_without_cuda(capsys):
    assert load_script("bench/gpu_check.py").main([]) == 0
    assert capsys.readouterr().out.strip() == "gpu_check: no CUDA device; skipped"


def test_gpu_check_runs_every_section_at_toy_shapes_on_the_cpu(capsys):
    assert load_script("bench/gpu_check.py").main(["--tiny", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for section in SECTIONS:
        assert f"  {section}: " in out, section
    assert "relative error" in out and ": ok" in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_check_at_toy_shapes_on_cuda(capsys):
    assert load_script("bench/gpu_check.py").main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert "fits (peak memory" in out and ": ok" in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_resumed_trainer_draws_the_same_cuda_random_numbers(tiny_dir, tmp_path):
    """LoRA dropout on a GPU draws from the device's generator: a checkpoint restores it."""
    from unime.config import EmbedderTrainConfig
    from unime.train.embedder import EmbedderTrainer

    trainer = EmbedderTrainer(str(tiny_dir / "embedder"), EmbedderTrainConfig(max_steps=1), device="cuda")
    trainer.save_state(tmp_path)
    expected = torch.rand(8, device="cuda")
    trainer.load_state(tmp_path)
    assert torch.equal(torch.rand(8, device="cuda"), expected)
