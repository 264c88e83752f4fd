"""`top_k_eigenpairs`: the largest eigenpairs of a symmetric operator in one call."""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators.base import LinearOperator
from .base import EigenResult, Eigensolver
from .registry import resolve_eigensolver

__all__ = ["top_k_eigenpairs"]


def top_k_eigenpairs(
    op: LinearOperator,
    k: int,
    *,
    solver: str | Eigensolver = "auto",
    init: Tensor | None = None,
    tol: float | None = None,
    which: str = "LA",
    generator: torch.Generator | None = None,
) -> EigenResult:
    """The ``k`` largest eigenpairs of a symmetric operator in one call (a sharpness monitor).

    Args:
        op: symmetric operator ``(n, n)``, e.g. a :class:`~subspace_optim.HessianOperator`.
        k: number of eigenpairs.
        solver: ``"auto"`` (:class:`AutoEigensolver`), another registered name
            (``"lanczos"``, ``"lobpcg"``, ``"power"``, ``"eigh"``, ``"warm"``, ...) or an
            :class:`Eigensolver` instance.
        init: a previous basis ``(n, m)`` to warm-start from.
        tol: relative residual target; ``None`` keeps the solver's own (``1e-3`` for the
            built-in ones). Only used with a solver *name*.
        which: ``"LA"`` (largest algebraic, default) or ``"LM"`` (largest magnitude); only
            used with a solver name.
        generator: randomness of the start vectors.

    Returns:
        :class:`EigenResult`: eigenvalues ``(k,)`` descending, eigenvectors ``(n, k)``,
        residuals, cost and a status. The operator's cached gradient graph (if any) is
        released when the solve is over.

    Raises:
        ValueError: ``tol`` or ``which`` given together with a solver instance (set them on
            the instance), an unknown solver name, or a ``k`` the solver cannot return.
        EigensolverError: the solver failed and was built with ``raise_on_failure=True``.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, top_k_eigenpairs
        >>> op = DenseOperator.from_spectrum(torch.tensor([3.0, -7.0, 1.0, 2.0], dtype=torch.float64))
        >>> top_k_eigenpairs(op, 2).eigenvalues.tolist()
        [3.0, 2.0]
        >>> top_k_eigenpairs(op, 1, which="LM").eigenvalues.tolist()
        [-7.0]
    """
    if isinstance(solver, Eigensolver):
        if tol is not None or which != "LA":
            raise ValueError(
                "tol and which configure a solver chosen by name; set them on the solver "
                "instance instead"
            )
        chosen = solver
    else:
        chosen = resolve_eigensolver(solver, tol=tol, which=which)
    with op.solve_scope():  # a curvature's cached gradient graph is freed when it is over
        return chosen.solve(op, k, init=init, generator=generator)
