"""One refresh of the wrapper's basis, as a function returning a typed record.

:func:`refresh_basis` runs the eigensolver on the curvature (warm-started from the previous
basis) under the ``on_fault`` policy, inside the operator's ``solve_scope`` (so a cached
gradient graph is freed when the solve is over, on success and on error), makes the
result agree across ranks (:func:`agreed`), checks it, and returns a
:class:`RefreshOutcome`. It changes no optimizer state except the cost and fault
``counters`` it is given, and no global state: it runs in the curvature's dtype with
autocast off, and hands back the global random state, grad mode and
deterministic-algorithms flags as it found them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .._isolation import full_precision, isolated
from ..eigensolvers import EigenResult, SolveStatus
from ..operators.base import LinearOperator
from ..operators.protocol import Curvature
from ..subspace import orthonormalize
from . import _faults

__all__ = ["RefreshOutcome", "agreed", "refresh_basis"]

#: largest entry of ``UᵀU − I`` accepted before the basis is re-orthonormalized
ORTHONORMALITY_TOL = 1e-4


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh produced.

    Attributes:
        result: the solver's result when usable (finite eigenpairs), else ``None``.
        basis: ``(n, m)`` orthonormal eigenvectors to use (``None`` on a fault).
        eigenvalues: ``(m,)`` descending (``None`` on a fault).
        loss: full-data loss at the refresh point, when the curvature provides it.
        grad: ``(n,)`` full-data gradient at the refresh point, when provided.
        matvecs: operator applications this refresh cost.
        seconds: wall time of the refresh.
        converged: the solver met its tolerance (``False`` on a fault).

    A source's refresh has only ``seconds`` (the defaults say: no solver, no products).
    """

    result: EigenResult | None = None
    basis: Tensor | None = None
    eigenvalues: Tensor | None = None
    loss: Tensor | None = None
    grad: Tensor | None = None
    matvecs: int = 0
    seconds: float = 0.0
    converged: bool = True


#: the outcomes in a fixed order: an outcome crosses ranks as its index
_OUTCOMES = tuple(SolveStatus)


def agreed(curvature: LinearOperator, result: EigenResult) -> EigenResult:
    """``result`` with rank 0's eigenpairs, residual norms and outcome (a collective).

    The curvature broadcasts plain tensors (:meth:`~LinearOperator.agree_tensors`); the
    outcome travels as its index in :class:`SolveStatus`, in the eigenvectors' dtype, next
    to the eigenvalues and residual norms. Counters stay this rank's, and so does the
    message unless rank 0's outcome differs from this rank's.

    Returns:
        ``result`` itself when the curvature returns the tensors unchanged (one process).
    """
    vectors = result.eigenvectors
    code = torch.tensor([float(_OUTCOMES.index(result.outcome))], dtype=vectors.dtype)
    mine = (result.eigenvalues, result.residual_norms, code, vectors)
    theirs = curvature.agree_tensors(*mine)
    if all(a is b for a, b in zip(mine, theirs, strict=True)):
        return result
    values, residuals, code, vectors = theirs
    outcome = _OUTCOMES[int(code.item())]
    message = result.message
    if outcome is not result.outcome:
        message = f"rank 0: {outcome.message} (this rank: {result.message})"
    return replace(
        result,
        eigenvalues=values,
        eigenvectors=vectors,
        residual_norms=residuals,
        outcome=outcome,
        message=message,
    )


@full_precision
def needs_reorthonormalization(U: Tensor) -> bool:
    """``max |UᵀU − I| > ORTHONORMALITY_TOL`` for a basis ``U`` of shape ``(n, m)``."""
    gram = U.T @ U
    eye = torch.eye(gram.shape[0], dtype=U.dtype, device=U.device)
    return float((gram - eye).abs().max()) > ORTHONORMALITY_TOL


def refresh_basis(
    curvature: LinearOperator,
    solve: Callable[[Tensor | None], EigenResult],
    warm: Tensor | None,
    *,
    on_fault: str,
    counters: dict[str, float],
    generator: torch.Generator,
    with_gradient: bool,
) -> RefreshOutcome:
    """Solve for a new basis and return what happened; never changes the parameters.

    Args:
        curvature: the operator ``solve`` runs on.
        solve: ``solve(init)`` runs the eigensolver from ``init`` (``(n, m)`` or ``None``).
        warm: the previous basis, or ``None``.
        on_fault: ``"keep"``, ``"cold"`` or ``"raise"`` (see ``_faults``).
        counters: the wrapper's counters, updated in place (refreshes, matvecs, seconds,
            faults, unconverged, reorthonormalized, cold restarts).
        generator: randomness for re-orthonormalization.
        with_gradient: also compute the full-data loss and gradient (only a
            :class:`~subspace_optim.Curvature` provides them).

    Raises:
        FloatingPointError: a fault under ``on_fault="raise"``.
    """
    t0 = time.perf_counter()
    before = curvature.num_matvecs
    gradient = None
    if with_gradient and isinstance(curvature, Curvature):
        gradient = curvature.loss_and_grad
    # the caller's autocast, global RNG, grad mode and determinism flags stay theirs
    with isolated(curvature.device):
        result, error, loss_grad = _faults.solve_with_policy(
            solve, warm, on_fault, counters, scope=curvature.solve_scope, before=gradient
        )
        loss, grad = loss_grad if loss_grad is not None else (None, None)
        if result is not None:
            # data-parallel operators: every rank takes rank 0's basis bit for bit
            result = agreed(curvature, result)
    if curvature.device.type == "cuda":
        torch.cuda.synchronize(curvature.device)
    seconds = time.perf_counter() - t0
    matvecs = curvature.num_matvecs - before
    counters["refreshes"] += 1
    counters["matvecs"] += matvecs
    counters["refresh_seconds"] += seconds
    if result is None or not _faults.usable(result):
        _faults.refresh_failed(result, error, on_fault, counters)
        return RefreshOutcome(None, None, None, loss, grad, matvecs, seconds, False)
    if not result.converged:
        counters["unconverged"] += 1
    U = result.eigenvectors
    if needs_reorthonormalization(U):  # the solver's basis lost orthonormality
        U = orthonormalize(U, generator=generator)
        counters["reorthonormalized"] += 1
    return RefreshOutcome(
        result=result,
        basis=U.detach().clone(),
        eigenvalues=result.eigenvalues.detach().clone(),
        loss=loss,
        grad=grad,
        matvecs=matvecs,
        seconds=seconds,
        converged=result.converged,
    )
