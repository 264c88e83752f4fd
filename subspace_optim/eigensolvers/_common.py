"""Shared machinery of the eigensolvers (private)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..operators.base import LinearOperator
from ..subspace import orthonormalize
from .base import EigenResult, SolveStatus


def random_block(n: int, m: int, op: LinearOperator, generator: torch.Generator) -> Tensor:
    """Gaussian ``(n, m)`` block drawn from ``generator`` (on its own device), on ``op``'s device."""
    if generator.device != op.device:
        return torch.randn(n, m, dtype=op.dtype, device=generator.device, generator=generator).to(
            op.device
        )
    return torch.randn(n, m, dtype=op.dtype, device=op.device, generator=generator)


def start_block(
    op: LinearOperator, m: int, init: Tensor | None, generator: torch.Generator
) -> Tensor:
    """Orthonormal ``(n, m)`` start: the columns of ``init`` first, random columns after."""
    n = op.shape[0]
    if init is None:
        X = random_block(n, m, op, generator)
    elif init.shape[1] >= m:
        X = init[:, :m].clone()
    else:
        X = torch.cat([init, random_block(n, m - init.shape[1], op, generator)], dim=1)
    return orthonormalize(X, generator=generator)


def order(values: Tensor, which: str) -> Tensor:
    """Indices sorting ``values`` by ``which`` (descending algebraic or magnitude)."""
    key = values if which == "LA" else values.abs()
    return torch.argsort(key, descending=True)


def safe_eigh(T: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`torch.linalg.eigh` of a small symmetric matrix; NaN pairs instead of an error
    when ``T`` holds NaN/Inf (the operator failed), so the caller can report it."""
    if not bool(torch.isfinite(T).all()):
        m = T.shape[0]
        nan = torch.full((m,), float("nan"), dtype=T.dtype, device=T.device)
        return nan, torch.eye(m, dtype=T.dtype, device=T.device)
    return torch.linalg.eigh(T)


def rayleigh_ritz(X: Tensor, AX: Tensor, which: str) -> tuple[Tensor, Tensor, Tensor]:
    """Ritz pairs of the operator on ``span(X)`` (``X`` orthonormal), sorted by ``which``.

    Returns ``(θ, X S, AX S)``.
    """
    T = X.T @ AX
    T = (T + T.T) / 2
    theta, S = safe_eigh(T)
    idx = order(theta, which)
    theta, S = theta[idx], S[:, idx]
    return theta, X @ S, AX @ S


def lower_end(op: LinearOperator, steps: int, start: Tensor) -> Tensor:
    """Estimate of the smallest eigenvalue from ``steps`` Lanczos steps (``steps`` matvecs)
    started at the vector ``start`` (``(n,)``, nonzero).

    Returns the smallest Ritz value minus its residual norm ``|β_m s_{m,1}|``, a margin that
    makes the estimate fall at or below ``λ_min`` in practice (a Ritz value is within its
    residual of an eigenvalue, and the extreme Ritz value converges first). When the Krylov
    space becomes invariant first (``β_j`` at rounding level against the largest ``‖A v‖``
    so far, as on an operator of low rank), it stops there: its Ritz values are eigenvalues
    (normalizing the rounding left would feed the recurrence noise).
    """
    n = op.shape[0]
    m = min(n, steps)
    V = torch.zeros(n, m, dtype=op.dtype, device=op.device)
    T = torch.zeros(m, m, dtype=op.dtype, device=op.device)
    V[:, 0] = start / start.norm()
    beta = torch.zeros((), dtype=op.dtype, device=op.device)
    scale = 0.0  # the largest ‖A v_j‖ so far
    for j in range(m):
        w = op.matvec(V[:, j])
        scale = max(scale, float(w.norm()))
        Vj = V[:, : j + 1]
        for _ in range(2):
            h = Vj.T @ w
            w = w - Vj @ h
            T[: j + 1, j] += h
        T[j, : j + 1] = T[: j + 1, j].clone()
        beta = w.norm()
        if j + 1 < m and float(beta) <= 1e3 * torch.finfo(op.dtype).eps * scale:
            m = j + 1  # an invariant subspace
            T = T[:m, :m]
            break
        if j + 1 < m:  # β_j enters T through the next column's h (v_jᵀ A v_{j+1} = β_j)
            V[:, j + 1] = w / beta
    theta, S = safe_eigh(T)
    return theta[0] - (beta * S[m - 1, 0]).abs()


def residual_norms(X: Tensor, AX: Tensor, theta: Tensor) -> Tensor:
    return (AX - X * theta).norm(dim=0)


def tolerance(theta: Tensor, tol: float) -> Tensor:
    """Absolute residual target ``tol · |λ_1|`` (never below rounding)."""
    scale = theta.abs().max()
    floor = 10 * torch.finfo(theta.dtype).eps * scale
    return torch.maximum(tol * scale, floor)


@dataclass(frozen=True)
class Ritz:
    """A solver's approximate eigenpairs and their residuals, best first.

    Attributes:
        theta: eigenvalue estimates ``(m,)``.
        X: their vectors ``(n, m)`` (or more columns than :func:`result` keeps).
        res: residual norms ``‖A x_i − θ_i x_i‖`` ``(m,)``.
    """

    theta: Tensor
    X: Tensor
    res: Tensor


def nan_ritz(op: LinearOperator, k: int) -> Ritz:
    """``k`` all-NaN pairs: what a solve whose products turned non-finite reports."""
    theta = torch.full((k,), float("nan"), dtype=op.dtype, device=op.device)
    X = torch.full((op.shape[0], k), float("nan"), dtype=op.dtype, device=op.device)
    return Ritz(theta, X, theta.clone())


def result(
    solver: str,
    ritz: Ritz,
    k: int,
    tol: float,
    iterations: int,
    hint: str,
    *,
    breakdown: bool = False,
) -> EigenResult:
    """Assemble an :class:`EigenResult` for the first ``k`` pairs and say what happened.

    The outcome is ``NON_FINITE`` for non-finite pairs, ``CONVERGED`` when every residual
    meets ``tol · |θ_1|``, else ``BREAKDOWN`` if the solver reports one (``breakdown``:
    its search space stopped growing) or ``MAX_ITERATIONS``; ``hint`` says what to change.
    """
    theta, X, res = ritz.theta[:k], ritz.X[:, :k], ritz.res[:k]
    finite = bool(torch.isfinite(theta).all()) and bool(torch.isfinite(X).all())
    target = tolerance(theta, tol) if finite else torch.tensor(0.0)
    converged = finite and bool((res <= target).all())
    if not finite:
        outcome = SolveStatus.NON_FINITE
        message = f"{solver}: {outcome.message}"
    elif converged:
        outcome = SolveStatus.CONVERGED
        message = f"{solver}: converged after {iterations} iterations"
    else:
        outcome = SolveStatus.BREAKDOWN if breakdown else SolveStatus.MAX_ITERATIONS
        worst = float((res / theta.abs().max().clamp_min(torch.finfo(theta.dtype).tiny)).max())
        message = (
            f"{solver}: not converged after {iterations} iterations (worst relative residual "
            f"{worst:.2e} > tol {tol:.1e}); {outcome.message if breakdown else hint}"
        )
    return EigenResult(
        eigenvalues=theta,
        eigenvectors=X,
        residual_norms=res,
        num_matvecs=0,
        num_iterations=iterations,
        outcome=outcome,
        message=message,
    )
