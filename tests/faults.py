"""Deliberate failures for the recovery tests, wrapped around the production classes from
outside: the pipeline's actors and training loops carry no fault-injection knobs.

The wrappers go to Ray actors and Ray Train workers by value (this module is registered with
cloudpickle), so a worker runs them whether or not it can import ``tests``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


def _ship_by_value() -> None:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def judge_interrupted_after(shards: int, interrupt: Callable[[object], Awaitable[None]]):
    """The judge stage's actor class, awaiting ``interrupt(actor)`` before each shard after its
    first ``shards`` (a restarted actor counts from 0 again). The actor tracks the shards it
    has in flight (``in_flight``), so an interruption can let them commit first."""
    from unime.pipeline.judge import JudgeShards

    _ship_by_value()

    class InterruptedJudgeShards(JudgeShards):
        started = in_flight = 0

        async def judge_shard(self, shard: int):
            if self.started >= shards:
                await interrupt(self)
            self.started += 1
            self.in_flight += 1
            try:
                return await super().judge_shard(shard)
            finally:
                self.in_flight -= 1

    return InterruptedJudgeShards


def judge_failing_after(shards: int):
    """Fails once ``shards`` shards have started; the shards in flight commit first, so exactly
    ``shards`` score files exist afterwards."""

    async def fail(actor) -> None:
        while actor.in_flight:
            await asyncio.sleep(0.05)
        raise RuntimeError(f"injected judge failure after {shards} shards")

    return judge_interrupted_after(shards, fail)


def judge_holding_after(shards: int, release: Path):
    """Pauses before shard ``shards + 1`` until the file ``release`` exists: a test takes the
    actor's node away while the stage is surely mid-way."""

    async def hold(actor) -> None:
        while not release.exists():
            await asyncio.sleep(0.05)

    return judge_interrupted_after(shards, hold)


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


def on_first_attempt(loop: Callable[[dict], None], patch: Callable[[], None]) -> Callable[[dict], None]:
    """A Ray Train worker loop that applies ``patch`` (:func:`fail_after_step`,
    :func:`hold_after_step` with their arguments bound) before ``loop`` on its first attempt; the
    restarted worker group, which finds a checkpoint, runs ``loop`` unchanged."""
    _ship_by_value()

    def first_attempt_loop(loop_config: dict) -> None:
        import ray.train

        if ray.train.get_checkpoint() is None:
            patch()
        loop(loop_config)

    return first_attempt_loop
