"""One run's steps (private): a model and its optimizer stepping on the shared minibatches
until a stop condition, the metrics row of each step, and the snapshots a switch by the rule
rewinds to. :mod:`~subspace_optim.experiments.runner` drives them through the protocol."""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..optim.projected import SubspaceProjectedOptimizer
from .context import RunContext
from .families import Family

__all__ = ["BeforeMeasurement", "Stretch", "progress_bar"]


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


@dataclass
class Stretch:
    """A stretch of training (the shared prefix, or one variant's run after the switch): its
    model and optimizer, and where its rows, warnings and progress go."""

    ctx: RunContext
    family: Family
    variant: str
    phase: str
    model: nn.Module
    opt: SubspaceProjectedOptimizer
    bar: Any
    rows: list[dict[str, Any]] = field(default_factory=list)
    messages: dict[str, None] = field(default_factory=dict)

    def row(self, t: int, loss: float, batch_loss: float, stats: bool = True) -> dict[str, Any]:
        """The metrics row of step ``t``, with the optimizer's last statistics if ``stats``."""
        row: dict[str, Any] = {
            "family": self.family.name,
            "variant": self.variant,
            "phase": self.phase,
            "step": t,
            "loss": loss,
            "batch_loss": batch_loss,
        }
        if stats and self.opt.last_stats is not None:
            values = self.opt.last_stats.as_dict()
            values.pop("step")
            values.pop("loss")  # the full-batch loss at a refresh: the same as ``loss`` above
            if self.variant != "scaled":  # the pair is in the names base / dom / bulk
                values.pop("scale_dom")
                values.pop("scale_bulk")
            row.update(values)
        return row

    def step(self, t: int) -> float:
        """Step ``t`` on its minibatch (the whole data for a full-batch family); returns the
        minibatch loss before the step."""
        ctx, model, opt = self.ctx, self.model, self.opt
        if self.family.full_batch:
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
        opt.step(closure if self.family.needs_closure else None)
        return float(loss.detach())

    def train_until(
        self,
        start: int,
        stop: Callable[[int], bool],
        blowup: float,
        before_step: Callable[[int], None] | None = None,
    ) -> tuple[int, int | None]:
        """Steps ``start, start+1, ...`` until ``stop(t)``; returns ``(t, diverged_at)``.

        ``before_step(t)``, if given, runs before step ``t`` (and before its evaluation)."""
        eval_every = self.ctx.config.eval_every
        t = start
        while not stop(t):
            if before_step is not None:
                before_step(t)
            evaluated = (t - start) % eval_every == 0
            loss = self.ctx.full_loss(self.model) if evaluated else math.nan
            if evaluated and not (math.isfinite(loss) and loss < blowup):
                self.rows.append(self.row(t, loss, math.nan, stats=False))
                return t, t
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                batch_loss = self.step(t)
            for w in caught:
                self.messages[str(w.message)] = None
            self.rows.append(self.row(t, loss, batch_loss))
            t += 1
            self.bar.update(1)
            if math.isfinite(loss):
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        return t, None


class BeforeMeasurement:
    """``before_step`` of a prefix that switches by the rule: before every measurement step
    (``t % every == 0``) it keeps a copy of the model, of the optimizer state (base state,
    basis, eigensolver and generator state, step count) and the number of prefix rows, so
    that the runner can rewind to the measurement that triggers the switch."""

    def __init__(self, prefix: Stretch, every: int) -> None:
        self._prefix, self._every = prefix, every
        self.step: int | None = None
        self.model: nn.Module | None = None
        self.state: dict[str, Any] = {}
        self.num_rows = 0

    def __call__(self, t: int) -> None:
        if t % self._every == 0:
            self.step, self.num_rows = t, len(self._prefix.rows)
            self.model = copy.deepcopy(self._prefix.model)
            self.state = copy.deepcopy(self._prefix.opt.state_dict())
