"""Thick-restart Lanczos with full reorthogonalization."""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import check_int
from ..operators.base import LinearOperator
from . import _common
from .base import EigenResult, Eigensolver

__all__ = ["Lanczos"]


class Lanczos(Eigensolver):
    """Thick-restart Lanczos (Wu & Simon, 2000) with full reorthogonalization.

    Builds a Krylov basis ``V`` of at most ``ncv`` vectors, so that
    :math:`A V_m = V_m T_m + \\beta_m v_{m+1} e_m^\\top` with ``T_m = V_mᵀ A V_m``; the Ritz
    pairs of ``T_m`` approximate the extreme eigenpairs, and the residual of a Ritz pair
    ``(θ_i, V_m s_i)`` is exactly ``|β_m s_{m,i}|``, read without extra matvecs. At a restart
    the best ``keep`` Ritz vectors and the residual direction are kept (memory stays
    ``O(n · ncv)``), which is equivalent to implicit restarting with exact shifts.
    Convergence is checked after every step (one small ``eigh`` of ``T``), not only at
    restarts, so no product is spent after the top ``k`` meet the target.

    Args:
        ncv: Krylov basis size (default ``max(3k, 30)``, capped at ``n``). SciPy's
            :func:`~scipy.sparse.linalg.eigsh` uses ``max(2k + 1, 20)``; the larger basis
            costs ``n · k`` more numbers of memory and restarts less
            (``benchmarks/eigensolvers.py`` compares the two).
        tol, max_iter, which, raise_on_failure: see :class:`Eigensolver`; ``max_iter``
            counts restarts.

    .. note::
        Single-vector Lanczos sees one direction of each eigenspace in exact arithmetic, so
        a multiple eigenvalue may be returned fewer times than its multiplicity (rounding
        usually, not always, reveals the copies; ARPACK shares this limitation). For spectra
        with exactly repeated top eigenvalues use :class:`BlockLanczos` (block at least as
        wide as the multiplicity), :class:`LOBPCG` or :class:`WarmRefresh`.

        A warm start ``init`` of several columns is folded into one start vector (their
        sum), which carries every previous eigendirection; Lanczos cannot use a block
        directly. For warm refreshes during training prefer the block solvers
        (:class:`BlockLanczos` uses the block as its first block).

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, Lanczos
        >>> lam = torch.linspace(-1, 10, 200, dtype=torch.float64)
        >>> op = DenseOperator.from_spectrum(lam)
        >>> res = Lanczos(tol=1e-8).solve(op, 3)
        >>> [round(x, 6) for x in res.eigenvalues.tolist()], res.converged
        ([10.0, 9.944724, 9.889447], True)
    """

    def __init__(
        self,
        *,
        ncv: int | None = None,
        tol: float = 1e-3,
        max_iter: int = 200,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        super().__init__(tol=tol, max_iter=max_iter, which=which, raise_on_failure=raise_on_failure)
        if ncv is not None:
            check_int("ncv", ncv, low=2)
        self.ncv = ncv

    def _converged_early(self, T: Tensor, beta: Tensor, k: int) -> bool:
        """Whether the top ``k`` Ritz pairs of the current (partial) cycle already meet the
        target: the check costs one small ``eigh``, far less than a product, so it runs
        after every Lanczos step instead of only at restarts as ARPACK does."""
        if not bool(torch.isfinite(T).all()):
            return False
        theta, S = torch.linalg.eigh(T)
        idx = _common.order(theta, self.which)[:k]
        res = (beta * S[-1, idx]).abs()
        return bool((res <= _common.tolerance(theta[idx], self.tol)).all())

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        n = op.shape[0]
        m = min(n, self.ncv if self.ncv is not None else max(3 * k, 30))
        if m <= k:
            m = min(n, k + 1)
        eps = torch.finfo(op.dtype).eps
        V = torch.zeros(n, m + 1, dtype=op.dtype, device=op.device)
        T = torch.zeros(m, m, dtype=op.dtype, device=op.device)
        if init is not None:
            v0 = init.sum(dim=1)
            if float(v0.norm()) == 0:
                v0 = _common.random_block(n, 1, op, generator)[:, 0]
        else:
            v0 = _common.random_block(n, 1, op, generator)[:, 0]
        V[:, 0] = v0 / v0.norm()
        j0 = 0
        theta = S = None
        beta = torch.zeros((), dtype=op.dtype, device=op.device)
        iterations = 0
        scale = torch.zeros((), dtype=op.dtype, device=op.device)
        while True:
            iterations += 1
            for j in range(j0, m):
                w = op.matvec(V[:, j])
                Vj = V[:, : j + 1]
                h = Vj.T @ w
                w = w - Vj @ h
                h2 = Vj.T @ w  # second Gram-Schmidt pass: orthogonality to rounding
                w = w - Vj @ h2
                h = h + h2
                T[: j + 1, j] = h
                T[j, : j + 1] = h
                beta = w.norm()
                scale = torch.maximum(scale, h.abs().max())
                if float(beta) <= 1e2 * eps * float(scale.clamp_min(eps)) and j + 1 < m:
                    # invariant subspace found: continue with a fresh orthogonal direction
                    r = _common.random_block(n, 1, op, generator)[:, 0]
                    r = r - Vj @ (Vj.T @ r)
                    r = r - Vj @ (Vj.T @ r)
                    V[:, j + 1] = r / r.norm()
                    beta = torch.zeros_like(beta)
                    if j + 1 < m:
                        T[j + 1, j] = T[j, j + 1] = 0
                    continue
                V[:, j + 1] = w / beta.clamp_min(torch.finfo(op.dtype).tiny)
                if j + 1 < m:
                    T[j + 1, j] = T[j, j + 1] = beta
                if k <= j + 1 < m and self._converged_early(T[: j + 1, : j + 1], beta, k):
                    m = j + 1  # stop mid-cycle: every later product would be wasted
                    break
            if not bool(torch.isfinite(T[:m, :m]).all()):  # NaN/Inf products: report, do not raise
                theta = torch.full((m,), float("nan"), dtype=op.dtype, device=op.device)
                S = torch.eye(m, dtype=op.dtype, device=op.device)
                res = theta.clone()
                break
            theta, S = torch.linalg.eigh(T[:m, :m])
            idx = _common.order(theta, self.which)
            theta, S = theta[idx], S[:, idx]
            res = (beta * S[m - 1, :]).abs()
            if not torch.isfinite(theta).all():
                break
            target = _common.tolerance(theta[:k], self.tol)
            if m == n or bool((res[:k] <= target).all()) or iterations >= self.max_iter:
                break
            keep = min(m - 1, k + (m - k) // 2)
            Y = V[:, :m] @ S[:, :keep]
            V[:, :keep] = Y
            V[:, keep] = V[:, m]
            V[:, keep + 1 :] = 0
            T.zero_()
            T[:keep, :keep] = torch.diag(theta[:keep])
            coupling = beta * S[m - 1, :keep]
            T[keep, :keep] = coupling
            T[:keep, keep] = coupling
            # the new column keep is filled by the next Lanczos step (its row of h covers
            # the coupling to the kept Ritz vectors, computed afresh)
            j0 = keep
        X = V[:, :m] @ S[:, :k]
        return _common.result(
            "Lanczos",
            theta,
            X,
            res,
            k,
            self.tol,
            iterations,
            f"raise max_iter (now {self.max_iter}) or ncv (now {m}), or loosen tol",
        )
