"""Every arm's cost per training step, measured side by side in one process.

The training runs of the study execute one after another (two at a time) while other
processes come and go, so their own clocks mix each arm's cost with the machine's load at
the time it ran. Here every arm is built once (seed 0, the same batches) and stepped in
turn, one step each per round in an order that rotates every round, so a change of load
hits every arm alike. After ``warmup`` rounds (a source's window filled, its refreshes at
their steady rate), ``steps`` rounds are timed: the whole training step (batch, forward,
backward, clipping, ``opt.step()``) and ``opt.step()`` alone. The study's time axis is then
steps × this median ms per step: the equal-load clock.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.harness import rotated

from . import arms, text
from .gpt import GPTConfig
from .train import TrainConfig, _step, lr_factor, make_model


@dataclass(frozen=True)
class TimingConfig:
    """Rounds before timing (``warmup``: more than a source's window and a few refreshes)
    and timed rounds (``steps``)."""

    warmup: int = 40
    steps: int = 64


@dataclass
class _Arm:
    spec: arms.ArmSpec
    model: Any
    built: arms.Built
    gen: torch.Generator
    step_s: list[float]
    opt_s: list[float]


def _build(spec: arms.ArmSpec, lr: float, model_cfg: GPTConfig) -> _Arm:
    model = make_model(model_cfg, 0)
    built = arms.build(spec, model, lr)
    return _Arm(spec, model, built, torch.Generator().manual_seed(0), [], [])


def _one_step(arm: _Arm, step: int, cfg: TrainConfig, corpus: text.Corpus, ctx: int) -> None:
    t0 = time.perf_counter()
    for group in arm.built.base.param_groups:
        group["lr"] = group["peak_lr"] * lr_factor(step, cfg)
    _, in_opt = _step(
        arm.model, arm.built, text.batch(corpus.train, cfg.batch, ctx, arm.gen), cfg.clip
    )
    arm.step_s.append(time.perf_counter() - t0)
    arm.opt_s.append(in_opt)


def interleaved(
    specs: list[arms.ArmSpec],
    lr: float,
    shapes: tuple[GPTConfig, TrainConfig],
    corpus: text.Corpus,
    cfg: TimingConfig = TimingConfig(),
) -> dict[str, Any]:
    """Median ms per training step and per ``opt.step()`` of each arm, all stepped in turn
    in this process on one torch thread (the previous setting restored)."""
    model_cfg, train_cfg = shapes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        built = [_build(s, lr, model_cfg) for s in specs]
        for step in range(cfg.warmup + cfg.steps):
            for arm in rotated(built, step):
                _one_step(arm, step, train_cfg, corpus, model_cfg.context)
    finally:
        torch.set_num_threads(threads)
    out = {}
    for arm in built:
        timed_step, timed_opt = arm.step_s[cfg.warmup :], arm.opt_s[cfg.warmup :]
        out[arm.spec.name] = {
            "step_ms": 1000 * statistics.median(timed_step),
            "opt_step_ms": 1000 * statistics.median(timed_opt),
        }
    return {"warmup": cfg.warmup, "steps": cfg.steps, "arms": out}
