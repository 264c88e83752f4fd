"""The scaled update with a per-block basis, applied in place parameter by parameter.

With a :class:`~subspace_optim.SubspaceSource` the wrapper's step is
``θ_b ← θ_b + (a_b − b_b)·U_b U_bᵀΔ_b + (b_b − 1)·Δ_b`` for each projected parameter ``b``
(the base optimizer already moved it by ``Δ_b``), and nothing for the others. Written this
way the step costs a few passes over the parameters and never builds the realized update
as a vector; its statistics come from the coordinates ``U_bᵀΔ_b`` and ``U_bᵀg_b``
(:func:`block_statistics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._isolation import full_precision
from ..bases import BlockBasis
from ._update import effective_rates

__all__ = ["BlockCoords", "block_statistics", "delta_of", "scale_blocks"]


@dataclass(frozen=True)
class BlockCoords:
    """The coordinates of one step, per block of the basis.

    Attributes:
        update: per block, ``U_bᵀΔ_b`` (``None`` for a block without a basis).
        scales: per block, the ``(a, b)`` applied (``(1, 1)`` without a basis).
    """

    update: list[Tensor | None]
    scales: list[tuple[float, float]]


def delta_of(params: Sequence[Tensor], theta_old: Tensor) -> Tensor:
    """``θ − θ_old`` as a flat vector (dtype of ``theta_old``), one pass per parameter."""
    out = torch.empty_like(theta_old)
    offset = 0
    for p in params:
        m = p.numel()
        torch.sub(
            p.detach().reshape(-1), theta_old[offset : offset + m], out=out[offset : offset + m]
        )
        offset += m
    return out


@torch.no_grad()
@full_precision
def scale_blocks(
    params: Sequence[Tensor],
    basis: BlockBasis,
    delta: Tensor,
    scales: Sequence[tuple[float, float]],
) -> BlockCoords:
    """Turn the base's update ``Δ`` (already in ``params``) into ``a·P_bΔ + b·(Δ − P_bΔ)``
    block by block, in place; blocks without a basis keep ``Δ`` exactly.

    Args:
        params: the parameters, in flat order (one block each).
        basis: the per-block bases (``basis.bases[i]`` is ``(numel_i, k_i)`` or ``None``).
        delta: ``(n,)`` the base optimizer's update.
        scales: per parameter, ``(a, b)``.

    Returns:
        The coordinates ``U_bᵀΔ_b`` and the scales applied, for :func:`block_statistics`.

    Example:
        >>> import torch
        >>> w = torch.zeros(2)
        >>> B = BlockBasis([0], [2], [torch.tensor([[1.0], [0.0]])])
        >>> _ = w.add_(torch.tensor([3.0, 4.0]))  # the base optimizer's step
        >>> c = scale_blocks([w], B, torch.tensor([3.0, 4.0]), [(0.5, 2.0)])
        >>> w.tolist(), c.update[0].tolist()
        ([1.5, 8.0], [3.0])
    """
    coords: list[Tensor | None] = []
    applied: list[tuple[float, float]] = []
    for p, o, m, U, (a, b) in zip(params, basis.offsets, basis.sizes, basis.bases, scales):
        if U is None or (a, b) == (1.0, 1.0):
            coords.append(None if U is None else U.T @ delta[o : o + m].to(U.dtype))
            applied.append((1.0, 1.0) if U is None else (a, b))
            continue
        d = delta[o : o + m].to(U.dtype)
        c = U.T @ d
        step = (U @ c).mul_(a - b)
        if b != 1.0:
            step.add_(d, alpha=b - 1.0)
        p.add_(step.view_as(p).to(p.dtype))
        coords.append(c)
        applied.append((a, b))
    return BlockCoords(update=coords, scales=applied)


@full_precision
def block_statistics(
    basis: BlockBasis, coords: BlockCoords, delta: Tensor, g: Tensor
) -> dict[str, float]:
    """The :func:`~subspace_optim.optim._update.step_statistics` fields of a per-block step,
    from the coordinates (no realized update vector): with ``c_b = U_bᵀΔ_b``,
    ``γ_b = U_bᵀg_b`` and the scales ``(a_b, b_b)``,

    .. math::

        -\\langle \\Delta', P g\\rangle = -\\sum_b a_b\\, c_b\\cdot\\gamma_b, \\qquad
        \\langle \\Delta', g\\rangle = \\sum_b a_b\\, c_b\\cdot\\gamma_b
            + b_b (\\Delta_b\\cdot g_b - c_b\\cdot\\gamma_b)

    (blocks without a basis contribute ``Δ_b·g_b`` to the second sum). ``loss`` is NaN:
    a source has no full-data loss.

    Example:
        >>> import torch
        >>> B = BlockBasis([0], [2], [torch.tensor([[1.0], [0.0]])])
        >>> g = torch.tensor([2.0, 1.0])
        >>> s = block_statistics(B, BlockCoords([torch.tensor([-0.2])], [(1.0, 1.0)]), -0.1 * g, g)
        >>> round(s["eta_dom"], 6), round(s["eta_bulk"], 6), round(s["grad_alignment"], 4)
        (0.1, 0.1, 0.8944)
    """
    zero = g.new_zeros(())
    sq_dom, cross_dom, dot_all = zero.clone(), zero.clone(), zero.clone()
    update_dom = zero.clone()
    for o, m, U, c, (a, b) in zip(
        basis.offsets, basis.sizes, basis.bases, coords.update, coords.scales
    ):
        gd = g[o : o + m] @ delta[o : o + m]
        if U is None or c is None:
            dot_all += gd
            continue
        gamma = (U.T @ g[o : o + m].to(U.dtype)).to(g.dtype)
        c = c.to(g.dtype)
        cg = c @ gamma
        sq_dom += gamma @ gamma
        update_dom += c @ c
        cross_dom += a * cg
        dot_all += a * cg + b * (gd - cg)
    values = torch.stack([sq_dom, g @ g, cross_dom, dot_all, delta @ delta, update_dom]).tolist()
    sqd, gg, dd, da, ddel, udom = values
    sqb = max(gg - sqd, 0.0)
    dot_dom, dot_bulk = -dd, -da + dd
    nan = math.nan
    return {
        "loss": nan,
        "grad_alignment": math.sqrt(sqd / gg) if gg > 0 else nan,
        "update_alignment": math.sqrt(udom / ddel) if ddel > 0 else nan,
        **effective_rates(dot_dom, dot_bulk, sqd, sqb),
    }
