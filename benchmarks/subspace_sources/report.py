"""Tables, figures, findings and the docs page of ``benchmarks/subspace_sources.py``.

Everything here reads the results dictionary (or its JSON) only: ``--render`` rebuilds
every output from ``subspace_sources.json`` without rerunning anything.
"""

from __future__ import annotations

import math
from typing import Any

import projected_training

LABEL = {"hessian": "Hessian", "ggn": "GGN", "covariance": "covariance", "fisher": "emp. Fisher"}


def _f(x: float, spec: str = ".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _first_at_or_below(curve: list[float], level: float) -> int | None:
    return next((t for t, v in enumerate(curve) if math.isfinite(v) and v <= level), None)


# ------------------------------------------------------------------------ summaries
def summarize(block: dict[str, Any]) -> dict[str, Any]:
    """Derived numbers of one setup: progress ratios, the sweep's edge and divergence."""
    cfg = block["config"]
    k, lr, sw = cfg["k"], cfg["lr"], cfg["switch"]
    sgd = block["trajectory"]["loss"][sw:]
    L_s = sgd[0]
    out: dict[str, Any] = {"loss_switch": L_s, "threshold": 2 / lr, "runs": {}, "sweep": []}
    for name, r in block["runs"].items():
        L_e, L_sgd = r["loss"][-1], sgd[len(r["loss"]) - 1]
        c = r["counters"]
        out["runs"][name] = {
            "loss_end": L_e,
            "loss_sgd": L_sgd,
            "progress": (L_s - L_e) / (L_s - L_sgd),
            "matvecs_per_refresh": c["matvecs"] / max(c["refreshes"], 1),
            "ms_per_refresh": 1e3 * c["refresh_seconds"] / max(c["refreshes"], 1),
        }
    every = cfg["sweep_refresh_every"]
    for r in block["sweep"]:
        a, b, loss = r["a"], r["b"], r["loss"]
        L_sgd = sgd[len(loss) - 1]
        # the spectrum the run met before it blew up: refreshes at steps before the loss first
        # exceeded twice its value at the switch (or stopped being finite)
        blow = next((t for t, v in enumerate(loss) if not math.isfinite(v) or v > 2 * L_s), None)
        eig = [e for j, e in enumerate(r["eigenvalues"]) if blow is None or j * every < blow]
        eig = [e for e in eig if all(math.isfinite(x) for x in e)] or r["eigenvalues"][:1]
        lam1 = [e[0] for e in eig]
        lamk1 = [e[k] for e in eig]
        edge = [max(abs(a) * x, abs(b) * y) for x, y in zip(lam1, lamk1)]
        finite = all(math.isfinite(v) for v in loss)
        diverged = (
            not finite
            or max(loss) > 2 * L_s
            or r["counters"].get("faults", 0) > 0
            or r["counters"].get("skipped_steps", 0) > 0
        )
        reach = _first_at_or_below(loss, L_sgd)
        out["sweep"].append(
            {
                "a": a,
                "b": b,
                "loss_end": loss[-1],
                "loss_min": min(v for v in loss if math.isfinite(v)),
                "loss_sgd": L_sgd,
                "progress": (L_s - loss[-1]) / (L_s - L_sgd) if finite else math.nan,
                "speedup": (len(loss) - 1) / reach if reach else math.nan,
                "max_a_lam1": max(abs(a) * x for x in lam1),
                "max_b_lamk1": max(abs(b) * y for y in lamk1),
                "edge_ratio": max(edge) * lr / 2,  # max(a·λ_1, b·λ_(k+1)) / (2/η)
                "blew_up_at": blow,
                "diverged": diverged,
                "warnings": int(r["counters"].get("unstable_refreshes", 0)),
                "refreshes": int(r["counters"].get("refreshes", 0)),
                "rose": loss[-1] > L_s,
            }
        )
    return out


# ---------------------------------------------------------------------- markdown
def machine_text(results: dict[str, Any]) -> str:
    m = results["machine"]
    text = (
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} thread{'s' if m['torch_threads'] > 1 else ''}, Python {m['python']}"
    )
    text += projected_training.load_clause(
        m,
        f". It was a loaded, shared {m['cpu_count']}-core CPU (other jobs ran alongside):"
        " absolute times are inflated and noisy; compare times within a table only",
    )
    return text + f". Wall time {results.get('wall_seconds', math.nan):.0f} s."


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Produced by `{results['command']}`.", "", machine_text(results), ""]
    for name, block in results["setups"].items():
        lines += setup_markdown(name, block, results["summary"][name])
    return "\n".join(lines) + "\n"


def setup_markdown(name: str, block: dict[str, Any], s: dict[str, Any]) -> list[str]:
    cfg = block["config"]
    k = cfg["k"]
    title = (
        f"MLP 64-{cfg['width']}-{cfg['width']}-10" if name == "mlp" else "CNN (2 conv 3×3, 8 ch)"
    )
    lines = [
        f"## {title} ({block['n_params']:,} parameters, {cfg['examples']} examples)",
        "",
        f"SGD lr {cfg['lr']}, batch {cfg['batch']}, k = {k}, seed {cfg['seed']}; switch at step "
        f"{cfg['switch']} (loss {s['loss_switch']:.4f}); Dom/Bulk runs {cfg['post']} steps with "
        f"the basis refreshed every {cfg['refresh_every']} step(s); sweep {cfg['sweep_steps']} "
        f"steps, refreshed every {cfg['sweep_refresh_every']}. Seconds: "
        + ", ".join(f"{p} {v:.0f}" for p, v in block["seconds"].items())
        + ".",
        "",
        "### Principal angles along the SGD trajectory",
        "",
        f"Top-{k} of each curvature against the Hessian's top-{k} (cold Lanczos, tol {cfg['tol']:g}). "
        f"*H one step*: the Hessian's top-{k} against itself one SGD step later (the yardstick). "
        f"λ_k/λ_(k+1): the Hessian's gap at k.",
        "",
    ]
    rows = []
    for pt in block["trajectory"]["points"]:
        ev = pt["eigenvalues"]
        one = pt.get("hessian_one_step")
        row = [str(pt["step"]), _f(block["trajectory"]["loss"][pt["step"]], ".4f")]
        for c in ("ggn", "covariance", "fisher"):
            a = pt[f"hessian_vs_{c}"]
            row += [f"{a['sin_max']:.3f} / {a['sin_mean']:.3f}"]
        row += [f"{one['sin_max']:.3f} / {one['sin_mean']:.3f}" if one else "-"]
        row += [" / ".join(_f(ev[c][0]) for c in ("hessian", "ggn", "covariance", "fisher"))]
        row += [_f(ev["hessian"][k - 1] / ev["hessian"][k], ".4f")]
        row += [
            " / ".join(_f(pt["grad_alignment"][c], ".2f") for c in ("hessian", "ggn", "covariance"))
        ]
        rows.append(row)
    head = ["step", "loss", "H–GGN sin θ max / mean", "H–cov.", "H–emp. Fisher", "H one step"]
    head += ["λ_1 H / G / C / F", "λ_k/λ_(k+1) (H)", "χ_k(∇L) H / G / C"]
    lines += [*_table(head, rows), "", "### Cost of a refresh", ""]
    lines += [
        f"ms per product over the full data ({cfg['examples']} examples): in a block of {k + 6} "
        f"columns (one product of the block, divided by its width) and for a single vector "
        "right after it, at the same parameters, so that the operator's cached graph is "
        f"reused and only the product's own passes are timed (median of 3). One refresh of the top {k + 1} pairs with the "
        "wrapper's default solver (`WarmRefresh`): cold (LOBPCG from random), then warm from "
        f"the previous basis after each of {cfg['warm_steps']} SGD steps (median); "
        "in the Dom/Bulk runs below: the mean over all their refreshes.",
        "",
    ]
    rows = []
    for c, r in block["costs"].items():
        runs = [s["runs"][f"{c}/{m}"] for m in ("dominant", "bulk")]
        rows.append(
            [
                LABEL[c],
                _f(r["block_ms_median"], ".2f"),
                _f(r["single_ms_median"], ".2f"),
                f"{r['cold_matvecs']} / {r['cold_ms']:.0f}",
                f"{r['warm_matvecs_median']:.0f} / {r['warm_ms_median']:.0f}",
                " / ".join(f"{x['matvecs_per_refresh']:.1f}" for x in runs),
                " / ".join(f"{x['ms_per_refresh']:.0f}" for x in runs),
            ]
        )
    head = [
        "curvature",
        "ms/product (block)",
        "ms/product (single, cached graph)",
        "cold: products / ms",
    ]
    head += ["warm: products / ms", "in runs: products/refresh Dom / Bulk", "ms/refresh Dom / Bulk"]
    lines += [*_table(head, rows), "", "### Dom and Bulk with each basis", ""]
    lines += [
        "Progress ratio = (L_switch − L_end) / (L_switch − L_end,SGD), on the same mini-batches "
        "(SGD: the trajectory above).",
        "",
    ]
    rows = []
    for c in ("hessian", "ggn", "covariance"):
        for m in ("dominant", "bulk"):
            r = s["runs"][f"{c}/{m}"]
            rows.append(
                [
                    LABEL[c],
                    m,
                    _f(r["loss_end"], ".4f"),
                    _f(r["loss_sgd"], ".4f"),
                    _f(r["progress"], ".2f"),
                ]
            )
    lines += _table(["basis", "mode", "L_end", "L_end,SGD", "progress ratio"], rows)
    lines += ["", "### Interpolated updates a·P_kΔ + b·(Δ − P_kΔ) (Hessian basis)", ""]
    lines += [
        f"2/η = {s['threshold']:.3g}. *edge* = max over the refreshes before the run blew up of max(a·λ_1, b·λ_(k+1)) "
        "divided by 2/η (λ of the Hessian at the run's own parameters): above 1 the scaled "
        "update overshoots along some direction even without noise. *×SGD* = steps of the run "
        "/ first step at which its loss reaches SGD's final loss. *Diverged*: the loss went "
        "above twice its value at the switch, became non-finite, or the wrapper skipped a step. "
        "*Warned*: refreshes at which the wrapper's own stability check raised "
        "`EdgeOfStabilityWarning`, out of all refreshes.",
        "",
    ]
    rows = []
    for r in s["sweep"]:
        rows.append(
            [
                f"({r['a']:g}, {r['b']:g})",
                _f(r["loss_end"], ".4f"),
                _f(r["progress"], ".2f"),
                _f(r["speedup"], ".2f"),
                _f(r["max_a_lam1"]),
                _f(r["max_b_lamk1"]),
                _f(r["edge_ratio"], ".2f"),
                f"{r['warnings']}/{r['refreshes']}",
                (f"yes (+{r['blew_up_at']})" if r["blew_up_at"] is not None else "yes")
                if r["diverged"]
                else ("no, but ended above L_switch" if r["rose"] else "no"),
            ]
        )
    head = ["(a, b)", "L_end", "progress ratio", "×SGD", "max a·λ_1", "max b·λ_(k+1)"]
    lines += [*_table([*head, "edge", "warned", "diverged"], rows), ""]
    lines += ["### What this shows", "", *findings(name, block, s), ""]
    return lines


def findings(name: str, block: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """Sentences computed from the numbers, including where the follow-up claims fail here."""
    pts = block["trajectory"]["points"]
    after = [p for p in pts if p["step"] >= block["config"]["switch"]] or pts
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
    for c in ("hessian", "ggn", "covariance"):
        d, b = runs[f"{c}/dominant"]["progress"], runs[f"{c}/bulk"]["progress"]
        dom = "stalls" if d < 0.2 else ("makes partial progress" if d < 0.8 else "trains")
        bulk = (
            "trains like SGD"
            if 0.8 <= b <= 1.25
            else ("falls short of SGD" if b < 0.8 else "beats SGD")
        )
        out.append(f"* {LABEL[c]} basis: Dom {dom} (ratio {d:.2f}); Bulk {bulk} (ratio {b:.2f}).")
    sweep = s["sweep"]
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
