"""The step loop of a reproduction (private): one training step, its metrics row, training
until a stop condition, and the snapshots a switch by the rule rewinds to."""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..optim.projected import SubspaceProjectedOptimizer
from .context import RunContext
from .families import Family

__all__ = ["BeforeMeasurement", "metrics_row", "progress_bar", "train_step", "train_until"]


def progress_bar(ctx: RunContext, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        disable=not ctx.progress,
        file=sys.stderr,
        leave=True,
        dynamic_ncols=True,
        unit="step",
    )


def train_step(
    ctx: RunContext, family: Family, model: nn.Module, opt: SubspaceProjectedOptimizer, t: int
) -> float:
    if family.full_batch:
        xb, yb = ctx.X, ctx.Y
    else:
        idx = ctx.batches[t]
        xb, yb = ctx.X[idx], ctx.Y[idx]

    def closure() -> Tensor:
        opt.zero_grad()
        loss = ctx.loss_fn(model(xb), yb)
        loss.backward()
        return loss

    with torch.enable_grad():
        loss = closure()
    opt.step(closure if family.needs_closure else None)
    return float(loss.detach())


def metrics_row(
    family: Family,
    variant: str,
    phase: str,
    t: int,
    loss: float,
    batch_loss: float,
    opt: SubspaceProjectedOptimizer | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "family": family.name,
        "variant": variant,
        "phase": phase,
        "step": t,
        "loss": loss,
        "batch_loss": batch_loss,
    }
    if opt is not None and opt.last_stats is not None:
        stats = opt.last_stats.as_dict()
        stats.pop("step")
        stats.pop("loss")  # the full-batch loss at a refresh: the same as ``loss`` above
        if variant != "scaled":  # the pair is in the names base / dom / bulk
            stats.pop("scale_dom")
            stats.pop("scale_bulk")
        row.update(stats)
    return row


def train_until(
    ctx: RunContext,
    family: Family,
    model: nn.Module,
    opt: SubspaceProjectedOptimizer,
    start: int,
    stop: Callable[[int], bool],
    variant: str,
    phase: str,
    rows: list[dict[str, Any]],
    bar: Any,
    blowup: float,
    messages: dict[str, None],
    before_step: Callable[[int], None] | None = None,
) -> tuple[int, int | None]:
    """Steps ``start, start+1, ...`` until ``stop(t)``; returns ``(t, diverged_at)``.

    ``before_step(t)``, if given, runs before step ``t`` (and before its evaluation)."""
    t = start
    while not stop(t):
        if before_step is not None:
            before_step(t)
        loss = ctx.full_loss(model) if (t - start) % ctx.config.eval_every == 0 else math.nan
        if (t - start) % ctx.config.eval_every == 0 and not (math.isfinite(loss) and loss < blowup):
            rows.append(metrics_row(family, variant, phase, t, loss, math.nan, None))
            return t, t
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch_loss = train_step(ctx, family, model, opt, t)
        for w in caught:
            messages[str(w.message)] = None
        rows.append(metrics_row(family, variant, phase, t, loss, batch_loss, opt))
        t += 1
        bar.update(1)
        if math.isfinite(loss):
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return t, None


class BeforeMeasurement:
    """``before_step`` of a prefix that switches by the rule: before every measurement step
    (``t % every == 0``) it keeps a copy of the model, of the optimizer state (base state,
    basis, eigensolver and generator state, step count) and the number of prefix rows, so
    that the runner can rewind to the measurement that triggers the switch."""

    def __init__(
        self,
        model: nn.Module,
        opt: SubspaceProjectedOptimizer,
        rows: list[dict[str, Any]],
        every: int,
    ) -> None:
        self._source, self._opt, self._rows, self._every = model, opt, rows, every
        self.step: int | None = None
        self.model: nn.Module | None = None
        self.state: dict[str, Any] = {}
        self.num_rows = 0

    def __call__(self, t: int) -> None:
        if t % self._every == 0:
            self.step, self.num_rows = t, len(self._rows)
            self.model = copy.deepcopy(self._source)
            self.state = copy.deepcopy(self._opt.state_dict())
