"""What the report computes from the runs: mean curves over seeds, the target, steps- and
time-to-target, overheads, and the verdict. Pure functions of the JSON records."""

from __future__ import annotations

import math
import statistics
from typing import Any

SPEEDUP_TARGET = 0.6  # the best subspace arm must reach the target in ≤ 0.6× AdamW's time


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def mean_curve(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Mean and std over seeds of the validation loss, and the mean training seconds, at
    the evaluation steps every seed reached (a diverged seed shortens the curve)."""
    n = min(len(r["eval_steps"]) for r in runs)
    cols = [[r["val_loss"][i] for r in runs] for i in range(n)]
    return {
        "steps": runs[0]["eval_steps"][:n],
        "val_mean": [_mean(c) for c in cols],
        "val_std": [_std(c) for c in cols],
        "seconds": [_mean([r["train_seconds"][i] for r in runs]) for i in range(n)],
    }


def equal_load(runs: list[dict[str, Any]], timing: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The runs on the equal-load clock: each run's training seconds rebuilt as steps × its
    arm's median ms per step from the side-by-side timing (``timing.py``), and its ms
    per step and per ``opt.step()`` taken from there; the clock the run measured is kept as
    ``measured_seconds`` and ``measured_step_ms``. Without timing, the runs unchanged."""
    if not timing:
        return runs
    out = []
    for r in runs:
        t = timing["arms"].get(r["arm"])
        if t is None:
            out.append(r)
            continue
        out.append({
            **r,
            "measured_seconds": r["train_seconds"],
            "measured_step_ms": r["step_ms"],
            "train_seconds": [n * t["step_ms"] / 1000 for n in r["eval_steps"]],
            "step_ms": t["step_ms"],
            "opt_step_ms": t["opt_step_ms"],
        })  # fmt: skip
    return out


def crossing(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first ``x`` where ``ys`` comes down to ``target``, linearly interpolated between
    neighbouring points; ``None`` when it never does."""
    for i, y in enumerate(ys):
        if not math.isfinite(y) or y > target:
            continue
        if i == 0 or not math.isfinite(ys[i - 1]):
            return xs[i]
        y0 = ys[i - 1]
        frac = (y0 - target) / (y0 - y) if y0 != y else 1.0
        return xs[i - 1] + frac * (xs[i] - xs[i - 1])
    return None


def summarize(runs: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """One arm's row: final loss (mean ± std), steps/time to ``target`` on the mean curve,
    ms per training step and per ``opt.step()``."""
    curve = mean_curve(runs)
    finals = [r["val_loss"][-1] if not r["diverged"] else math.nan for r in runs]
    row = {
        "seeds": len(runs),
        "final_mean": _mean(finals),
        "final_std": _std(finals),
        "diverged": sum(bool(r["diverged"]) for r in runs),
        "step_ms": _mean([r["step_ms"] for r in runs]),
        "opt_step_ms": _mean([r["opt_step_ms"] for r in runs]),
        "steps_to_target": None,
        "seconds_to_target": None,
    }
    row["measured_seconds_to_target"] = None
    if target is not None:
        row["steps_to_target"] = crossing(curve["steps"], curve["val_mean"], target)
        row["seconds_to_target"] = crossing(curve["seconds"], curve["val_mean"], target)
        if all("measured_seconds" in r for r in runs):
            measured = mean_curve([{**r, "train_seconds": r["measured_seconds"]} for r in runs])
            row["measured_seconds_to_target"] = crossing(
                measured["seconds"], measured["val_mean"], target
            )
    return row


def tuned_baseline(rows: dict[str, dict[str, Any]], families: dict[str, str]) -> str | None:
    """The AdamW sweep arm with the lowest mean final validation loss."""
    sweep = {
        n: r for n, r in rows.items() if families[n] == "adamw" and math.isfinite(r["final_mean"])
    }
    return min(sweep, key=lambda n: sweep[n]["final_mean"]) if sweep else None


def summarize_all(runs: list[dict[str, Any]], families: dict[str, str]) -> dict[str, Any]:
    """Rows for every arm, the tuned baseline, its target and each arm's time ratio and
    overheads against it."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    first = {n: summarize(rs, None) for n, rs in by_arm.items()}
    tuned = tuned_baseline(first, families)
    target = first[tuned]["final_mean"] if tuned else None
    rows = {n: summarize(rs, target) for n, rs in by_arm.items()}
    base = rows.get(tuned or "", {})
    for row in rows.values():
        t, t0 = row["seconds_to_target"], base.get("seconds_to_target")
        row["time_ratio"] = t / t0 if t is not None and t0 else None
        m, m0 = row["measured_seconds_to_target"], base.get("measured_seconds_to_target")
        row["measured_time_ratio"] = m / m0 if m is not None and m0 else None
        # the optimizer's extra time per step, and that as a share of a plain AdamW step
        row["opt_overhead_ms"] = row["opt_step_ms"] - base["opt_step_ms"] if base else None
        row["opt_overhead_frac"] = row["opt_overhead_ms"] / base["step_ms"] if base else None
    return {"tuned": tuned, "target": target, "rows": rows}


def _faster(row: dict[str, Any], other: dict[str, Any] | None) -> bool:
    """``row`` reaches the target, and ``other`` is missing, never reaches it or is slower."""
    if row["seconds_to_target"] is None:
        return False
    return (
        other is None
        or other["seconds_to_target"] is None
        or row["seconds_to_target"] < other["seconds_to_target"]
    )


def _best(rows: dict[str, dict[str, Any]], names: list[str]) -> str | None:
    """The fastest to the target among ``names``; if none reaches it, the lowest final loss."""
    if not names:
        return None
    reached = [n for n in names if rows[n]["seconds_to_target"] is not None]
    if reached:
        return min(reached, key=lambda n: rows[n]["seconds_to_target"])
    return min(
        names,
        key=lambda n: rows[n]["final_mean"] if math.isfinite(rows[n]["final_mean"]) else math.inf,
    )


def _names(
    rows: dict[str, Any],
    families: dict[str, str],
    family: str,
    kinds: dict[str, str],
    kind: str | None = None,
) -> list[str]:
    return [n for n in rows if families[n] == family and (kind is None or kinds[n] == kind)]


def _how(row: dict[str, Any], tuned: str, target: float) -> str:
    if row["seconds_to_target"] is None:
        return (
            f"does not reach the tuned AdamW's ({tuned}) final validation loss {target:.4f} "
            f"(its own final loss is {row['final_mean']:.4f})"
        )
    fast = row["time_ratio"] <= SPEEDUP_TARGET
    return (
        f"reaches the tuned AdamW's ({tuned}) final validation loss {target:.4f} at step "
        f"{row['steps_to_target']:.0f}, in {row['time_ratio']:.2f}× its training time "
        f"({'within' if fast else 'over'} the {SPEEDUP_TARGET:g}× target)"
    )


def verdict(
    summary: dict[str, Any], families: dict[str, str], kinds: dict[str, str]
) -> dict[str, Any]:
    """Does the best subspace arm (the fastest to the target) reach the tuned AdamW's final
    validation loss in ≤ 0.6× its training time, and faster than the best arm of each
    control (``adamw-lrx*``, ``blockscale-*``)? A record with ``passed`` and the sentence
    the page prints."""
    rows, tuned = summary["rows"], summary["tuned"]
    best = _best(rows, _names(rows, families, "source", kinds))
    controls = {
        "AdamW lr×γ": _best(rows, _names(rows, families, "control", kinds, "adamw")),
        "block-scale": _best(rows, _names(rows, families, "control", kinds, "blockscale")),
    }
    if tuned is None or best is None:
        missing = "no tuned AdamW arm" if tuned is None else "no subspace arm"
        text = f"No verdict: {missing} in these results."
        return {"passed": False, "best": best, "controls": controls, "text": text}
    row = rows[best]
    fast = row["time_ratio"] is not None and row["time_ratio"] <= SPEEDUP_TARGET
    beats = {label: _faster(row, rows[c] if c else None) for label, c in controls.items()}
    passed = fast and all(beats.values())
    against = "; ".join(
        f"{'beats' if ok else 'does not beat'} the {label} control ({controls[label] or 'not run'})"
        for label, ok in beats.items()
    )
    head = "Target met" if passed else "Target not met"
    text = f"{head}: the best subspace arm, {best}, {_how(row, tuned, summary['target'])}; it {against}."
    return {
        "passed": passed,
        "best": best,
        "controls": controls,
        "beats": beats,
        "ratio": row["time_ratio"],
        "text": text,
    }
