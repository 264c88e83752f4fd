"""The tables of the subspace-sources study (``benchmarks/subspace_sources/``), one section
per measurement of each setup.

Everything here reads the results dictionary (or its JSON) only: ``--render`` rebuilds
every output from ``subspace_sources.json`` without rerunning anything.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.harness import load_clause, markdown_table

from .findings import findings
from .summary import LABEL


def _f(x: float, spec: str = ".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return markdown_table(header, rows).split("\n")


# ---------------------------------------------------------------------- markdown
def machine_text(results: dict[str, Any]) -> str:
    m = results["machine"]
    text = (
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} thread{'s' if m['torch_threads'] > 1 else ''}, Python {m['python']}"
    )
    text += load_clause(
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
    lines += _angles(block, k)
    lines += ["", "### Cost of a refresh", ""]
    lines += _costs(block, s, cfg, k)
    lines += ["", "### Dom and Bulk with each basis", ""]
    lines += _dom_bulk(s)
    lines += ["", "### Interpolated updates a·P_kΔ + b·(Δ − P_kΔ) (Hessian basis)", ""]
    lines += [*_sweep(s), ""]
    lines += ["### What this shows", "", *findings(name, block, s), ""]
    return lines


def _angles(block: dict[str, Any], k: int) -> list[str]:
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
    return _table(head, rows)


def _costs(block: dict[str, Any], s: dict[str, Any], cfg: dict[str, Any], k: int) -> list[str]:
    lines = [
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
    return [*lines, *_table(head, rows)]


def _dom_bulk(s: dict[str, Any]) -> list[str]:
    lines = [
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
    return [*lines, *_table(["basis", "mode", "L_end", "L_end,SGD", "progress ratio"], rows)]


def _sweep(s: dict[str, Any]) -> list[str]:
    lines = [
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
    return [*lines, *_table([*head, "edge", "warned", "diverged"], rows)]
