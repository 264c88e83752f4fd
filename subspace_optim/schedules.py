"""Refresh schedules: when to recompute the dominant subspace and when to project.

A schedule answers two questions at every optimizer step ``t`` (counted from 0):
*refresh?* (recompute the top-k eigenvectors at the current parameters, warm-started from
the previous basis) and *project?* (apply the Dom/Bulk projection to this step's update).
It may also *observe* the alignment χ_k of the full-batch gradient measured at a refresh,
which is how the paper's switch protocol decides when to start projecting.
"""

from __future__ import annotations

import warnings
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
        """Whether step ``step`` refreshes the basis and whether it projects.

        Args:
            step: the optimizer step about to be taken, counted from 0.

        Returns:
            Whether to refresh the basis before this step and whether to project it.
        """

    def observe(self, step: int, alignment: float | None) -> None:  # noqa: B027
        """Receive χ_k of the full-batch gradient measured at step ``step`` (if refreshed).

        Args:
            step: the step at which the basis was refreshed.
            alignment: χ_k of the full-batch gradient in ``[0, 1]``, or ``None`` (or
                ``nan``) when it could not be measured.
        """

    def state_dict(self) -> dict[str, Any]:
        """Mutable state (for checkpoints); stateless schedules return ``{}``.

        Returns:
            A dict of plain values (numbers, ``None``, bools), ready for ``torch.save``.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Restore what :meth:`state_dict` returned.

        Args:
            state: a dict returned by :meth:`state_dict` of a schedule of the same class.
        """


class Every(RefreshSchedule):
    """Refresh every ``n`` steps from step ``start`` on, projecting every step from ``start``.

    ``Every(1)`` is the paper's setting after the switch (a fresh basis every step);
    ``Every(1, start=100)`` switches at a fixed step.

    Args:
        n: refresh every ``n`` steps (``>= 1``).
        start: the first refreshed and projected step (``>= 0``).

    Raises:
        TypeError: ``n`` or ``start`` is not an int.
        ValueError: ``n < 1`` or ``start < 0``.

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

    Args:
        steps: the steps to refresh at (ints ``>= 0``, any order, duplicates ignored).

    Raises:
        TypeError: a step is not an int.
        ValueError: a negative step, or no step at all.

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
    moving average over those measurements

    .. math:: m_j = \\beta\\, m_{j-1} + (1 - \\beta)\\, \\chi_k(\\nabla L(\\theta_{t_j})),
              \\qquad m_0 = \\chi_k(\\nabla L(\\theta_{t_0}))

    (``β = ema``, one update per measurement at steps ``t_0 < t_1 < ...``) is compared with
    ``threshold``. When a measurement at step ``t`` gives ``m >= threshold`` and
    ``t + 1 >= min_steps``, projection starts at step ``t + 1``, with a fresh basis, and the
    basis is refreshed every ``every`` steps after that. So the earliest possible switch
    step is ``max(min_steps, t_0 + 1)``. Step ``t`` itself is not projected: inside a
    training loop the schedule learns χ_k only after that step's update is taken.
    :attr:`trigger_step` is ``t``; a caller that can rewind (the experiment runner keeps the
    state before every measurement step) starts its projected runs there instead, so that
    the first projected update is taken where the triggering χ_k was measured.

    If the threshold is never reached, ``max_steps`` forces the switch: step ``max_steps``
    is the first projected step (a :class:`UserWarning` says so, with the EMA reached).
    Without ``max_steps`` the schedule keeps measuring; after ``warn_after`` consecutive
    measurements below the threshold it warns once (each measurement is a full eigensolve,
    so this spending is never silent). The paper's EMA factor 0.9 is per step: with
    ``check_every = c`` use ``ema = 0.9 ** c`` for the same horizon in steps.

    Args:
        threshold: χ_k level in ``(0, 1]`` the EMA must reach (the paper: 0.95).
        ema: averaging factor ``β`` in ``[0, 1)`` per measurement (``0``: no smoothing).
        check_every: measure χ_k (one eigensolve) every this many steps before the switch.
            The default, 10, spends a tenth of the eigensolves of checking every step.
        every: refresh the basis every this many steps after the switch (the paper: 1).
        min_steps: never project before this step.
        max_steps: force the switch at this step; ``None`` (default): never force.
        warn_after: warn once after this many measurements below the threshold (one
            that reaches it before ``min_steps`` does not count; ``None``: never warn).

    Raises:
        ValueError: a threshold outside ``(0, 1]``, ``ema`` outside ``[0, 1)``, a count
            below its minimum (``check_every``, ``every``, ``warn_after`` >= 1;
            ``min_steps``, ``max_steps`` >= 0), or ``max_steps < min_steps``.

    Example:
        >>> import warnings
        >>> from subspace_optim import AlignmentSwitch
        >>> s = AlignmentSwitch(threshold=0.9, ema=0.5, check_every=1)
        >>> for t, chi in enumerate([0.8, 0.95, 0.99, 0.99]):
        ...     _ = s.decide(t); s.observe(t, chi)
        >>> s.switched_at, s.trigger_step  # EMA: 0.8, 0.875, 0.9325 >= 0.9 at step 2
        (3, 2)
        >>> s.decide(3)
        Decision(refresh=True, project=True)
        >>> forced = AlignmentSwitch(threshold=0.99, max_steps=20)
        >>> [forced.decide(t).refresh for t in (0, 5, 10)]  # check_every=10 by default
        [True, False, True]
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     forced.decide(20).project, forced.switched_at
        (True, 20)
        >>> "forced" in str(caught[0].message)
        True
    """

    def __init__(
        self,
        threshold: float = 0.95,
        ema: float = 0.9,
        *,
        check_every: int = 10,
        every: int = 1,
        min_steps: int = 0,
        max_steps: int | None = None,
        warn_after: int | None = 50,
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
        if self.max_steps is not None and self.max_steps < self.min_steps:
            raise ValueError(
                f"max_steps={max_steps} is before min_steps={min_steps}: the forced switch "
                "would project before min_steps; set max_steps >= min_steps"
            )
        self.warn_after = None if warn_after is None else check_int("warn_after", warn_after, low=1)
        self.value: float | None = None
        self.switched_at: int | None = None
        self.forced = False
        self.failed_checks = 0

    @property
    def trigger_step(self) -> int | None:
        """The step of the measurement whose EMA reached the threshold (``switched_at - 1``);
        ``None`` before the switch and for a forced switch."""
        if self.switched_at is None or self.forced:
            return None
        return self.switched_at - 1

    def decide(self, step: int) -> Decision:
        if self.switched_at is None and self.max_steps is not None and step >= self.max_steps:
            self.switched_at = step
            self.forced = True
            reached = "no measurement" if self.value is None else f"an EMA of {self.value:.3g}"
            warnings.warn(
                f"AlignmentSwitch: the χ_k threshold {self.threshold} was not reached "
                f"({reached}); switch forced at step {step} (max_steps={self.max_steps})",
                UserWarning,
                stacklevel=2,
            )
        if self.switched_at is not None and step >= self.switched_at:
            return Decision(refresh=(step - self.switched_at) % self.every == 0, project=True)
        return Decision(refresh=step % self.check_every == 0, project=False)

    def observe(self, step: int, alignment: float | None) -> None:
        if self.switched_at is not None or alignment is None or alignment != alignment:
            return
        self.value = (
            alignment if self.value is None else self.ema * self.value + (1 - self.ema) * alignment
        )
        if self.value >= self.threshold:  # reached; held back while before min_steps
            if step + 1 >= self.min_steps:
                self.switched_at = step + 1
            return
        self.failed_checks += 1
        if self.warn_after is not None and self.failed_checks == self.warn_after:
            warnings.warn(
                f"AlignmentSwitch: {self.failed_checks} χ_k measurements (eigensolves) up to "
                f"step {step} without a switch: the EMA is {self.value:.3g}, the threshold "
                f"{self.threshold}. Lower the threshold, set max_steps to force the switch, "
                "or raise check_every to measure less often",
                UserWarning,
                stacklevel=2,
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "switched_at": self.switched_at,
            "forced": self.forced,
            "failed_checks": self.failed_checks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state.get("value")
        self.switched_at = state.get("switched_at")
        self.forced = bool(state.get("forced", False))
        self.failed_checks = int(state.get("failed_checks", 0))

    def __repr__(self) -> str:
        return (
            f"AlignmentSwitch(threshold={self.threshold}, ema={self.ema}, "
            f"check_every={self.check_every}, every={self.every}, min_steps={self.min_steps}, "
            f"max_steps={self.max_steps})"
        )


_NAMES = ("every", "switch")


def resolve_schedule(spec: str | RefreshSchedule | None) -> RefreshSchedule:
    """``None`` or ``"every"`` → ``Every(1)``; ``"switch"`` → ``AlignmentSwitch()``.

    Args:
        spec: a schedule (returned as is), a name (``"every"``, ``"switch"``) or ``None``.

    Returns:
        The schedule.

    Raises:
        ValueError: an unknown name, or a value that is neither a name, a schedule nor
            ``None``.

    Example:
        >>> from subspace_optim import resolve_schedule
        >>> resolve_schedule("switch")
        AlignmentSwitch(threshold=0.95, ema=0.9, check_every=10, every=1, min_steps=0, max_steps=None)
    """
    if spec is None:
        return Every(1)
    if isinstance(spec, RefreshSchedule):
        return spec
    name = choice("refresh schedule", spec, _NAMES)
    return Every(1) if name == "every" else AlignmentSwitch()
