"""Figures of a reproduction run (matplotlib, Agg; no pyplot global state).

* :func:`plot_loss`: full-batch training loss on a log scale, base vs Dom vs Bulk, one panel
  per optimizer family (the paper's Figure 1 layout);
* :func:`plot_alignment`: χ_k of the full-batch gradient over steps;
* :func:`plot_eigenvalues`: the tracked top eigenvalues of the base run over steps, with the
  optimizer's stability threshold (``2/η``) and the Bulk run's λ_{k+1}.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .results import ExperimentResult, FamilyResult

__all__ = ["COLORS", "plot_alignment", "plot_eigenvalues", "plot_loss", "save_figures"]

#: one colour per run, the same in every figure
COLORS = {"base": "#222222", "dom": "#d62728", "bulk": "#1f77b4"}
_LABELS = {"base": "base", "dom": "Dom", "bulk": "Bulk"}


def _figure(n: int, height: float = 3.0) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "figures need matplotlib: pip install matplotlib (or 'subspace-optim[examples]')"
        ) from exc
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.6 * cols, height * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _series(
    rows: Sequence[dict[str, Any]], variant: str, key: str, *, only_full: bool = False
) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r["variant"] != variant:
            continue
        if only_full and r.get("gradient_source") != "full":
            continue
        v = r.get(key, math.nan)
        if v is None or not math.isfinite(v):
            continue
        xs.append(r["step"])
        ys.append(v)
    return xs, ys


def _switch_line(ax: Any, fam: FamilyResult) -> None:
    ax.axvline(fam.switch_step, color="0.6", lw=0.8, ls="--", zorder=0)


def _title(ax: Any, fam: FamilyResult) -> None:
    ax.set_title(f"{fam.label}, lr {fam.lr:.3g}", fontsize=10)
    ax.set_xlabel("step")


def plot_loss(result: ExperimentResult) -> Any:
    """Training loss (log scale) of base / Dom / Bulk per family; returns the Figure."""
    fig, axes = _figure(len(result.families))
    for ax, fam in zip(axes, result.families):
        for variant in ("base", "dom", "bulk"):
            xs, ys = _series(fam.rows, variant, "loss")
            pos = [(x, y) for x, y in zip(xs, ys) if y > 0]
            if pos:
                ax.plot(
                    *zip(*pos),
                    color=COLORS[variant],
                    lw=1.3 if variant == "base" else 1.1,
                    label=_LABELS[variant] + _status(fam, variant),
                )
        _switch_line(ax, fam)
        ax.set_yscale("log")
        ax.set_ylabel("training loss (full batch)")
        _title(ax, fam)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(True, which="both", alpha=0.25)
    fig.suptitle(
        f"{result.setup}: base vs Dom (update onto top-{result.config['k']}) vs Bulk "
        "(top-k removed); dashed: switch",
        fontsize=11,
    )
    return fig


def _status(fam: FamilyResult, variant: str) -> str:
    status = fam.runs[variant].status
    return "" if status == "ok" else f" ({status})"


def plot_alignment(result: ExperimentResult) -> Any:
    """χ_k = ‖P_k ∇L‖ / ‖∇L‖ of the full-batch gradient over steps; returns the Figure."""
    fig, axes = _figure(len(result.families))
    threshold = result.config.get("switch")
    for ax, fam in zip(axes, result.families):
        for variant in ("base", "dom", "bulk"):
            xs, ys = _series(fam.rows, variant, "grad_alignment", only_full=True)
            if xs:
                ax.plot(
                    xs,
                    ys,
                    color=COLORS[variant],
                    lw=1.0,
                    marker="." if len(xs) < 80 else None,
                    ms=3,
                    label=_LABELS[variant],
                )
        if isinstance(threshold, float):
            ax.axhline(threshold, color="0.4", lw=0.8, ls=":", label=f"threshold {threshold:g}")
        _switch_line(ax, fam)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"χ_{result.config['k']}(∇L)")
        _title(ax, fam)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, alpha=0.25)
    fig.suptitle(
        f"{result.setup}: alignment of the full-batch gradient with the top-{result.config['k']} "
        "Hessian subspace",
        fontsize=11,
    )
    return fig


def plot_eigenvalues(result: ExperimentResult) -> Any:
    """Top eigenvalues of the base run with the stability threshold; returns the Figure."""
    fig, axes = _figure(len(result.families))
    k = int(result.config["k"])
    m = k + int(result.config.get("num_extra", 0))
    for ax, fam in zip(axes, result.families):
        for i in range(m):
            xs, ys = _series(fam.rows, "base", f"eig_{i}", only_full=True)
            if not xs:
                continue
            if i == 0:
                ax.plot(xs, ys, color=COLORS["base"], lw=1.4, label="λ_1 (base)")
            else:
                ax.plot(
                    xs,
                    ys,
                    color="0.55" if i < k else "#2ca02c",
                    lw=0.6,
                    label=f"λ_2…λ_{k} (base)"
                    if i == 1
                    else (f"λ_{k + 1}… (base)" if i == k else None),
                )
        if m > k:
            xs, ys = _series(fam.rows, "bulk", f"eig_{k}", only_full=True)
            if xs:
                ax.plot(
                    xs, ys, color=COLORS["bulk"], lw=1.2, ls="--", label=f"λ_{k + 1} (Bulk run)"
                )
        if math.isfinite(fam.stability_limit):
            ax.axhline(
                fam.stability_limit,
                color="#ff7f0e",
                lw=1.2,
                label=f"stability threshold {fam.stability_limit:.3g}",
            )
            top = max(
                [fam.stability_limit]
                + [r.max_watched for r in fam.runs.values() if math.isfinite(r.max_watched)]
            )
            if fam.stability_limit > 5 * top / 1.05:  # far above the spectrum: say so, don't squash
                ax.lines[-1].remove()
                ax.text(
                    0.02,
                    0.97,
                    f"2/η-type threshold {fam.stability_limit:.3g} (off scale)",
                    transform=ax.transAxes,
                    fontsize=8,
                    va="top",
                    color="#ff7f0e",
                )
        else:
            ax.text(
                0.02,
                0.97,
                "adaptive optimizer: no 2/η threshold",
                transform=ax.transAxes,
                fontsize=8,
                va="top",
                color="0.3",
            )
        _switch_line(ax, fam)
        ax.set_ylabel("Hessian eigenvalue")
        _title(ax, fam)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(True, alpha=0.25)
    fig.suptitle(
        f"{result.setup}: top Hessian eigenvalues against the stability threshold", fontsize=11
    )
    return fig


def save_figures(
    result: ExperimentResult, folder: str | Path, *, dpi: int = 110
) -> dict[str, Path]:
    """Write ``loss.png``, ``alignment.png`` and ``eigenvalues.png`` into ``folder``."""
    folder = Path(folder)
    out = {}
    for name, make in (
        ("loss", plot_loss),
        ("alignment", plot_alignment),
        ("eigenvalues", plot_eigenvalues),
    ):
        path = folder / f"{name}.png"
        make(result).savefig(path, dpi=dpi)
        out[name] = path
    return out
