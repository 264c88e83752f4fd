"""One training run: an arm and a seed, on one torch thread.

The seed fixes the initialization and the batch offsets (a ``torch.Generator`` per seed),
so every arm of a seed sees the same batches. The training clock (``time.perf_counter``)
runs around the training steps only (batch, forward, backward, clipping, schedule and
``opt.step()``); evaluations are outside it. ``opt.step()`` alone is timed too.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import arms, text
from .gpt import GPT, GPTConfig, lm_loss, num_params

VALIDATION_SEED = 1234  # the fixed validation batches, the same for every run


@dataclass(frozen=True)
class TrainConfig:
    """Steps, batch and evaluation of one run; the learning rate warms up linearly over
    ``warmup`` steps, then follows a cosine down to ``min_lr_frac`` × its peak."""

    steps: int = 600
    batch: int = 8
    eval_every: int = 50
    eval_batches: int = 4
    eval_batch_size: int = 16
    warmup: int = 30
    min_lr_frac: float = 0.1
    clip: float = 1.0


@dataclass(frozen=True)
class RunTask:
    """What a worker needs: the arm, the seed, the tuned learning rate and the shapes."""

    arm: arms.ArmSpec
    seed: int
    tuned_lr: float
    model: GPTConfig
    train: TrainConfig


Hook = Callable[[int, nn.Module, arms.Built], dict[str, Any]]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at 0-based ``step``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    total = sum(lm_loss(model(x), y).item() for x, y in batches)
    model.train()
    return total / len(batches)


def make_model(cfg: GPTConfig, seed: int) -> GPT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(cfg)


def _step(
    model: nn.Module, built: arms.Built, xy: tuple[torch.Tensor, torch.Tensor], clip: float
) -> tuple[float, float]:
    """One training step; returns the loss and the seconds spent in ``opt.step()``."""
    built.opt.zero_grad(set_to_none=True)
    loss = lm_loss(model(xy[0]), xy[1])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    t0 = time.perf_counter()
    built.opt.step()
    return loss.item(), time.perf_counter() - t0


@dataclass(frozen=True)
class Extras:
    """Optional parts of a run: ``builder(spec, model, lr)`` in place of ``arms.build`` (the
    oracle's Hessian arm), and ``hook(step, model, built)``, run off the clock after each
    step in ``hook_steps``, whose dict is kept in the record's ``checkpoints``."""

    builder: Callable[[arms.ArmSpec, nn.Module, float], arms.Built] = arms.build
    hook: Hook | None = None
    hook_steps: tuple[int, ...] = ()


def train_run(task: RunTask, corpus: text.Corpus, extras: Extras = Extras()) -> dict[str, Any]:
    """Train ``task.arm`` from ``task.seed``; the record the report reads."""
    cfg, ctx = task.train, task.model.context
    model = make_model(task.model, task.seed)
    built = extras.builder(task.arm, model, task.tuned_lr)
    hook = extras.hook
    gen = torch.Generator().manual_seed(task.seed)
    val = text.fixed_batches(
        corpus.val, cfg.eval_batches, cfg.eval_batch_size, ctx, VALIDATION_SEED
    )
    rec: dict[str, Any] = {"arm": task.arm.name, "seed": task.seed, "params": num_params(model)}
    rec.update(eval_steps=[0], val_loss=[evaluate(model, val)], train_seconds=[0.0], train_loss=[])
    rec["checkpoints"], clock, wall0 = [], 0.0, time.perf_counter()
    step_s, opt_s = [], []
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        for group in built.base.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(step, cfg)
        loss, in_opt = _step(model, built, text.batch(corpus.train, cfg.batch, ctx, gen), cfg.clip)
        step_s.append(time.perf_counter() - t0)
        opt_s.append(in_opt)
        clock += step_s[-1]
        rec["train_loss"].append(loss)
        done = step + 1
        if not math.isfinite(loss):
            break
        if done % cfg.eval_every == 0 or done == cfg.steps:
            rec["eval_steps"].append(done)
            rec["val_loss"].append(evaluate(model, val))
            rec["train_seconds"].append(clock)
        if hook is not None and done in extras.hook_steps:
            rec["checkpoints"].append({"step": done, **hook(done, model, built)})
    n = len(rec["train_loss"])
    rec.update(steps_done=n, diverged=not math.isfinite(rec["train_loss"][-1]))
    rec.update(step_ms=1000 * clock / n, opt_step_ms=1000 * sum(opt_s) / n)
    # medians: what a step costs with the other processes' spikes left out
    rec.update(step_ms_median=1000 * statistics.median(step_s))
    rec.update(opt_step_ms_median=1000 * statistics.median(opt_s))
    rec["wall_seconds"] = time.perf_counter() - wall0
    rec["source"] = source_counters(built.source)
    return rec


def source_counters(source: Any) -> dict[str, Any] | None:
    """The source's own cost counters (refreshes, their seconds) and memory, if it has them."""
    if source is None:
        return None
    out = {
        k: v
        for k, v in dict(getattr(source, "counters", {})).items()
        if isinstance(v, (int, float))
    }
    if hasattr(source, "memory_bytes"):
        out["memory_bytes"] = int(source.memory_bytes())
    return out


_WORKER_CORPUS: list[text.Corpus] = []  # set once per pool process by ``init_worker``


def init_worker(corpus: text.Corpus) -> None:
    """Pool initializer: one torch thread for the whole process, the corpus kept."""
    torch.set_num_threads(1)
    _WORKER_CORPUS[:] = [corpus]


def worker(task: RunTask) -> dict[str, Any]:
    """A pool worker's entry: one run on the corpus ``init_worker`` kept."""
    return train_run(task, _WORKER_CORPUS[0])


def run_here(task: RunTask, corpus: text.Corpus) -> dict[str, Any]:
    """One run in this process on one torch thread (the previous setting restored)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_run(task, corpus)
    finally:
        torch.set_num_threads(threads)
