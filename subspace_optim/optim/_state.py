"""What the projection wrapper remembers from one step to the next, as one typed value."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..eigensolvers import EigenResult
from . import _faults

__all__ = ["ProjectionState"]


@dataclass
class ProjectionState:
    """The wrapper's own state between steps (the base optimizer keeps its own).

    The wrapper updates it as it steps; a checkpoint is built from it and restored as a new
    value (``optim/_checkpoint.py``), never by writing the wrapper's attributes one by one.

    Attributes:
        step: steps taken (the next step's index).
        active_k: directions projected now (``k``, or fewer with ``adaptive_k``).
        basis: ``(n, k + num_extra)`` eigenvectors of the latest refresh, or ``None``.
        eigenvalues: ``(k + num_extra,)`` their eigenvalues, descending, or ``None``.
        last_result: the eigensolver's latest usable result, or ``None``.
        unstable: inside an episode of an eigenvalue above the stability threshold (the
            warning is issued once per episode).
        counters: refreshes, products, seconds and faults so far
            (``_faults.new_counters``).
    """

    step: int = 0
    active_k: int = 0
    basis: Tensor | None = None
    eigenvalues: Tensor | None = None
    last_result: EigenResult | None = None
    unstable: bool = False
    counters: dict[str, float] = field(default_factory=_faults.new_counters)
