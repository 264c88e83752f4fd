"""Every read of `torch.amp.GradScaler`'s private state, and the wrapper's scaler checks.

A scaler records, per ``id(optimizer)``, what it did to that optimizer's gradients since its
last ``update()`` (``_per_optimizer_states[id(opt)]["stage"]``: ``READY``, ``UNSCALED`` or
``STEPPED``), and keeps its loss scale in ``_scale`` (``None`` until it has scaled
anything). torch has no public accessor for either, so this is the only module that reads
them; ``tests/test_scaler_private_state.py`` fails loudly if torch renames them. Where they
are missing (an old or future torch), :func:`supports_checks` is ``False`` and the checks
are skipped rather than guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim import Optimizer

__all__ = ["STAGES", "check_grad_scaler", "has_scaled", "stage", "supports_checks"]

#: the stage names a scaler records per optimizer
STAGES = ("READY", "UNSCALED", "STEPPED")


def supports_checks(scaler: torch.amp.GradScaler) -> bool:
    """The scaler keeps the per-optimizer bookkeeping these checks read."""
    return hasattr(scaler, "_per_optimizer_states") and hasattr(scaler, "_scale")


def has_scaled(scaler: torch.amp.GradScaler) -> bool:
    """The scaler has scaled a loss (its scale tensor exists)."""
    return getattr(scaler, "_scale", None) is not None


def stage(scaler: torch.amp.GradScaler, optimizer: Optimizer) -> str:
    """One of :data:`STAGES`: what ``scaler`` did to ``optimizer``'s gradients since its
    last ``update()``, read without adding an entry to the scaler's table."""
    states = getattr(scaler, "_per_optimizer_states", {})
    state = states.get(id(optimizer))
    if state is None:
        return "READY"
    value = state.get("stage")
    return getattr(value, "name", str(value))


def check_grad_scaler(
    scaler: torch.amp.GradScaler | None,
    wrapper: Optimizer,
    inner: Sequence[Optimizer],
    *,
    closure: bool,
) -> None:
    """Inside ``wrapper.step``: refuse a step whose gradients are still scaled, unscaled
    twice, or produced by a closure the scaler cannot see. Raises before anything changes.

    Args:
        scaler: the loop's scaler, or ``None`` (nothing is checked).
        wrapper: the optimizer the loop should pass to ``scaler.step``.
        inner: the optimizers ``wrapper`` steps through (sharing its gradients).
        closure: a closure was passed to the step.

    Raises:
        ValueError: a closure with a scaler attached.
        RuntimeError: the gradients are still scaled, were unscaled twice, or the wrapper
            was already stepped since the scaler's last ``update()``.
    """
    if scaler is None or not scaler.is_enabled() or not supports_checks(scaler):
        return
    if not has_scaled(scaler):
        return
    own = stage(scaler, wrapper)
    touched = [o for o in inner if stage(scaler, o) != "READY"]
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
    if own == "UNSCALED" and touched:
        names = ", ".join(type(o).__name__ for o in touched)
        raise RuntimeError(
            f"the gradients were unscaled twice: scaler.unscale_ ran on the wrapper and on the "
            f"optimizer it wraps ({names}), which share the gradients. Call "
            "scaler.unscale_(opt) and scaler.step(opt) on the wrapper only; skip this "
            "iteration (opt.zero_grad(), scaler.update()) and go on"
        )
    if own == "READY" and not touched:
        raise RuntimeError(
            "the gradients are still multiplied by the GradScaler's loss scale: opt.step() was "
            "called directly after scaler.scale(loss).backward(). Use scaler.step(opt) (it "
            "unscales, skips the step on inf/NaN, and calls opt.step()), then scaler.update()"
        )
