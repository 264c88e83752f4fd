"""What the subspace-sources study shows, in sentences computed from its numbers (a claim
of the literature is said to hold or fail here by the same rule every time)."""

from __future__ import annotations

import math
from typing import Any

from .summary import LABEL


def findings(name: str, block: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """Sentences computed from the numbers, including where the follow-up claims fail here."""
    pts = block["trajectory"]["points"]
    after = [p for p in pts if p["step"] >= block["config"]["switch"]] or pts
    out = _subspaces(pts, after, s)
    out += _costs(block, after)
    out += _bases(s["runs"])
    out += _sweep(s["sweep"])
    out += _grid(block, s)
    return out


def _subspaces(pts: list[dict], after: list[dict], s: dict[str, Any]) -> list[str]:
    """The GGN and covariance claims, from the angles after the switch."""
    med = sorted(p["hessian_vs_ggn"]["sin_mean"] for p in after)[len(after) // 2]
    one = sorted(p["hessian_one_step"]["sin_mean"] for p in after if "hessian_one_step" in p)
    one_med = one[len(one) // 2] if one else math.nan
    cov = sorted(p["hessian_vs_covariance"]["sin_mean"] for p in after)[len(after) // 2]
    runs, out = s["runs"], []
    cb = runs["covariance/bulk"]["progress"]
    near = med <= max(2 * one_med, 0.1)
    first = pts[0]["hessian_vs_ggn"]["sin_mean"]
    out.append(
        f"* **GGN ≈ dominant subspace** (Zakarin & Singh): at step {pts[0]['step']} the mean sin θ "
        f"between the two top-k was {first:.3f} (large residuals: the term the GGN drops is "
        "largest there); from the switch on, the median mean "
        f"sin θ between the Hessian's and the GGN's top-k is {med:.3f}, against {one_med:.3f} "
        f"for the Hessian's own top-k one SGD step apart: "
        + ("the GGN's subspace is as close to the Hessian's as the Hessian is to itself a step later — the claim holds here." if near else "the GGN's subspace is further from the Hessian's than one SGD step moves it — the claim does not hold here.")
    )  # fmt: skip
    out.append(
        f"* **Covariance subspace** (DOME): median mean sin θ to the Hessian's top-k {cov:.3f} "
        + ("(close to it)" if cov <= 0.3 else "(largely different directions: the gradient-noise subspace is not the dominant Hessian subspace here)")
        + f". Projecting it out (Bulk, covariance basis) keeps {cb:.0%} of SGD's progress: "
        + ("DOME's 'little effect on training' holds here." if cb >= 0.9 else "more than the 'little effect on training' DOME reports.")
    )  # fmt: skip
    return out


def _costs(block: dict[str, Any], after: list[dict]) -> list[str]:
    """What a product and a refresh cost per curvature, and the gradient's alignment."""
    out = []
    cost = block["costs"]
    ratio = {c: cost[c]["block_ms_median"] / cost["hessian"]["block_ms_median"] for c in cost}
    warm = {c: cost[c]["warm_ms_median"] / cost["hessian"]["warm_ms_median"] for c in cost}
    out.append(
        "* **Cost**: per product (in a block), the GGN took "
        f"{ratio['ggn']:.2f}× and the covariance {ratio['covariance']:.2f}× the Hessian's time; "
        f"a warm refresh {warm['ggn']:.2f}× and {warm['covariance']:.2f}×. "
        + ("The GGN's products were cheaper here, as expected without a second-order pass."
           if ratio["ggn"] < 0.9 else
           "The GGN's products were not clearly cheaper here: on this model the Hessian's "
           "double backward costs about as much as the JVP and VJP (timings on a loaded CPU).")
    )  # fmt: skip
    chi = {
        c: sorted(p["grad_alignment"][c] for p in after)[len(after) // 2]
        for c in ("hessian", "ggn", "covariance")
    }
    out.append(
        "* The full-batch gradient's alignment χ_k(∇L) with each top-k (median from the switch "
        "on): "
        + ", ".join(f"{LABEL[c]} {v:.2f}" for c, v in chi.items())
        + ". A basis can hold a similar share of the gradient and still span other directions."
    )
    return out


def _bases(runs: dict[str, Any]) -> list[str]:
    """Dom and Bulk with each basis, in words."""
    out = []
    for c in ("hessian", "ggn", "covariance"):
        d, b = runs[f"{c}/dominant"]["progress"], runs[f"{c}/bulk"]["progress"]
        dom = "stalls" if d < 0.2 else ("makes partial progress" if d < 0.8 else "trains")
        bulk = (
            "trains like SGD"
            if 0.8 <= b <= 1.25
            else ("falls short of SGD" if b < 0.8 else "beats SGD")
        )
        out.append(f"* {LABEL[c]} basis: Dom {dom} (ratio {d:.2f}); Bulk {bulk} (ratio {b:.2f}).")
    return out


def _sweep(sweep: list[dict]) -> list[str]:
    """The (a, b) grid: faster than SGD, diverged, and whether the edge ratio separates them."""
    out = []
    fast = [r for r in sweep if not r["diverged"] and r["progress"] > 1.05]
    div = [r for r in sweep if r["diverged"]]
    pure = next((r for r in sweep if r["a"] == 0 and r["b"] == 1), None)
    if pure is not None:
        out.append(
            f"* **Bulk alone speeds up?** (Zakarin & Singh): (0, 1) reaches a progress ratio of "
            f"{pure['progress']:.2f} — "
            + ("faster than SGD." if pure["progress"] > 1.05 else "no faster than SGD here.")
        )
    if fast:
        best = max(fast, key=lambda r: r["progress"])
        out.append(
            "* Faster than SGD (ratio > 1.05, no divergence): "
            + ", ".join(f"({r['a']:g}, {r['b']:g})" for r in fast)
            + f"; best ({best['a']:g}, {best['b']:g}) with ratio {best['progress']:.2f}"
            + (f", {best['speedup']:.2f}× SGD's steps to SGD's final loss" if math.isfinite(best["speedup"]) else "")
            + "."
        )  # fmt: skip
    else:
        out.append("* No (a, b) in the grid trained faster than SGD (ratio > 1.05).")
    if div:
        edges = ", ".join(f"({r['a']:g}, {r['b']:g}): edge {r['edge_ratio']:.2f}" for r in div)
        out.append(f"* Diverged: {edges}.")
    else:
        hi = max(sweep, key=lambda r: r["edge_ratio"])
        out.append(
            f"* No run diverged; the largest edge ratio was {hi['edge_ratio']:.2f} at "
            f"({hi['a']:g}, {hi['b']:g})."
        )
    stable_over = [r for r in sweep if not r["diverged"] and r["edge_ratio"] > 1]
    div_under = [r for r in div if r["edge_ratio"] <= 1]
    if div and not stable_over and not div_under:
        out.append("* The edge ratio separates the runs: every run above 1 diverged, none below.")
    elif stable_over or div_under:
        top_ok = max(r["edge_ratio"] for r in sweep if not r["diverged"])
        low_bad = min((r["edge_ratio"] for r in div), default=math.nan)
        out.append(
            "* The edge ratio (a noiseless quadratic's criterion) is not the frontier here: "
            + (f"{len(stable_over)} run(s) above 1 stayed stable (" + ", ".join(f"({r['a']:g}, {r['b']:g})" for r in stable_over) + ")" if stable_over else "")
            + ("; " if stable_over and div_under else "")
            + (f"{len(div_under)} run(s) at or below 1 diverged (mini-batch noise, or sharpening between refreshes)" if div_under else "")
            + f". Largest edge of a stable run {top_ok:.2f}"
            + (f"; smallest of a diverged run {low_bad:.2f}." if div else ".")
        )  # fmt: skip
    return out


def _grid(block: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """Rows of the grid compared with each other, the stability check, and BSFA's claim."""
    out, sweep = [], s["sweep"]
    div = [r for r in sweep if r["diverged"]]
    rows = {(r["a"], r["b"]): r for r in sweep}

    def state(r: dict[str, Any]) -> str:
        return "diverged" if r["diverged"] else f"loss {r['loss_end']:.4g}"

    for b in sorted({r["b"] for r in sweep}):
        bulk, plain = rows.get((0.0, b)), rows.get((b, b))
        if bulk is not None and plain is not None and b != 1:
            out.append(
                f"* Same step along the bulk, with and without the dominant part: (0, {b:g}) "
                f"{state(bulk)}; ({b:g}, {b:g}), plain SGD at {b:g}× the learning rate, {state(plain)}."
            )
    for name_, keep in (("a = 0 (bulk only)", 0.0), ("a = 1 (SGD's dominant part)", 1.0)):
        bad = sorted(r["b"] for r in div if r["a"] == keep)
        if any(r["a"] == keep for r in sweep):
            out.append(
                f"* With {name_}, diverged at b ∈ {{{', '.join(f'{b:g}' for b in bad)}}}."
                if bad
                else f"* With {name_}, no b in the grid diverged."
            )
    thr = s["threshold"]
    silent = [
        r for r in sweep if r["max_a_lam1"] > thr and r["max_b_lamk1"] <= thr and r["warnings"] == 0
    ]
    if silent:
        out.append(
            "* The wrapper's stability check watches b·λ_(k+1) (the part Bulk keeps); with "
            "a·λ_1 above 2/η it stayed silent: "
            + ", ".join(f"({r['a']:g}, {r['b']:g})" for r in silent)
            + (", of which " + ", ".join(f"({r['a']:g}, {r['b']:g})" for r in silent if r["rose"] or r["diverged"]) + " ended above the loss at the switch" if any(r["rose"] or r["diverged"] for r in silent) else "")
            + "."
        )  # fmt: skip
    bsfa = [r for r in sweep if r["a"] < 1 and r["b"] > 1 and not r["diverged"]]
    top = max((r["speedup"] for r in bsfa if math.isfinite(r["speedup"])), default=math.nan)
    if not math.isfinite(top):
        verdict = "final loss in none of the rows."
    elif top < 1.6:
        verdict = f"final loss {top:.2f}× sooner: less than the reported 2× here."
    elif top <= 2.5:
        verdict = f"final loss {top:.2f}× sooner: about the reported factor."
    else:
        verdict = (
            f"final loss {top:.2f}× sooner: more than the reported 2×, but SGD at lr "
            f"{block['config']['lr']:g} is far below its stability limit here, so much of this is "
            "a larger learning rate (compare the same-step rows above)."
        )
    out.append(
        "* **Damp dominant, amplify bulk** (BSFA, ~2× faster): the best stable row with "
        "a < 1 < b reaches SGD's " + verdict
    )
    return out
