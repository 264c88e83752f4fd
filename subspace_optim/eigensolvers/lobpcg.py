"""Block LOBPCG with soft locking and an orthonormal search basis (matrix-free, torch-native)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import check_int
from ..operators.base import LinearOperator
from . import _common
from .base import EigenResult, Eigensolver

__all__ = ["LOBPCG", "LOBPCGState", "lobpcg_iterations", "pair_targets"]


@dataclass(frozen=True)
class LOBPCGState:
    """Where :func:`lobpcg_iterations` stopped.

    Attributes:
        theta: ``(b,)`` Ritz values, ordered by ``which``.
        X: ``(n, b)`` orthonormal Ritz vectors.
        AX: ``(n, b)``, ``A X`` (kept by linear combination, not recomputed).
        residual_norms: ``(b,)``, ``‖A x_i − θ_i x_i‖``.
        iterations: block iterations done (the Rayleigh–Ritz of the start block counts 0).
        converged: the first ``k`` residuals met the target.
        breakdown: it stopped unconverged because the search space could not grow (the
            residuals lie in the current basis, or the basis collapsed below ``b``).
    """

    theta: Tensor
    X: Tensor
    AX: Tensor
    residual_norms: Tensor
    iterations: int
    converged: bool
    breakdown: bool = False


def _orthonormal_columns(W: Tensor, drop: float) -> Tensor:
    """Orthonormal basis of ``span(W)`` keeping only numerically independent directions."""
    norms = W.norm(dim=0)
    keep = norms > drop * norms.max().clamp_min(torch.finfo(W.dtype).tiny)
    W = W[:, keep] / norms[keep]
    if W.shape[1] == 0:
        return W
    Q, R = torch.linalg.qr(W)
    keep = R.diagonal().abs() > drop
    return Q[:, keep]


def _gram_eigh(G: Tensor, M: Tensor, drop: float) -> tuple[Tensor, Tensor]:
    """Solve ``G c = θ M c`` for a Gram matrix ``M`` that may be rank deficient.

    Returns ``(θ, C)`` with ``Cᵀ M C = I`` over the numerically independent part of ``M``.
    """
    d, V = _common.safe_eigh((M + M.T) / 2)
    keep = d > drop * d.max()
    T = V[:, keep] / d[keep].sqrt()
    H = T.T @ G @ T
    theta, Y = _common.safe_eigh((H + H.T) / 2)
    return theta, T @ Y


def pair_targets(theta: Tensor, k: int, sin_tol: float, which: str = "LA") -> Tensor:
    """Residual targets ``(b,)`` that bound each wanted Ritz vector's angle by ``sin_tol``.

    For a Ritz pair ``(θ_i, x_i)`` with residual ``r_i`` and an operator with no eigenvalue
    of the unwanted part of the spectrum above ``μ``, the Davis–Kahan sin θ theorem gives

    .. math:: \\sin\\angle(x_i, \\mathcal{U}_i) \\le \\frac{\\|r_i\\|}{\\theta_i - \\mu},

    where :math:`\\mathcal{U}_i` is the eigenspace of the eigenvalues above ``μ``. The
    block's last Ritz value ``θ_b`` stands in for ``μ`` (with a warm start, the block holds
    the eigenvectors above it; the ``b − k`` guard columns keep the eigenvalues just below
    ``θ_k`` inside the block, so the gap is ``θ_i − θ_b``, not the tiny ``θ_k − θ_{k+1}`` of
    a clustered spectrum). The target for pair ``i`` is ``sin_tol · (θ_i − θ_b)``: the
    top pairs, far from the rest, may keep larger residuals than the ``k``-th. Entries
    beyond ``k`` are 0 (guards never set the verdict); with ``b == k`` (no guard) the
    targets are 0.

    Args:
        theta: the block's Ritz values ``(b,)``, in the order of ``which``.
        k: the number of wanted pairs (``k <= b``).
        sin_tol: the angle bound, as a sine.
        which: ``"LA"`` or ``"LM"`` (gaps in magnitude).

    Returns:
        The residual targets ``(b,)``, with the dtype and device of ``theta``.

    Example:
        >>> import torch
        >>> from subspace_optim.eigensolvers.lobpcg import pair_targets
        >>> pair_targets(torch.tensor([10.0, 6.0, 5.0, 2.0]), 2, 0.5).tolist()
        [4.0, 2.0, 0.0, 0.0]
    """
    key = theta if which == "LA" else theta.abs()
    gap = (key - key[-1]).clamp_min(0)
    out = sin_tol * gap
    out[k:] = 0
    return out


def lobpcg_iterations(
    op: LinearOperator,
    X: Tensor,
    k: int,
    *,
    tol: float,
    max_iter: int,
    which: str = "LA",
    expand_all: bool = True,
    sin_tol: float | None = None,
) -> LOBPCGState:
    """Run block LOBPCG from the orthonormal block ``X`` until the top ``k`` pairs converge.

    Each iteration forms the search basis ``S = [X, P, W]`` (Ritz vectors, previous
    directions, residuals of the still-active columns), applies the operator to ``W`` only
    (``A X`` and ``A P`` follow by linear combination) and takes the Rayleigh–Ritz pairs of
    ``A`` on ``span(S)``:

    .. math::

        S^\\top A S\\, c = \\theta\\, S^\\top S\\, c, \\qquad
        X \\leftarrow S C_{:, 1:b}, \\qquad
        P \\leftarrow S\\, \\operatorname{orth}_{S^\\top S}\\bigl((C_{:, 1:b})_{\\text{rows}\\,\\notin X}\\bigr)

    Args:
        op: symmetric operator ``(n, n)``.
        X: ``(n, b)`` start block with orthonormal columns, ``b >= k``.
        k: number of wanted pairs (the leading ``k`` by ``which``).
        tol: relative residual target, ``‖A x − θ x‖ <= tol · |θ_1|``.
        max_iter: cap on block iterations.
        which: ``"LA"`` or ``"LM"``.
        expand_all: expand the residuals of the ``b − k`` guard columns too (faster
            convergence per iteration, more matvecs per iteration).
        sin_tol: if given, the stopping rule is per pair and replaces ``tol``: pair
            ``i <= k`` has converged when its residual meets :func:`pair_targets` (its
            Davis–Kahan angle estimate is at most ``sin_tol``), so pairs well separated from
            the rest of the spectrum stop with larger residuals than the ``k``-th.

    Returns:
        A :class:`LOBPCGState` (``b`` pairs; the caller keeps the first ``k``).

    .. note::
        ``P`` is kept orthogonal to the new ``X`` in coefficient space and ``S`` is
        orthonormalized with the Gram matrix ``SᵀS`` (eigenvalue-based, dropping dependent
        directions), the robust basis selection of Hetmaniuk & Lehoucq (2006) and
        Duersch et al. (2018). Soft locking: converged columns stay in the Rayleigh–Ritz
        basis but contribute no new residual direction (no matvecs).
    """
    b = X.shape[1]
    eps = torch.finfo(X.dtype).eps
    drop = 1e3 * eps
    theta, X, AX = _common.rayleigh_ritz(X, op.matmat(X), which)
    P = AP = None
    iterations = 0
    while True:
        R = AX - X * theta
        res = R.norm(dim=0)
        if not bool(torch.isfinite(res).all()):
            return LOBPCGState(theta, X, AX, res, iterations, False)
        if sin_tol is None:
            target = _common.tolerance(theta[:k], tol)
        else:  # per-pair Davis–Kahan targets replace tol (never below rounding)
            target = torch.maximum(
                _common.tolerance(theta[:k], 0.0), pair_targets(theta, k, sin_tol, which)
            )
        active = res > target
        if not expand_all:
            active[k:] = False
        if not bool(active[:k].any()):
            return LOBPCGState(theta, X, AX, res, iterations, True)
        if iterations >= max_iter:
            return LOBPCGState(theta, X, AX, res, iterations, False)
        iterations += 1
        Q = X if P is None else torch.cat([X, P], dim=1)
        W = R[:, active]
        for _ in range(2):
            W = W - Q @ (Q.T @ W)
        W = _orthonormal_columns(W, drop)
        if W.shape[1] == 0:  # residuals inside the current basis: nothing new to add
            return LOBPCGState(theta, X, AX, res, iterations, False, breakdown=True)
        AW = op.matmat(W)
        S = torch.cat([Q, W], dim=1)
        AS = AX if AP is None else torch.cat([AX, AP], dim=1)
        AS = torch.cat([AS, AW], dim=1)
        G = S.T @ AS
        M = S.T @ S
        theta_all, C = _gram_eigh((G + G.T) / 2, M, drop)
        idx = _common.order(theta_all, which)[:b]
        if idx.shape[0] < b:  # the basis collapsed below b directions (n tiny): stop here
            return LOBPCGState(theta, X, AX, res, iterations, False, breakdown=True)
        Cx = C[:, idx]
        # new directions: the parts of the active Ritz vectors outside the old X, made
        # M-orthogonal to the new Ritz vectors in coefficient space
        Cp = Cx[:, active].clone()
        Cp[:b] = 0
        MCx = M @ Cx
        Cp = Cp - Cx @ (MCx.T @ Cp)
        Cp = Cp - Cx @ (MCx.T @ Cp)
        d, V = _common.safe_eigh(Cp.T @ M @ Cp)
        keep = d > drop * d.max().clamp_min(torch.finfo(d.dtype).tiny)
        Cp = Cp @ (V[:, keep] / d[keep].sqrt()) if bool(keep.any()) else Cp[:, :0]
        theta = theta_all[idx]
        X, AX = S @ Cx, AS @ Cx
        if Cp.shape[1]:
            P, AP = S @ Cp, AS @ Cp
        else:
            P = AP = None


class LOBPCG(Eigensolver):
    """Locally optimal block preconditioned conjugate gradient (Knyazev, 2001), matrix-free.

    Iterates a block of ``b`` vectors; each iteration spends one block product on the
    residuals of the columns that have not converged, and the Rayleigh–Ritz step on
    ``[X, P, W]`` finds the best block in a three-term recurrence, so convergence behaves
    like block conjugate gradients on the Rayleigh quotient. Eigenvalues of either sign are
    handled (the Ritz pairs are ordered by ``which``); no positive definiteness is assumed.

    Args:
        block_size: block width ``b >= k`` (default ``k + max(3, k // 2)``, capped at
            ``n − 1``). Guard columns beyond ``k`` speed up the convergence of the ``k``-th
            pair when the spectrum is clustered around it.
        expand_all: also iterate the residuals of the guard columns (default ``True``).
        tol, max_iter, which, raise_on_failure: see :class:`Eigensolver`.

    .. note::
        Unlike :func:`torch.lobpcg`, which needs a dense or sparse matrix, only products with
        blocks are required, the search basis is kept orthonormal (robust in float32), and
        converged columns are soft-locked (they stay in the Rayleigh–Ritz basis but cost no
        more products). There is no preconditioner: the Hessian offers none cheaply.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, LOBPCG
        >>> lam = torch.linspace(-3, 10, 300, dtype=torch.float64)
        >>> op = DenseOperator.from_spectrum(lam)
        >>> res = LOBPCG(tol=1e-8).solve(op, 3)
        >>> [round(x, 6) for x in res.eigenvalues.tolist()], res.converged
        ([10.0, 9.956522, 9.913043], True)
    """

    def __init__(
        self,
        *,
        block_size: int | None = None,
        expand_all: bool = True,
        tol: float = 1e-3,
        max_iter: int = 500,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        super().__init__(tol=tol, max_iter=max_iter, which=which, raise_on_failure=raise_on_failure)
        if block_size is not None:
            check_int("block_size", block_size, low=1)
        self.block_size = block_size
        self.expand_all = bool(expand_all)

    def width(self, n: int, k: int) -> int:
        """Block width for ``k`` wanted pairs on an operator of size ``n``.

        Args:
            n: the operator's size.
            k: the number of wanted pairs.

        Returns:
            ``block_size`` if set (at most ``n − 1``), else ``k`` plus ``max(3, k // 2)``
            guard columns, at most ``n − 1`` and at least ``k``.

        Raises:
            ValueError: a ``block_size`` smaller than ``k``.
        """
        if self.block_size is not None:
            if self.block_size < k:
                raise ValueError(f"block_size={self.block_size} must be >= k={k}")
            return min(n - 1, self.block_size)
        return max(k, min(n - 1, k + max(3, k // 2)))

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        n = op.shape[0]
        b = self.width(n, k)
        if init is not None and init.shape[1] > b:
            b = min(n - 1, init.shape[1])
        X = _common.start_block(op, b, init, generator)
        state = lobpcg_iterations(
            op,
            X,
            k,
            tol=self.tol,
            max_iter=self.max_iter,
            which=self.which,
            expand_all=self.expand_all,
        )
        return _common.result(
            "LOBPCG",
            _common.Ritz(state.theta, state.X, state.residual_norms),
            k,
            self.tol,
            state.iterations,
            f"raise max_iter (now {self.max_iter}) or block_size (now {b}), or loosen tol",
            breakdown=state.breakdown,
        )

    def __repr__(self) -> str:
        return (
            f"LOBPCG(block_size={self.block_size}, tol={self.tol}, max_iter={self.max_iter}, "
            f"which={self.which!r})"
        )
