"""Principal directions of a few long vectors, and one Frequent Directions shrink, as pure
functions of tensors.

Rows are the observations: ``rows`` is ``(m, n)`` with ``m`` small (a history window or a
sketch) and ``n`` the size of one parameter block. Nothing here forms an ``(n, n)`` matrix:
the work is the ``(m, m)`` Gram matrix ``R Rᵀ`` (``m²·n`` flops), an eigendecomposition of
it in float64, and one ``(n, m) × (m, k)`` product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._isolation import full_precision

__all__ = ["Directions", "frequent_directions_shrink", "gram_directions"]

#: an eigenvalue of the Gram matrix below this fraction of the largest one counts as zero
#: (the history then spans fewer than ``k`` directions, and fewer are returned)
RANK_TOL = 1e-10


@dataclass(frozen=True)
class Directions:
    """The top principal directions of a block of rows.

    Attributes:
        basis: ``(n, j)`` orthonormal columns, ``j <= k`` (fewer when the rows span fewer
            directions), in the dtype the directions were computed in (float32 at least).
        singular_values: ``(j,)`` descending: the rows' spread along each direction
            (``√λ`` of the, possibly centred, Gram matrix).
    """

    basis: Tensor
    singular_values: Tensor


def _centering(m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``J = I − 11ᵀ/m``, the ``(m, m)`` centring projector."""
    return torch.eye(m, dtype=dtype, device=device) - 1.0 / m


@full_precision
def gram_directions(rows: Tensor, k: int, *, center: bool) -> Directions | None:
    """The top-``k`` principal directions of the rows of ``rows`` (``(m, n)``), from the
    ``(m, m)`` Gram matrix: with ``C = J R`` (``J`` centres the rows when ``center``, else
    ``J = I``) and ``C Cᵀ = W Λ Wᵀ``, the directions are ``Cᵀ w_i / √λ_i``.

    .. math::

        U = R^\\top J W_k \\Lambda_k^{-1/2}, \\qquad U^\\top U = I_k

    The columns are re-orthonormalized (QR), so rounding in a low-precision history does
    not leak into the projection.

    Args:
        rows: ``(m, n)`` observations (any floating dtype; the product runs in float32 at
            least, the ``(m, m)`` eigenproblem in float64).
        k: how many directions, ``1 <= k <= m`` (``m − 1`` when centred: centring removes
            one dimension).
        center: subtract the mean row first (PCA) or not (uncentred second moment).

    Returns:
        The directions, or ``None`` when the rows hold NaN/Inf or span no direction at all
        (all equal, or zero).

    Example:
        >>> import torch
        >>> rows = torch.tensor([[3.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [0.0, 0.0, 0.1]])
        >>> d = gram_directions(rows, 1, center=False)
        >>> d.basis.abs().flatten().tolist(), round(float(d.singular_values[0]) ** 2, 4)
        ([1.0, 0.0, 0.0], 18.0)
    """
    work = rows if rows.dtype in (torch.float32, torch.float64) else rows.float()
    m = work.shape[0]
    gram = (work @ work.T).double()
    if center:
        J = _centering(m, torch.float64, work.device)
        gram = J @ gram @ J
    if not bool(torch.isfinite(gram).all()):
        return None
    lam, W = torch.linalg.eigh(gram)  # reads one triangle: rounding asymmetry is ignored
    lam, W = lam.flip(0), W.flip(1)  # descending
    top = float(lam[0]) if m else 0.0
    if not top > 0:
        return None
    keep = int((lam[:k] > RANK_TOL * top).sum())
    # centred, the eigenvectors of J G J with λ > 0 lie in the range of J: J W = W
    lam, W = lam[:keep], W[:, :keep]
    # Rᵀ J W = Rᵀ W, normalized by the QR instead of Λ^{-1/2} (a positive scale per column)
    U = (W.to(work.dtype).T @ work).T  # (k, m)·(m, n): far faster than (n, m)·(m, k) on a CPU
    Q, _ = torch.linalg.qr(U)
    return Directions(basis=Q, singular_values=lam.sqrt().to(work.dtype))


@full_precision
def frequent_directions_shrink(sketch: Tensor, *, decay: float = 1.0) -> Tensor:
    """One shrink of a Frequent Directions sketch (Liberty 2013; Ghashami et al. 2016): the
    ``(ℓ, n)`` sketch ``B`` becomes ``diag(√max(λ_i − λ_{ℓ/2}, 0)) V_iᵀ`` times ``√decay``,
    where ``B Bᵀ = W Λ Wᵀ`` and ``V_i = Bᵀ w_i / √λ_i``: the bottom half of the rows is
    zero afterwards, ready for new observations.

    The sketch's second moment ``BᵀB`` stays below the sum of the outer products of the
    rows fed to it and, for ``decay = 1``, within ``2‖A‖_F²/ℓ`` of it in spectral norm
    (the fast variant's guarantee). ``decay < 1`` also forgets the past geometrically, one
    factor per shrink.

    Args:
        sketch: ``(ℓ, n)``, ``ℓ >= 2``, every row filled.
        decay: in ``(0, 1]``.

    Returns:
        The new ``(ℓ, n)`` sketch, in the dtype of ``sketch``; rows ``ℓ − ⌊ℓ/2⌋`` onward
        are zero. A non-finite sketch comes back as all zeros (the observations are lost,
        never spread).

    Example:
        >>> import torch
        >>> B = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> [[round(x, 4) for x in row] for row in frequent_directions_shrink(B).abs().tolist()]
        [[1.7321, 0.0], [0.0, 0.0]]
    """
    work = sketch if sketch.dtype in (torch.float32, torch.float64) else sketch.float()
    ell = work.shape[0]
    gram = (work @ work.T).double()
    if not bool(torch.isfinite(gram).all()):
        return torch.zeros_like(sketch)
    lam, W = torch.linalg.eigh(gram)  # reads one triangle: rounding asymmetry is ignored
    lam, W = lam.flip(0).clamp_min(0), W.flip(1)
    # rows ⌊ℓ/2⌋ onward shrink to exactly 0 (λ_i <= λ_{ℓ/2}), and so does a λ_i = 0
    shrunk = (lam - lam[ell // 2]).clamp_min(0)
    scale = (shrunk / lam.clamp_min(1e-300)).sqrt()
    mix = (W * (scale * decay**0.5)).T.to(work.dtype)  # (ℓ, ℓ): row i is s_i·w_iᵀ
    return (mix @ work).to(sketch.dtype)
