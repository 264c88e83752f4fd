"""The wrapper's checkpoint: its ``"subspace"`` entry, added and restored by torch's hooks.

:func:`register` installs, through torch's own ``register_state_dict_post_hook`` and
``register_load_state_dict_pre_hook`` / ``_post_hook``, everything the wrapper adds to
:class:`torch.optim.Optimizer`'s checkpointing; torch runs the hook loops (the wrapper's
and the user's) exactly once:

* saving: the base optimizer's own ``state_dict()`` plus ``"subspace"`` (basis,
  eigenvalues, step, counters, schedule, eigensolver and generator state; all
  ``weights_only``-safe);
* loading: the ``"subspace"`` entry is validated against the wrapper before anything
  changes (pre-hook); torch then checks and loads the parameter groups; the post-hook hands
  the loaded groups and state to the base optimizer's own ``load_state_dict`` (so the
  wrapper keeps sharing them) and restores the subspace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..subspace import orthonormalize
from ._refresh import needs_reorthonormalization
from ._state import ProjectionState

__all__ = ["delegate_to_base", "pack", "register", "subspace_state"]


def _shapes(opt: Any) -> list[list[int]]:
    return [list(p.shape) for g in opt.base.param_groups for p in g["params"]]


def subspace_state(opt: Any) -> dict[str, Any]:
    """The wrapper's own checkpoint entry (tensors cloned)."""
    return {
        "k": opt.k,
        "num_extra": opt.num_extra,
        "mode": opt.mode,
        "scales": list(opt.scales),
        "n": sum(opt._vec.sizes),
        "shapes": _shapes(opt),
        "step": opt.subspace.step,
        "active_k": opt.active_k,
        "unstable": opt.subspace.unstable,
        "basis": None if opt.basis is None else opt.basis.clone(),
        "eigenvalues": None if opt.eigenvalues is None else opt.eigenvalues.clone(),
        "counters": dict(opt.counters),
        "schedule": opt.schedule.state_dict(),
        "generator": opt.generator.get_state(),
        "eigensolver": opt.eigensolver.state_dict(),
        "source": None if opt.source is None else opt.source.state_dict(),
    }


def pack(state: dict[Any, Any], groups: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``{"state", "param_groups"}`` with parameters replaced by their flat index, as
    :meth:`torch.optim.Optimizer.state_dict` lays it out (no copy, no hooks)."""
    index: dict[int, int] = {}
    packed_groups = []
    for group in groups:
        for p in group["params"]:
            index.setdefault(id(p), len(index))
        packed_groups.append(
            {
                **{k: v for k, v in group.items() if k != "params"},
                "params": [index[id(p)] for p in group["params"]],
            }
        )
    packed_state = {(index[id(k)] if isinstance(k, Tensor) else k): v for k, v in state.items()}
    return {"state": packed_state, "param_groups": packed_groups}


@dataclass(frozen=True)
class _Restore:
    """A validated ``"subspace"`` entry, ready to apply."""

    sub: dict[str, Any]
    basis: Tensor | None
    eigenvalues: Tensor | None


def _validate(opt: Any, state_dict: dict[str, Any]) -> _Restore:
    """Check ``state_dict["subspace"]`` against ``opt``; raise ``ValueError`` otherwise."""
    if "subspace" not in state_dict:
        raise ValueError(
            "state_dict has no 'subspace' entry: it was not saved by a "
            "SubspaceProjectedOptimizer (load a base optimizer's state into opt.base instead)"
        )
    sub = state_dict["subspace"]
    n = sum(opt._vec.sizes)
    if sub["n"] != n:
        raise ValueError(
            f"state_dict is for a model with {sub['n']} parameters, this one has {n}; load "
            "the checkpoint into the model it was saved from"
        )
    if sub["k"] != opt.k or sub["num_extra"] != opt.num_extra:
        raise ValueError(
            f"state_dict was saved with k={sub['k']}, num_extra={sub['num_extra']}; this "
            f"optimizer has k={opt.k}, num_extra={opt.num_extra}; build the optimizer with "
            "the same k and num_extra to resume"
        )
    shapes = _shapes(opt)
    saved_shapes = sub.get("shapes")
    if saved_shapes is not None and [list(s) for s in saved_shapes] != shapes:
        saved = [tuple(s) for s in saved_shapes]
        here = [tuple(s) for s in shapes]
        raise ValueError(
            f"state_dict is for a different model: its parameter shapes are {saved[:6]}"
            f"{' ...' if len(saved) > 6 else ''}, this optimizer's are {here[:6]}"
            f"{' ...' if len(here) > 6 else ''}; load the checkpoint into the architecture "
            "it was saved from"
        )
    basis, eig = _checked_basis(sub, n, opt.k + opt.num_extra)
    if (opt.source is None) != (sub.get("source") is None):
        raise ValueError(
            "state_dict was saved by a wrapper with "
            f"{'a subspace source' if sub.get('source') is not None else 'a curvature operator'}"
            "; build the optimizer the same way to resume"
        )
    if opt.source is not None:
        opt.source.check_state_dict(sub["source"])
    try:  # validate the generator state on a scratch generator before changing anything
        torch.Generator(device=opt.generator.device).set_state(sub["generator"])
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"state_dict['subspace']['generator'] is not a valid state for a generator on "
            f"{opt.generator.device} ({exc})"
        ) from exc
    return _Restore(sub=sub, basis=basis, eigenvalues=eig)


def _checked_basis(sub: dict[str, Any], n: int, width: int) -> tuple[Tensor | None, Tensor | None]:
    """The saved basis ``(n, width)`` and eigenvalues ``(width,)``, both or neither, finite."""
    basis, eig = sub["basis"], sub["eigenvalues"]
    if basis is not None and tuple(basis.shape) != (n, width):
        raise ValueError(f"saved basis has shape {tuple(basis.shape)}, expected ({n}, {width})")
    if eig is not None and tuple(eig.shape) != (width,):
        raise ValueError(f"saved eigenvalues have shape {tuple(eig.shape)}, expected ({width},)")
    if (basis is None) != (eig is None):
        raise ValueError("state_dict holds a basis without eigenvalues (or the reverse)")
    if basis is not None and not (
        bool(torch.isfinite(basis).all()) and bool(torch.isfinite(eig).all())
    ):
        raise ValueError(
            "the saved basis or eigenvalues hold NaN/Inf: the checkpoint is corrupted. Set "
            "state_dict['subspace']['basis'] and ['eigenvalues'] to None to recompute them "
            "at the next step"
        )
    return basis, eig


def restored_state(opt: Any, restore: _Restore) -> ProjectionState:
    """The wrapper's :class:`~subspace_optim.optim._state.ProjectionState` from a validated
    ``"subspace"`` entry (a new value; ``opt`` is not changed)."""
    sub = restore.sub
    device, dtype = opt.generator.device, opt._vec.dtype
    basis = restore.basis
    if basis is not None:
        basis = basis.to(device=device, dtype=dtype).clone()
        if needs_reorthonormalization(basis):
            basis = orthonormalize(basis, generator=opt.generator)
    eig = restore.eigenvalues
    return ProjectionState(
        step=int(sub["step"]),
        active_k=int(sub.get("active_k", opt.k)),
        basis=basis,
        eigenvalues=None if eig is None else eig.to(device=device, dtype=dtype).clone(),
        last_result=opt.subspace.last_result,
        unstable=bool(sub.get("unstable", False)),
        counters={**opt.subspace.counters, **sub["counters"]},
    )


def _apply(opt: Any, restore: _Restore) -> None:
    """Restore the validated subspace entry into ``opt``: its state as one new value, then
    the schedule, eigensolver, generator and source, each through its own
    ``load_state_dict``."""
    sub = restore.sub
    opt.subspace = restored_state(opt, restore)
    opt.schedule.load_state_dict(sub["schedule"])
    opt.eigensolver.load_state_dict(sub.get("eigensolver", {}))
    opt.generator.set_state(sub["generator"])
    if opt.source is not None:
        opt.source.load_state_dict(sub["source"])


def delegate_to_base(
    opt: Any,
    *,
    extra: Callable[[Any], dict[str, Any]] | None = None,
    check: Callable[[Any, dict[str, Any]], Any] | None = None,
    restore: Callable[[Any, Any], None] | None = None,
) -> None:
    """Make ``opt``'s checkpoint its base optimizer's, through torch's own hooks.

    For an optimizer that shares ``param_groups`` and ``state`` with ``opt.base`` (a
    wrapper): ``state_dict()`` returns ``opt.base.state_dict()`` plus ``extra(opt)``;
    ``load_state_dict(sd)`` first calls ``check(opt, sd)`` (which raises before anything
    changes, and returns what ``restore`` needs), lets torch check and load the groups and
    state, hands them to ``opt.base.load_state_dict`` (so the base's own checks, hooks and
    bookkeeping run and the sharing is kept), then calls ``restore(opt, checked)``.
    Hooks the user registers on ``opt`` run after these, as torch orders them.
    """
    pending: list[Any] = []  # from the load pre-hook to the load post-hook

    def save(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        out = dict(optimizer.base.state_dict())
        if extra is not None:
            out.update(extra(optimizer))
        return out

    def pre_load(optimizer: Any, state_dict: dict[str, Any]) -> None:
        checked = None if check is None else check(optimizer, state_dict)
        pending.clear()
        pending.append(checked)

    def post_load(optimizer: Any) -> None:
        # torch loaded the groups and state into the wrapper's own attributes; the base
        # optimizer owns them: hand them over, and share the base's again
        loaded = pack(optimizer.state, optimizer.param_groups)
        optimizer.param_groups = optimizer.base.param_groups
        optimizer.state = optimizer.base.state
        optimizer.base.load_state_dict(loaded)
        optimizer.param_groups = optimizer.base.param_groups
        optimizer.state = optimizer.base.state
        checked = pending.pop() if pending else None
        if restore is not None:
            restore(optimizer, checked)

    opt.register_state_dict_post_hook(save, prepend=True)
    opt.register_load_state_dict_pre_hook(pre_load, prepend=True)
    opt.register_load_state_dict_post_hook(post_load, prepend=True)


def register(opt: Optimizer) -> None:
    """Install the projection wrapper's checkpoint hooks (once, from its constructor)."""
    delegate_to_base(
        opt,
        extra=lambda o: {"subspace": subspace_state(o)},
        check=_validate,
        restore=_apply,
    )
