"""The eigensolver interface: configured objects with one verb, returning a typed result."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from .._isolation import isolated
from .._utils import check_int, check_positive_float, choice
from ..operators.base import LinearOperator

__all__ = ["EigenResult", "Eigensolver", "EigensolverError", "SolveStatus"]


class SolveStatus(enum.Enum):
    """How a solve ended: one of a fixed set of outcomes, each with what to change.

    ``CONVERGED`` is the only success; every other member comes with
    ``EigenResult.converged == False`` and the best estimate found.

    Example:
        >>> from subspace_optim import SolveStatus
        >>> SolveStatus.MAX_ITERATIONS.message
        'stopped at max_iter before every residual met tol: raise max_iter (or the basis width) or loosen tol'
        >>> SolveStatus.CONVERGED.ok, SolveStatus.NON_FINITE.ok
        (True, False)
    """

    #: every residual met the tolerance
    CONVERGED = "converged"
    #: the iteration cap was reached first
    MAX_ITERATIONS = "max_iterations"
    #: the algorithm could not extend its basis (no new direction) before converging
    BREAKDOWN = "breakdown"
    #: the operator produced NaN or Inf
    NON_FINITE = "non_finite"

    @property
    def ok(self) -> bool:
        """Whether the solve succeeded (``CONVERGED``)."""
        return self is SolveStatus.CONVERGED

    @property
    def message(self) -> str:
        """What happened and what to change, for any solver."""
        return _MESSAGES[self]


_MESSAGES = {
    SolveStatus.CONVERGED: "every residual met tol",
    SolveStatus.MAX_ITERATIONS: (
        "stopped at max_iter before every residual met tol: raise max_iter (or the basis "
        "width) or loosen tol"
    ),
    SolveStatus.BREAKDOWN: (
        "the search space stopped growing before every residual met tol (the operator may be "
        "of low rank or the block wider than its range): lower k or the block width, or "
        "start from a different init"
    ),
    SolveStatus.NON_FINITE: (
        "the operator produced non-finite values; check the model and data for NaN/Inf "
        "(the loss may have diverged)"
    ),
}


class EigensolverError(RuntimeError):
    """Raised by a solver configured with ``raise_on_failure=True`` that did not converge.

    Args:
        message: what happened and what to change (the failed result's ``message``).
        outcome: the :class:`SolveStatus` of the failed solve, or ``None``.

    Attributes:
        outcome: the :class:`SolveStatus` of the failed solve (``None`` if raised by hand).

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, EigensolverError, PowerIteration
        >>> op = DenseOperator.from_spectrum(torch.linspace(1, 2, 20, dtype=torch.float64))
        >>> solver = PowerIteration(tol=1e-10, max_iter=2, raise_on_failure=True)
        >>> try:
        ...     solver.solve(op, 2)
        ... except EigensolverError as err:
        ...     print(str(err).partition(" (")[0], err.outcome)
        PowerIteration: not converged after 2 iterations SolveStatus.MAX_ITERATIONS
        >>> PowerIteration(tol=1e-10, max_iter=2).solve(op, 2).converged  # default: no raise
        False
    """

    def __init__(self, message: str, outcome: SolveStatus | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class EigenResult:
    """Top eigenpairs of a symmetric operator, and how the solve that found them ended.

    Attributes:
        eigenvalues: ``(k,)``, descending (largest algebraic first, or largest magnitude
            first for ``which="LM"``).
        eigenvectors: ``(n, k)``, orthonormal columns; column ``i`` pairs with
            ``eigenvalues[i]``.
        residual_norms: ``(k,)``, ``‖A v_i − λ_i v_i‖``.
        num_matvecs: operator applications spent (a block of ``b`` counts ``b``).
        num_iterations: outer iterations of the algorithm.
        outcome: how the solve ended, a :class:`SolveStatus`; :attr:`converged` is read
            from it. Eigenpairs holding NaN/Inf make it ``NON_FINITE`` whatever the solver
            passed, so the outcome is the one truth the fault policy reads.
        message: what happened, for people: the solver, the outcome and, when not
            converged, what to change. Left empty, it is ``outcome.message``.

    Raises:
        TypeError: ``outcome`` is not a :class:`SolveStatus`.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, Lanczos, SolveStatus
        >>> op = DenseOperator.from_spectrum(torch.linspace(-2, 6, 100, dtype=torch.float64))
        >>> res = Lanczos(tol=1e-6).solve(op, 2)
        >>> res.k, tuple(res.eigenvectors.shape), res.converged, res.outcome
        (2, (100, 2), True, <SolveStatus.CONVERGED: 'converged'>)
        >>> bool((res.relative_residuals() <= 1e-6).all()), res.num_matvecs > 0
        (True, True)
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residual_norms: Tensor
    num_matvecs: int
    num_iterations: int
    outcome: SolveStatus
    message: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.outcome, SolveStatus):
            raise TypeError(
                f"outcome must be a SolveStatus (such as SolveStatus.CONVERGED); got "
                f"{self.outcome!r}"
            )
        finite = bool(torch.isfinite(self.eigenvalues).all()) and bool(
            torch.isfinite(self.eigenvectors).all()
        )
        if not finite and self.outcome is not SolveStatus.NON_FINITE:
            # the outcome is the one truth: eigenpairs holding NaN/Inf are NON_FINITE,
            # whatever a (third-party) solver said
            object.__setattr__(self, "outcome", SolveStatus.NON_FINITE)
            object.__setattr__(self, "message", "")
        if not self.message:
            object.__setattr__(self, "message", self.outcome.message)

    @property
    def converged(self) -> bool:
        """Whether every residual met the tolerance (``outcome is SolveStatus.CONVERGED``)."""
        return self.outcome.ok

    @property
    def k(self) -> int:
        return int(self.eigenvalues.shape[0])

    def relative_residuals(self) -> Tensor:
        """``‖A v_i − λ_i v_i‖ / |λ_1|``, the quantity ``tol`` bounds.

        Returns:
            ``(k,)``, the residual norms divided by the largest eigenvalue magnitude
            (clamped away from 0).
        """
        scale = self.eigenvalues.abs().max().clamp_min(torch.finfo(self.eigenvalues.dtype).tiny)
        return self.residual_norms / scale


class Eigensolver(ABC):
    """Base class of all eigensolvers.

    Hyperparameters are set and validated in the constructor; :meth:`solve` is the one
    verb. Subclasses implement :meth:`_solve`.

    Args:
        tol: relative residual target, ``‖A v − λ v‖ <= tol · |λ_1|`` for each pair.
        max_iter: cap on outer iterations.
        which: ``"LA"`` (largest algebraic, default: Hessians are indefinite and the
            dominant subspace is the top of the spectrum) or ``"LM"`` (largest magnitude).
        raise_on_failure: raise :class:`EigensolverError` instead of returning the best
            estimate (``converged`` ``False``).

    Example:
        A solver with one Rayleigh–Ritz step on a random block (a sketch, not a good
        solver): the base class validates ``k``, counts the matvecs and builds nothing
        else.

        >>> import torch
        >>> from subspace_optim import DenseOperator, EigenResult, Eigensolver, SolveStatus
        >>> class OneShot(Eigensolver):
        ...     def _solve(self, op, k, init, generator):
        ...         X = torch.linalg.qr(torch.randn(op.shape[0], k, dtype=op.dtype,
        ...                                         generator=generator))[0]
        ...         AX = op.matmat(X)
        ...         theta, S = torch.linalg.eigh(X.T @ AX)
        ...         theta, S = theta.flip(0), S.flip(1)
        ...         X, AX = X @ S, AX @ S
        ...         res = (AX - X * theta).norm(dim=0)
        ...         return EigenResult(theta, X, res, 0, 1, SolveStatus.MAX_ITERATIONS,
        ...                            "OneShot: one step")
        >>> op = DenseOperator(torch.eye(4, dtype=torch.float64))
        >>> result = OneShot().solve(op, 2)
        >>> [round(v, 12) for v in result.eigenvalues.tolist()], result.num_matvecs
        ([1.0, 1.0], 2)
    """

    #: capability flags, read by the contract tests and by ``solver="auto"``
    supports_warm_start: bool = True
    matrix_free: bool = True
    #: smallest ``n - k`` the algorithm needs
    min_gap_to_n: int = 1
    #: the block width a solver is configured with (``None``: chosen per solve, or no
    #: block); solvers with a ``block_size`` argument set it, and :meth:`check_k` refuses
    #: one narrower than ``k``
    block_size: int | None = None

    def __init__(
        self,
        *,
        tol: float = 1e-3,
        max_iter: int = 100,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        self.tol = check_positive_float("tol", tol)
        self.max_iter = check_int("max_iter", max_iter, low=1)
        self.which = choice("which", which, ("LA", "LM"))
        self.raise_on_failure = bool(raise_on_failure)

    def solve(
        self,
        op: LinearOperator,
        k: int,
        *,
        init: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> EigenResult:
        """Compute the top-``k`` eigenpairs of ``op``.

        Args:
            op: symmetric operator of shape ``(n, n)``.
            k: number of eigenpairs, ``1 <= k <= n - min_gap_to_n``.
            init: warm start, shape ``(n, m)`` (a previous basis; ``m`` may differ from
                ``k``), or ``None`` for a random start drawn from ``generator``.
            generator: source of randomness for start vectors; ``None`` uses a fresh
                generator seeded with 0, so results never depend on global RNG state.

        Returns:
            The top-``k`` eigenpairs (eigenvalues ``(k,)`` descending, eigenvectors
            ``(n, k)``) with their residuals, cost and outcome; ``num_matvecs`` is what
            ``op`` counted during the solve. A solve that stops short of ``tol`` returns
            its best estimate and an outcome other than ``CONVERGED``.

        Raises:
            TypeError: ``op`` is not a :class:`~subspace_optim.LinearOperator`, or ``k``
                is not an int.
            ValueError: this solver cannot compute ``k`` eigenpairs of ``op`` (see
                :meth:`check_k`), or ``init`` is not of shape ``(n,)`` or ``(n, m)``.
            EigensolverError: the solve did not converge and the solver was built with
                ``raise_on_failure=True``.

        The solve runs with autocast disabled, in ``op.dtype``, and leaves the global
        random state, grad mode and deterministic-algorithms flags as it found them
        (``subspace_optim._isolation.isolated``): calling it inside a mixed-precision
        region or between two draws of a training loop changes neither.
        """
        if not isinstance(op, LinearOperator):
            raise TypeError(
                f"op must be a subspace_optim LinearOperator; got {type(op).__name__}. Wrap a "
                "dense matrix in DenseOperator."
            )
        n = op.shape[0]
        self.check_k(n, k)
        if init is not None:
            if init.ndim == 1:
                init = init.unsqueeze(1)
            if init.ndim != 2 or init.shape[0] != n:
                raise ValueError(f"init must have shape ({n}, m); got {tuple(init.shape)}")
            init = init.to(device=op.device, dtype=op.dtype)
            if not torch.isfinite(init).all():
                init = None  # a corrupted warm start is worthless: start cold
        if generator is None:
            generator = torch.Generator(device=op.device).manual_seed(0)
        start = op.num_matvecs
        with isolated(op.device):  # a caller's autocast, RNG draws and flags stay theirs
            result = self._solve(op, k, init, generator)
        spent = op.num_matvecs - start
        if result.num_matvecs != spent:
            result = replace(result, num_matvecs=spent)
        if self.raise_on_failure and not result.converged:
            raise EigensolverError(result.message, result.outcome)
        return result

    def check_k(self, n: int, k: int) -> None:
        """Raise a clear error if this solver cannot compute ``k`` eigenpairs of an ``(n, n)``
        operator: ``k < 1``, ``k > n - min_gap_to_n``, or a ``block_size`` narrower than ``k``.

        :meth:`solve` calls it, and so does
        :class:`~subspace_optim.SubspaceProjectedOptimizer` at construction, so a bad
        configuration fails before training starts rather than at the first refresh.

        Args:
            n: the operator's size.
            k: the number of eigenpairs asked for.

        Raises:
            TypeError: ``k`` is not an int.
            ValueError: ``k < 1``, ``k > n - min_gap_to_n``, or ``block_size < k``.

        Example:
            >>> from subspace_optim import PowerIteration
            >>> PowerIteration(block_size=2).check_k(100, 3)
            Traceback (most recent call last):
            ...
            ValueError: block_size=2 of PowerIteration is narrower than k=3; set block_size >= 3 or leave it None for the default width
        """
        check_int("k", k, low=1)
        if k > n - self.min_gap_to_n:
            raise ValueError(
                f"k={k} is too large for {type(self).__name__} on an operator of size {n} "
                f"(at most {n - self.min_gap_to_n}); lower k or use Eigh for tiny operators"
            )
        block = self.block_size
        if isinstance(block, int) and block < k:
            raise ValueError(
                f"block_size={block} of {type(self).__name__} is narrower than k={k}; set "
                f"block_size >= {k} or leave it None for the default width"
            )

    def state_dict(self) -> dict[str, Any]:
        """What this solver carries from one :meth:`solve` to the next, for checkpoints.

        ``{}`` for solvers whose result depends only on ``(op, k, init, generator)``.
        Solvers that remember something between calls (such as the guard columns of
        :class:`~subspace_optim.eigensolvers.warm.WarmRefresh`) return it here, so that
        :class:`~subspace_optim.SubspaceProjectedOptimizer` can save it and a resumed run
        reproduces the uninterrupted one bit for bit.

        Returns:
            A dict of tensors and plain values (``{}`` here), loadable with
            ``torch.load(..., weights_only=True)`` once saved.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - stateless default
        """Restore what :meth:`state_dict` returned (stateless solvers ignore it).

        Args:
            state: a dict returned by :meth:`state_dict` of a solver of the same class.
        """

    @abstractmethod
    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        """The algorithm: what a subclass implements, called only by :meth:`solve`.

        :meth:`solve` has already checked ``k`` (:meth:`check_k`), and runs this with
        autocast disabled and the caller's random state, grad mode and flags isolated.
        Draw every random number from ``generator``; never touch the global RNG.

        Args:
            op: the symmetric ``(n, n)`` operator; apply it with ``op.matmat`` (or
                ``op.matvec``), which counts the products.
            k: the number of eigenpairs, already valid for this solver.
            init: ``None`` (start cold) or a finite ``(n, m)`` warm start in ``op.dtype``
                on ``op.device``; ``m`` may differ from ``k`` and its columns need not be
                orthonormal.
            generator: the source of randomness, on ``op.device``.

        Returns:
            The top-``k`` pairs by ``which``: eigenvalues ``(k,)`` descending,
            orthonormal eigenvectors ``(n, k)``, residual norms ``(k,)``, and the outcome.
            A solve that stops short of ``tol`` returns its best estimate with an outcome
            other than ``CONVERGED`` rather than raising (:meth:`solve` raises when
            ``raise_on_failure`` is set); the outcome is ``NON_FINITE`` whenever an
            eigenvalue or eigenvector is not finite (the subspace optimizer's fault policy
            reads only the outcome). ``num_matvecs`` may be left approximate:
            :meth:`solve` replaces it with the products ``op`` counted.
        """

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tol={self.tol}, max_iter={self.max_iter}, which={self.which!r})"
        )
