"""Fault injection: wrappers that make a model, a loss, an operator or an eigensolver fail on
chosen calls, so a training loop can be tested against NaN/Inf, non-convergence and a basis
that lost orthonormality.

Every wrapper counts its calls (1-based) in ``calls`` and fails on the calls its ``fail_on``
selects: a set of call numbers, or a predicate ``fail_on(call) -> bool`` (e.g.
``lambda c: c >= 5`` for "from the fifth call on").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from ..eigensolvers.base import EigenResult, Eigensolver, SolveStatus
from ..operators.base import LinearOperator

__all__ = ["SOLVER_FAULTS", "FaultyLoss", "FaultyModule", "FaultyOperator", "FaultySolver"]

FailOn = Collection[int] | Callable[[int], bool]


def _selector(fail_on: FailOn) -> Callable[[int], bool]:
    if callable(fail_on):
        return fail_on
    if isinstance(fail_on, Collection) and all(
        isinstance(c, int) and not isinstance(c, bool) for c in fail_on
    ):
        calls = frozenset(fail_on)
        return calls.__contains__
    raise TypeError(
        "fail_on must be a collection of 1-based call numbers (e.g. {3}) or a predicate "
        f"call -> bool; got {type(fail_on).__name__}"
    )


class _Counted:
    """Call counting and fault selection shared by the wrappers."""

    calls: int
    _fails: Callable[[int], bool]

    def fail_at(self, fail_on: FailOn) -> None:
        """Replace the selection of failing calls, e.g. ``w.fail_at({w.calls + 2})`` to fail
        the second call from now."""
        self._fails = _selector(fail_on)


def _check_value(value: float) -> float:
    value = float(value)
    if math.isfinite(value):
        raise ValueError(f"value is what a fault injects: NaN or ±Inf; got {value}")
    return value


class FaultyModule(nn.Module, _Counted):
    """Wrap ``module`` so that its output becomes ``value`` (NaN by default) on chosen calls.

    Every forward pass counts, including the ones a
    :class:`~subspace_optim.HessianOperator` makes: with ``cache_graph=False``, each Hessian
    product (each block of products) is one forward pass, and the full-batch gradient at a
    refresh is another; with the graph cache (the default for one batch), one forward pass
    per point builds the graph that the gradient and every product there share. The parameters are
    ``module``'s own (named ``module.*``), so optimizers and operators see the same tensors.

    Args:
        module: the model to wrap.
        fail_on: 1-based forward-call numbers that fail, or a predicate.
        value: what the output becomes (``nan``, ``inf`` or ``-inf``).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: a finite ``value``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from subspace_optim.testing import FaultyModule
        >>> m = FaultyModule(nn.Linear(2, 1), fail_on={2})
        >>> x = torch.ones(1, 2)
        >>> [bool(torch.isnan(m(x)).any()) for _ in range(3)]
        [False, True, False]
    """

    def __init__(self, module: nn.Module, fail_on: FailOn, value: float = math.nan) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
        self.module = module
        self._fails = _selector(fail_on)
        self.value = _check_value(value)
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """The wrapped module's output, plus ``value`` on a failing call.

        Args:
            *args: passed to the wrapped module.
            **kwargs: passed to the wrapped module.

        Returns:
            The output, or the output plus ``value`` (still in the graph) on a failing call.
        """
        out = self.module(*args, **kwargs)
        self.calls += 1
        if self._fails(self.calls):
            out = out + self.value  # keeps the graph: NaN flows into gradients and HVPs
        return out


class FaultyLoss(_Counted):
    """Wrap ``loss_fn`` so that the loss is multiplied by ``value`` (NaN by default) on
    chosen calls; the gradient of a failing call is then non-finite too.

    Args:
        loss_fn: the loss, ``loss_fn(outputs, targets)``.
        fail_on: 1-based call numbers that fail, or a predicate on the call number.
        value: the factor of a failing call (``nan``, ``inf`` or ``-inf``).

    Raises:
        TypeError: ``loss_fn`` is not callable.
        ValueError: a finite ``value``.

    Example:
        >>> import torch
        >>> from subspace_optim.testing import FaultyLoss
        >>> loss = FaultyLoss(lambda out, y: ((out - y) ** 2).mean(), fail_on=lambda c: c > 1)
        >>> [float(loss(torch.ones(2), torch.zeros(2))) for _ in range(2)]
        [1.0, nan]
    """

    def __init__(
        self, loss_fn: Callable[[Any, Tensor], Tensor], fail_on: FailOn, value: float = math.nan
    ) -> None:
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        self.loss_fn = loss_fn
        self._fails = _selector(fail_on)
        self.value = _check_value(value)
        self.calls = 0

    def __call__(self, outputs: Any, targets: Tensor) -> Tensor:
        loss = self.loss_fn(outputs, targets)
        self.calls += 1
        if self._fails(self.calls):
            loss = loss * self.value  # a product, so the fault reaches the gradient too
        return loss


class FaultyOperator(LinearOperator, _Counted):
    """Wrap a :class:`~subspace_optim.LinearOperator` so that chosen applications
    (``matmat`` calls, 1-based) return ``value`` everywhere.

    ``params`` is forwarded, so :class:`~subspace_optim.SubspaceProjectedOptimizer` checks
    parameter coverage exactly as for the wrapped operator.

    Args:
        op: the operator to wrap.
        fail_on: 1-based ``matmat`` call numbers that fail, or a predicate.
        value: what a failing application returns everywhere (``nan``, ``inf`` or ``-inf``).

    Raises:
        TypeError: ``op`` is not a :class:`~subspace_optim.LinearOperator`.
        ValueError: a finite ``value``.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator
        >>> from subspace_optim.testing import FaultyOperator
        >>> op = FaultyOperator(DenseOperator(torch.eye(2)), fail_on={1}, value=float("inf"))
        >>> (op @ torch.ones(2)).tolist(), (op @ torch.ones(2)).tolist()
        ([inf, inf], [1.0, 1.0])
    """

    def __init__(self, op: LinearOperator, fail_on: FailOn, value: float = math.nan) -> None:
        super().__init__()
        if not isinstance(op, LinearOperator):
            raise TypeError(f"op must be a LinearOperator; got {type(op).__name__}")
        self.op = op
        self.shape, self.dtype, self.device = op.shape, op.dtype, op.device
        self._fails = _selector(fail_on)
        self.value = _check_value(value)
        self.calls = 0
        if hasattr(op, "params"):
            self.params = op.params

    def _matmat(self, V: Tensor) -> Tensor:
        out = self.op.matmat(V)
        self.calls += 1
        if self._fails(self.calls):
            out = torch.full_like(out, self.value)
        return out

    def solve_scope(self) -> AbstractContextManager[None]:
        """The wrapped operator's scope (its cached state is what a solve shares).

        Returns:
            ``op.solve_scope()`` of the wrapped operator.
        """
        return self.op.solve_scope()

    def agree_tensors(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The wrapped operator's agreement across ranks.

        Args:
            *tensors: this rank's tensors.

        Returns:
            ``op.agree_tensors(*tensors)`` of the wrapped operator.
        """
        return self.op.agree_tensors(*tensors)


#: the faults :class:`FaultySolver` can inject
SOLVER_FAULTS = ("nan", "unconverged", "non_orthonormal", "linalg_error")


class FaultySolver(Eigensolver, _Counted):
    """Wrap an eigensolver so that chosen ``solve`` calls (1-based) go wrong.

    Faults:

    * ``"nan"``: the eigenpairs come back NaN (what an overflowing HVP produces);
    * ``"unconverged"``: the result is reported as not converged (the pairs are the inner
      solver's);
    * ``"non_orthonormal"``: the eigenvectors are mixed by a non-orthogonal matrix and the
      last column duplicates the first (orthonormality lost, rank deficient);
    * ``"linalg_error"``: :class:`torch.linalg.LinAlgError` is raised, as ``eigh`` does on a
      NaN tridiagonal matrix.

    Capability flags (warm start, ``min_gap_to_n``, ``check_k``) are the inner solver's;
    ``raise_on_failure=True`` turns an (injected) unconverged result into
    :class:`~subspace_optim.EigensolverError`, as for any solver.

    Args:
        inner: the solver that does the work.
        fault: one of :data:`SOLVER_FAULTS`.
        fail_on: 1-based ``solve`` call numbers that fail, or a predicate.
        raise_on_failure: see :class:`~subspace_optim.Eigensolver`.

    Raises:
        TypeError: ``inner`` is not an :class:`~subspace_optim.Eigensolver`.
        ValueError: an unknown ``fault``.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, Eigh
        >>> from subspace_optim.testing import FaultySolver
        >>> op = DenseOperator(torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)))
        >>> solver = FaultySolver(Eigh(), "unconverged", fail_on={1})
        >>> solver.solve(op, 2).converged, solver.solve(op, 2).converged
        (False, True)
    """

    def __init__(
        self, inner: Eigensolver, fault: str, fail_on: FailOn, *, raise_on_failure: bool = False
    ) -> None:
        if not isinstance(inner, Eigensolver):
            raise TypeError(f"inner must be an Eigensolver; got {type(inner).__name__}")
        if fault not in SOLVER_FAULTS:
            raise ValueError(
                f"unknown fault {fault!r}; valid faults are {', '.join(map(repr, SOLVER_FAULTS))}"
            )
        super().__init__(
            tol=inner.tol,
            max_iter=inner.max_iter,
            which=inner.which,
            raise_on_failure=raise_on_failure,
        )
        self.inner = inner
        self.fault = fault
        self._fails = _selector(fail_on)
        self.calls = 0
        self.supports_warm_start = inner.supports_warm_start
        self.matrix_free = inner.matrix_free
        self.min_gap_to_n = inner.min_gap_to_n

    def check_k(self, n: int, k: int) -> None:
        """The inner solver's check.

        Args:
            n: the operator's size.
            k: the number of eigenpairs asked for.
        """
        self.inner.check_k(n, k)

    def state_dict(self) -> dict[str, Any]:
        """The inner solver's state and the call count.

        Returns:
            ``{"inner": inner.state_dict(), "calls": calls}``.
        """
        return {"inner": self.inner.state_dict(), "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Args:
            state: a dict returned by :meth:`state_dict`.
        """
        self.inner.load_state_dict(state.get("inner", {}))
        self.calls = int(state.get("calls", self.calls))

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        self.calls += 1
        failing = self._fails(self.calls)
        if failing and self.fault == "linalg_error":
            raise torch.linalg.LinAlgError("injected: linalg.eigh failed to converge")
        result = self.inner.solve(op, k, init=init, generator=generator)
        if not failing:
            return result
        if self.fault == "nan":
            nan = math.nan
            return _altered(
                result,
                "injected: non-finite eigenpairs",
                "NON_FINITE",
                eigenvalues=torch.full_like(result.eigenvalues, nan),
                eigenvectors=torch.full_like(result.eigenvectors, nan),
            )
        if self.fault == "unconverged":
            return _altered(result, "injected: not converged", "MAX_ITERATIONS")
        V = result.eigenvectors
        m = V.shape[1]
        mix = torch.eye(m, dtype=V.dtype, device=V.device) + 0.5
        W = V @ mix
        if m > 1:
            W[:, -1] = W[:, 0]
        return _altered(result, "injected: non-orthonormal basis", None, eigenvectors=W)

    def __repr__(self) -> str:
        return f"FaultySolver({self.inner!r}, fault={self.fault!r})"


def _altered(result: EigenResult, message: str, outcome: str | None, **changes: Any) -> EigenResult:
    """``result`` with ``changes`` and the injected ``message``; ``outcome`` names the
    :class:`~subspace_optim.SolveStatus` member of a failed solve (kept as is when ``None``)."""
    if outcome is not None:
        changes["outcome"] = SolveStatus[outcome]
    return dataclasses.replace(result, message=message, **changes)
