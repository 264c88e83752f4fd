"""Figures, the docs page and the guide's include of the subspace-sources study.

Like :mod:`.report`, everything here reads the results dictionary only.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .report import machine_text
from .summary import LABEL

COLOR = {"hessian": "C0", "ggn": "C1", "covariance": "C2", "fisher": "C4"}
#: thick translucent lines under thin ones, so that curves that coincide (Hessian and GGN,
#: covariance and empirical Fisher) both stay visible
STYLE = {
    "hessian": {"lw": 4, "alpha": 0.45, "marker": "o", "ms": 8},
    "ggn": {"lw": 1.2, "marker": "x", "ms": 6},
    "covariance": {"lw": 4, "alpha": 0.45, "marker": "s", "ms": 7},
    "fisher": {"lw": 1.2, "marker": "+", "ms": 7},
}


# ------------------------------------------------------------------------- figures
def plot(results: dict[str, Any], fig_dir: Path) -> dict[str, list[Path]]:
    """Three figures per setup (angles and spectra, Dom/Bulk losses, the (a, b) sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, list[Path]] = {}
    for name, block in results["setups"].items():
        s = results["summary"][name]
        k = block["config"]["k"]
        fig, ax = plt.subplots(1, 3, figsize=(18, 4.2))
        _angles(ax[0], block["trajectory"]["points"], k)
        _spectrum(ax[1], block)
        _top_eigenvalues(ax[2], block["trajectory"]["points"], k)
        paths[name] = [_save(fig, fig_dir / f"{name}_angles.png")]
        fig, ax = plt.subplots(1, 2, figsize=(11, 3.9), sharey=True)
        _dom_bulk(ax, block)
        paths[name].append(_save(fig, fig_dir / f"{name}_dom_bulk.png"))
        fig, ax = plt.subplots(1, 2, figsize=(12, 4.0))
        _progress_grid(fig, ax[0], s["sweep"])
        _edge(ax[1], s)
        paths[name].append(_save(fig, fig_dir / f"{name}_sweep.png"))
    return paths


def _angles(ax: Any, pts: list[dict], k: int) -> None:
    steps = [p["step"] for p in pts]
    for c in ("ggn", "covariance", "fisher"):
        ax.plot(
            steps,
            [p[f"hessian_vs_{c}"]["sin_max"] for p in pts],
            "-",
            color=COLOR[c],
            label=f"H vs {LABEL[c]}: max",
            **STYLE[c],
        )
        ax.plot(
            steps,
            [p[f"hessian_vs_{c}"]["sin_mean"] for p in pts],
            "--",
            color=COLOR[c],
            label=f"H vs {LABEL[c]}: mean",
            **STYLE[c],
        )
    one = [(p["step"], p["hessian_one_step"]) for p in pts if "hessian_one_step" in p]
    ax.plot(
        [t for t, _ in one],
        [a["sin_mean"] for _, a in one],
        "k:",
        marker="x",
        label="H vs H one step later: mean",
    )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("sin θ")
    ax.set_title(f"Principal angles to the Hessian's top-{k}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _spectrum(ax: Any, block: dict[str, Any]) -> None:
    pts, cfg = block["trajectory"]["points"], block["config"]
    k, sw = cfg["k"], cfg["switch"]
    at = min(pts, key=lambda p: abs(p["step"] - sw))
    for c in ("hessian", "ggn", "covariance", "fisher"):
        ev = [max(v, 1e-8) for v in at["eigenvalues"][c]]
        ax.semilogy(range(1, len(ev) + 1), ev, "-", color=COLOR[c], label=LABEL[c], **STYLE[c])
    ax.axvline(k + 0.5, color="gray", ls=":", lw=1)
    ax.set_xlabel("index i")
    ax.set_ylabel("λ_i")
    ax.set_title(f"Top-{k + 1} eigenvalues at step {at['step']}")
    ax.legend(fontsize=8)


def _top_eigenvalues(ax: Any, pts: list[dict], k: int) -> None:
    steps = [p["step"] for p in pts]
    for c in ("hessian", "ggn", "covariance"):
        ax.semilogy(
            steps,
            [p["eigenvalues"][c][0] for p in pts],
            "-",
            color=COLOR[c],
            label=f"{LABEL[c]} λ_1",
            **STYLE[c],
        )
        ax.semilogy(
            steps,
            [p["eigenvalues"][c][k - 1] for p in pts],
            "--",
            color=COLOR[c],
            label=f"{LABEL[c]} λ_{k}",
            **STYLE[c],
        )
    ax.set_xlabel("SGD step")
    ax.set_title("λ_1 and λ_k along the trajectory")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _dom_bulk(ax: Any, block: dict[str, Any]) -> None:
    sw = block["config"]["switch"]
    sgd = block["trajectory"]["loss"][sw:]
    for j, m in enumerate(("dominant", "bulk")):
        ax[j].plot(range(sw, sw + len(sgd)), sgd, color="k", lw=1.5, label="SGD")
        for c in ("hessian", "ggn", "covariance"):
            loss = block["runs"][f"{c}/{m}"]["loss"]
            ax[j].plot(
                range(sw, sw + len(loss)),
                loss,
                color=COLOR[c],
                lw=2.5 if c == "hessian" else 1,
                alpha=0.6 if c == "hessian" else 1.0,
                label=f"{m.capitalize()}, {LABEL[c]} basis",
            )
        ax[j].set_xlabel("step")
        ax[j].set_title(f"{'Dom' if m == 'dominant' else 'Bulk'}-SGD from step {sw}")
        ax[j].legend(fontsize=8)
    ax[0].set_ylabel("full-batch loss")
    ax[0].set_ylim(min(sgd) * 0.97, sgd[0] * 1.15)  # a diverging run leaves the frame


def _progress_grid(fig: Any, ax: Any, rows: list[dict]) -> None:
    a_vals = sorted({r["a"] for r in rows})
    b_vals = sorted({r["b"] for r in rows})
    grid = [[math.nan] * len(b_vals) for _ in a_vals]
    for r in rows:
        grid[a_vals.index(r["a"])][b_vals.index(r["b"])] = r["progress"]
    shown = [
        [min(max(v, -1.0), 3.0) if math.isfinite(v) else math.nan for v in row] for row in grid
    ]
    im = ax.imshow(shown, cmap="RdYlGn", vmin=-1, vmax=3, aspect="auto", origin="lower")
    for r in rows:
        i, j = a_vals.index(r["a"]), b_vals.index(r["b"])
        txt = "div." if r["diverged"] else f"{r['progress']:.2f}"
        ax.text(j, i, txt, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(b_vals)), [f"{b:g}" for b in b_vals])
    ax.set_yticks(range(len(a_vals)), [f"{a:g}" for a in a_vals])
    ax.set_xlabel("b (bulk scale)")
    ax.set_ylabel("a (dominant scale)")
    ax.set_title("Progress ratio vs SGD (clipped to [-1, 3])")
    fig.colorbar(im, ax=ax)


def _edge(ax: Any, s: dict[str, Any]) -> None:
    rows = s["sweep"]
    a_vals = sorted({r["a"] for r in rows})
    for a in a_vals:
        sel = [r for r in rows if r["a"] == a]
        sel = [r for r in sel if math.isfinite(r["edge_ratio"])]
        ys = [_clipped(r["loss_end"] / s["loss_switch"]) for r in sel]
        ax.plot([r["edge_ratio"] for r in sel], ys, "o-", label=f"a = {a:g}")
        for r, y in zip(sel, ys):
            xy = (r["edge_ratio"], y)
            if r["diverged"]:
                ax.plot(*xy, "rx", ms=10, mew=2)
            if a == a_vals[0] or r["diverged"]:
                ax.annotate(
                    f"b={r['b']:g}", xy, xytext=(3, 3), textcoords="offset points", fontsize=7
                )
    ax.axvline(1, color="k", ls=":", lw=1, label="max(aλ_1, bλ_(k+1)) = 2/η")
    ax.axhline(1, color="gray", ls="--", lw=1, label="loss at the switch")
    ax.axhline(rows[0]["loss_sgd"] / s["loss_switch"], color="k", lw=1, label="SGD")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("max(a·λ_1, b·λ_(k+1)) / (2/η)")
    ax.set_ylabel(f"final loss / loss at the switch (clipped at {CLIP:g})")
    ax.set_title("Where the scaled update destabilizes (red ×: diverged)")
    ax.legend(fontsize=7, loc="upper left")


CLIP = 3.0  # the sweep figure's ceiling for final loss / loss at the switch


def _clipped(v: float) -> float:
    return min(v, CLIP) if math.isfinite(v) else CLIP


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ---------------------------------------------------------------------- docs page
def page(results: dict[str, Any], md: str, figures: dict[str, list[Path]], page_dir: Path) -> str:
    """``docs/subspace_sources.md``: an introduction, the generated tables and the figures."""
    cfg = next(iter(results["setups"].values()))["config"]
    head = [
        "# Which subspace matters: Hessian, GGN or gradient covariance",
        "",
        "Generated by `benchmarks/subspace_sources/` from its results "
        "(`benchmarks/results/subspace_sources.json`); no number on this page is typed by "
        "hand. The guide page {doc}`guide/curvatures` explains the curvatures and when to use "
        "each. Digits (scikit-learn, standardized), the paper's loss 0.5·Σ(f − onehot)², SGD "
        f"lr {cfg['lr']:g}, batch {cfg['batch']}, k = {cfg['k']}; one seed, one learning rate: "
        "read the findings as measurements of this setup, not general laws. To keep the run "
        "near 10 minutes on a shared CPU, the runs are shorter than the paper's and the basis "
        "is refreshed every few steps (each setup's settings say how many).",
        "",
    ]
    out: list[str] = []
    current = None  # figures go after each setup's tables
    for line in md.splitlines():
        if line.startswith("## "):
            if current is not None:
                out += _figure_lines(figures[current], page_dir)
            current = next(n for n in results["setups"] if line[3:].lower().startswith(n))
        out.append(line)
    if current is not None:
        out += _figure_lines(figures[current], page_dir)
    return "\n".join(head + out) + "\n"


def _figure_lines(paths: list[Path], page_dir: Path) -> list[str]:
    out = ["### Figures", ""]
    for p in paths:
        rel = os.path.relpath(p, page_dir).replace(os.sep, "/")
        out += [f"![{p.stem}]({rel})", ""]
    return out


# ------------------------------------------------------------- the guide's include
def guide_include(results: dict[str, Any]) -> str:
    """An reStructuredText fragment with the measured numbers the guide quotes
    (``docs/guide/curvatures.rst`` includes it; written next to the figures)."""
    m = results["machine"]
    out = [
        ".. This file is generated by benchmarks/subspace_sources/; do not edit.",
        "",
        ".. list-table:: Measured by ``benchmarks/subspace_sources/`` (full data, "
        f"{m['torch_threads']} thread{'s' if m['torch_threads'] > 1 else ''}; see :doc:`../subspace_sources`)",
        "   :header-rows: 1",
        "",
        "   * - setup",
        "     - curvature",
        "     - ms / product (block; single vector, cached graph)",
        "     - refresh cold: products (ms)",
        "     - refresh warm: products (ms)",
        "     - sin θ to the Hessian's top-k (mean, median after the switch)",
        "     - Dom / Bulk progress ratio",
    ]
    for name, block in results["setups"].items():
        s = results["summary"][name]
        pts = [p for p in block["trajectory"]["points"] if p["step"] >= block["config"]["switch"]]
        for c in ("hessian", "ggn", "covariance"):
            r = block["costs"][c]
            if c == "hessian":
                vals = sorted(
                    p["hessian_one_step"]["sin_mean"] for p in pts if "hessian_one_step" in p
                )
                ang = f"{vals[len(vals) // 2]:.3f} (itself, one SGD step later)" if vals else "-"
            else:
                vals = sorted(p[f"hessian_vs_{c}"]["sin_mean"] for p in pts)
                ang = f"{vals[len(vals) // 2]:.3f}"
            out += [
                f"   * - {name.upper()} ({block['n_params']:,} parameters, {block['config']['examples']} examples)",
                f"     - {LABEL[c]}",
                f"     - {r['block_ms_median']:.2f}; {r['single_ms_median']:.2f}",
                f"     - {r['cold_matvecs']} ({r['cold_ms']:.0f})",
                f"     - {r['warm_matvecs_median']:.0f} ({r['warm_ms_median']:.0f})",
                f"     - {ang}",
                f"     - {s['runs'][f'{c}/dominant']['progress']:.2f} / {s['runs'][f'{c}/bulk']['progress']:.2f}",
            ]
    return "\n".join([*out, "", machine_text(results), ""])
