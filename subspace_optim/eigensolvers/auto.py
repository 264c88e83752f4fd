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

__all__ = ["AutoEigensolver"]

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

    #: any ``k <= n``: a ``k`` too close to ``n`` for the chosen solver is given to Eigh
    min_gap_to_n = 0

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
