"""Refresh schedules: when to recompute the dominant subspace and when to project.

A schedule answers two questions at every optimizer step ``t`` (counted from 0):
*refresh?* (recompute the top-k eigenvectors at the current parameters, warm-started from
the previous basis) and *project?* (apply the Dom/Bulk projection to this step's update).
It may also *observe* the alignment χ_k of the full-batch gradient measured at a refresh,
which is how the paper's switch protocol decides when to start projecting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._utils import check_int, check_positive_float, choice

__all__ = [
    "AlignmentSwitch",
    "AtSteps",
    "Decision",
    "Every",
    "RefreshSchedule",
    "resolve_schedule",
]


@dataclass(frozen=True)
class Decision:
    """What a schedule asks for at one step.

    Example:
        >>> from subspace_optim import Decision, Every
        >>> s = Every(2, start=1)
        >>> s.decide(2)  # projecting since step 1, refreshing at steps 1, 3, 5, ...
        Decision(refresh=False, project=True)
        >>> s.decide(3) == Decision(refresh=True, project=True)
        True
    """

    refresh: bool
    project: bool


class RefreshSchedule(ABC):
    """Base class: :meth:`decide` for step ``t``, :meth:`observe` what was measured.

    Example:
        >>> from subspace_optim import Decision, RefreshSchedule
        >>> class EveryUntil(RefreshSchedule):
        ...     # refresh every step until ``stop``, then keep the last basis
        ...     def __init__(self, stop):
        ...         self.stop = stop
        ...     def decide(self, step):
        ...         return Decision(refresh=step < self.stop, project=True)
        >>> [EveryUntil(2).decide(t).refresh for t in range(4)]
        [True, True, False, False]
    """

    @abstractmethod
    def decide(self, step: int) -> Decision:
        """Whether step ``step`` refreshes the basis and whether it projects."""

    def observe(self, step: int, alignment: float | None) -> None:  # noqa: B027
        """Receive χ_k of the full-batch gradient measured at step ``step`` (if refreshed)."""

    def state_dict(self) -> dict[str, Any]:
        """Mutable state (for checkpoints); stateless schedules return ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Restore what :meth:`state_dict` returned."""


class Every(RefreshSchedule):
    """Refresh every ``n`` steps from step ``start`` on, projecting every step from ``start``.

    ``Every(1)`` is the paper's setting after the switch (a fresh basis every step);
    ``Every(1, start=100)`` switches at a fixed step.

    Example:
        >>> from subspace_optim import Every
        >>> s = Every(3, start=2)
        >>> [(t, s.decide(t).refresh, s.decide(t).project) for t in range(1, 6)]
        [(1, False, False), (2, True, True), (3, False, True), (4, False, True), (5, True, True)]
    """

    def __init__(self, n: int = 1, *, start: int = 0) -> None:
        self.n = check_int("n", n, low=1)
        self.start = check_int("start", start, low=0)

    def decide(self, step: int) -> Decision:
        active = step >= self.start
        return Decision(refresh=active and (step - self.start) % self.n == 0, project=active)

    def __repr__(self) -> str:
        return f"Every({self.n}, start={self.start})"


class AtSteps(RefreshSchedule):
    """Refresh exactly at the listed steps; project from the first of them on.

    Example:
        >>> from subspace_optim import AtSteps
        >>> s = AtSteps([2, 4])
        >>> [(s.decide(t).refresh, s.decide(t).project) for t in range(1, 5)]
        [(False, False), (True, True), (False, True), (True, True)]
    """

    def __init__(self, steps: Iterable[int]) -> None:
        steps = sorted({check_int("step", s, low=0) for s in steps})
        if not steps:
            raise ValueError("AtSteps needs at least one step")
        self.steps = frozenset(steps)
        self.first = steps[0]

    def decide(self, step: int) -> Decision:
        return Decision(refresh=step in self.steps, project=step >= self.first)

    def __repr__(self) -> str:
        return f"AtSteps({sorted(self.steps)})"


class AlignmentSwitch(RefreshSchedule):
    """The paper's switch protocol.

    Before the switch the base optimizer runs unprojected while the basis is refreshed every
    ``check_every`` steps to measure χ_k(∇L) of the full-batch gradient; an exponential
    moving average

    .. math:: m_t = \\beta\\, m_{t-1} + (1 - \\beta)\\, \\chi_k(\\nabla L(\\theta_t)),
              \\qquad m_0 = \\chi_k(\\nabla L(\\theta_0))

    (``β = ema``) is compared with ``threshold``. Once ``m_t >= threshold`` (and at least
    ``min_steps`` steps have run), projection starts at the next step, with a fresh basis,
    and the basis is refreshed every ``every`` steps after that. ``max_steps`` forces the
    switch if alignment never reaches the threshold.

    Example:
        >>> from subspace_optim import AlignmentSwitch
        >>> s = AlignmentSwitch(threshold=0.9, ema=0.5)
        >>> for t, chi in enumerate([0.8, 0.95, 0.99, 0.99]):
        ...     _ = s.decide(t); s.observe(t, chi)
        >>> s.switched_at  # EMA: 0.8, 0.875, 0.9325 >= 0.9 at step 2
        3
        >>> s.decide(3)
        Decision(refresh=True, project=True)
    """

    def __init__(
        self,
        threshold: float = 0.95,
        ema: float = 0.9,
        *,
        check_every: int = 1,
        every: int = 1,
        min_steps: int = 0,
        max_steps: int | None = None,
    ) -> None:
        self.threshold = check_positive_float("threshold", threshold)
        if self.threshold > 1:
            raise ValueError(f"threshold is an alignment in (0, 1]; got {threshold}")
        self.ema = check_positive_float("ema", ema, allow_zero=True)
        if self.ema >= 1:
            raise ValueError(f"ema must be in [0, 1); got {ema}")
        self.check_every = check_int("check_every", check_every, low=1)
        self.every = check_int("every", every, low=1)
        self.min_steps = check_int("min_steps", min_steps, low=0)
        self.max_steps = None if max_steps is None else check_int("max_steps", max_steps, low=0)
        self.value: float | None = None
        self.switched_at: int | None = None

    def decide(self, step: int) -> Decision:
        if self.switched_at is None and self.max_steps is not None and step >= self.max_steps:
            self.switched_at = step
        if self.switched_at is not None and step >= self.switched_at:
            return Decision(refresh=(step - self.switched_at) % self.every == 0, project=True)
        return Decision(refresh=step % self.check_every == 0, project=False)

    def observe(self, step: int, alignment: float | None) -> None:
        if self.switched_at is not None or alignment is None or alignment != alignment:
            return
        self.value = (
            alignment if self.value is None else self.ema * self.value + (1 - self.ema) * alignment
        )
        if self.value >= self.threshold and step + 1 >= self.min_steps:
            self.switched_at = step + 1

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "switched_at": self.switched_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state.get("value")
        self.switched_at = state.get("switched_at")

    def __repr__(self) -> str:
        return (
            f"AlignmentSwitch(threshold={self.threshold}, ema={self.ema}, "
            f"check_every={self.check_every}, every={self.every})"
        )


_NAMES = ("every", "switch")


def resolve_schedule(spec: str | RefreshSchedule | None) -> RefreshSchedule:
    """``None`` or ``"every"`` → ``Every(1)``; ``"switch"`` → ``AlignmentSwitch()``.

    Example:
        >>> from subspace_optim import resolve_schedule
        >>> resolve_schedule("switch")
        AlignmentSwitch(threshold=0.95, ema=0.9, check_every=1, every=1)
    """
    if spec is None:
        return Every(1)
    if isinstance(spec, RefreshSchedule):
        return spec
    name = choice("refresh schedule", spec, _NAMES)
    return Every(1) if name == "every" else AlignmentSwitch()
