"""The projection of an update and the statistics of a step, as pure functions.

Nothing here reads or writes an optimizer, a parameter or a counter: each function maps
tensors to tensors (or floats), so each is tested on its own (``tests/test_update_math.py``).
Vectors are flat, shape ``(n,)``; a basis ``U`` is ``(n, m)`` with orthonormal columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._isolation import full_precision
from ..bases import Basis, as_basis

__all__ = [
    "UpdatePlan",
    "dominant_part",
    "effective_rates",
    "moved_eigenvalue",
    "plan_blockwise",
    "plan_update",
    "project_gradient",
    "step_statistics",
    "zero_frozen",
]

#: the ``(a, b)`` scales of the named modes: ``a·P_kΔ + b·(Δ − P_kΔ)``
MODE_SCALES = {"dominant": (1.0, 0.0), "bulk": (0.0, 1.0), "none": (1.0, 1.0)}


def zero_frozen(vec: Tensor, sizes: Sequence[int], frozen: Sequence[bool]) -> Tensor:
    """``vec`` with the slices of frozen parameters set to zero (in place; returned).

    Args:
        vec: ``(n,)``, the concatenation of slices of ``sizes``.
        sizes: number of entries of each parameter, in flat order.
        frozen: per parameter, whether its slice must be zero (no gradient: torch leaves
            such a parameter untouched, and so must the projection).

    Example:
        >>> import torch
        >>> zero_frozen(torch.ones(5), [2, 3], [False, True]).tolist()
        [1.0, 1.0, 0.0, 0.0, 0.0]
    """
    offset = 0
    for m, off in zip(sizes, frozen):
        if off:
            vec[offset : offset + m] = 0
        offset += m
    return vec


@full_precision
def dominant_part(U: Tensor | Basis, delta: Tensor) -> Tensor:
    """``U Uᵀ Δ``: the component of ``delta`` (``(n,)``) in the span of ``U`` (``(n, m)``,
    or a :class:`~subspace_optim.bases.Basis`).

    Example:
        >>> import torch
        >>> U = torch.tensor([[1.0], [0.0]])
        >>> dominant_part(U, torch.tensor([3.0, 4.0])).tolist()
        [3.0, 0.0]
    """
    return as_basis(U).dominant(delta)


@full_precision
def project_gradient(g: Tensor, U: Tensor | Basis, scales: tuple[float, float]) -> Tensor:
    """``a·U Uᵀ g + b·(g − U Uᵀ g)`` for ``scales = (a, b)``: exactly ``U Uᵀ g`` for Dom
    ``(1, 0)`` and ``g − U Uᵀ g`` for Bulk ``(0, 1)``.

    Example:
        >>> import torch
        >>> U = torch.tensor([[1.0], [0.0]])
        >>> project_gradient(torch.tensor([3.0, 4.0]), U, (0.0, 1.0)).tolist()
        [0.0, 4.0]
    """
    dom = as_basis(U).dominant(g)
    a, b = scales
    if (a, b) == (1.0, 0.0):
        return dom
    if (a, b) == (0.0, 1.0):
        return g - dom
    return a * dom + b * (g - dom)


@dataclass(frozen=True)
class UpdatePlan:
    """How to turn the base optimizer's update into the projected one.

    Attributes:
        delta: the realized update ``θ_new − θ_old``, ``(n,)``.
        vector: what to write into the flat parameters, ``(n,)``.
        add: ``vector`` is added to the parameters as the base step left them
            (``True``), or copied over them (``False``).
    """

    delta: Tensor
    vector: Tensor
    add: bool


@full_precision
def plan_update(
    theta_old: Tensor, delta_base: Tensor, dom: Tensor, scales: tuple[float, float]
) -> UpdatePlan:
    """The projected step ``θ_old + a·P_kΔ + b·(Δ − P_kΔ)`` for ``scales = (a, b)``.

    Args:
        theta_old: ``(n,)`` parameters before the base step.
        delta_base: ``(n,)`` the base optimizer's update ``Δ``.
        dom: ``(n,)`` its dominant part ``P_kΔ`` (:func:`dominant_part`).
        scales: ``(a, b)``, finite. Dom ``(1, 0)`` writes ``θ_old + P_kΔ``; Bulk ``(0, 1)``
            subtracts ``P_kΔ`` from where the base step left the parameters (so the
            result does not depend on rounding of ``θ_old + Δ``); any other pair adds
            ``(a − 1)·P_kΔ + (b − 1)·(Δ − P_kΔ)`` there.

    Example:
        >>> import torch
        >>> plan = plan_update(torch.zeros(2), torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0]),
        ...                    (0.5, 2.0))
        >>> plan.delta.tolist(), plan.add
        ([1.5, 8.0], True)
    """
    a, b = scales
    if (a, b) == (1.0, 0.0):
        return UpdatePlan(delta=dom, vector=theta_old + dom, add=False)
    if (a, b) == (0.0, 1.0):
        return UpdatePlan(delta=delta_base - dom, vector=-dom, add=True)
    delta = a * dom + b * (delta_base - dom)
    return UpdatePlan(delta=delta, vector=delta - delta_base, add=True)


@full_precision
def plan_blockwise(
    delta_base: Tensor,
    dom: Tensor,
    sizes: Sequence[int],
    scales: Sequence[tuple[float, float]],
) -> UpdatePlan:
    """:func:`plan_update` with its own ``(a, b)`` for each parameter's slice: the slice of
    ``sizes[i]`` entries becomes ``a_i·P_kΔ + b_i·(Δ − P_kΔ)``; a slice with ``(1, 1)`` keeps
    the base's update exactly. The plan adds ``delta − delta_base`` to the parameters.

    Example:
        >>> import torch
        >>> plan = plan_blockwise(torch.tensor([3.0, 4.0, 1.0]), torch.tensor([3.0, 0.0, 0.0]),
        ...                       [2, 1], [(0.5, 2.0), (1.0, 1.0)])
        >>> plan.delta.tolist(), plan.vector.tolist()
        ([1.5, 8.0, 1.0], [-1.5, 4.0, 0.0])
    """
    delta = delta_base.clone()
    offset = 0
    for m, (a, b) in zip(sizes, scales):
        if (a, b) != (1.0, 1.0):  # b·Δ + (a − b)·P_kΔ, in place on the slice
            delta[offset : offset + m].mul_(b).add_(dom[offset : offset + m], alpha=a - b)
        offset += m
    return UpdatePlan(delta=delta, vector=delta - delta_base, add=True)


@full_precision
def step_statistics(
    U: Tensor | Basis, delta_base: Tensor, delta: Tensor, g: Tensor, loss: Tensor | None
) -> dict[str, float]:
    """χ_k of ``g``, the dominant share of the base update and the effective-LR terms.

    Args:
        U: ``(n, m)`` orthonormal basis of the projected subspace (or a
            :class:`~subspace_optim.bases.Basis`).
        delta_base: ``(n,)`` the base optimizer's update.
        delta: ``(n,)`` the realized update.
        g: ``(n,)`` the gradient the step is measured against.
        loss: the full-data loss (a 0-d tensor) or ``None``.

    Returns:
        The :class:`~subspace_optim.StepStats` fields ``loss``, ``grad_alignment``,
        ``update_alignment``, ``eta_dom``, ``eta_bulk``, ``dot_dom``, ``dot_bulk``,
        ``sq_dom`` and ``sq_bulk`` as floats (``nan`` where a ratio is undefined). One
        device synchronization.

    Example:
        >>> import torch
        >>> U = torch.tensor([[1.0], [0.0]])
        >>> g = torch.tensor([2.0, 1.0])
        >>> s = step_statistics(U, -0.1 * g, -0.1 * g, g, None)
        >>> round(s["eta_dom"], 6), round(s["eta_bulk"], 6), round(s["grad_alignment"], 4)
        (0.1, 0.1, 0.8944)
    """
    basis = as_basis(U)
    cg = basis.coords(g)
    cd = basis.coords(delta)
    cb = basis.coords(delta_base)
    sq_dom = cg @ cg
    sq_bulk = (g @ g - sq_dom).clamp_min(0)
    dot_dom = -(cd @ cg)
    dot_bulk = -(delta @ g) - dot_dom
    nan_t = torch.full((), math.nan, dtype=g.dtype, device=g.device)
    values = torch.stack(
        [
            sq_dom,
            sq_bulk,
            dot_dom,
            dot_bulk,
            g.norm(),
            cg.norm(),
            delta_base.norm(),
            cb.norm(),
            nan_t if loss is None else loss.to(g.dtype),
        ]
    ).tolist()
    sqd, sqb, dd, db, gn, cgn, dn, cbn, lf = values
    nan = math.nan
    return {
        "loss": lf,
        "grad_alignment": cgn / gn if gn > 0 else nan,
        "update_alignment": cbn / dn if dn > 0 else nan,
        **effective_rates(dd, db, sqd, sqb),
    }


def effective_rates(
    dot_dom: float, dot_bulk: float, sq_dom: float, sq_bulk: float
) -> dict[str, float]:
    """The effective learning rates ``η_dom = −⟨Δ, Pg⟩/‖Pg‖²`` and ``η_bulk`` (``nan`` where
    the denominator is 0) with the sums they are made of, as :class:`~subspace_optim.StepStats`
    fields.

    Example:
        >>> effective_rates(0.4, 0.1, 4.0, 0.0)["eta_dom"], effective_rates(0.4, 0.1, 4.0, 0.0)["eta_bulk"]
        (0.1, nan)
    """
    return {
        "eta_dom": dot_dom / sq_dom if sq_dom > 0 else math.nan,
        "eta_bulk": dot_bulk / sq_bulk if sq_bulk > 0 else math.nan,
        "dot_dom": dot_dom,
        "dot_bulk": dot_bulk,
        "sq_dom": sq_dom,
        "sq_bulk": sq_bulk,
    }


@full_precision
def moved_eigenvalue(
    eigenvalues: Tensor, j: int, threshold: float, scales: tuple[float, float]
) -> tuple[int, float, float] | None:
    """The direction a projected update moves along that is closest to (or furthest past)
    its stability threshold, for ``scales = (a, b)``: ``(i, λ_i, limit)``, ``i`` 1-based.

    Two parts are checked, each where the pair makes its step larger than the part the
    unprojected base optimizer would take relative to the other:

    * the bulk, when the update damps the dominant part (``a < b``: Bulk, or pairs such as
      ``(0.5, 1.5)``): its first direction ``λ_{j+1}`` steps with an effective learning rate
      ``b·η``, so its limit is ``threshold / b``;
    * the dominant part, when the pair amplifies it (``a > 1``): ``λ_1`` steps with ``a·η``,
      limit ``threshold / a``. Up to ``a = 1`` the dominant step is the base optimizer's own
      (at the Edge of Stability by design in the paper's GD runs), so it is not flagged.

    Of the parts checked, the one with the larger ``λ_i / limit`` is returned.

    Args:
        eigenvalues: ``(m,)`` tracked eigenvalues, descending.
        j: number of projected directions (``λ_{j+1}`` is ``eigenvalues[j]``).
        threshold: the base optimizer's threshold (``2/η`` for SGD).
        scales: ``(a, b)``.

    Returns:
        The triple, or ``None`` when no part is checked (``"none"``, ``"dominant"``) or the
        bulk's ``λ_{j+1}`` is not tracked and the dominant part is not amplified.

    Example:
        >>> import torch
        >>> moved_eigenvalue(torch.tensor([9.0, 5.0, 1.0]), 1, 4.0, (0.0, 1.0))
        (2, 5.0, 4.0)
        >>> moved_eigenvalue(torch.tensor([9.0, 5.0, 1.0]), 1, 4.0, (1.0, 0.0)) is None
        True
        >>> moved_eigenvalue(torch.tensor([9.0, 5.0, 1.0]), 1, 40.0, (10.0, 1.0))
        (1, 9.0, 4.0)
    """
    a, b = scales
    parts = []
    if a < b and j < eigenvalues.shape[0]:
        parts.append((j + 1, float(eigenvalues[j]), threshold if b == 1.0 else threshold / b))
    if a > 1.0 and eigenvalues.shape[0] > 0:
        parts.append((1, float(eigenvalues[0]), threshold / a))
    return max(parts, key=lambda part: part[1] / part[2]) if parts else None
