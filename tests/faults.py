"""Deliberate failures for the recovery tests, wrapped around the production classes from
outside: the pipeline's actors and training loops carry no fault-injection knobs.

The wrappers go to Ray actors and Ray Train workers by value (this module is registered with
cloudpickle), so a worker runs them whether or not it can import ``tests``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _ship_by_value() -> None:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def judge_failing_after(shards: int):
    """The judge stage's actor class, failing once ``shards`` shards have started: the shards
    already in flight commit first, so exactly ``shards`` score files exist afterwards."""
    from unime.pipeline.judge import JudgeShards

    _ship_by_value()

    class FailingJudgeShards(JudgeShards):
        started = 0

        async def judge_shard(self, shard: int):
            if self.started >= shards:
                while self.in_flight:
                    await asyncio.sleep(0.05)
                raise RuntimeError(f"injected judge failure after {self.started} shards")
            self.started += 1
            return await super().judge_shard(shard)

    return FailingJudgeShards


def judge_holding_after(shards: int, release: Path):
    """The judge stage's actor class, pausing before its shard ``shards + 1`` until the file
    ``release`` exists: a test takes the actor's node away while the stage is surely mid-way.
    A restarted actor (its own count from 0) finds the file and goes on."""
    from unime.pipeline.judge import JudgeShards

    _ship_by_value()

    class HeldJudgeShards(JudgeShards):
        started = 0

        async def judge_shard(self, shard: int):
            if self.started >= shards:
                while not release.exists():
                    await asyncio.sleep(0.05)
            self.started += 1
            return await super().judge_shard(shard)

    return HeldJudgeShards


def fail_after_step(trainer_class: type, step: int) -> None:
    """Make ``trainer_class.step`` raise right after optimiser step ``step`` (before the worker
    loop can report a checkpoint for it), in this process only."""
    original = trainer_class.step

    def failing_step(self, batch):
        loss = original(self, batch)
        if self.step_count == step:
            raise RuntimeError(f"injected training failure after step {step}")
        return loss

    trainer_class.step = failing_step


def hold_after_step(trainer_class: type, step: int, release: Path) -> None:
    """Make ``trainer_class.step`` wait, once ``step`` steps are done (their checkpoint
    reported), until the file ``release`` exists, in this process only."""
    original = trainer_class.step

    def held_step(self, batch):
        while self.step_count == step and not release.exists():
            time.sleep(0.05)
        return original(self, batch)

    trainer_class.step = held_step


def loop_holding_after(loop: Callable[[dict], None], trainer_class: type, step: int,
                       release: Path) -> Callable[[dict], None]:
    """A Ray Train worker loop that pauses after ``step`` on its first attempt until ``release``
    exists; the restarted worker group (which finds a checkpoint) runs ``loop`` unchanged."""
    _ship_by_value()

    def held_loop(loop_config: dict) -> None:
        import ray.train

        if ray.train.get_checkpoint() is None:
            hold_after_step(trainer_class, step, release)
        loop(loop_config)

    return held_loop


def loop_failing_after(loop: Callable[[dict], None], trainer_class: type, step: int) -> Callable[[dict], None]:
    """A Ray Train worker loop that fails after ``step`` on its first attempt; the restarted
    worker group (which finds a checkpoint) runs ``loop`` unchanged."""
    _ship_by_value()

    def failing_loop(loop_config: dict) -> None:
        import ray.train

        if ray.train.get_checkpoint() is None:
            fail_after_step(trainer_class, step)
        loop(loop_config)

    return failing_loop
