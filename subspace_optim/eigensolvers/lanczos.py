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
            (``python -m benchmarks.eigensolvers`` compares the two).
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

    def _expand(
        self,
        op: LinearOperator,
        V: Tensor,
        T: Tensor,
        j0: int,
        m: int,
        k: int,
        generator: torch.Generator,
        scale: Tensor,
    ) -> tuple[int, Tensor, Tensor]:
        """Lanczos steps ``j0, ..., m − 1``: fill ``V[:, j0 + 1 : m + 1]`` and ``T`` in place.

        Returns:
            ``(m, β, scale)``: the cycle's length (shorter when the top ``k`` Ritz pairs
            converged mid-cycle), the last off-diagonal ``β`` and the largest ``|T|`` entry
            seen, the scale of an invariant subspace's test.
        """
        n = op.shape[0]
        eps = torch.finfo(op.dtype).eps
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
                return j + 1, beta, scale  # stop mid-cycle: later products would be wasted
        return m, beta, scale

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        n = op.shape[0]
        m = min(n, max(k + 1, self.ncv if self.ncv is not None else max(3 * k, 30)))
        V = torch.zeros(n, m + 1, dtype=op.dtype, device=op.device)
        T = torch.zeros(m, m, dtype=op.dtype, device=op.device)
        v0 = _start_vector(op, init, generator)
        V[:, 0] = v0 / v0.norm()
        j0 = 0
        theta = S = None
        iterations = 0
        scale = torch.zeros((), dtype=op.dtype, device=op.device)
        while True:
            iterations += 1
            m, beta, scale = self._expand(op, V, T, j0, m, k, generator, scale)
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
            j0 = min(m - 1, k + (m - k) // 2)
            _thick_restart(V, T, theta, S, beta, m, j0)
        X = V[:, :m] @ S[:, :k]
        return _common.result(
            "Lanczos",
            _common.Ritz(theta, X, res),
            k,
            self.tol,
            iterations,
            f"raise max_iter (now {self.max_iter}) or ncv (now {m}), or loosen tol",
        )


def _start_vector(op: LinearOperator, init: Tensor | None, generator: torch.Generator) -> Tensor:
    """The sum of the warm start's columns, or a random vector (no start, or a zero sum)."""
    if init is not None:
        v0 = init.sum(dim=1)
        if float(v0.norm()) != 0:
            return v0
    return _common.random_block(op.shape[0], 1, op, generator)[:, 0]


def _thick_restart(
    V: Tensor, T: Tensor, theta: Tensor, S: Tensor, beta: Tensor, m: int, keep: int
) -> None:
    """Restart in place from the best ``keep`` Ritz vectors and the last Lanczos vector."""
    Y = V[:, :m] @ S[:, :keep]
    V[:, :keep] = Y
    V[:, keep] = V[:, m]
    V[:, keep + 1 :] = 0
    T.zero_()
    T[:keep, :keep] = torch.diag(theta[:keep])
    coupling = beta * S[m - 1, :keep]
    T[keep, :keep] = coupling
    T[:keep, keep] = coupling
    # the new column keep is filled by the next Lanczos step (its row of h covers the
    # coupling to the kept Ritz vectors, computed afresh)
