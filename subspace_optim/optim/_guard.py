"""Who may step a wrapped optimizer, how, and the `torch.amp.GradScaler` checks of the wrapper.

Once :class:`~subspace_optim.SubspaceProjectedOptimizer` wraps an optimizer, stepping that
optimizer (or, for a :class:`~subspace_optim.SAM` base, the optimizer inside SAM) by any
other route than the wrapper's own ``step`` bypasses the projection: a silent wrong result.
The usual way to do it by mistake is ``scaler.step(base)`` in an AMP loop. :func:`guard`
registers a step pre-hook on each wrapped optimizer that refuses such a step before it
changes anything; the wrapper marks the optimizers it is stepping with :func:`stepping`.
The hook holds the wrapper weakly: once the wrapper is gone, the base steps freely again.

:func:`check_grad_scaler` reads a scaler's per-optimizer bookkeeping (``unscale_`` and
``step`` record a stage per ``id(optimizer)``) to tell, inside the wrapper's step, whether
the gradients were unscaled exactly once.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.optim import Optimizer

#: attribute set on a wrapped optimizer while a wrapper is stepping it (a depth counter)
_IN_STEP = "_subspace_optim_in_step"


def chain(base: Optimizer) -> list[Optimizer]:
    """``base`` and the optimizers it steps through (our SAM's inner optimizer)."""
    from .sam import SAM

    out = [base]
    while isinstance(out[-1], SAM):
        out.append(out[-1].base)
    return out


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
        owners = optimizer.__dict__.setdefault("_subspace_optim_owners", [])
        owners.append(ref)


def check_not_bypassed(optimizer: Optimizer, ref: Any = None) -> None:
    """Raise ``RuntimeError`` if a live wrapper owns ``optimizer`` and is not stepping it."""
    if getattr(optimizer, _IN_STEP, 0) > 0:
        return
    refs = [ref] if ref is not None else optimizer.__dict__.get("_subspace_optim_owners", [])
    for r in refs:
        owner = r()
        if owner is not None and any(o is optimizer for o in chain(owner.base)):
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


def check_step_call(wrapper: Any, closure: Any) -> None:
    """Refuse, before anything changes, a wrapper step that cannot be done right: a SAM base
    mid-step or without its gradients, SAM's two-call API with gradient projection, or a
    misuse the attached GradScaler's bookkeeping shows."""
    from .sam import SAM

    base = wrapper.base
    if isinstance(base, SAM):
        if base._perturbed:
            raise RuntimeError(
                "SAM is at its perturbed point (first_step() was called): call "
                "sam.unperturb() after the backward pass at θ + ε, then opt.step() (or "
                "scaler.step(opt))"
            )
        if closure is None and not base.awaiting_step:
            raise ValueError(
                "a SAM base needs opt.step(closure), the closure recomputing the loss and "
                "calling backward(); loops that cannot pass one (a GradScaler) use "
                "loss.backward(); sam.first_step(zero_grad=True); "
                "loss_at_perturbed.backward(); sam.unperturb(); opt.step()"
            )
        if closure is None and wrapper.project_target == "gradient" and wrapper.mode != "none":
            raise ValueError(
                "project='gradient' with SAM's two-call API: first_step() already moved "
                "along the unprojected gradient, outside this wrapper, so the perturbation "
                "left the subspace; use opt.step(closure) (both gradients are projected) "
                "or project='update'"
            )
    check_grad_scaler(wrapper.grad_scaler, wrapper, closure=closure is not None)


# --------------------------------------------------------------------------- GradScaler


def _stage(scaler: torch.amp.GradScaler, optimizer: Optimizer) -> str:
    """``"READY"``, ``"UNSCALED"`` or ``"STEPPED"``: what ``scaler`` did to ``optimizer``'s
    gradients since its last ``update()`` (read without adding an entry)."""
    states = getattr(scaler, "_per_optimizer_states", {})
    state = states.get(id(optimizer))
    if state is None:
        return "READY"
    stage = state.get("stage")
    return getattr(stage, "name", str(stage))


def supports_checks(scaler: torch.amp.GradScaler) -> bool:
    """The scaler keeps the per-optimizer bookkeeping these checks read (torch >= 1.6)."""
    return hasattr(scaler, "_per_optimizer_states") and hasattr(scaler, "_scale")


def check_grad_scaler(
    scaler: torch.amp.GradScaler | None, wrapper: Optimizer, *, closure: bool
) -> None:
    """Inside ``wrapper.step``: refuse a step whose gradients are still scaled, unscaled twice,
    or produced by a closure the scaler cannot see. Raises before anything changes."""
    if scaler is None or not scaler.is_enabled() or not supports_checks(scaler):
        return
    if scaler._scale is None:  # the scaler has not scaled anything yet
        return
    own = _stage(scaler, wrapper)
    inner = [o for o in chain(wrapper.base) if _stage(scaler, o) != "READY"]  # type: ignore[attr-defined]
    if closure:
        raise ValueError(
            "a torch.amp.GradScaler is attached (grad_scaler=...) but step() got a closure: the "
            "scaler cannot unscale or inf-check the gradients the closure produces (GradScaler "
            "refuses closures). For SAM use its two-call API: scaler.scale(loss).backward(); "
            "sam.first_step(zero_grad=True); scaler.scale(loss_at_perturbed).backward(); "
            "sam.unperturb(); scaler.step(opt); scaler.update()"
        )
    if own == "STEPPED":
        raise RuntimeError(
            "scaler.step(opt) already stepped this optimizer since the last scaler.update(); "
            "call scaler.update() and compute new gradients before the next step"
        )
    if own == "UNSCALED" and inner:
        names = ", ".join(type(o).__name__ for o in inner)
        raise RuntimeError(
            f"the gradients were unscaled twice: scaler.unscale_ ran on the wrapper and on the "
            f"optimizer it wraps ({names}), which share the gradients. Call "
            "scaler.unscale_(opt) and scaler.step(opt) on the wrapper only; skip this "
            "iteration (opt.zero_grad(), scaler.update()) and go on"
        )
    if own == "READY" and not inner:
        raise RuntimeError(
            "the gradients are still multiplied by the GradScaler's loss scale: opt.step() was "
            "called directly after scaler.scale(loss).backward(). Use scaler.step(opt) (it "
            "unscales, skips the step on inf/NaN, and calls opt.step()), then scaler.update()"
        )
