"""The wrapper's constructor arguments, checked and resolved before any state exists.

:func:`check_arguments` refuses every bad argument (with what to do) and returns a
:class:`Config`; the wrapper's constructor then only stores it. :func:`resolve_mode` turns a
mode name or a pair of scales into ``(mode, (a, b))``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._utils import check_int, choice
from ..eigensolvers import Eigensolver, resolve_eigensolver
from ..operators.base import LinearOperator
from ..operators.protocol import Curvature
from ..schedules import RefreshSchedule, resolve_schedule
from ..sources.protocol import SubspaceSource
from . import _faults, _guard
from ._update import MODE_SCALES
from .eos import stability_threshold

__all__ = [
    "MODES",
    "ON_FAULT",
    "PROJECT",
    "Config",
    "Settings",
    "check_arguments",
    "check_source_arguments",
    "covering_curvature",
    "group_scales",
    "resolve_mode",
]

#: the named ``mode`` values: ``"bulk"`` removes the update's component inside the top-k
#: subspace (Bulk-SGD), ``"dominant"`` keeps only that component (Dom-SGD), ``"none"``
#: leaves the update alone and only measures (a pair ``(a, b)`` of scales is accepted too)
MODES = ("bulk", "dominant", "none")
#: the paper's short names, accepted wherever a mode is named
MODE_ALIASES = {"dom": "dominant"}
#: what is projected: the base optimizer's ``"update"`` or the ``"gradient"`` it reads
PROJECT = ("update", "gradient")
#: the valid ``on_fault`` policies, what a failed refresh does: ``"keep"`` the previous
#: basis, retry ``"cold"`` from a random start (then keep), or ``"raise"``
#: :class:`FloatingPointError`
ON_FAULT = ("keep", "cold", "raise")


@dataclass(frozen=True)
class Config:
    """The checked constructor arguments of the wrapper."""

    mode: str | tuple[float, float]
    scales: tuple[float, float]
    project: str
    on_fault: str
    k: int
    num_extra: int
    eigensolver: Eigensolver
    schedule: RefreshSchedule
    adaptive_k: float | None
    params: list[Tensor]


def resolve_mode(mode: object) -> tuple[str | tuple[float, float], tuple[float, float]]:
    """``(mode, (a, b))`` for a mode name or a pair of scales; raises before any change.

    A pair equal to a named mode's scales is that mode (``(0, 1)`` is ``"bulk"``); the
    paper's short name ``"dom"`` is ``"dominant"``.

    Raises:
        ValueError: an unknown name, a pair with a NaN/inf entry, or ``(0, 0)``.
        TypeError: a sequence that is not a pair of real numbers.

    Example:
        >>> resolve_mode("bulk"), resolve_mode((0.5, 1.5)), resolve_mode([1, 0])
        (('bulk', (0.0, 1.0)), ((0.5, 1.5), (0.5, 1.5)), ('dominant', (1.0, 0.0)))
    """
    if not isinstance(mode, (tuple, list)):
        name = choice(
            "mode", MODE_ALIASES.get(mode, mode) if isinstance(mode, str) else mode, MODES
        )
        return name, MODE_SCALES[name]
    if len(mode) != 2 or not all(
        isinstance(x, numbers.Real) and not isinstance(x, bool) for x in mode
    ):
        raise TypeError(
            "mode as scales is a pair (a, b) of real numbers, the update becoming "
            f"a·P_kΔ + b·(Δ − P_kΔ); got {mode!r}"
        )
    a, b = float(mode[0]), float(mode[1])
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"mode scales must be finite reals; got {mode!r}")
    if a == 0 and b == 0:
        raise ValueError(
            "mode=(0, 0) removes the whole update, so nothing would train; use (1, 0) for "
            "Dom, (0, 1) for Bulk, or scales with at least one nonzero entry"
        )
    for name, scales in MODE_SCALES.items():
        if scales == (a, b):
            return name, scales
    return (a, b), (a, b)


@dataclass(frozen=True)
class Settings:
    """The wrapper's keyword arguments besides ``k``, unchecked (:func:`check_arguments`
    and :func:`check_source_arguments` check them)."""

    mode: Any
    eigensolver: Any
    refresh: Any
    project: Any
    num_extra: Any
    on_fault: Any
    generator: Any
    adaptive_k: Any
    grad_scaler: Any


def check_arguments(base: Any, curvature: Any, *, k: Any, **settings: Any) -> Config:
    """Check :class:`~subspace_optim.SubspaceProjectedOptimizer`'s arguments.

    Args:
        base, curvature, k: the wrapper's arguments of those names.
        settings: its other keyword arguments, the fields of :class:`Settings`.

    Raises:
        TypeError: an argument of the wrong type (see the message).
        ValueError: a value out of range, or an operator and an optimizer over different
            parameters or devices, or parameters that already hold NaN/Inf.
    """
    args = Settings(**settings)
    if not isinstance(base, Optimizer):
        raise TypeError(
            f"base must be a torch.optim.Optimizer (e.g. torch.optim.SGD(model.parameters(), "
            f"lr=0.1)); got {type(base).__name__}"
        )
    if not isinstance(curvature, LinearOperator):
        raise TypeError(
            "curvature must be a LinearOperator such as "
            "subspace_optim.HessianOperator(model, loss_fn, data); got "
            f"{type(curvature).__name__}"
        )
    mode_value, scales = resolve_mode(args.mode)
    project = choice("project", args.project, PROJECT)
    _check_grad_scaler(args.grad_scaler)
    _guard.check_wrappable(base)
    on_fault = choice("on_fault", args.on_fault, ON_FAULT)
    n = curvature.shape[0]
    k_value = check_int("k", k, low=0)
    if k_value >= n:
        raise ValueError(
            f"k={k} must be smaller than the number of parameters ({n}); the paper uses k = "
            "number of classes"
        )
    num_extra = check_int("num_extra", args.num_extra, low=0)
    solver = resolve_eigensolver(args.eigensolver)
    if k_value > 0:  # k + num_extra too large for the solver, or wider than its block
        solver.check_k(n, k_value + num_extra)
    schedule = resolve_schedule(args.refresh)
    _check_adaptive_k(args.adaptive_k, base)
    _check_generator(args.generator)
    return Config(
        mode=mode_value,
        scales=scales,
        project=project,
        on_fault=on_fault,
        k=k_value,
        num_extra=num_extra,
        eigensolver=solver,
        schedule=schedule,
        adaptive_k=None if args.adaptive_k is None else float(args.adaptive_k),
        params=_checked_params(base, curvature),
    )


def _check_grad_scaler(scaler: object) -> None:
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(
            "grad_scaler must be the torch.amp.GradScaler of the training loop (or None); "
            f"got {type(scaler).__name__}"
        )


def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")


def _check_adaptive_k(adaptive_k: object, base: Optimizer) -> None:
    if adaptive_k is None:
        return
    if (
        isinstance(adaptive_k, bool)
        or not isinstance(adaptive_k, (int, float))
        or not (0 < adaptive_k <= 1)
    ):
        raise ValueError(f"adaptive_k is a fraction of 2/η in (0, 1]; got {adaptive_k!r}")
    if stability_threshold(base) is None:
        raise ValueError(
            f"adaptive_k needs a stability threshold, which {type(base).__name__} does not "
            "define (only SGD, with momentum/Nesterov, or SAM around SGD); pass a fixed k"
        )


def _checked_params(base: Optimizer, curvature: LinearOperator) -> list[Tensor]:
    """The covered parameters: real, on the operator's device, finite."""
    params = check_coverage(base, curvature)
    for p in params:
        if p.is_complex():
            raise TypeError(
                "complex parameters are not supported: the Hessian subspace is defined over "
                "real parameters; store complex weights as real pairs (torch.view_as_real)"
            )
    devices = {p.device for p in params}
    if devices != {curvature.device}:
        raise ValueError(
            f"the parameters live on {sorted(map(str, devices))} but the curvature operator "
            f"works on {curvature.device}; move the model to one device before building "
            "the operator and the optimizer"
        )
    _faults.check_finite_params(params, when="at construction")
    return params


def check_coverage(base: Optimizer, curvature: LinearOperator) -> list[Tensor]:
    """The parameters the projection acts on, in the operator's flat order; refuses an
    operator and an optimizer over different parameters (``ValueError``) and sparse
    gradients (``TypeError``)."""
    op_params = getattr(curvature, "params", None)
    base_params = [p for g in base.param_groups for p in g["params"]]
    if op_params is None:
        n = curvature.shape[0]
        total = sum(p.numel() for p in base_params if p.requires_grad)
        if total != n:
            raise ValueError(
                f"the curvature operator has size {n} but the optimizer's trainable "
                f"parameters hold {total} entries; they must be the same parameters"
            )
        return [p for p in base_params if p.requires_grad]
    op_ids = {id(p) for p in op_params}
    base_ids = {id(p) for p in base_params}
    missing = [tuple(p.shape) for p in base_params if p.requires_grad and id(p) not in op_ids]
    if missing:
        raise ValueError(
            f"the optimizer updates parameters the curvature operator does not cover "
            f"(shapes {missing[:4]}). If they belong to the model, build the operator with "
            "params=[p for g in base.param_groups for p in g['params'] if p.requires_grad]; "
            "if they do not (a tensor added to the optimizer by hand), the loss does not "
            "depend on them: remove them from the optimizer, or register them on the model "
            "(a submodule's nn.Parameter) and rebuild the operator"
        )
    extra = [tuple(p.shape) for p in op_params if id(p) not in base_ids]
    if extra:
        raise ValueError(
            f"the curvature operator covers parameters the optimizer does not update "
            f"(shapes {extra[:4]}); build the operator with params= the optimizer's parameters"
        )
    for p in base_params:
        if p.requires_grad and p.grad is not None and p.grad.is_sparse:
            raise TypeError("sparse gradients are not supported; use dense embeddings")
    return list(op_params)


def covering_curvature(
    curvature: LinearOperator, covered: Sequence[Tensor], params: Sequence[Tensor]
) -> LinearOperator:
    """The operator a new parameter group needs: ``curvature`` itself when it covers every
    trainable tensor of ``params`` already, else ``curvature.extended(...)`` over them too.

    Args:
        curvature: the wrapper's operator.
        covered: the parameters the projection acts on now.
        params: the new group's tensors.

    Returns:
        ``curvature``, or a new operator (every setting kept) over the new parameters too.

    Raises:
        ValueError: new trainable parameters and an operator that is not a
            :class:`~subspace_optim.Curvature` (it cannot be extended), or a tensor the
            operator refuses (not a parameter of its model, another dtype).
    """
    ids = {id(p) for p in covered}
    new = [p for p in params if id(p) not in ids and p.requires_grad]
    if not new:
        return curvature
    if not isinstance(curvature, Curvature):
        raise ValueError(
            "the new parameters are not covered by the curvature operator "
            f"({type(curvature).__name__}): the projection is defined on the operator's "
            "parameter space. Build a new operator and wrapper."
        )
    return curvature.extended([*curvature.params, *new])


#: the constructor's defaults that have no meaning with a source
_CURVATURE_ONLY = {
    "k": None,
    "eigensolver": "warm",
    "refresh": None,
    "num_extra": 0,
    "adaptive_k": None,
}


def check_source_arguments(base: Any, source: SubspaceSource, *, k: Any, **settings: Any) -> Config:
    """Check the wrapper's arguments when it is given a
    :class:`~subspace_optim.SubspaceSource` instead of a curvature operator; binds the
    source to the base's trainable parameters (a group's ``"subspace_k"`` sets their k).

    Raises:
        TypeError, ValueError: as :func:`check_arguments`; also a curvature-only argument
            (``k``, ``eigensolver``, ``refresh``, ``num_extra``, ``adaptive_k``) set,
            ``project="gradient"``, a group ``"subspace_mode"`` that is not a mode, or a
            block the source refuses. Nothing is bound on an error.
    """
    if not isinstance(base, Optimizer):
        raise TypeError(
            f"base must be a torch.optim.Optimizer (e.g. torch.optim.AdamW(model.parameters())); "
            f"got {type(base).__name__}"
        )
    args = Settings(**settings)
    for name, default in _CURVATURE_ONLY.items():
        if (k if name == "k" else getattr(args, name)) != default:
            raise ValueError(
                f"{name}= applies to a curvature operator; a subspace source carries its own "
                f"settings (k, refresh_every, ...): set them on {type(source).__name__}"
            )
    mode_value, scales = resolve_mode(args.mode)
    if choice("project", args.project, PROJECT) != "update":
        raise ValueError(
            "a subspace source scales the base optimizer's update; project='gradient' needs "
            "a curvature operator"
        )
    on_fault = choice("on_fault", args.on_fault, ON_FAULT)
    _check_generator(args.generator)
    _check_grad_scaler(args.grad_scaler)
    _guard.check_wrappable(base)
    group_scales(base.param_groups, scales)
    params = [p for g in base.param_groups for p in g["params"] if p.requires_grad]
    ks = [g.get("subspace_k") for g in base.param_groups for p in g["params"] if p.requires_grad]
    for p in params:
        if p.is_complex() or not p.is_floating_point():
            raise TypeError("a subspace source needs real floating-point parameters")
        if hasattr(p, "device_mesh") and hasattr(p, "to_local"):  # a DTensor (FSDP2)
            raise TypeError(
                "the parameters are sharded (DTensor, e.g. FSDP2's fully_shard): a subspace "
                "source learns one basis per whole parameter, and each rank holds only a "
                "shard of it. Train with DistributedDataParallel (every rank then holds the "
                "same bases with no extra communication), or without sharding"
            )
    _faults.check_finite_params(params, when="at construction")
    source.bind(params, ks)
    return Config(
        mode=mode_value,
        scales=scales,
        project="update",
        on_fault=on_fault,
        k=int(getattr(source, "k", 1)),
        num_extra=0,
        eigensolver=resolve_eigensolver("warm"),
        schedule=resolve_schedule(None),
        adaptive_k=None,
        params=params,
    )


def group_scales(
    groups: Sequence[dict[str, Any]], scales: tuple[float, float]
) -> dict[int, tuple[float, float]] | None:
    """``id(parameter) -> (a, b)``: each parameter's group's ``"subspace_mode"`` scales
    (``scales`` where a group has none), or ``None`` when no group sets one.

    Raises:
        ValueError, TypeError: a group's ``"subspace_mode"`` is not a mode (before any
            change: the wrapper calls this before each step).
    """
    if not any("subspace_mode" in g for g in groups):
        return None
    out = {}
    for i, g in enumerate(groups):
        try:
            pair = resolve_mode(g["subspace_mode"])[1] if "subspace_mode" in g else scales
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"param_groups[{i}]['subspace_mode']: {exc}") from None
        out.update((id(p), pair) for p in g["params"])
    return out
