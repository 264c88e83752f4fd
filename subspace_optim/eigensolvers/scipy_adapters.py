"""Reference adapters: :func:`scipy.sparse.linalg.eigsh` and :func:`scipy.sparse.linalg.lobpcg`
behind the :class:`Eigensolver` interface (scipy is an optional dependency)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._utils import check_int
from ..operators.base import LinearOperator
from ..subspace import orthonormalize
from . import _common
from .base import EigenResult, Eigensolver, EigensolverError

__all__ = ["ScipyEigsh", "ScipyLOBPCG"]


def _scipy_linalg() -> Any:
    try:
        import scipy.sparse.linalg as spla
    except ImportError as exc:  # pragma: no cover - scipy is installed in the test env
        raise ImportError(
            "the scipy adapters need scipy: pip install 'subspace-optim[scipy]'"
        ) from exc
    return spla


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _as_scipy(op: LinearOperator) -> Any:
    """``op`` as a :class:`scipy.sparse.linalg.LinearOperator` (host round trip per product)."""
    spla = _scipy_linalg()
    if op.dtype not in _NUMPY:
        raise TypeError(f"scipy adapters support float32 and float64 operators; got {op.dtype}")
    dtype = _NUMPY[op.dtype]

    def matmat(V: np.ndarray) -> np.ndarray:
        V = np.asarray(V, dtype=dtype)
        block = V.reshape(V.shape[0], -1)
        T = torch.from_numpy(np.ascontiguousarray(block)).to(op.device)
        out = op.matmat(T).detach().cpu().numpy()
        return out.reshape(V.shape)

    return spla.LinearOperator(
        op.shape, matvec=matmat, matmat=matmat, rmatvec=matmat, rmatmat=matmat, dtype=dtype
    )


def _residuals(op: LinearOperator, X: Tensor, theta: Tensor) -> Tensor:
    return _common.residual_norms(X, op.matmat(X), theta)


def _completed(
    op: LinearOperator, found: tuple[Tensor, Tensor], k: int, which: str, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``found`` pairs (eigenvalues ``(m,)``, orthonormal vectors ``(n, m)``, ``m < k``)
    completed to ``k`` with the Ritz pairs of a random block orthogonal to them: finite
    estimates whose residuals say how poor they are (``k - m`` more matvecs)."""
    theta, X = found
    R = _common.random_block(op.shape[0], k - theta.shape[0], op, generator)
    R = orthonormalize(R - X @ (X.T @ R), generator=generator)
    theta_r, R, _ = _common.rayleigh_ritz(R, op.matmat(R), which)
    return torch.cat([theta, theta_r]), torch.cat([X, R], dim=1)


class ScipyEigsh(Eigensolver):
    """ARPACK's implicitly restarted Lanczos (:func:`scipy.sparse.linalg.eigsh`) on our operator.

    The reference the paper used. ``tol`` is passed to ARPACK, whose criterion
    ``‖r_i‖ <= tol · |θ_i|`` implies ours (``tol · |θ_1|``). The residuals are then computed
    explicitly, which costs ``k`` more matvecs (counted in ``num_matvecs``).

    Args:
        ncv: Lanczos vectors (scipy's default ``max(2k + 1, 20)``).
        tol, max_iter, which, raise_on_failure: see :class:`Eigensolver`; ``max_iter`` is
            ARPACK's ``maxiter`` (restarts).

    .. note::
        Each product crosses to the host and back (ARPACK runs in NumPy), and a warm start
        ``init`` is folded into one vector (ARPACK accepts one start vector). When ARPACK
        stops at ``max_iter`` with fewer than ``k`` converged pairs, the missing ones are
        the Ritz pairs of a random block orthogonal to those (``k - m`` more matvecs): the
        result is then a finite, unconverged estimate (``MAX_ITERATIONS``), as with the
        other solvers.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator
        >>> from subspace_optim.eigensolvers import ScipyEigsh
        >>> op = DenseOperator.from_spectrum(torch.linspace(-2, 4, 100, dtype=torch.float64))
        >>> [round(x, 6) for x in ScipyEigsh(tol=1e-10).solve(op, 2).eigenvalues.tolist()]
        [4.0, 3.939394]
    """

    def __init__(
        self,
        *,
        ncv: int | None = None,
        tol: float = 1e-3,
        max_iter: int = 1000,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        _scipy_linalg()
        super().__init__(tol=tol, max_iter=max_iter, which=which, raise_on_failure=raise_on_failure)
        if ncv is not None:
            check_int("ncv", ncv, low=2)
        self.ncv = ncv

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        spla = _scipy_linalg()
        n = op.shape[0]
        v0 = init.sum(dim=1) if init is not None else None
        if v0 is None or float(v0.norm()) == 0:
            v0 = _common.random_block(n, 1, op, generator)[:, 0]
        ncv = self.ncv if self.ncv is not None else max(2 * k + 1, 20)
        ncv = min(n, max(ncv, k + 1))
        status = "converged"
        try:
            vals, vecs = spla.eigsh(
                _as_scipy(op),
                k=k,
                which=self.which,
                v0=v0.detach().cpu().numpy(),
                ncv=ncv,
                tol=self.tol,
                maxiter=self.max_iter,
            )
        except spla.ArpackNoConvergence as exc:
            vals, vecs = exc.eigenvalues, exc.eigenvectors
            status = "not converged"
        except spla.ArpackError as exc:  # e.g. -9 on the zero operator: the Krylov space is {0}
            raise EigensolverError(f"ScipyEigsh: ARPACK stopped ({exc})") from exc
        theta = torch.as_tensor(vals.copy(), dtype=op.dtype, device=op.device)
        X = torch.as_tensor(vecs.copy(), dtype=op.dtype, device=op.device)
        if theta.shape[0] < k:  # ARPACK returned only the converged pairs
            theta, X = _completed(op, (theta, X), k, self.which, generator)
        idx = _common.order(theta, self.which)
        theta, X = theta[idx], X[:, idx]
        res = _residuals(op, X, theta)
        return _common.result(
            f"ScipyEigsh({status})",
            _common.Ritz(theta, X, res),
            k,
            self.tol,
            self.max_iter,
            f"raise max_iter (now {self.max_iter}) or ncv (now {ncv})",
        )


class ScipyLOBPCG(Eigensolver):
    """:func:`scipy.sparse.linalg.lobpcg` (largest algebraic) on our operator.

    scipy's ``tol`` is an absolute residual norm; it is set to ``tol · |θ_1|`` with ``θ_1``
    from the Rayleigh–Ritz of the start block (``θ_1 <= λ_1``, so the criterion is at least
    as strict as ours; it costs ``b`` matvecs). Residuals are then recomputed explicitly
    (``k`` more matvecs).

    Args:
        block_size: columns of the block (default ``k + max(3, k // 2)``).
        tol, max_iter, raise_on_failure: see :class:`Eigensolver`; only ``which="LA"``.

    Raises:
        ImportError: SciPy is not installed (``pip install 'subspace-optim[scipy]'``).
        ValueError: ``which`` other than ``"LA"``, or a count or tolerance out of range.

    .. note::
        Each product crosses to the host and back; scipy's LOBPCG reports convergence
        problems as warnings, which this adapter turns into ``converged=False``.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator
        >>> from subspace_optim.eigensolvers import ScipyLOBPCG
        >>> op = DenseOperator.from_spectrum(torch.linspace(-2, 4, 100, dtype=torch.float64))
        >>> [round(x, 4) for x in ScipyLOBPCG(tol=1e-8, max_iter=500).solve(op, 2).eigenvalues.tolist()]
        [4.0, 3.9394]
    """

    def __init__(
        self,
        *,
        block_size: int | None = None,
        tol: float = 1e-3,
        max_iter: int = 500,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        _scipy_linalg()
        if which != "LA":
            raise ValueError(
                "scipy's lobpcg finds the largest algebraic eigenvalues only; use which='LA'"
            )
        super().__init__(tol=tol, max_iter=max_iter, which=which, raise_on_failure=raise_on_failure)
        if block_size is not None:
            check_int("block_size", block_size, low=1)
        self.block_size = block_size

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        import warnings

        spla = _scipy_linalg()
        n = op.shape[0]
        b = self.block_size if self.block_size is not None else k + max(3, k // 2)
        if b < k:
            raise ValueError(f"block_size={b} must be >= k={k}")
        b = min(b, max(k, n // 5))  # scipy's lobpcg refuses blocks wider than n / 5
        X0 = _common.start_block(op, b, init, generator)
        AX0 = op.matmat(X0)
        theta0, _, _ = _common.rayleigh_ritz(X0, AX0, "LA")
        abs_tol = self.tol * float(theta0.abs().max())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vals, vecs = spla.lobpcg(
                _as_scipy(op),
                X0.detach().cpu().numpy(),
                tol=abs_tol,
                maxiter=self.max_iter,
                largest=True,
            )
        theta = torch.as_tensor(vals.copy(), dtype=op.dtype, device=op.device)
        X = torch.as_tensor(vecs.copy(), dtype=op.dtype, device=op.device)
        idx = _common.order(theta, "LA")[:k]
        theta, X = theta[idx], X[:, idx]
        res = _residuals(op, X, theta)
        note = "; scipy warned: " + str(caught[-1].message)[:120] if caught else ""
        return _common.result(
            "ScipyLOBPCG" + note,
            _common.Ritz(theta, X, res),
            k,
            self.tol,
            self.max_iter,
            f"raise max_iter (now {self.max_iter}) or block_size (now {b})",
        )
