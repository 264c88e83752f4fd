"""The fault policy of :class:`~subspace_optim.SubspaceProjectedOptimizer`.

What counts as a numerical fault, and what each ``on_fault`` policy does with it:

* a refresh whose solver raises one of :data:`NUMERICAL_ERRORS` or returns non-finite
  eigenpairs: ``"keep"`` the previous basis (warn), ``"cold"`` retry from a random block
  first, ``"raise"`` :class:`FloatingPointError` (:func:`solve_with_policy`,
  :func:`refresh_failed`);
* a gradient or closure loss holding NaN/Inf: the step is skipped before the base optimizer
  updates anything (:func:`guarded`, :class:`NonFiniteGradient`, :func:`count_skip`);
* parameters that already hold NaN/Inf: refused as bad input (:func:`check_finite_params`).

Anything else (a bug, a ``loss_fn`` of the wrong shape) is not a fault and propagates.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from ..eigensolvers import EigenResult, EigensolverError, SolveStatus
from ._flat import FlatParams

#: exceptions a refresh treats as numerical faults (handled by ``on_fault``). Anything else (a
#: bug, a ``loss_fn`` of the wrong shape, data that ran dry) propagates, parameters untouched.
NUMERICAL_ERRORS = (torch.linalg.LinAlgError, EigensolverError, FloatingPointError)


def new_counters() -> dict[str, float]:
    """The wrapper's cost and fault counters, all zero (``refresh_seconds`` a float)."""
    return {
        "refreshes": 0,
        "matvecs": 0,
        "refresh_seconds": 0.0,
        "faults": 0,
        "skipped_steps": 0,
        "unconverged": 0,
        "reorthonormalized": 0,
        "cold_restarts": 0,
        "unstable_refreshes": 0,
    }


class NonFiniteGradient(Exception):
    """Raised inside a guarded closure to stop the base step before it updates anything."""


def usable(result: EigenResult) -> bool:
    """The solver's eigenpairs are all finite: its outcome is not ``NON_FINITE``."""
    return result.outcome is not SolveStatus.NON_FINITE


def check_finite_params(params: list[Tensor], *, when: str) -> None:
    """Refuse parameters that already hold NaN/Inf (``ValueError``, says what to do)."""
    bad = [i for i, p in enumerate(params) if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise ValueError(
            f"parameters hold NaN/Inf {when} (tensors {bad[:4]} of {len(params)}, "
            f"shapes {[tuple(params[i].shape) for i in bad[:4]]}): the model has "
            "already diverged or was initialised badly. Restore it from a checkpoint (and "
            "lower the learning rate) before stepping"
        )


def solve_with_policy(
    solve: Callable[[Tensor | None], EigenResult],
    warm: Tensor | None,
    on_fault: str,
    counters: dict[str, float],
    *,
    scope: Callable[[], AbstractContextManager[Any]],
    before: Callable[[], Any] | None = None,
) -> tuple[EigenResult | None, Exception | None, Any]:
    """``before()`` then ``solve(warm)`` inside one ``scope()``, numerical errors caught.

    Under ``"cold"`` a faulty warm solve is retried once from a random block, in a fresh
    scope (so state cached on a faulty pass, such as a gradient graph, is gone) with
    ``before()`` called again.

    Returns:
        ``(result or None, the error or None, before's value)``.
    """

    def attempt(init: Tensor | None) -> tuple[EigenResult | None, Exception | None, Any]:
        extra = None
        try:
            with scope():
                if before is not None:
                    extra = before()
                return solve(init), None, extra
        except NUMERICAL_ERRORS as exc:  # NaN-driven failures inside the solver
            return None, exc, extra

    result, error, extra = attempt(warm)
    if (result is None or not usable(result)) and on_fault == "cold" and warm is not None:
        counters["cold_restarts"] += 1
        # the warm start may be what went wrong: retry from a random block
        result, error, extra = attempt(None)
    return result, error, extra


def refresh_failed(
    result: EigenResult | None, error: Exception | None, on_fault: str, counters: dict[str, float]
) -> None:
    """Count a failed refresh; raise under ``"raise"``, else warn that the basis is kept."""
    counters["faults"] += 1
    msg = "subspace refresh failed" + (
        f" ({error})" if error else f" ({result.message})" if result is not None else ""
    )
    if on_fault == "raise":
        raise FloatingPointError(
            f"{msg}; on_fault='raise': the step stops here, with the parameters, the "
            "optimizer state and the basis as they were. Use on_fault='keep' (go on with "
            "the previous basis) or 'cold' (retry from a random start first) to train on"
        ) from error
    warnings.warn(f"{msg}; keeping the previous basis", RuntimeWarning, stacklevel=4)


def guarded(closure: Callable[[], Tensor], vec: FlatParams) -> Callable[[], Tensor]:
    """``closure`` that stops the base step (before its update) when the gradient it
    produced is sparse (``TypeError``, as a step without a closure refuses it) or when the
    loss or the gradient is not finite (:class:`NonFiniteGradient`)."""

    def guarded_closure() -> Tensor:
        loss = closure()
        vec.check_dense_grads()
        finite = [torch.isfinite(p.grad).all() for p in vec.params if p.grad is not None]
        if isinstance(loss, Tensor):
            finite.append(torch.isfinite(loss).all())
        if finite and not bool(torch.stack(finite).all()):
            raise NonFiniteGradient
        return loss

    return guarded_closure


def count_skip(counters: dict[str, float], t: int, reason: str) -> None:
    """Count a skipped step as a fault and warn (the caller of ``step`` is blamed)."""
    counters["skipped_steps"] += 1
    counters["faults"] += 1
    warnings.warn(
        f"step {t}: {reason}; the step was skipped and the parameters left unchanged",
        RuntimeWarning,
        stacklevel=4,
    )
