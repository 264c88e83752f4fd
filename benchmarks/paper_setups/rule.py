"""The paper's switch rule on a measured χ_k trajectory: its EMA and the threshold it reaches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: the paper's threshold on the EMA of χ_k
PAPER_THRESHOLD = 0.95
#: the lowest threshold the rule states (thresholds are whole hundredths)
MIN_THRESHOLD = 0.01
#: the paper's EMA factor per step
EMA_PER_STEP = 0.9


@dataclass(frozen=True)
class Trajectory:
    """χ_k of the full-batch gradient at the measured steps of an unprojected run, and its EMA.

    ``steps``, ``chi`` and ``ema`` have one entry per measurement; ``loss`` is the full-batch
    loss at the same steps (``nan`` where it was not evaluated).
    """

    steps: list[int]
    chi: list[float]
    ema: list[float]
    loss: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "chi": self.chi, "ema": self.ema, "loss": self.loss}


def ema(values: list[float], check_every: int) -> list[float]:
    """The EMA the runner keeps: the first value, then factor ``0.9 ** check_every`` per
    measurement (the paper's 0.9 per step, measured every ``check_every`` steps)."""
    beta = EMA_PER_STEP**check_every
    out: list[float] = []
    for v in values:
        out.append(v if not out else beta * out[-1] + (1 - beta) * v)
    return out


def trajectory(rows: list[dict[str, Any]], check_every: int) -> Trajectory:
    """The unprojected run's χ_k measurements from a run's metric rows: the prefix's and the
    base run's (a switch by the rule moves its triggering measurement to the base run)."""
    measured = sorted(
        (
            r
            for r in rows
            if r.get("variant") == "base"
            and r.get("gradient_source") == "full"
            and math.isfinite(r.get("grad_alignment", math.nan))
        ),
        key=lambda r: int(r["step"]),
    )
    chi = [float(r["grad_alignment"]) for r in measured]
    return Trajectory(
        [int(r["step"]) for r in measured],
        chi,
        ema(chi, check_every),
        [float(r.get("loss", math.nan)) for r in measured],
    )


def rule_threshold(track: Trajectory, switch_after: int) -> tuple[float, float]:
    """The threshold to switch by: the paper's 0.95 when the EMA reaches it at a step
    ``>= switch_after``, else the highest threshold to 0.01 that it reaches there. An EMA
    that stays below 0.01 reaches no threshold: 0.01 is returned, which the run never meets,
    so its switch is forced at ``switch_by``.

    Returns:
        ``(threshold, highest EMA from switch_after on)``.

    Raises:
        ValueError: no measurement at or after ``switch_after``.

    Example:
        >>> t = Trajectory([0, 10, 20], [0.9, 0.5, 0.937], [0.9, 0.5, 0.937], [1.0] * 3)
        >>> rule_threshold(t, 5)
        (0.93, 0.937)
    """
    late = [e for s, e in zip(track.steps, track.ema) if s >= switch_after]
    if not late:
        raise ValueError(f"no χ_k measurement at or after step {switch_after}")
    top = max(late)
    if top >= PAPER_THRESHOLD:
        return PAPER_THRESHOLD, top
    return max(math.floor(top * 100) / 100, MIN_THRESHOLD), top
