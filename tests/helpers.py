"""Helpers shared by the pipeline tests."""

from __future__ import annotations

from unime.config import load_config
from unime.pipeline.runner import MINING_STAGES
from unime.pipeline.runner import STAGES as REGISTRY

STAGES = [(name, REGISTRY[name]) for name in MINING_STAGES]


def mining_config(demo_dir, tiny_dir, run_dir, *overrides):
    """A small, fast mining config over a demo corpus and tiny checkpoints."""
    return load_config(None, mining_overrides(demo_dir, tiny_dir, run_dir, *overrides))


def mining_overrides(demo_dir, tiny_dir, run_dir, *overrides) -> list[str]:
    return [
        f"run_dir={run_dir}", f"data.train=[{demo_dir}/train]", f"data.image_root={demo_dir}",
        f"models.embedder={tiny_dir}/embedder", f"models.judge={tiny_dir}/judge", "models.dtype=float32",
        "models.device=cpu", "embed.actors.num_cpus=0.5", "judge.actors.num_cpus=0.5", "judge.actors.num_gpus=0",
        "judge.backend=hf", "judge.shard_size=40", "judge.max_model_len=1024",
        "mining.pool_size=8", "mining.num_negatives=4",
        # random-init judges score everything alike; beta=0 keeps about half the pool
        "mining.beta=0.0", *overrides]


def run_all(config):
    return {name: stage(config) for name, stage in STAGES}
