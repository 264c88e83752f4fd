"""Tables and files of a reproduction run.

:func:`format_table` gives the terminal table (one row per optimizer family);
:func:`write_report` writes a run folder atomically: it is filled under a temporary name
and renamed at the end, so an interrupted or failed write leaves no half-written folder.

Files written:

* ``metrics.csv`` and ``metrics.json``: one row per step per run (``family``, ``variant``,
  ``phase``, ``step``, full-batch ``loss``, ``batch_loss`` and every
  :class:`~subspace_optim.StepStats` field: χ_k, ``eig_0, eig_1, …``, effective-LR terms,
  refresh cost); non-finite numbers are empty cells in the CSV and ``null`` in the JSON;
* ``summary.json``: settings, machine, per-family and per-run summaries;
* ``loss.png``, ``alignment.png``, ``eigenvalues.png`` (see :mod:`.plots`);
* ``summary.md``: the table, the notes and links to the figures.

With ``--mode-scales a,b`` (``RunConfig.mode_scales``) the table gains the scaled run's final
loss and progress, its rows (variant ``"scaled"``) carry ``scale_dom`` and ``scale_bulk``,
and ``summary.json`` its run and ``config["mode_scales"]``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .results import ExperimentResult, FamilyResult, RunSummary, scales_label

__all__ = ["format_table", "read_report", "table_rows", "write_report"]

_HEADERS = (
    "optimizer",
    "lr",
    "switch",
    "by",
    "χ_k (EMA)",
    "L switch",
    "base",
    "Dom",
    "Bulk",
    "Dom/Bulk progress",
    "removed",
    "η_b/η_d",
    "matvecs/refresh",
    "s/refresh",
)


def _headers(result: ExperimentResult) -> tuple[str, ...]:
    label = scales_label(result.config)
    return _HEADERS if label is None else (*_HEADERS, f"scaled {label}", "scaled progress")


def _f(x: float, digits: int = 4) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "—"
    return f"{x:.{digits}g}"


def _p(x: float) -> str:
    """Fractions and ratios near 1: two decimals."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "—"
    return f"{x:.2f}".replace("-0.00", "0.00")


def _final(fam: FamilyResult, variant: str) -> str:
    run = fam.runs[variant]
    if run.status == "diverged":
        return f"diverged@{run.diverged_at}"
    mark = "↑" if run.status == "loss rose" else ""
    return _f(run.final_loss) + mark


def _cost(fam: FamilyResult) -> tuple[float, float]:
    projected = [fam.runs[v] for v in ("dom", "bulk")]
    refreshes = sum(r.refreshes for r in projected)
    if refreshes == 0:
        return math.nan, math.nan
    return (
        sum(r.matvecs for r in projected) / refreshes,
        sum(r.refresh_seconds for r in projected) / refreshes,
    )


def table_rows(result: ExperimentResult) -> list[list[str]]:
    """The table as strings, one list per family, in the order of :data:`_HEADERS` (then the
    scaled run's final loss and progress, with ``mode_scales``).

    Args:
        result: a reproduction's result.

    Returns:
        One row per family, each a list of cell texts.
    """
    out = []
    for fam in result.families:
        matvecs, seconds = _cost(fam)
        by = {"threshold": "rule", "forced": "forced", "fixed": "fixed"}[fam.switch_reason]
        chi = _p(fam.chi_at_switch)
        if math.isfinite(fam.alignment_ema):
            chi += f" ({_p(fam.alignment_ema)})"
        out.append(
            [
                fam.family,
                _f(fam.lr, 3),
                str(fam.switch_step),
                by,
                chi,
                _f(fam.loss_at_switch),
                _final(fam, "base"),
                _final(fam, "dom"),
                _final(fam, "bulk"),
                f"{_p(fam.runs['dom'].progress)} / {_p(fam.runs['bulk'].progress)}",
                _p(fam.runs["bulk"].removed_fraction),
                _f(fam.eta.get("ratio", math.nan), 3),
                _f(matvecs, 3),
                _f(seconds, 2),
            ]
        )
        if scales_label(result.config) is not None:
            has = "scaled" in fam.runs
            out[-1] += [
                _final(fam, "scaled") if has else "—",
                _p(fam.runs["scaled"].progress) if has else "—",
            ]
    return out


def _legend(result: ExperimentResult) -> list[str]:
    cfg = result.config
    k = cfg["k"]
    lines = [
        "L switch: full-batch training loss at the switch; base / Dom / Bulk: "
        + (
            f"{cfg['after_switch']} steps after the switch "
            if cfg.get("after_switch")
            else f"after step {cfg['steps']} "
        )
        + "(↑: more than 5 % above the loss at the switch).",
        "Dom/Bulk progress: (L_switch − L_variant)/(L_switch − L_base): ≈0 is a plateau, ≈1 trains like the base.",
        "by: rule (the EMA of χ_k reached the threshold), forced (it had not by the fallback "
        "step) or fixed (--switch STEP).",
        f"χ_k (EMA): ‖P_k∇L‖/‖∇L‖ of the full-batch gradient at the switch step (k = {k}), and "
        "in brackets the EMA the rule compared with the threshold; "
        "removed: mean ‖P_kΔ‖/‖Δ‖ of the base update that Bulk removes.",
        "η_b/η_d: effective learning rates of the base run, ratio of sums over its full-gradient steps.",
        f"matvecs/refresh, s/refresh: eigensolver cost per basis refresh in the Dom and Bulk runs "
        f"(refreshed every {cfg['refresh']} step(s)).",
    ]
    label = scales_label(cfg)
    if label is not None:
        lines.append(
            f"scaled {label}: θ += a·P_kΔ + b·(Δ − P_kΔ) with (a, b) = {label}, from the same "
            "switch point and minibatches; its progress is measured like Dom's and Bulk's."
        )
    threshold = cfg.get("switch")
    if cfg.get("switch_mode") == "threshold" and isinstance(threshold, float) and threshold < 0.95:
        lines.append(
            f"The switch threshold {threshold} is below the paper's 0.95"
            + (
                ": on digits, SGD's χ_k plateaus near 0.75-0.85 and its EMA does not reach 0.95."
                if str(result.setup).startswith("digits")
                else "."
            )
        )
    if any(f.switch_reason == "forced" for f in result.families):
        lines.append(
            f"forced: χ_k's EMA had not reached the threshold {cfg['switch']}; the switch was forced at "
            f"step {cfg.get('switch_by')}."
        )
    return lines


def format_table(result: ExperimentResult, *, markdown: bool = False) -> str:
    """The summary table (plus legend and notes) as text or GitHub markdown.

    Args:
        result: a reproduction's result.
        markdown: write a GitHub markdown table instead of aligned plain text.

    Returns:
        The table, its legend and the families' notes, as lines joined by newlines.

    Example:
        A result assembled by hand (:func:`~subspace_optim.experiments.run` returns one):

        >>> from subspace_optim.experiments import (ExperimentResult, FamilyResult, RunConfig,
        ...                                         RunSummary, VariantOutcome, format_table)
        >>> runs = {v: RunSummary.from_outcome(VariantOutcome(v, [], f, steps_run=8), k=2,
        ...                                    limit=20.0, loss_at_switch=0.5, base_final=0.1)
        ...         for v, f in [("base", 0.1), ("dom", 0.5), ("bulk", 0.12)]}
        >>> fam = FamilyResult("sgd", "SGD", lr=0.1, batch_size=16, stability_limit=20.0,
        ...                    initial_sharpness=float("nan"), switch_step=4,
        ...                    switch_reason="fixed", alignment_ema=0.9, chi_at_switch=0.95,
        ...                    initial_loss=1.0, loss_at_switch=0.5, eta={"ratio": 1.0},
        ...                    runs=runs, prefix_seconds=0.1)
        >>> config = RunConfig(optimizers="sgd", steps=12, switch=4, k=2).as_dict()
        >>> result = ExperimentResult("toy", config, machine={}, families=[fam], seconds=1.0)
        >>> table = format_table(result, markdown=True).splitlines()
        >>> table[0].split(" | ")[2:10]
        ['switch', 'by', 'χ_k (EMA)', 'L switch', 'base', 'Dom', 'Bulk', 'Dom/Bulk progress']
        >>> print(table[2])
        | sgd | 0.1 | 4 | fixed | 0.95 (0.90) | 0.5 | 0.1 | 0.5 | 0.12 | 0.00 / 0.95 | — | 1 | — | — |
    """
    rows = table_rows(result)
    headers = _headers(result)
    lines: list[str] = []
    if markdown:
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
        lines += [f"- {s}" for s in _legend(result)]
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.append("")
        lines += _legend(result)
    notes = [(f.family, n) for f in result.families for n in f.notes()]
    if notes:
        lines.append("")
        lines.append("Notes:" if not markdown else "**Notes**")
        lines += [("- " if markdown else "  ") + f"{fam}: {n}" for fam, n in notes]
    return "\n".join(lines)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        for key in r:
            if not key.startswith("eig_"):
                cols.setdefault(key, None)
    eig = sorted({k for r in rows for k in r if k.startswith("eig_")}, key=lambda s: int(s[4:]))
    return list(cols) + eig


def _summary_md(result: ExperimentResult, figures: dict[str, Path]) -> str:
    cfg, mach = result.config, result.machine
    switch = (
        f"fixed at step {cfg['switch']}"
        if cfg["switch_mode"] == "fixed step"
        else f"when the EMA of χ_k passes {cfg['switch']}"
        + (f", not before step {cfg['switch_after']}" if cfg.get("switch_after") else "")
        + f" (forced at step {cfg['switch_by']})"
    )
    parts = [
        f"# subspace-optim reproduce: {result.setup}",
        "",
        f"{cfg['num_examples']} training examples, {cfg['num_params']:,} parameters, k = {cfg['k']}, "
        + (
            f"{cfg['after_switch']} steps after the switch"
            if cfg.get("after_switch")
            else f"{cfg['steps']} steps per run"
        )
        + f", switch {switch}; basis refreshed every {cfg['refresh']} "
        f"step(s) after the switch (solver: {cfg['solver'] or 'library default'}); seed {cfg['seed']}.",
        *(
            [f"Data: {', '.join(f'{k} {v}' for k, v in cfg['setup_info'].items())}."]
            if cfg.get("setup_info")
            else []
        ),
        "",
        f"Machine: {mach['platform']}, {mach['cpu_count']} CPUs, Python {mach['python']}, torch "
        f"{mach['torch']} ({mach['torch_threads']} thread(s)), device {mach['device']}"
        + (f" ({mach['gpu']})" if "gpu" in mach else "")
        + f". Wall time {result.seconds:.0f} s, CPU time {result.cpu_seconds:.0f} s (the two "
        "differ when the machine is shared).",
        "",
        format_table(result, markdown=True),
        "",
        "## Figures",
        "",
        "Training loss (log scale), base vs Dom vs Bulk"
        + (f" vs scaled {label}:" if (label := scales_label(cfg)) else ":"),
        "",
        f"![training loss]({figures['loss'].name})",
        "",
        "χ_k of the full-batch gradient:",
        "",
        f"![alignment]({figures['alignment'].name})",
        "",
        "Top Hessian eigenvalues and the stability threshold:",
        "",
        f"![eigenvalues]({figures['eigenvalues'].name})",
        "",
        "Per-step metrics: [metrics.csv](metrics.csv), [metrics.json](metrics.json); "
        "summary: [summary.json](summary.json).",
        "",
    ]
    return "\n".join(parts)


def write_report(result: ExperimentResult, out: str | Path, *, figures: bool = True) -> Path:
    """Write the run folder ``out`` (which must not exist or be empty); returns its path.

    The folder is written under a temporary name next to it and renamed at the end, so
    an interrupted write leaves no partial ``out``.

    Args:
        result: a reproduction's result.
        out: the folder to create (its parents are created as needed).
        figures: also draw ``loss.png``, ``alignment.png`` and ``eigenvalues.png``
            (needs matplotlib).

    Returns:
        ``out``, holding ``metrics.csv``, ``metrics.json``, ``summary.json`` and
        ``summary.md`` (and the figures).

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder.

    Example:
        A result assembled by hand (:func:`~subspace_optim.experiments.run` returns one),
        written without the figures and read back with :func:`read_report`:

        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from subspace_optim.experiments import (ExperimentResult, FamilyResult, RunConfig,
        ...                                         RunSummary, VariantOutcome, read_report,
        ...                                         write_report)
        >>> from subspace_optim.experiments.runner import machine_info
        >>> finals = [("base", 0.1), ("dom", 0.5), ("bulk", 0.12)]
        >>> runs = {v: RunSummary.from_outcome(VariantOutcome(v, [], f, steps_run=8), k=2,
        ...                                    limit=20.0, loss_at_switch=0.5, base_final=0.1)
        ...         for v, f in finals}
        >>> rows = [{"family": "sgd", "variant": v, "phase": "after switch", "step": 12,
        ...          "loss": f} for v, f in finals]
        >>> fam = FamilyResult("sgd", "SGD", lr=0.1, batch_size=16, stability_limit=20.0,
        ...                    initial_sharpness=float("nan"), switch_step=4,
        ...                    switch_reason="fixed", alignment_ema=0.9, chi_at_switch=0.95,
        ...                    initial_loss=1.0, loss_at_switch=0.5, eta={"ratio": 1.0},
        ...                    runs=runs, prefix_seconds=0.1, rows=rows)
        >>> config = {**RunConfig(optimizers="sgd", steps=12, switch=4, k=2).as_dict(),
        ...           "num_examples": 64, "num_params": 67}
        >>> result = ExperimentResult("toy", config, machine_info(torch.device("cpu")), [fam],
        ...                           seconds=1.0)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = write_report(result, Path(tmp) / "run", figures=False)
        ...     print(sorted(p.name for p in path.iterdir()))
        ...     print(path.joinpath("summary.md").read_text().splitlines()[0])
        ...     print(path.joinpath("metrics.csv").read_text().splitlines()[1])
        ...     back = read_report(path)  # the round trip
        ['metrics.csv', 'metrics.json', 'summary.json', 'summary.md']
        # subspace-optim reproduce: toy
        sgd,base,after switch,12,0.1
        >>> f = back.families[0]
        >>> f.switch_step, f.runs["bulk"].final_loss, round(f.runs["bulk"].progress, 6)
        (4, 0.12, 0.95)
        >>> import math
        >>> math.isnan(f.initial_sharpness), [r["variant"] for r in back.rows()]
        (True, ['base', 'dom', 'bulk'])
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} already exists and is not an empty folder; choose another --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        rows = result.rows()
        cols = _columns(rows)
        with open(tmp / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols, restval="")
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    {
                        k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in r.items()
                    }
                )
        (tmp / "metrics.json").write_text(
            json.dumps(_clean(rows), allow_nan=False), encoding="utf-8"
        )
        summary = {**result.summary(), "table": table_rows(result)}
        (tmp / "summary.json").write_text(
            json.dumps(_clean(summary), indent=2, allow_nan=False, ensure_ascii=False),
            encoding="utf-8",
        )
        paths: dict[str, Path] = {}
        if figures:
            from .plots import save_figures

            paths = save_figures(result, tmp)
        else:
            paths = {name: Path(f"{name}.png") for name in ("loss", "alignment", "eigenvalues")}
        (tmp / "summary.md").write_text(_summary_md(result, paths), encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _nan(x: Any) -> Any:
    return math.nan if x is None else x


def read_report(folder: str | Path) -> ExperimentResult:
    """Load a run folder written by :func:`write_report` back into an
    :class:`~subspace_optim.experiments.ExperimentResult` (e.g. to re-plot or compare runs).

    The example of :func:`write_report` writes a result and reads it back with this
    function (``nan`` is stored as ``null`` and comes back as ``nan``).

    Args:
        folder: a folder written by :func:`write_report`.

    Returns:
        The result, with every family's per-step rows.
    """
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    rows = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    rows = [{k: _nan(v) for k, v in r.items()} for r in rows]
    families = []
    for fam in summary["families"]:
        runs = {}
        for name, r in fam["runs"].items():
            r = {
                k: _nan(v) if k not in ("diverged_at", "limit_crossed_at") else v
                for k, v in r.items()
            }
            r["warnings"] = tuple(r.get("warnings") or ())
            runs[name] = RunSummary(**r)
        fields = {k: _nan(v) for k, v in fam.items() if k not in ("runs", "notes", "batch_size")}
        families.append(
            FamilyResult(
                **fields,
                batch_size=fam["batch_size"],
                runs=runs,
                rows=[r for r in rows if r["family"] == fam["family"]],
            )
        )
    return ExperimentResult(
        setup=summary["setup"],
        config=summary["config"],
        machine=summary["machine"],
        families=families,
        seconds=summary["seconds"],
        cpu_seconds=_nan(summary.get("cpu_seconds")),
    )
