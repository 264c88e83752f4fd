"""The Bulk-Adam study's key numbers, derived from its measurements only (the page's "In
short" and the README quote these; ``--render`` derives them again from the JSON)."""

from __future__ import annotations

import math
import statistics
from typing import Any

#: Bulk "trains like Adam" when its progress relative to Adam is at least this
LIKE_ADAM = 0.9


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.fmean(xs) if xs else math.nan


def _progress(at_switch: float, final: float, base_final: float) -> float:
    gain = at_switch - base_final
    return (at_switch - final) / gain if gain > 0 and math.isfinite(final) else math.nan


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The study's key numbers (the page's "In short" and the README quote these)."""
    head = results["study"]["head"]
    sweep = [p for p in results["lr_sweep"] if "error" not in p]
    default = next(p for p in sweep if p["lr"] == results["study"]["lr"])
    mech = results["mechanism"]
    runs = mech["runs"]
    base_final = runs["base"]["final_loss"]
    names = ("base", "bulk", "bulk_lanczos")

    return {
        "rule": {
            "lr": default["lr"],
            "switch_step": default["switch_step"],
            "switch_reason": default["switch_reason"],
            "chi_at_switch": default["chi_at_switch"],
            "chi_ema": default["chi_ema"],
            "loss_at_switch": default["loss_at_switch"],
            "bulk_progress": default["runs"]["bulk"]["progress"],
            "dom_progress": default["runs"]["dom"]["progress"],
        },
        "fixed": [
            {
                "switch_step": p["switch_step"],
                "chi_at_switch": p["chi_at_switch"],
                "bulk_progress": p["runs"]["bulk"]["progress"],
            }
            for p in results["fixed_switch"]
            if "error" not in p
        ],
        "sweep": _sweep_summary(results, sweep),
        "mechanism": {
            **{n: _run_summary(runs[n], mech["loss_at_switch"], base_final, head) for n in names},
            # the instrumented runs retrace run()'s: their final losses against run()'s
            "vs_run": {
                "base": abs(runs["base"]["final_loss"] - default["runs"]["base"]["final_loss"]),
                "bulk": abs(runs["bulk"]["final_loss"] - default["runs"]["bulk"]["final_loss"]),
                "loss_at_switch": abs(mech["loss_at_switch"] - default["loss_at_switch"]),
            },
        },
    }


def _sweep_summary(results: dict[str, Any], sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Which learning rates switched by the rule, kept Bulk like Adam, both, or diverged."""
    return {
        "by_rule": [p["lr"] for p in sweep if p["switch_reason"] == "threshold"],
        "bulk_like_adam": [p["lr"] for p in sweep if p["runs"]["bulk"]["progress"] >= LIKE_ADAM],
        "both": [
            p["lr"]
            for p in sweep
            if p["switch_reason"] == "threshold" and p["runs"]["bulk"]["progress"] >= LIKE_ADAM
        ],
        "diverged_before_switch": [p["lr"] for p in results["lr_sweep"] if "error" in p],
    }


def _run_summary(
    r: dict[str, Any], loss_at_switch: float, base_final: float, head: int
) -> dict[str, Any]:
    """One instrumented run's numbers: progress, the identity error, the early and late
    windows (``head`` steps) of its series, the first-order split and the residuals."""
    s = r["series"]
    out = {
        "final_loss": r["final_loss"],
        "progress": _progress(loss_at_switch, r["final_loss"], base_final),
        "identity_rel_error_max": max(s["identity_rel_error"]),
        "identity_rel_error_median": statistics.median(s["identity_rel_error"]),
        "update_alignment_early": _mean(s["update_alignment"][:head]),
        "update_alignment_late": _mean(s["update_alignment"][-head:]),
        "update_alignment_vs_wrapper_max": max(
            abs(a - b)
            for a, b in zip(s["update_alignment"], s["update_alignment_wrapper"])
            if math.isfinite(b)
        ),
        "chi_early": _mean(s["chi"][:head]),
        "chi_late": _mean(s["chi"][-head:]),
        "m_norm_start": s["m_norm"][0],
        "m_norm_end": s["m_norm"][-1],
        "m_dom_norm_start": s["m_dom_norm"][0],
        "m_dom_norm_end": s["m_dom_norm"][-1],
        "lambda_1_start": s["lambda_1"][0],
        "lambda_1_end": s["lambda_1"][-1],
        "lambda_1_max": max(s["lambda_1"]),
        "first_order": {key: sum(s[key]) for key in ("leak", "rest", "dom", "realized")},
        "loss_change": r["final_loss"] - r["loss_start"],
        # what the first-order sum misses: the second- and higher-order terms
        "higher_order": r["final_loss"] - r["loss_start"] - sum(s["realized"]),
        "max_rel_residual": max((x["max_rel_residual"] for x in r["residuals"]), default=math.nan),
        "unconverged_refreshes": r["counters"].get("unconverged", 0.0),
        "refreshes": r["counters"].get("refreshes", math.nan),
    }
    return out
