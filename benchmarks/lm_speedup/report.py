"""Tables, figures and the page of the language-model speed-up study, all made from the
JSON the study writes (so ``--render`` reproduces them)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from benchmarks.harness import load_clause, machine_line, markdown_table

from . import metrics

RULE = (
    "The rule, computed from the numbers above: the best subspace arm (of the `history-*`, "
    "`sketch-*`, `bulk` and `dom` arms, the fastest to the target; if none reaches it, the "
    f"lowest final loss) must reach the target in ≤ {metrics.SPEEDUP_TARGET:g}× the tuned "
    "AdamW's training time, and sooner than the fastest arm of each control family "
    "(`adamw-lrx*`, `blockscale-*`); a control that never reaches the target is beaten by an "
    "arm that does."
)
FAMILY_STYLE = {"adamw": "-", "source": "--", "control": ":"}
LOADED = " A loaded machine: the times are slower and noisier than on an idle one."


def _f(x: float | None, spec: str = ".4f", none: str = "not reached") -> str:
    if x is None:
        return none
    return "nan" if isinstance(x, float) and not math.isfinite(x) else format(x, spec)


def _labels(arm_list: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    return {a["name"]: a["family"] for a in arm_list}, {a["name"]: a["kind"] for a in arm_list}


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """The main table's rows, the tuned baseline and target, and the verdict; the oracle's
    rows (its own plain AdamW is its baseline)."""
    families, kinds = _labels(results["arms"])
    runs = metrics.equal_load(results["runs"], results.get("timing"))
    main = metrics.summarize_all(runs, families) if runs else None
    out: dict[str, Any] = {"main": main, "oracle": None}
    out["verdict"] = (
        metrics.verdict(main, families, kinds) if main else {"passed": False, "text": "No runs."}
    )
    if results.get("oracle"):
        o = results["oracle"]
        fam = {a["name"]: ("adamw" if a["kind"] == "adamw" else "source") for a in o["arms"]}
        out["oracle"] = metrics.summarize_all(o["runs"], fam)
    return out


def _source_mean(runs: list[dict[str, Any]], key: str) -> float:
    return sum(r["source"].get(key, math.nan) for r in runs) / len(runs)


def source_table(results: dict[str, Any]) -> str | None:
    """The sources' own counters, mean over seeds: refreshes, their seconds, the share of
    ``opt.step()`` time they took, and the memory the source holds."""
    rows = []
    for a in results["arms"]:
        rs = [r for r in results["runs"] if r["arm"] == a["name"] and r.get("source")]
        if not rs:
            continue
        opt_s = sum(r["opt_step_ms"] * r["steps_done"] / 1000 for r in rs) / len(rs)
        rows.append([
            f"`{a['name']}`", _f(_source_mean(rs, "refreshes"), ".0f"),
            _f(_source_mean(rs, "refresh_seconds"), ".2f"),
            _f(100 * _source_mean(rs, "refresh_seconds") / opt_s, ".0f") + " %",
            _f(_source_mean(rs, "memory_bytes") / 2**20, ".1f"),
        ])  # fmt: skip
    if not rows:
        return None
    header = ["arm", "refreshes", "refresh s / run", "of opt.step time", "source memory (MiB)"]
    return markdown_table(header, rows)


def arm_list(results: dict[str, Any]) -> str:
    return "\n".join(f"* `{a['name']}`: {a['description']}" for a in results["arms"])


def oracle_tables(o: dict[str, Any], s: dict[str, Any]) -> list[str]:
    header = [
        "arm",
        "description",
        "final val loss",
        "s to AdamW's final loss",
        "ms / step",
        "opt.step ms",
    ]
    rows = [
        [f"`{a['name']}`", a["description"], _f(s["rows"][a["name"]]["final_mean"]),
         _f(s["rows"][a["name"]]["seconds_to_target"], ".1f"),
         _f(s["rows"][a["name"]]["step_ms"], ".1f"), _f(s["rows"][a["name"]]["opt_step_ms"], ".2f")]
        for a in o["arms"]
    ]  # fmt: skip
    out = [markdown_table(header, rows)]
    cos_rows = []
    for r in o["runs"]:
        for c in r["checkpoints"]:
            if "cos" not in c:
                continue
            cos_rows.append([
                f"`{r['arm']}`", str(r["seed"]), str(c["step"]), ", ".join(_f(x, ".3g") for x in c["eigenvalues"]),
                ", ".join(_f(x, ".2f") for x in c["cos"]), ", ".join(_f(x, ".2f") for x in c["share"]),
                _f(c["chance"], ".3f"),
            ])  # fmt: skip
    if cos_rows:
        header = [
            "arm",
            "seed",
            "step",
            "Hessian λ_1..λ_m",
            "‖P_blocks u_i‖",
            "‖u_i‖ in blocks with a basis",
            "chance",
        ]
        out += ["", markdown_table(header, cos_rows)]
    else:
        out += ["", "No source arm ran in the oracle table, so no principal-angle measure."]
    return out


def _what(results: dict[str, Any]) -> str:
    m, t, c = results["model"], results["train"], results["corpus"]
    return (
        f"Character-level GPT: {m['layers']} pre-LN blocks of width {m['width']}, {m['heads']} "
        f"heads, context {m['context']}, vocabulary {m['vocab']}: {results['params']:,} parameters. "
        f"Corpus: {c['source']}, {c['chars']:,} characters ({c['train_chars']:,} for training, the last "
        f"{c['val_chars']:,} held out). Batch {t['batch']} × {m['context']}, {t['steps']} steps, "
        f"AdamW (weight decay 0.1), gradient norm clipped at {t['clip']:g}, learning rate warmed up "
        f"linearly over {t['warmup']} steps then cosine to {t['min_lr_frac']:g}× its peak; "
        f"validation loss on {t['eval_batches']} fixed batches of {t['eval_batch_size']} every "
        f"{t['eval_every']} steps. Seeds {results['seeds']}; tuned learning rate "
        f"{results['tuned_lr']:g} (from {results['tuned_lr_from']}). Each run on one torch "
        f"thread, {results['jobs']} at a time."
    )


def main_table(results: dict[str, Any], analysis: dict[str, Any]) -> str:
    """The main table on the equal-load clock (side-by-side step timing), with the clock
    the runs measured beside it."""
    s = analysis["main"]
    header = ["arm", "final val loss", "steps to target", "s to target", "× tuned AdamW's time",
              "measured s to target (×)", "ms / step", "opt.step ms",
              "opt.step − AdamW's: ms (% of an AdamW step)", "diverged"]  # fmt: skip
    rows = []
    for a in results["arms"]:
        r = s["rows"].get(a["name"])
        if r is None:
            continue
        extra = r["opt_overhead_ms"]
        measured = _f(r["measured_seconds_to_target"], ".1f")
        if r["measured_time_ratio"] is not None:
            measured += f" ({r['measured_time_ratio']:.2f})"
        rows.append([
            f"`{a['name']}`" + (" (tuned)" if a["name"] == s["tuned"] else ""),
            f"{_f(r['final_mean'])} ± {_f(r['final_std'])}",
            _f(r["steps_to_target"], ".0f"), _f(r["seconds_to_target"], ".1f"),
            _f(r["time_ratio"], ".2f", "—"), measured,
            _f(r["step_ms"], ".1f"), _f(r["opt_step_ms"], ".2f"),
            "—" if extra is None else f"{extra:+.2f} ({100 * r['opt_overhead_frac']:+.1f} %)",
            f"{r['diverged']}/{r['seeds']}",
        ])  # fmt: skip
    return markdown_table(header, rows)


TIMED = (
    "Seconds are on the *equal-load clock*: steps × the arm's median ms per training step "
    "measured side by side with every other arm in one process ({steps} timed rounds after "
    "{warmup} warm-up rounds, one step of each arm per round in a rotating order; "
    "`benchmarks/lm_speedup/timing.py`), because the runs themselves ran at different times under different "
    "loads. The training seconds the runs measured are beside them. ms / step and opt.step "
    "ms are the side-by-side medians; the overhead is opt.step's extra time over the tuned "
    "AdamW's, as a share of the tuned AdamW's whole training step."
)


def _timing_load(timed: dict[str, Any]) -> str:
    load = timed.get("load_average_at_end")
    return f" Load average after the timing: {load[0]:.1f} (1 min)." if load else ""


def markdown(results: dict[str, Any], analysis: dict[str, Any]) -> str:
    m = results["machine"]
    lines = ["# Language-model speed-up study (issue 23)", "", _what(results), ""]
    loaded = load_clause(m, "!").endswith("!")  # over 0.75 per core at either end
    lines += [machine_line(m, results["command"]) + (LOADED if loaded else "")]
    wall = results["wall_seconds"]
    took = f"{wall / 60:.1f} min" if wall >= 120 else f"{wall:.0f} s"
    lines += [f"Commit {results['commit']}; wall time {took}.", ""]
    lines += ["## Verdict", "", analysis["verdict"]["text"], "", RULE, ""]
    if analysis["main"]:
        s = analysis["main"]
        lines += ["## Arms", "", arm_list(results), "", "## Results", ""]
        how = TIMED.format(**results["timing"]) + _timing_load(results["timing"])
        lines += [
            f"Target: the tuned AdamW's (`{s['tuned']}`) mean final validation loss "
            f"{_f(s['target'])}. Steps and seconds to it are read off the mean curve over seeds "
            "(linear interpolation between evaluations); seconds are training time only. " + how,
            "", main_table(results, analysis), "",
        ]  # fmt: skip
        cost = source_table(results)
        if cost:
            lines += ["The sources' own counters (mean over seeds):", "", cost, ""]
    if analysis["oracle"]:
        o = results["oracle"]
        om = o["model"]
        lines += ["## Oracle table (smaller GPT)", ""]
        lines += [
            f"GPT of {om['layers']} blocks of width {om['width']}, context {om['context']}: "
            f"{o['params']:,} parameters, {o['train']['steps']} steps of batch {o['train']['batch']}; "
            f"Hessian of {o['hessian_seqs']} fixed training sequences; k = {o['k']}, refresh every "
            f"{o['refresh']} steps, (α, γ) = ({o['mode'][0]:g}, {o['mode'][1]:g}). The cosines are "
            f"‖P_blocks u_i‖ for the Hessian's top {o['eig_k']} eigenvectors u_i at the run's own "
            "parameters; chance is sqrt(Σ k_b / n), a random direction's expected value.", "",
        ]  # fmt: skip
        lines += [*oracle_tables(o, analysis["oracle"]), ""]
    return "\n".join(lines)


def _colors(arms_: list[dict[str, Any]]) -> dict[str, Any]:
    """Greys for the AdamW sweep (darker: higher rate); tab20's strong colours, then its
    light ones, for the other arms in table order."""
    import matplotlib

    sweep = [a["name"] for a in arms_ if a["family"] == "adamw"]
    greys = matplotlib.colormaps["Greys"]
    out = {n: greys(0.4 + 0.5 * i / max(len(sweep) - 1, 1)) for i, n in enumerate(sweep)}
    tab = matplotlib.colormaps["tab20"].colors
    palette = [tab[i] for i in (*range(0, 20, 2), *range(1, 20, 2))]
    others = [a["name"] for a in arms_ if a["family"] != "adamw"]
    out.update({n: palette[i % 20] for i, n in enumerate(others)})
    return out


def _plot_curves(
    ax_steps: Any, ax_secs: Any, runs: list[dict[str, Any]], arms_: list[dict[str, Any]]
) -> None:
    colors = _colors(arms_)
    for a in arms_:
        rs = [r for r in runs if r["arm"] == a["name"]]
        if not rs:
            continue
        c = metrics.mean_curve(rs)
        lo = [m - s for m, s in zip(c["val_mean"], c["val_std"])]
        hi = [m + s for m, s in zip(c["val_mean"], c["val_std"])]
        style = {"color": colors[a["name"]], "ls": FAMILY_STYLE.get(a["family"], "-"), "lw": 1.4}
        for ax, x in ((ax_steps, c["steps"]), (ax_secs, c["seconds"])):
            ax.plot(x, c["val_mean"], label=a["name"], **style)
            ax.fill_between(x, lo, hi, color=style["color"], alpha=0.15, lw=0)


def _ylim(runs: list[dict[str, Any]]) -> tuple[float, float]:
    finals = [r["val_loss"][-1] for r in runs if math.isfinite(r["val_loss"][-1])]
    early = [r["val_loss"][min(2, len(r["val_loss"]) - 1)] for r in runs]
    early = [x for x in early if math.isfinite(x)]
    lo, hi = min(finals or [0.0]), max(early or [1.0])
    return lo - 0.05 * (hi - lo), hi


def _figure(
    path: Path,
    title: str,
    runs: list[dict[str, Any]],
    arms_: list[dict[str, Any]],
    target: float | None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    _plot_curves(a1, a2, runs, arms_)
    for ax, xl in (
        (a1, "training step"),
        (a2, "training seconds (one thread; equal-load clock when timed side by side)"),
    ):
        if target is not None:
            ax.axhline(target, color="k", lw=0.8, alpha=0.6)
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
    a1.set_ylabel("validation loss (nats / char), mean ± std over seeds")
    a1.set_ylim(*_ylim(runs))
    fig.suptitle(title)
    a2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _zoom(
    path: Path, runs: list[dict[str, Any]], arms_: list[dict[str, Any]], analysis: dict[str, Any]
) -> Path:
    """The second half of training for the arms the verdict compares: the tuned AdamW, the
    best subspace arm, the best of each control, and Bulk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = analysis["verdict"]
    keep = {analysis["main"]["tuned"], v.get("best"), "bulk", *v.get("controls", {}).values()}
    chosen = [a for a in arms_ if a["name"] in keep]
    half = [r for r in runs if r["arm"] in keep]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    _plot_curves(a1, a2, half, chosen)
    steps = max(r["eval_steps"][-1] for r in half)
    tail = [x for r in half for i, x in enumerate(r["val_loss"]) if r["eval_steps"][i] >= steps / 2]
    for ax, xl in ((a1, "training step"), (a2, "training seconds (equal-load clock)")):
        ax.axhline(analysis["main"]["target"], color="k", lw=0.8, alpha=0.6)
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
    a1.set_xlim(steps / 2, steps * 1.02)
    a2.set_xlim(0.45 * max(max(r["train_seconds"]) for r in half), None)
    a1.set_ylim(min(tail) - 0.01, max(tail) + 0.01)
    a1.set_ylabel("validation loss, mean ± std over seeds")
    fig.suptitle("Second half of training: the arms the verdict compares (black: the target)")
    a2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(results: dict[str, Any], analysis: dict[str, Any], fig_dir: Path) -> list[Path]:
    """Validation loss vs steps and vs seconds, one line per arm (solid: AdamW sweep,
    dashed: subspace arms, dotted: controls; the black line is the target)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    runs = metrics.equal_load(results["runs"], results.get("timing"))
    if runs:
        target = analysis["main"]["target"]
        title = "Character GPT: validation loss (black line: the tuned AdamW's final loss)"
        paths.append(_figure(fig_dir / "val_loss.png", title, runs, results["arms"], target))
        if analysis["verdict"].get("best"):
            paths.append(_zoom(fig_dir / "val_loss_zoom.png", runs, results["arms"], analysis))
    if results.get("oracle"):
        o = results["oracle"]
        arms_ = [dict(a, family="adamw" if a["kind"] == "adamw" else "source") for a in o["arms"]]
        title = "Oracle table (smaller GPT): validation loss"
        paths.append(
            _figure(
                fig_dir / "oracle_val_loss.png",
                title,
                o["runs"],
                arms_,
                analysis["oracle"]["target"],
            )
        )
    return paths


def page(
    results: dict[str, Any], analysis: dict[str, Any], md: str, figures: list[Path], page_dir: Path
) -> str:
    """The docs page: the markdown with the figures and how to regenerate it."""
    body = md.split("\n", 1)[1]
    figs = [f"![{p.stem}]({os.path.relpath(p, page_dir)})" for p in figures]
    regen = [
        "Generated by `benchmarks/lm_speedup/` from its results "
        "(`benchmarks/results/lm_speedup.json`); no number on this page is typed by hand. "
        "One study on one shared CPU, a few seeds and a few hundred steps: read it as a "
        "measurement of this setup, not a general law.", "",
        "Regenerate (the full study; `--render` rewrites this page and the figures from the "
        "JSON):", "",
        "```bash", "python -m benchmarks.lm_speedup --jobs 2 --docs",
        "python -m benchmarks.lm_speedup --render --docs", "```", "",
    ]  # fmt: skip
    title = "# Language-model speed-up study (issue 23)"
    return "\n".join([title, "", *regen, body.strip(), "", "## Figures", "", *figs, ""])
