"""Figures of a reproduction run (matplotlib, Agg; no pyplot global state).

* :func:`plot_loss`: full-batch training loss on a log scale, base vs Dom vs Bulk (and the
  scaled run, labelled with its ``(a, b)``, with ``--mode-scales``), one panel per optimizer
  family (the paper's Figure 1 layout);
* :func:`plot_alignment`: χ_k of the full-batch gradient over steps;
* :func:`plot_eigenvalues`: the tracked top eigenvalues of the base run over steps, with the
  optimizer's stability threshold (``2/η``) and the Bulk run's λ_{k+1}.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .results import ExperimentResult, FamilyResult, scales_label

__all__ = ["COLORS", "plot_alignment", "plot_eigenvalues", "plot_loss", "save_figures"]

#: one colour per run, the same in every figure
COLORS = {"base": "#222222", "dom": "#d62728", "bulk": "#1f77b4", "scaled": "#9467bd"}
_LABELS = {"base": "base", "dom": "Dom", "bulk": "Bulk", "scaled": "scaled"}
_NAMES = {
    "base": "base optimizer",
    "dom": "Dom (update projected onto the top-k subspace)",
    "bulk": "Bulk (top-k component removed)",
}


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
    ax.axvline(fam.switch_step, color="0.6", lw=0.8, ls="--", zorder=0, label="switch")


def _title(ax: Any, fam: FamilyResult) -> None:
    trouble = [f"{_LABELS[v]} {r.status}" for v, r in fam.runs.items() if r.status == "diverged"]
    trouble += [f"{_LABELS[v]}: loss rose" for v, r in fam.runs.items() if r.status == "loss rose"]
    extra = f"  [{', '.join(trouble)}]" if trouble else ""
    ax.set_title(f"{fam.label}, lr {fam.lr:.3g}{extra}", fontsize=10)
    ax.set_xlabel("step")


def _legend(fig: Any, axes: list[Any]) -> None:
    """One legend for the whole figure, above the panels (the colours mean the same
    everywhere), so that no panel's data hides behind a legend box."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen),
            loc="outside lower center",
            # the long labels fit one to a row under one panel, four under two or more
            ncols=min(len(seen), 6, 1 if len(axes) == 1 else 4),
            fontsize=9,
            frameon=False,
        )


def _minor_log_label(value: float, _pos: int) -> str:
    """Label of a minor tick on a log axis, or nothing when it would crowd the decade label
    next to it (0.09 next to 0.1 overlapped at figure size)."""
    if value <= 0:
        return ""
    exponent = math.log10(value)
    if abs(exponent - round(exponent)) < 0.06:
        return ""
    return f"{value:.2g}"


def _sparse_minor_log_label(value: float, pos: int) -> str:
    """Label a minor tick of a log axis only at 2 and 5 times a power of ten (an axis over
    one to two decades, where every minor label would crowd)."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return _minor_log_label(value, pos) if round(mantissa, 6) in (2.0, 5.0) else ""


def plot_loss(result: ExperimentResult) -> Any:
    """Training loss (log scale; linear where a panel spans less than a factor 1.5) of
    base / Dom / Bulk (and scaled) per family; returns the Figure.

    Args:
        result: a reproduction's result (from a run, or read back with
            :func:`~subspace_optim.experiments.read_report`).

    Returns:
        A matplotlib ``Figure`` with one panel per family.
    """
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter, NullFormatter

    fig, axes = _figure(len(result.families))
    styles = {"base": ("-", 1.8), "dom": ("-", 1.3), "bulk": ("--", 1.5), "scaled": (":", 1.8)}
    names = {**_NAMES, "scaled": f"scaled {scales_label(result.config)}"}
    for ax, fam in zip(axes, result.families):
        for variant in ("base", "dom", "bulk", "scaled"):
            xs, ys = _series(fam.rows, variant, "loss")
            pos = [(x, y) for x, y in zip(xs, ys) if y > 0]
            if pos:
                ls, lw = styles[variant]
                ax.plot(*zip(*pos), color=COLORS[variant], ls=ls, lw=lw, label=names[variant])
        _switch_line(ax, fam)
        ax.set_yscale("log")
        ax.autoscale_view()
        low, high = ax.get_ylim()
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        if high / low < 1.5:  # a few percent: a log axis only crowds its labels
            ax.set_yscale("linear")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.4g"))
        elif high / low < 15:  # about a decade or less: label the minor ticks too
            ax.yaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
            ax.tick_params(axis="y", which="both", labelsize=7)
        elif high / low < 150:  # up to about two decades: label 2 and 5 of each decade
            ax.yaxis.set_minor_formatter(FuncFormatter(_sparse_minor_log_label))
            ax.tick_params(axis="y", which="both", labelsize=7)
        else:
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("training loss (full batch)")
        _title(ax, fam)
        ax.grid(True, which="both", alpha=0.25)
    fig.suptitle(f"{result.setup}: training loss, k = {result.config['k']}", fontsize=11)
    _legend(fig, axes)
    return fig


def plot_alignment(result: ExperimentResult) -> Any:
    """χ_k = ‖P_k ∇L‖ / ‖∇L‖ of the full-batch gradient over steps; returns the Figure.

    Args:
        result: a reproduction's result (from a run, or read back with
            :func:`~subspace_optim.experiments.read_report`).

    Returns:
        A matplotlib ``Figure`` with one panel per family.
    """
    fig, axes = _figure(len(result.families))
    threshold = result.config.get("switch")
    for ax, fam in zip(axes, result.families):
        for variant in ("base", "dom", "bulk"):
            xs, ys = _series(fam.rows, variant, "grad_alignment", only_full=True)
            if xs:
                ax.plot(
                    xs, ys, color=COLORS[variant], lw=1.1, marker=".", ms=3, label=_LABELS[variant]
                )
        if isinstance(threshold, float):
            ax.axhline(
                threshold, color="0.4", lw=0.8, ls=":", label=f"switch threshold {threshold:g}"
            )
        _switch_line(ax, fam)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"$\\chi_{{{result.config['k']}}}(\\nabla L)$")
        _title(ax, fam)
        ax.grid(True, alpha=0.25)
    fig.suptitle(
        f"{result.setup}: alignment of the full-batch gradient with the top-{result.config['k']} "
        "Hessian subspace",
        fontsize=11,
    )
    _legend(fig, axes)
    return fig


def plot_eigenvalues(result: ExperimentResult) -> Any:
    """Top eigenvalues of the base run with the stability threshold; returns the Figure.

    Args:
        result: a reproduction's result (from a run, or read back with
            :func:`~subspace_optim.experiments.read_report`).

    Returns:
        A matplotlib ``Figure`` with one panel per family.
    """
    fig, axes = _figure(len(result.families))
    k = int(result.config["k"])
    m = k + int(result.config.get("num_extra", 0))
    for ax, fam in zip(axes, result.families):
        peak, floor = -math.inf, math.inf
        for i in range(m):
            xs, ys = _series(fam.rows, "base", f"eig_{i}", only_full=True)
            if not xs:
                continue
            peak, floor = max(peak, *ys), min(floor, *ys)
            if i == 0:
                ax.plot(xs, ys, color=COLORS["base"], lw=1.6, label="$\\lambda_1$ (base run)")
            else:
                label = None
                if i == 1:
                    label = f"$\\lambda_2 \\ldots \\lambda_{{{k}}}$ (base run)"
                elif i == k:
                    label = f"$\\lambda_{{{k + 1}}}, \\ldots$ (base run)"
                ax.plot(xs, ys, color="0.6" if i < k else "#2ca02c", lw=0.7, label=label)
        if m > k:
            xs, ys = _series(fam.rows, "bulk", f"eig_{k}", only_full=True)
            if xs:
                peak = max(peak, *ys)
                ax.plot(
                    xs,
                    ys,
                    color=COLORS["bulk"],
                    lw=1.4,
                    ls="--",
                    label=f"$\\lambda_{{{k + 1}}}$ of the Bulk run",
                )
        limit = fam.stability_limit
        if not math.isfinite(limit):
            note = "Adam: no 2/η stability threshold"
        elif math.isfinite(peak) and limit > 2.5 * peak:  # far above the spectrum: don't squash it
            note = f"stability threshold {limit:.3g}: far above (off scale)"
        else:
            note = ""
            ax.axhline(limit, color="#ff7f0e", lw=1.4, label="stability threshold (2/η, 2(1+β)/η)")
        if note:
            ax.text(0.02, 0.97, note, transform=ax.transAxes, fontsize=8, va="top", color="#b35900")
        _switch_line(ax, fam)
        if floor > 0 and peak / floor > 4:  # an exploding Bulk run: keep the rest readable
            from matplotlib.ticker import FormatStrFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_ylabel("Hessian eigenvalue")
        _title(ax, fam)
        ax.grid(True, alpha=0.25)
    fig.suptitle(
        f"{result.setup}: top Hessian eigenvalues against the stability threshold", fontsize=11
    )
    _legend(fig, axes)
    return fig


def save_figures(
    result: ExperimentResult, folder: str | Path, *, dpi: int = 110
) -> dict[str, Path]:
    """Write ``loss.png``, ``alignment.png`` and ``eigenvalues.png`` into ``folder``.

    Args:
        result: a reproduction's result.
        folder: an existing folder; files of the same names are overwritten.
        dpi: the images' resolution.

    Returns:
        ``{"loss": path, "alignment": path, "eigenvalues": path}``.
    """
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
