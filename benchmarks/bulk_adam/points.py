"""The study's sizes and setups, and its points: one ``run`` of the Adam family as
``subspace-optim reproduce --optimizers adam ...`` makes it (the sweep and the fixed
switch steps)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from subspace_optim.experiments import (
    FAMILIES,
    RunConfig,
    Setup,
    half_sum_mse,
    load_digits,
    load_setup,
    mlp,
    run,
)


@dataclass(frozen=True)
class Study:
    """The sizes of one study; :data:`FULL` and :data:`QUICK` below."""

    setup: str  # "digits" (the CLI's default setup) or "quick"
    lr: float  # Adam's default learning rate (the mechanism runs at it)
    lrs: tuple[float, ...]  # the sweep
    fixed: tuple[int, ...]  # fixed switch steps
    sample_every: int  # the mechanism's trajectory table
    residual_every: int  # eigen-residual checks of the warm basis
    head: int  # "early" / "late" windows of the mechanism's per-step series
    seed: int = 0


FULL = Study(
    "digits", 1e-3, (3e-4, 5e-4, 7e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 1e-2), (100, 300, 500), 20, 20, 20
)
QUICK = Study("quick", 1e-3, (1e-3, 3e-3), (10, 20), 5, 5, 5)

#: the quick setup: digits at a size that runs the whole study in about a minute
QUICK_EXAMPLES = 150
QUICK_WIDTHS = (64, 16, 16, 10)
QUICK_DEFAULTS: dict[str, Any] = {
    "steps": 60,
    "switch": 0.35,
    "switch_by": 30,
    "switch_after": 10,
    "after_switch": 15,
    "check_every": 5,
    "k": 3,
    "batch_size": 25,
    "solver": "warm",
}


def make_setup(study: Study) -> Setup:
    """The CLI's ``digits`` setup, or the quick one (same data, loss and network family)."""
    if study.setup == "digits":
        return load_setup("digits", seed=study.seed)
    X, Y, _ = load_digits(QUICK_EXAMPLES)
    model = mlp(QUICK_WIDTHS, generator=torch.Generator().manual_seed(study.seed))
    return Setup(
        "digits-bulk-adam-quick",
        model,
        half_sum_mse,
        (X, Y),
        defaults=dict(QUICK_DEFAULTS),
        description=f"scikit-learn digits, {QUICK_EXAMPLES} examples, MLP "
        f"{'-'.join(map(str, QUICK_WIDTHS))} (tanh), MSE, k={QUICK_DEFAULTS['k']}",
    )


def config_for(setup: Setup, lr: float, switch: int | None, seed: int) -> RunConfig:
    """The settings ``subspace-optim reproduce --optimizers adam --lr adam=LR [--switch N]``
    gives: the setup's defaults; a fixed switch step drops the rule's minimum and fallback
    steps (as the CLI does), and keeps ``after_switch``."""
    s = dict(setup.defaults)
    s.update(optimizers="adam", lr={"adam": lr}, seed=seed)
    if switch is not None:
        s["switch"] = switch
        s.pop("switch_by", None)
        s.pop("switch_after", None)
    return RunConfig(**s)


def run_point(setup: Setup, config: RunConfig) -> dict[str, Any]:
    """One ``run`` of the Adam family; what the study reports of it."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = run(
            setup.model, setup.loss_fn, setup.train_data, config, setup=setup.name, progress=False
        )
    except FloatingPointError as exc:  # Adam diverged before the switch: reported as such
        return {"lr": config.lr_for(FAMILIES["adam"]), "error": str(exc)}
    (fam,) = result.families
    first = next(r for r in fam.rows if r["variant"] == "base" and r["phase"] == "after switch")
    out: dict[str, Any] = {
        "lr": fam.lr,
        "switch_step": fam.switch_step,
        "switch_reason": fam.switch_reason,
        "chi_at_switch": fam.chi_at_switch,
        "chi_ema": fam.alignment_ema,
        "lambda_1_at_switch": first.get("eig_0", math.nan),
        "initial_loss": fam.initial_loss,
        "loss_at_switch": fam.loss_at_switch,
        "runs": {
            v: {
                "final_loss": r.final_loss,
                "progress": r.progress,
                "status": r.status,
                "removed_fraction": r.removed_fraction,
                "steps_run": r.steps_run,
            }
            for v, r in fam.runs.items()
        },
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
    return out


def _say_point(p: dict[str, Any]) -> str:
    if "error" in p:
        return f"lr {p['lr']:g}: {p['error']}"
    return (
        f"lr {p['lr']:g}: switch {p['switch_reason']} at {p['switch_step']} "
        f"(χ_k {p['chi_at_switch']:.2f}, EMA {p['chi_ema']:.2f}), Bulk progress "
        f"{p['runs']['bulk']['progress']:.2f}, Dom {p['runs']['dom']['progress']:.2f} "
        f"({p['seconds']:.0f} s)"
    )
