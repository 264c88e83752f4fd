"""The study's table (markdown) from its results."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.harness import fmt, machine_line, markdown_table

from .study import TARGET_LOSS, TARGET_SIN


def to_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "## Projected training: the paper's protocol against the library default",
        "",
        machine_line(m, results["command"]),
        "",
        "All runs of a setup advance in lockstep (step t of every run, then step t + 1, in an "
        "order that rotates every step), so changes of load during the benchmark hit every "
        "row alike. BLAS threads (ARPACK's, in the paper protocol): "
        f"{m.get('blas', 'left at their default')}; *Why the benchmark caps BLAS threads* "
        "below measures what uncapped BLAS threads did to the rows that follow them, and "
        "how far two identical rows differ. "
        "Per projected step: wall time of the whole step (mini-batch gradient, refresh, "
        "projection, diagnostics), mean and median; `speedup` is the paper protocol's mean "
        "over this row's mean, in the same mode; `HVP/step` counts Hessian-vector products "
        "(a block of b counts b); `sin θ` is the largest and median sine of the largest "
        "principal angle between the basis used at a sampled step and the exact top-k there "
        "(float64, offline); `gap` is the smallest λ_k/λ_{k+1} over the samples; "
        "`Δloss` is the final full-batch loss relative to the paper-protocol run in the same mode.",
        "",
    ]
    for block in results["setups"]:
        lines += _setup_table(block)
        lines += _verdict(block)
    return "\n".join(lines)


HEADER = [
    "run",
    "ms/step mean",
    "median",
    "speedup",
    "HVP/step",
    "sin θ max",
    "sin θ median",
    "gap",
    "final loss",
    "Δloss",
]


def _setup_table(block: dict[str, Any]) -> list[str]:
    """One setup's heading, its table and each run's configuration."""
    lines: list[str] = []
    lines += [
        f"### {block['setup']}: {block['n']:,} parameters, {block['examples']} examples, "
        f"k = {block['k']}, SGD lr {block['lr']} batch {block['batch']}, switch at step "
        f"{block['switch']}, {block['steps']} projected steps (loss at switch "
        f"{block['loss_at_switch']:.4f})",
        "",
    ]
    lines.append(markdown_table(HEADER, [_row(r) for r in block["runs"]]))
    lines += ["", "Configurations:", ""]
    for r in block["runs"]:
        lines.append(f"* {r['label']}: `{r['config']}`")
    return lines


def _verdict(block: dict[str, Any]) -> list[str]:
    """The targets for the library default in each mode, and the fastest accurate row."""
    lines: list[str] = []
    lines += [
        "",
        "Targets for the library default (speedup ≥ 10×, sin θ ≤ 0.05, |Δloss| ≤ 2%):",
        "",
    ]
    for mode, v in block["verdict"].items():
        if mode == "fastest_accurate":
            continue
        lines.append(
            f"* {mode}: speedup {v['speedup']:.1f}× ({'met' if v['speedup_met'] else 'missed'}), "
            f"sin θ max {v['sin_max']:.1e} ({'met' if v['sin_met'] else 'missed'}), "
            f"Δloss {100 * v['loss_vs_reference']:+.2f}% ({'met' if v['loss_met'] else 'missed'})"
        )
    best = block["verdict"].get("fastest_accurate")
    if best is not None:
        lines.append(
            f"* fastest library row within sin θ ≤ {TARGET_SIN} and |Δloss| ≤ "
            f"{100 * TARGET_LOSS:.0f}%: {best['label']}, {best['speedup']:.1f}×"
        )
    else:
        lines.append(f"* no library row stayed within sin θ ≤ {TARGET_SIN} on every sample")
    lines.append("")
    return lines


def _row(r: dict[str, Any]) -> list[str]:
    return [
        r["label"],
        fmt(r["ms_per_step_mean"], ".1f"),
        fmt(r["ms_per_step_median"], ".1f"),
        fmt(r.get("speedup_vs_reference", math.nan), ".1f")
        + ("×" if "speedup_vs_reference" in r else ""),
        fmt(r["matvecs_per_step"], ".1f"),
        fmt(r["sin_max"], ".1e"),
        fmt(r["sin_median"], ".1e"),
        fmt(r["min_gap_ratio"], ".4f"),
        fmt(r["final_loss"], ".4f"),
        fmt(100 * r.get("loss_vs_reference", math.nan), "+.2f")
        + ("%" if "loss_vs_reference" in r else ""),
    ]
