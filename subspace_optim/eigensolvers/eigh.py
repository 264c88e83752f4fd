"""Exact dense eigendecomposition for small operators."""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators.base import LinearOperator
from ..operators.dense import DenseOperator
from . import _common
from .base import EigenResult, Eigensolver

__all__ = ["Eigh"]


class Eigh(Eigensolver):
    """Materialize the operator (``n`` matvecs, or none for a :class:`DenseOperator`) and
    call :func:`torch.linalg.eigh`.

    Exact up to rounding; for operators up to a few thousand rows (tests, tiny models,
    offline reference bases). ``init`` is ignored.

    Args:
        which: ``"LA"`` (largest algebraic, default) or ``"LM"`` (largest magnitude).
        max_size: the largest operator size :meth:`solve` accepts (a dense ``(n, n)``
            matrix is built).

    Raises:
        ValueError: ``which`` is not ``"LA"`` or ``"LM"`` (at construction); an operator
            larger than ``max_size`` (in :meth:`solve`).

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, Eigh
        >>> op = DenseOperator(torch.diag(torch.tensor([1.0, -5.0, 3.0], dtype=torch.float64)))
        >>> Eigh().solve(op, 2).eigenvalues.tolist()
        [3.0, 1.0]
        >>> Eigh(which="LM").solve(op, 2).eigenvalues.tolist()
        [-5.0, 3.0]
    """

    supports_warm_start = False
    matrix_free = False
    min_gap_to_n = 0

    def __init__(self, *, which: str = "LA", max_size: int = 20_000) -> None:
        super().__init__(tol=1e-8, max_iter=1, which=which)
        self.max_size = max_size

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        if op.shape[0] > self.max_size:
            raise ValueError(
                f"Eigh on an operator of size {op.shape[0]} > max_size={self.max_size}; use "
                "Lanczos or LOBPCG"
            )
        if isinstance(op, DenseOperator):
            A = op.A
        else:
            A = op.to_dense()
        A = (A + A.T) / 2
        theta, V = torch.linalg.eigh(A)
        idx = _common.order(theta, self.which)[:k]
        theta, V = theta[idx], V[:, idx]
        res = _common.residual_norms(V, A @ V, theta)
        tol = 1e4 * torch.finfo(A.dtype).eps  # eigh is backward stable: residuals ~ n·eps·|λ_1|
        return _common.result("Eigh", _common.Ritz(theta, V, res), k, tol, 1, "")
