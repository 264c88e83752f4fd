"""The record one step of the wrapper fills in, stage by stage.

:class:`~subspace_optim.SubspaceProjectedOptimizer` runs each step as begin → refresh →
base step → project → record; every fact a stage establishes goes into a
:class:`StepFacts`, and the next stage reads it from there (nothing travels in attributes
of the optimizer). The stages' helpers that need no wrapper live here too: the gradient
projection of ``project="gradient"`` (for ``.grad`` and inside a closure) and the step's
:class:`~subspace_optim.diagnostics.StepStats`. The math they call is in ``_update``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..bases import Basis, BlockBasis
from ..diagnostics import StepStats
from ._blockwise import BlockCoords, block_statistics
from ._flat import FlatParams
from ._refresh import RefreshOutcome
from ._update import step_statistics
from .protocol import CompositeOptimizer

__all__ = ["StepFacts", "project_existing_grads", "projecting_closure", "step_record"]


@dataclass
class StepFacts:
    """What one step of the wrapper has established so far (filled stage by stage).

    Attributes:
        t: index of the step.
        active: the wrapper projects at all (``k > 0``).
        theta_old: ``(n,)`` parameters before the step (``None`` when inactive).
        g_mini: ``(n,)`` the gradient in ``.grad`` (or the first closure gradient).
        grad_finite: ``g_mini`` is finite.
        wants_projection: some parameter's ``(a, b)`` is not ``(1, 1)`` (its group's
            ``"subspace_mode"``, else the mode) and, with a curvature, the schedule asks
            for a projected update.
        refresh: this step's refresh, or ``None``.
        U: the basis the step projects with (``(n, active_k)``, or a source's
            per-block :class:`~subspace_optim.bases.BlockBasis`), or ``None``.
        skip: why the step was skipped before the base step, or ``None``.
        delta_base: ``(n,)`` the base optimizer's update.
        delta: ``(n,)`` the realized update.
        undone: the update came out non-finite and was undone.
        group_scales: per parameter (flat order), the ``(a, b)`` of its group's
            ``"subspace_mode"``; ``None`` when no group sets one.
        coords: a source's step, scaled block by block in place (no realized ``delta``
            vector): its coordinates, for the statistics.
    """

    t: int
    active: bool
    theta_old: Tensor | None = None
    g_mini: Tensor | None = None
    grad_finite: bool = True
    wants_projection: bool = False
    refresh: RefreshOutcome | None = None
    U: Tensor | Basis | None = None
    skip: str | None = None
    delta_base: Tensor | None = None
    delta: Tensor | None = None
    undone: bool = False
    group_scales: list[tuple[float, float]] | None = None
    coords: BlockCoords | None = None

    @property
    def project_now(self) -> bool:
        """A projected update is due and a basis exists."""
        return self.wants_projection and self.U is not None


def project_existing_grads(
    vec: FlatParams, base: Optimizer, project: Callable[[Tensor], Tensor], raw: list[Tensor]
) -> None:
    """Before a closure step: project the gradient in ``.grad`` if ``base`` may use it.

    A :class:`~subspace_optim.optim.CompositeOptimizer` says whether it will
    (``uses_existing_gradient``); it is then this step's gradient, appended to ``raw`` for
    the record. Any other optimizer may use it whenever one is there, so it is projected
    too, but not recorded: torch's optimizers evaluate the closure first, and what lies in
    ``.grad`` before it is the previous step's gradient. A gradient a composite base will
    not use is left alone: projecting it in place would make a stale gradient look fresh.
    """
    if all(vec.frozen()):
        return
    composite = isinstance(base, CompositeOptimizer)
    if composite and not base.uses_existing_gradient():
        return
    g = vec.grads()
    if composite:
        raw.append(g)
    vec.set_grads(project(g))


def projecting_closure(
    closure: Callable[[], Tensor],
    vec: FlatParams,
    project: Callable[[Tensor], Tensor],
    raw: list[Tensor],
) -> Callable[[], Tensor]:
    """``closure`` whose gradients come back as ``project`` maps them (the first
    unprojected one is kept in ``raw``, for the step's record, unless ``raw`` holds this
    step's gradient already)."""

    def projecting() -> Tensor:
        loss = closure()
        g = vec.grads()
        if not raw:
            raw.append(g)
        vec.set_grads(project(g))
        return loss

    return projecting


def step_record(
    facts: StepFacts,
    eigenvalues: Tensor | None,
    faults: int,
    scales: tuple[float, float] = (math.nan, math.nan),
) -> StepStats:
    """The :class:`~subspace_optim.StepStats` of a finished step.

    Measured against the full-data gradient when the step refreshed (else the minibatch
    one in ``facts.g_mini``, which an active step must have); a skipped step records zero
    updates. ``eigenvalues`` are the tracked ones after the step, ``faults`` the cumulative
    fault count, ``scales`` the wrapper's ``(a, b)`` (recorded as ``scale_dom``,
    ``scale_bulk``).
    """
    refresh = facts.refresh
    pair = {"scale_dom": float(scales[0]), "scale_bulk": float(scales[1])}
    if not facts.active:
        return StepStats(
            step=facts.t, projected=False, refreshed=False, gradient_source="none", **pair
        )
    assert facts.g_mini is not None
    metrics: dict[str, float] = {}
    if facts.coords is not None:  # a source's step: facts.U is its BlockBasis
        assert facts.delta_base is not None and facts.U is not None
        basis = cast(BlockBasis, facts.U)
        metrics = block_statistics(basis, facts.coords, facts.delta_base, facts.g_mini)
    delta_base, delta = facts.delta_base, facts.delta
    if facts.skip is not None or delta_base is None or delta is None:
        delta_base = delta = torch.zeros_like(facts.g_mini)
    full = refresh is not None and refresh.grad is not None
    g = refresh.grad if full else facts.g_mini  # type: ignore[union-attr]
    assert g is not None
    eig = () if eigenvalues is None else tuple(float(x) for x in eigenvalues.tolist())
    if facts.U is not None and facts.coords is None:
        loss = None if refresh is None else refresh.loss
        metrics = step_statistics(facts.U, delta_base, delta, g, loss)
    return StepStats(
        step=facts.t,
        projected=facts.project_now and facts.skip is None and not facts.undone,
        refreshed=refresh is not None,
        gradient_source="full" if full else "minibatch",
        eigenvalues=eig,
        refresh_matvecs=0 if refresh is None else refresh.matvecs,
        refresh_seconds=0.0 if refresh is None else refresh.seconds,
        refresh_converged=True if refresh is None else refresh.converged,
        skipped=facts.skip is not None or facts.undone,
        faults=faults,
        **pair,
        **metrics,
    )
