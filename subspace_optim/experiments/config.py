"""The settings of a reproduction run, validated once, before any work starts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .._utils import check_int, check_positive_float
from ..eigensolvers import Eigensolver, resolve_eigensolver
from .families import Family, resolve_families

__all__ = ["RunConfig", "parse_mode_scales"]


def _parse_lr(lr: object) -> dict[str, float] | float | None:
    if lr is None:
        return None
    if isinstance(lr, Mapping):
        out: dict[str, float] = {}
        for name, value in lr.items():  # "all" (or a list of names) sets each family's
            for family in resolve_families(str(name)):
                out[family.name] = check_positive_float(f"lr of {family.name}", value)
        return out
    return check_positive_float("lr", lr)


def parse_mode_scales(value: object) -> tuple[float, float]:
    """The ``(a, b)`` of an interpolated update, ``θ += a·P_kΔ + b·(Δ − P_kΔ)``.

    Args:
        value: a pair of numbers, or the text ``"a,b"`` (``--mode-scales``).

    Returns:
        ``(a, b)`` as floats.

    Raises:
        ValueError: not two numbers, a number that is NaN or infinite, or ``(0, 0)`` (an
            update that never moves).

    Example:
        >>> from subspace_optim.experiments.config import parse_mode_scales
        >>> parse_mode_scales("0.5,1.5"), parse_mode_scales((1, 0))
        ((0.5, 1.5), (1.0, 0.0))
        >>> parse_mode_scales("0,0")
        Traceback (most recent call last):
            ...
        ValueError: mode scales (0, 0) would never move the parameters; give a nonzero a or b
    """
    items = value.split(",") if isinstance(value, str) else value
    try:
        if isinstance(items, (str, bytes)) or len(items) != 2:  # type: ignore[arg-type]
            raise TypeError
        a, b = (float(x) for x in items)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(
            f"mode scales are two numbers a,b (θ += a·P_kΔ + b·(Δ − P_kΔ)), e.g. 0.5,1.5; "
            f"got {value!r}"
        ) from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"mode scales must be finite numbers; got ({a:g}, {b:g})")
    if a == 0 and b == 0:
        raise ValueError(
            "mode scales (0, 0) would never move the parameters; give a nonzero a or b"
        )
    return a, b


@dataclass(frozen=True)
class RunConfig:
    """Everything the paper varies, with the defaults of the digits reproduction.

    Args:
        optimizers: family names (``"sgd"``, ``"gd-eos"``, ``"sam"``, ``"momentum"``,
            ``"adam"``), a comma-separated string, or ``"all"``.
        steps: total optimizer steps per run, counted from initialization.
        switch: a float in ``(0, 1]`` is the χ_k threshold of the paper's switch protocol
            (:class:`~subspace_optim.AlignmentSwitch`, EMA factor 0.9 per step): the switch
            is at the measurement step whose χ_k brings the EMA to it, and the projected
            runs start there, from the state before that step; an int is a fixed switch step.
        switch_by: with a threshold, force the switch at this step if the EMA has not
            reached it (default ``steps // 3``).
        after_switch: run base / Dom / Bulk this many steps after the switch, wherever the
            switch falls (then ``steps`` must leave room for it after the latest possible
            switch); ``None`` (default): until step ``steps``.
        switch_after: with a threshold, never switch before this step (the EMA starts at
            χ_k of the initialization, which can already be high); default 0.
        k: dimension of the dominant subspace (the paper: the number of classes).
        lr: one learning rate for every family, a ``{family: lr}`` mapping (``"all"``
            names every family; a later entry overrides an earlier one), or ``None`` for
            each family's default (GD at the Edge of Stability: ``0.82 · 2/λ_1(θ_0)``).
        batch_size: minibatch size of the stochastic families.
        solver: eigensolver name or instance for the refreshes (default: the wrapper's).
        refresh: recompute the basis every ``refresh`` steps after the switch (the paper: 1).
        check_every: before the switch, measure χ_k every this many steps (each measurement
            is one eigensolve). The EMA then uses the factor ``0.9 ** check_every`` per
            measurement, so that its horizon in steps is the paper's (0.9 per step).
        track_every: after the switch, the base run measures χ_k and the spectrum every
            this many steps (for the figures and the effective learning rates).
        num_extra: eigenpairs tracked beyond ``k`` (λ_{k+1}, ... against ``2/η``).
        seed: seeds the model initialization (for built-in setups), the minibatch order
            and the eigensolver start vectors, through private generators.
        eval_every: evaluate the full-batch training loss every this many steps (always at
            the switch and at the end).
        chunk_size: micro-batch size for Hessian products and loss evaluation.
        mode_scales: ``(a, b)``: also run a fourth variant, ``"scaled"``, from the same
            switch point and minibatches, with the update ``a·P_kΔ + b·(Δ − P_kΔ)``
            (:func:`~subspace_optim.experiments.config.parse_mode_scales`); ``None``
            (default): only base / Dom / Bulk.

    Example:
        >>> from subspace_optim.experiments import RunConfig
        >>> config = RunConfig(optimizers="sgd,adam", steps=200, switch=100, lr={"adam": 1e-3})
        >>> config.k, config.refresh, config.switch
        (10, 1, 100)
    """

    optimizers: Sequence[str] | str = "all"
    steps: int = 300
    switch: float | int = 0.95
    switch_by: int | None = None
    switch_after: int = 0
    after_switch: int | None = None
    k: int = 10
    lr: float | Mapping[str, float] | None = None
    batch_size: int = 50
    solver: str | Eigensolver | None = None
    refresh: int = 1
    check_every: int = 5
    track_every: int = 5
    num_extra: int = 2
    seed: int = 0
    eval_every: int = 1
    chunk_size: int | None = None
    mode_scales: tuple[float, float] | None = None
    families: tuple[Family, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "families", tuple(resolve_families(self.optimizers)))
        check_int("steps", self.steps, low=2)
        if isinstance(self.switch, bool) or not isinstance(self.switch, (int, float)):
            raise TypeError(
                f"switch must be a threshold in (0, 1] (e.g. 0.95) or a step (e.g. 100); got {self.switch!r}"
            )
        if isinstance(self.switch, int):
            check_int("switch step", self.switch, low=0)
            if self.switch >= self.steps:
                raise ValueError(
                    f"the switch step ({self.switch}) must be smaller than steps ({self.steps}); "
                    "raise --steps or lower --switch"
                )
        else:
            if not (math.isfinite(self.switch) and 0 < self.switch <= 1):
                raise ValueError(
                    f"a switch threshold is an alignment in (0, 1]; got {self.switch} "
                    "(pass an int such as 100 for a fixed switch step)"
                )
        if self.switch_by is not None:
            check_int("switch_by", self.switch_by, low=1)
            if self.switch_by >= self.steps:
                raise ValueError(
                    f"switch_by ({self.switch_by}) must be smaller than steps ({self.steps})"
                )
        check_int("switch_after", self.switch_after, low=0)
        if self.switch_step is None and self.switch_after >= self.fallback_step:
            raise ValueError(
                f"switch_after ({self.switch_after}) must be smaller than the forced-switch step "
                f"({self.fallback_step}); lower --switch-after or raise --switch-by"
            )
        if self.after_switch is not None:
            check_int("after_switch", self.after_switch, low=1)
            latest = self.switch_step if self.switch_step is not None else self.fallback_step
            if latest + self.after_switch > self.steps:
                raise ValueError(
                    f"after_switch ({self.after_switch}) steps after the latest switch (step "
                    f"{latest}) need steps >= {latest + self.after_switch}; got steps {self.steps}"
                )
        check_int("k", self.k, low=1)
        set_(self, "lr", _parse_lr(self.lr))
        check_int("batch_size", self.batch_size, low=1)
        if self.solver is not None:
            resolve_eigensolver(self.solver)
        check_int("refresh", self.refresh, low=1)
        check_int("check_every", self.check_every, low=1)
        check_int("track_every", self.track_every, low=1)
        check_int("num_extra", self.num_extra, low=0)
        check_int("seed", self.seed, low=0)
        check_int("eval_every", self.eval_every, low=1)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, low=1)
        if self.mode_scales is not None:
            set_(self, "mode_scales", parse_mode_scales(self.mode_scales))

    @property
    def switch_step(self) -> int | None:
        """The fixed switch step, or ``None`` with a threshold."""
        return self.switch if isinstance(self.switch, int) else None

    @property
    def fallback_step(self) -> int:
        """The step at which a threshold switch is forced."""
        return self.switch_by if self.switch_by is not None else max(1, self.steps // 3)

    def end_step(self, switch: int) -> int:
        """The step at which the runs after a switch at ``switch`` stop.

        Args:
            switch: the switch step of a family.

        Returns:
            ``switch + after_switch`` (at most ``steps``), or ``steps`` without
            ``after_switch``.
        """
        if self.after_switch is None:
            return self.steps
        return min(self.steps, switch + self.after_switch)

    def lr_for(self, family: Family) -> float | None:
        """The learning rate of ``family`` (``None``: derive from the sharpness).

        Args:
            family: one of ``families``.

        Returns:
            The family's entry of an ``lr`` mapping, the single ``lr``, or else the
            family's default; ``None`` when that default is derived from λ_1(θ_0).
        """
        if isinstance(self.lr, dict):
            return self.lr.get(family.name, family.lr)
        return self.lr if self.lr is not None else family.lr

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings.

        Returns:
            The fields as plain values (``optimizers`` as family names, a solver instance
            as its ``repr``), plus ``switch_mode``, the forced-switch step as
            ``switch_by`` for a threshold switch, and torch's thread count;
            ``mode_scales`` only when it is set.
        """
        d = asdict(self)
        d.pop("families")
        d["optimizers"] = [f.name for f in self.families]
        if isinstance(self.solver, Eigensolver):
            d["solver"] = repr(self.solver)
        d["switch_mode"] = "fixed step" if self.switch_step is not None else "threshold"
        if self.switch_step is None:
            d["switch_by"] = self.fallback_step
        d["torch_num_threads"] = torch.get_num_threads()
        if self.mode_scales is None:  # runs without the option: the summary as before
            d.pop("mode_scales")
        return d
