"""Who may step a wrapped optimizer, and the checks a wrapper step makes before it starts.

Once :class:`~subspace_optim.SubspaceProjectedOptimizer` wraps an optimizer, stepping that
optimizer (or any optimizer it steps through, see
:class:`~subspace_optim.optim.CompositeOptimizer`) by another route than the wrapper's own
``step`` bypasses the projection: a silent wrong result. The usual way to do it by mistake
is ``scaler.step(base)`` in an AMP loop. :func:`guard` registers a step pre-hook on each
wrapped optimizer that refuses such a step before it changes anything; the wrapper marks the
optimizers it is stepping with :func:`stepping`. The hook holds the wrapper weakly: once the
wrapper is gone, the base steps freely again.

This module knows no particular optimizer: composite ones answer through the protocol.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from . import _scaler
from .protocol import CompositeOptimizer, inner_chain

#: attribute set on a wrapped optimizer while a wrapper is stepping it (a depth counter)
_IN_STEP = "_subspace_optim_in_step"
#: attribute of a wrapped optimizer listing weak references to its wrappers
_OWNERS = "_subspace_optim_owners"
#: each live wrapper -> the optimizers it guards, outermost first (see :func:`guarded_chain`)
_GUARDED: weakref.WeakKeyDictionary[Any, list[Optimizer]] = weakref.WeakKeyDictionary()


def bypass_message(optimizer: Optimizer, owner: Any) -> str:
    return (
        f"this {type(optimizer).__name__} is wrapped by a SubspaceProjectedOptimizer "
        f"(mode={owner.mode!r}); stepping it directly bypasses the projection. Step the "
        "wrapper instead: opt.step(), or scaler.step(opt) with a torch.amp.GradScaler (not "
        "scaler.step(opt.base)); with SAM's two-call API call sam.unperturb() and then "
        "opt.step() instead of sam.second_step(). To train the optimizer unprojected again, "
        "drop the wrapper (del opt) or use mode='none'"
    )


def guard(owner: Any, optimizers: list[Optimizer]) -> None:
    """Refuse steps of ``optimizers`` that do not come from ``owner.step``."""
    ref = weakref.ref(owner)

    def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        check_not_bypassed(optimizer, ref)

    for optimizer in optimizers:
        handle = optimizer.register_step_pre_hook(hook)
        weakref.finalize(owner, handle.remove)
        optimizer.__dict__.setdefault(_OWNERS, []).append(ref)
    _GUARDED.setdefault(owner, []).extend(optimizers)


def guarded_chain(optimizer: Any) -> list[Optimizer] | None:
    """The optimizers ``optimizer`` guards as a wrapper (its base's :func:`inner_chain`,
    outermost first), or ``None`` when it guards none: how an optimizer learns that it was
    handed a wrapper, without importing one."""
    chain = _GUARDED.get(optimizer)
    return None if chain is None else list(chain)


def check_not_bypassed(optimizer: Optimizer, ref: Any = None) -> None:
    """Raise ``RuntimeError`` if a live wrapper owns ``optimizer`` and is not stepping it.

    Composite optimizers call this before stepping their inner optimizer by a route that
    would bypass a wrapper (SAM's ``second_step``).
    """
    if getattr(optimizer, _IN_STEP, 0) > 0:
        return
    refs = [ref] if ref is not None else optimizer.__dict__.get(_OWNERS, [])
    for r in refs:
        owner = r()
        if owner is not None and any(o is optimizer for o in inner_chain(owner.base)):
            raise RuntimeError(bypass_message(optimizer, owner))


@contextlib.contextmanager
def stepping(optimizers: list[Optimizer]) -> Iterator[None]:
    """Mark ``optimizers`` as being stepped by their wrapper."""
    for o in optimizers:
        setattr(o, _IN_STEP, getattr(o, _IN_STEP, 0) + 1)
    try:
        yield
    finally:
        for o in optimizers:
            setattr(o, _IN_STEP, getattr(o, _IN_STEP, 1) - 1)


def check_wrappable(base: Optimizer) -> None:
    """Refuse to wrap a composite optimizer in the middle of a step."""
    if isinstance(base, CompositeOptimizer) and base.step_in_progress():
        raise ValueError(
            f"the {type(base).__name__} optimizer is in the middle of a step (for SAM: "
            "first_step() without second_step()); finish it before wrapping"
        )


def check_step_call(wrapper: Any, closure: Any) -> None:
    """Refuse, before anything changes, a wrapper step that cannot be done right: a
    composite base that is not ready, a gradient projection of a step whose first part ran
    outside the wrapper, or a misuse the attached GradScaler's bookkeeping shows."""
    base = wrapper.base
    if isinstance(base, CompositeOptimizer):
        base.check_ready_to_step(closure=closure is not None)
        if (
            closure is None
            and wrapper.project_target == "gradient"
            and wrapper.mode != "none"
            and base.step_in_progress()
        ):
            name = type(base).__name__
            raise ValueError(
                f"project='gradient' with {name}'s two-call API: its first call already "
                "moved along the unprojected gradient, outside this wrapper, so the "
                "perturbation left the subspace; use opt.step(closure) (every gradient is "
                "projected) or project='update'"
            )
    _scaler.check_grad_scaler(
        wrapper.grad_scaler, wrapper, inner_chain(base), closure=closure is not None
    )
    check_groups_in_sync(base, wrapper.covered_params())


def check_groups_in_sync(base: Optimizer, covered: Sequence[Tensor] | None) -> None:
    """Refuse a step when ``base`` trains a parameter the projection does not act on.

    Such a parameter would get the plain update, silently. It comes from a group added with
    ``base.add_param_group(...)`` behind the wrapper's back (``wrapper.add_param_group(...)``
    extends the curvature operator, or the source, too), or it was frozen
    (``requires_grad=False``) when the wrapper was built and has been unfrozen since (the
    cover was chosen then: a new wrapper around the same base, with a curvature operator or
    source built after the unfreezing, covers it). A frozen parameter is never updated, so
    it needs no cover. ``covered`` is ``None`` for an operator that is not a
    :class:`~subspace_optim.Curvature` (no ``params``): it is checked at construction only.

    Raises:
        RuntimeError: a trainable parameter of ``base`` outside ``covered``.
    """
    if covered is None:
        return
    ids = {id(p) for p in covered}
    stray = [
        tuple(p.shape)
        for g in base.param_groups
        for p in g["params"]
        if p.requires_grad and id(p) not in ids
    ]
    if stray:
        raise RuntimeError(
            f"the base optimizer trains parameters the projection does not act on (shapes "
            f"{stray[:4]}), which would get the plain, unprojected update; nothing was "
            "changed. If they were added with base.add_param_group(...) behind the wrapper, "
            "add the group through the wrapper instead, opt.add_param_group(group), which "
            "extends the curvature operator (or source) to them. If they were frozen "
            "(requires_grad=False) when the wrapper was built and have been unfrozen since, "
            "the cover was chosen then: wrap the same base optimizer again, with a curvature "
            "operator or source built after the unfreezing (the base keeps its state)"
        )
