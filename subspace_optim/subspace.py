"""Pure subspace math on orthonormal bases stored as columns ``(n, k)``.

.. math::

    P = U U^\\top, \\qquad P^\\perp = I - U U^\\top, \\qquad
    \\chi_k(v) = \\frac{\\lVert P v \\rVert}{\\lVert v \\rVert}

Every function accepts a vector ``(n,)`` or a block ``(n, b)`` where that makes sense and
never modifies its inputs. Each computes in its inputs' dtype with autocast disabled, so a
call inside a mixed-precision region returns what it would outside.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._isolation import full_precision

__all__ = [
    "alignment",
    "orthonormalize",
    "principal_angles",
    "project",
    "project_out",
    "subspace_distance",
]


@full_precision
def orthonormalize(V: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Orthonormal basis of the column span of ``V`` with the same shape ``(n, m)``.

    Two passes of Householder QR (stable to rounding). Columns that are numerically
    dependent are replaced by random directions orthogonal to the rest, so the output always
    has ``m`` orthonormal columns (``m <= n`` required). A column is dependent when its part
    outside the span of the columns before it has a norm of at most ``1000 · eps`` times the
    largest column norm of ``V`` (``eps`` of ``V``'s dtype).

    Args:
        V: the block ``(n, m)`` whose column span to orthonormalize; not modified.
        generator: randomness for the directions that replace dependent columns (default:
            the global generator, used only when a column is dependent).

    Returns:
        ``Q`` of shape ``(n, m)`` with ``Qᵀ Q = I``. Its columns at the positions of
        ``V``'s independent columns span what those columns span (whatever dependent
        columns come before them); the others are the random directions.

    Raises:
        ValueError: ``V`` is not a 2-D block, or has more columns than rows.

    Example:
        >>> import torch
        >>> from subspace_optim import orthonormalize
        >>> V = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
        >>> Q = orthonormalize(V)
        >>> torch.allclose(Q.T @ Q, torch.eye(2, dtype=torch.float64))
        True
    """
    if V.ndim != 2:
        raise ValueError(f"orthonormalize expects a block (n, m); got shape {tuple(V.shape)}")
    n, m = V.shape
    if m > n:
        raise ValueError(f"cannot orthonormalize {m} columns in dimension {n}")
    if m == 0:
        return V.clone()
    Q, R = torch.linalg.qr(V)
    Q, R2 = torch.linalg.qr(Q)
    diag = (R2 @ R).diagonal().abs()
    scale = V.norm(dim=0).max().clamp_min(torch.finfo(V.dtype).tiny)
    weak = diag <= 1e3 * torch.finfo(V.dtype).eps * scale
    if bool(weak.any()):
        # the QR above gave each dependent column an arbitrary direction and took it out of
        # the later columns: the independent columns are factored again on their own
        keep = ~weak
        Qk = torch.linalg.qr(torch.linalg.qr(V[:, keep]).Q).Q
        # drawn where the generator lives (a CPU generator may serve a CUDA block)
        device = V.device if generator is None else generator.device
        W = torch.randn(n, m, dtype=V.dtype, device=device, generator=generator).to(V.device)
        W[:, keep] = Qk
        for _ in range(2):
            W[:, weak] -= Qk @ (Qk.T @ W[:, weak])
            W[:, weak] = torch.linalg.qr(W[:, weak]).Q
        Q = W
    return Q


@full_precision
def project(v: Tensor, U: Tensor) -> Tensor:
    """``U Uᵀ v``: the component of ``v`` (``(n,)`` or ``(n, b)``) in ``span(U)``.

    Args:
        v: a vector ``(n,)`` or a block ``(n, b)``.
        U: an orthonormal basis ``(n, k)``.

    Returns:
        ``U Uᵀ v``, with the shape of ``v``.

    Example:
        >>> import torch
        >>> from subspace_optim import project
        >>> U = torch.eye(3)[:, :1]
        >>> project(torch.tensor([3.0, 4.0, 0.0]), U).tolist()
        [3.0, 0.0, 0.0]
    """
    return U @ (U.T @ v)


@full_precision
def project_out(v: Tensor, U: Tensor) -> Tensor:
    """``v − U Uᵀ v``: the component of ``v`` orthogonal to ``span(U)``.

    Args:
        v: a vector ``(n,)`` or a block ``(n, b)``.
        U: an orthonormal basis ``(n, k)``.

    Returns:
        ``v − U Uᵀ v``, with the shape of ``v``.

    Example:
        >>> import torch
        >>> from subspace_optim import project_out
        >>> project_out(torch.tensor([3.0, 4.0, 0.0]), torch.eye(3)[:, :1]).tolist()
        [0.0, 4.0, 0.0]
    """
    return v - U @ (U.T @ v)


@full_precision
def alignment(v: Tensor, U: Tensor) -> Tensor:
    """χ(v) = ‖U Uᵀ v‖ / ‖v‖ in ``[0, 1]``: how much of ``v`` lies in ``span(U)``.

    ``U`` must have orthonormal columns. Returns 0 for a zero vector. For a block, one
    value per column.

    Args:
        v: a vector ``(n,)`` or a block ``(n, b)``.
        U: an orthonormal basis ``(n, k)``.

    Returns:
        A 0-d tensor for a vector, or ``(b,)`` for a block: values in ``[0, 1]``.

    Example:
        >>> import torch
        >>> from subspace_optim import alignment
        >>> round(float(alignment(torch.tensor([3.0, 4.0]), torch.eye(2)[:, :1])), 6)
        0.6
    """
    num = (U.T @ v).norm(dim=0)
    den = v.norm(dim=0)
    return num / den.clamp_min(torch.finfo(v.dtype).tiny)  # a zero column: 0 / tiny = 0


@full_precision
def principal_angles(U: Tensor, W: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between ``span(U)`` and ``span(W)``.

    Both bases need orthonormal columns; the result has ``min(k_U, k_W)`` entries. Angles
    are computed from the singular values of ``Uᵀ W`` for small angles' accuracy via the
    sine formula (Björck & Golub), so an exactly equal subspace gives angles near 0.

    Args:
        U: an orthonormal basis ``(n, k_U)``.
        W: an orthonormal basis ``(n, k_W)``.

    Returns:
        ``(min(k_U, k_W),)`` angles in ``[0, π/2]``, ascending.

    Raises:
        ValueError: the bases have different numbers of rows.

    Example:
        >>> import torch, math
        >>> from subspace_optim import principal_angles
        >>> U = torch.eye(3, dtype=torch.float64)[:, :2]
        >>> W = torch.eye(3, dtype=torch.float64)[:, 1:]
        >>> [round(a, 6) for a in principal_angles(U, W).tolist()]
        [0.0, 1.570796]
    """
    if U.shape[0] != W.shape[0]:
        raise ValueError(f"bases live in different dimensions: {U.shape[0]} and {W.shape[0]}")
    if U.shape[1] > W.shape[1]:
        U, W = W, U
    # each formula is taken only where its argument is below 0.7072, so rounding above 1
    # (a NaN from arccos or arcsin) never reaches the result
    cos = torch.linalg.svdvals(U.T @ W)
    # sines from the part of U outside span(W): accurate for small angles
    R = U - W @ (W.T @ U)
    sin = torch.linalg.svdvals(R).flip(0)
    angles_cos = torch.arccos(cos)
    angles_sin = torch.arcsin(sin)
    return torch.where(cos > 0.7071, angles_sin, angles_cos)


@full_precision
def subspace_distance(U: Tensor, W: Tensor) -> Tensor:
    """``sin θ_max``: sine of the largest principal angle (0 for equal subspaces, 1 when some
    direction of the smaller subspace is orthogonal to the other).

    Args:
        U: an orthonormal basis ``(n, k_U)``.
        W: an orthonormal basis ``(n, k_W)``.

    Returns:
        A 0-d tensor in ``[0, 1]``.

    Raises:
        ValueError: the bases have different numbers of rows (from
            :func:`principal_angles`).

    Example:
        >>> import torch
        >>> from subspace_optim import subspace_distance
        >>> float(subspace_distance(torch.eye(3)[:, :2], torch.eye(3)[:, :2]))
        0.0
    """
    return torch.sin(principal_angles(U, W).max())
