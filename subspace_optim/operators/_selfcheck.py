"""The self-check a curvature operator over a model runs at construction (private).

Mistakes in ``model``, ``loss_fn`` or ``data`` otherwise surface as raw torch errors at the
first optimizer step, or never: a summed loss scales every eigenvalue by the batch size,
and a random operator makes every eigensolve many times dearer. :func:`self_check` costs
two forward passes on (at most 64 examples of) the first micro-batch and two products
(not counted in ``num_matvecs``), and leaves no cached graph behind.

* **The first micro-batch** goes through ``model`` and ``loss_fn``: a failure is re-raised
  with what to do, and a non-scalar loss is refused.
* **A summed reduction** is refused: repeating the first micro-batch twice leaves a mean
  loss unchanged (BatchNorm's batch statistics too) and doubles a sum.
* **A random operator** (dropout in train mode, a loader that shuffles or drops batches):
  two products with the same vector, each on a freshly built graph, must agree to
  ``1000·eps`` of the dtype, else :class:`~subspace_optim.CurvatureCheckWarning`.

For a data-parallel operator each rank checks its own first micro-batch, a failure on any
rank is raised on every rank (one collective), and the products are collectives that
every rank joins, so every rank reaches the same verdict.

The checks read an operator through its public surface only (:class:`Checkable`), so this
module knows no operator class.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import Tensor

from . import _data

__all__ = [
    "Checkable",
    "CurvatureCheckWarning",
    "check_locally",
    "check_repeatable",
    "self_check",
]


#: examples of the first micro-batch the model and loss checks run on
SLICE = 64


class CurvatureCheckWarning(UserWarning):
    """A curvature operator's products are not repeatable (found by its self-check).

    Eigensolvers assume a fixed symmetric matrix; with a random one they spend many more
    products and may not converge. Evaluate in eval mode (``train=False``), pass a fixed
    list of batches instead of a shuffling loader, or build the operator with
    ``check=False`` to accept it.

    Example:
        >>> import warnings
        >>> from subspace_optim import CurvatureCheckWarning
        >>> issubclass(CurvatureCheckWarning, UserWarning)
        True
    """


class Checkable(Protocol):
    """What the self-check reads of an operator over a model (``ModelOperator`` has it)."""

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    param_dtype: torch.dtype
    num_matvecs: int
    loss_fn: Callable[..., Any]

    def first_batch(self) -> tuple[Any, Tensor] | None: ...

    def evaluation_context(self) -> AbstractContextManager[None]: ...

    def outputs(self, inputs: Any) -> Any: ...

    def matmat(self, V: Tensor) -> Tensor: ...

    def solve_scope(self) -> AbstractContextManager[None]: ...


def _doubled(x: Any) -> Any:
    """The micro-batch ``x`` repeated twice along the batch dimension."""
    if isinstance(x, Tensor):
        return torch.cat([x, x])
    if isinstance(x, dict):
        return {k: torch.cat([t, t]) for k, t in x.items()}
    return type(x)(torch.cat([t, t]) for t in x)


def _dtype_hint(op: Checkable, x: Any, error: BaseException) -> str:
    if "dtype" not in str(error):
        return ""
    floats = {t.dtype for t in _data.input_tensors(x)}
    if floats != {op.param_dtype}:
        return (
            f" The inputs are {sorted(map(str, floats))} but the parameters are "
            f"{op.param_dtype}: convert the data with .to({op.param_dtype})."
        )
    return ""


def _first_losses(op: Checkable) -> tuple[Tensor, Tensor] | None:
    """The loss of the first micro-batch and of it repeated twice (``None``: no data)."""
    first = op.first_batch()
    if first is None:  # a data-parallel rank with an empty shard
        return None
    x, y = first
    # a slice is enough to test the model, the loss and its reduction, at a fraction of
    # the cost of a large first micro-batch
    x, y = _data._split(x, SLICE)[0], y[:SLICE]
    losses = []
    with torch.no_grad(), op.evaluation_context():
        for inputs, targets in ((x, y), (_doubled(x), torch.cat([y, y]))):
            try:
                out = op.outputs(inputs)
            except (RuntimeError, TypeError) as exc:
                raise type(exc)(
                    f"the model failed on the first micro-batch of data: {exc}."
                    f"{_dtype_hint(op, x, exc)} Check that data holds (inputs, targets) pairs "
                    "with model(inputs) valid (or build the operator with check=False)."
                ) from exc
            try:
                loss = op.loss_fn(out, targets)
            except (RuntimeError, TypeError, ValueError, IndexError) as exc:
                raise type(exc)(
                    f"loss_fn(outputs, targets) failed on the first micro-batch: {exc}. It is "
                    "called with the model's outputs and the batch's targets and must return "
                    "the mean loss of the batch (a scalar tensor)."
                ) from exc
            if not isinstance(loss, Tensor) or loss.ndim != 0:
                shape = "" if not isinstance(loss, Tensor) else tuple(loss.shape)
                raise ValueError(
                    "loss_fn must return a scalar (the mean loss of the batch); got "
                    f"{type(loss).__name__}{shape}. Use reduction='mean'"
                )
            losses.append(loss)
    return losses[0], losses[1]


def _check_reduction(single: Tensor, double: Tensor) -> None:
    a, b = float(single.detach()), float(double.detach())
    if not (abs(a) > 1e-12 and abs(b / a - 2.0) < 0.05):
        return
    raise ValueError(
        f"loss_fn sums over the batch: its value doubled ({a:.4g} -> {b:.4g}) when the first "
        "micro-batch was repeated twice. Curvature operators need the mean loss of a batch "
        "(micro-batches of any size then weigh their examples equally and chunking does not "
        "change the result): use reduction='mean' (the default of torch.nn losses) or "
        "divide by the batch size. Build the operator with check=False if the loss is meant "
        "to scale this way."
    )


def _check_repeatable(op: Checkable) -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(op.shape[0], 1, generator=g, dtype=torch.float64).to(op.device, op.dtype)
    results = []
    counted = op.num_matvecs  # the check's products are not the user's cost
    with op.solve_scope():  # nothing cached before the check is reused
        pass
    for _ in range(2):
        # each product on its own forward pass, in a scope of its own: a cached graph would
        # hide the randomness of dropout masks
        try:
            with op.solve_scope():
                results.append(op.matmat(v))
        finally:
            op.num_matvecs = counted
    first, second = results
    scale = float(first.norm())
    diff = float((first - second).norm()) / scale if scale > 0 else float((second).norm())
    tol = 1000 * torch.finfo(op.dtype).eps
    if diff > tol:
        warnings.warn(
            CurvatureCheckWarning(
                f"{type(op).__name__}: two products with the same vector differ by "
                f"{diff:.3g} (relative), above {tol:.1g}: the operator is random (dropout in "
                "train mode, or a data loader that shuffles or drops batches). Eigensolvers "
                "then spend many more products and may not converge. Use train=False, a "
                "fixed list of batches, or check=False to accept it."
            ),
            stacklevel=4,
        )


def check_locally(op: Checkable) -> None:
    """The checks on this process's first micro-batch: the model, ``loss_fn`` and its
    reduction (no collective; nothing to do on an empty shard).

    Raises:
        TypeError, RuntimeError: ``model`` or ``loss_fn`` fails on the first micro-batch
            (the original error type, with what to do).
        ValueError: ``loss_fn`` returns a non-scalar, or sums over the batch.
    """
    losses = _first_losses(op)
    if losses is not None:
        _check_reduction(*losses)


def check_repeatable(op: Checkable) -> None:
    """Two products with one vector must agree (collectives for a data-parallel operator).

    Warns:
        CurvatureCheckWarning: they differ by more than ``1000·eps`` (relative).
    """
    _check_repeatable(op)


def self_check(op: Checkable) -> None:
    """Run the checks of the module note on a single-process ``op``.

    Raises:
        TypeError, RuntimeError: ``model`` or ``loss_fn`` fails on the first micro-batch
            (the original error type, with what to do).
        ValueError: ``loss_fn`` returns a non-scalar, or sums over the batch.

    Warns:
        CurvatureCheckWarning: two identical products differ.
    """
    check_locally(op)
    check_repeatable(op)
