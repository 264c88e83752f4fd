"""The automatic solver choice and the one-call spectrum function ``top_k_eigenpairs``."""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators.base import LinearOperator
from ..operators.dense import DenseOperator
from .base import EigenResult, Eigensolver
from .eigh import Eigh
from .lanczos import Lanczos
from .lobpcg import LOBPCG

__all__ = ["AutoEigensolver", "top_k_eigenpairs"]

#: a dense operator up to this size is cheaper to decompose than to iterate on
DENSE_LIMIT = 1500


class AutoEigensolver(Eigensolver):
    """Pick the cheapest solver for the situation at each call.

    * a :class:`~subspace_optim.DenseOperator` with at most 1500 rows: :class:`Eigh` (exact,
      no iteration);
    * a warm start (``init`` given) or an accelerator (CUDA), where one block product of
      ``b`` columns costs far less than ``b`` single products: :class:`LOBPCG`;
    * otherwise (cold, CPU): :class:`Lanczos`, the fewest matvecs.

    Args:
        tol, max_iter, which, raise_on_failure: passed to the chosen solver (``max_iter``
            only when given).

    Example:
        >>> import torch
        >>> from subspace_optim import AutoEigensolver, DenseOperator
        >>> op = DenseOperator.from_spectrum(torch.linspace(0, 1, 5000, dtype=torch.float64))
        >>> type(AutoEigensolver().choose(op, 3)).__name__
        'Lanczos'
    """

    def __init__(
        self,
        *,
        tol: float = 1e-3,
        max_iter: int | None = None,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        super().__init__(
            tol=tol, max_iter=max_iter or 1, which=which, raise_on_failure=raise_on_failure
        )
        self._max_iter_given = max_iter is not None

    def choose(self, op: LinearOperator, k: int, init: Tensor | None = None) -> Eigensolver:
        """The solver :meth:`solve` would use for ``(op, k, init)``.

        Args:
            op: the operator to solve.
            k: the number of eigenpairs wanted.
            init: a warm start ``(n, m)``, or ``None``.

        Returns:
            :class:`Eigh` for a small :class:`~subspace_optim.DenseOperator`,
            :class:`LOBPCG` with a warm start or on a GPU, else :class:`Lanczos`, each
            configured with this solver's ``tol``, ``which`` and ``max_iter``. (A ``k``
            too close to ``n`` for the chosen solver falls back to :class:`Eigh` in
            :meth:`solve`.)
        """
        kwargs: dict[str, object] = {"tol": self.tol, "which": self.which}
        if self._max_iter_given:
            kwargs["max_iter"] = self.max_iter
        if isinstance(op, DenseOperator) and op.shape[0] <= DENSE_LIMIT:
            return Eigh(which=self.which)
        if init is not None or op.device.type == "cuda":
            return LOBPCG(**kwargs)  # type: ignore[arg-type]
        return Lanczos(**kwargs)  # type: ignore[arg-type]

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        solver = self.choose(op, k, init)
        if k > op.shape[0] - solver.min_gap_to_n:
            solver = Eigh(which=self.which)
        return solver.solve(op, k, init=init, generator=generator)

    def __repr__(self) -> str:
        return f"AutoEigensolver(tol={self.tol}, which={self.which!r})"


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
    from . import resolve_eigensolver

    if isinstance(solver, Eigensolver):
        if tol is not None or which != "LA":
            raise ValueError(
                "tol and which configure a solver chosen by name; set them on the solver "
                "instance instead"
            )
        chosen = solver
    else:
        chosen = resolve_eigensolver(solver, tol=tol, which=which)
    try:
        return chosen.solve(op, k, init=init, generator=generator)
    finally:
        op.release_graph()  # a HessianOperator's cached gradient graph
