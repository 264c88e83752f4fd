"""The summary and the docs page of ``benchmarks/bulk_adam_study.py``.

Everything here reads the results dictionary only (``--render`` rebuilds the page from the
JSON); no number is typed by hand.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import projected_training as pt

#: Bulk "trains like Adam" when its progress relative to Adam is at least this
LIKE_ADAM = 0.9


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.fmean(xs) if xs else math.nan


def _progress(at_switch: float, final: float, base_final: float) -> float:
    gain = at_switch - base_final
    return (at_switch - final) / gain if gain > 0 and math.isfinite(final) else math.nan


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The study's key numbers (the page's "In short" and the README quote these)."""
    head = results["study"]["head"]
    sweep = [p for p in results["lr_sweep"] if "error" not in p]
    default = next(p for p in sweep if p["lr"] == results["study"]["lr"])
    mech = results["mechanism"]
    runs = mech["runs"]
    base_final = runs["base"]["final_loss"]

    def run_summary(name: str) -> dict[str, Any]:
        r = runs[name]
        s = r["series"]
        out = {
            "final_loss": r["final_loss"],
            "progress": _progress(mech["loss_at_switch"], r["final_loss"], base_final),
            "identity_rel_error_max": max(s["identity_rel_error"]),
            "identity_rel_error_median": statistics.median(s["identity_rel_error"]),
            "update_alignment_early": _mean(s["update_alignment"][:head]),
            "update_alignment_late": _mean(s["update_alignment"][-head:]),
            "update_alignment_vs_wrapper_max": max(
                abs(a - b)
                for a, b in zip(s["update_alignment"], s["update_alignment_wrapper"])
                if math.isfinite(b)
            ),
            "chi_early": _mean(s["chi"][:head]),
            "chi_late": _mean(s["chi"][-head:]),
            "m_norm_start": s["m_norm"][0],
            "m_norm_end": s["m_norm"][-1],
            "m_dom_norm_start": s["m_dom_norm"][0],
            "m_dom_norm_end": s["m_dom_norm"][-1],
            "lambda_1_start": s["lambda_1"][0],
            "lambda_1_end": s["lambda_1"][-1],
            "lambda_1_max": max(s["lambda_1"]),
            "first_order": {key: sum(s[key]) for key in ("leak", "rest", "dom", "realized")},
            "loss_change": r["final_loss"] - r["loss_start"],
            # what the first-order sum misses: the second- and higher-order terms
            "higher_order": r["final_loss"] - r["loss_start"] - sum(s["realized"]),
            "max_rel_residual": max(
                (x["max_rel_residual"] for x in r["residuals"]), default=math.nan
            ),
            "unconverged_refreshes": r["counters"].get("unconverged", 0.0),
            "refreshes": r["counters"].get("refreshes", math.nan),
        }
        return out

    return {
        "rule": {
            "lr": default["lr"],
            "switch_step": default["switch_step"],
            "switch_reason": default["switch_reason"],
            "chi_at_switch": default["chi_at_switch"],
            "chi_ema": default["chi_ema"],
            "loss_at_switch": default["loss_at_switch"],
            "bulk_progress": default["runs"]["bulk"]["progress"],
            "dom_progress": default["runs"]["dom"]["progress"],
        },
        "fixed": [
            {
                "switch_step": p["switch_step"],
                "chi_at_switch": p["chi_at_switch"],
                "bulk_progress": p["runs"]["bulk"]["progress"],
            }
            for p in results["fixed_switch"]
            if "error" not in p
        ],
        "sweep": {
            "by_rule": [p["lr"] for p in sweep if p["switch_reason"] == "threshold"],
            "bulk_like_adam": [
                p["lr"] for p in sweep if p["runs"]["bulk"]["progress"] >= LIKE_ADAM
            ],
            "both": [
                p["lr"]
                for p in sweep
                if p["switch_reason"] == "threshold" and p["runs"]["bulk"]["progress"] >= LIKE_ADAM
            ],
            "diverged_before_switch": [p["lr"] for p in results["lr_sweep"] if "error" in p],
        },
        "mechanism": {
            "base": run_summary("base"),
            "bulk": run_summary("bulk"),
            "bulk_lanczos": run_summary("bulk_lanczos"),
            # the instrumented runs retrace run()'s: their final losses against run()'s
            "vs_run": {
                "base": abs(runs["base"]["final_loss"] - default["runs"]["base"]["final_loss"]),
                "bulk": abs(runs["bulk"]["final_loss"] - default["runs"]["bulk"]["final_loss"]),
                "loss_at_switch": abs(mech["loss_at_switch"] - default["loss_at_switch"]),
            },
        },
    }


# --------------------------------------------------------------------------- text
def _f(x: float, spec: str = ".2f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _lr(x: float) -> str:
    return f"{x:g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


ARCH = {"x86_64": "x86-64", "aarch64": "ARM64", "arm64": "ARM64"}
REASON = {"threshold": "rule", "forced": "forced", "fixed": "fixed"}


def machine_text(results: dict[str, Any]) -> str:
    m = results["machine"]
    threads = m["torch_threads"]
    text = (
        f"Machine: {m['cpu_count']}-core {ARCH.get(m.get('arch', ''), m.get('arch', ''))} "
        f"{m['cpu']} CPU, "
        f"{'a GPU present but not used' if m.get('gpu_available') else 'no GPU'}, "
        f"Python {m['python']}, torch {m['torch']}, {threads} torch thread{'s' if threads > 1 else ''}"
    )
    if m.get("omp_num_threads"):
        text += f" (OMP_NUM_THREADS={m['omp_num_threads']})"
    text += pt.load_clause(
        m,
        f" (other jobs shared the {m['cpu_count']} cores: the times are wall times "
        "on a loaded machine; the losses do not depend on them)",
    )
    return (
        text
        + f". Wall time {results['wall_seconds']:.0f} s, CPU time {results['cpu_seconds']:.0f} s."
    )


def page(results: dict[str, Any]) -> str:
    """``docs/bulk_adam.md``."""
    s = results["summary"]
    st = results["study"]
    setup = results["setup"]
    d = setup["defaults"]
    rule, mech = s["rule"], s["mechanism"]
    mb, mbase, ml = mech["bulk"], mech["base"], mech["bulk_lanczos"]
    m = results["mechanism"]
    k = d["k"]
    head = st["head"]
    L: list[str] = [
        "# Why Bulk-Adam stalls on digits",
        "",
        "Generated by `benchmarks/bulk_adam_study.py` from its results "
        "(`benchmarks/results/bulk_adam_study.json`); no number on this page is typed by "
        "hand. The study explains one row of `subspace-optim reproduce` "
        "({doc}`guide/reproducing`): Bulk-Adam at the default learning rate makes no progress "
        "after its switch, where the paper (Song, Ahn & Yun, ICLR 2025) finds that Bulk-Adam "
        "trains like Adam. One seed, one setup: read it as a measurement of this setup.",
        "",
        f"Produced by `{results['command']}`"
        + (
            " (a smoke run on tiny settings: not the committed results)."
            if results["quick"]
            else "."
        ),
        "",
        machine_text(results),
        "",
        f"Setup: {setup['description']} ({setup['num_params']:,} parameters), Adam (β = 0.9, 0.999), batch {d['batch_size']}, "
        f"seed {st['seed']}. The switch follows the rule of `reproduce`: χ_k(∇L) of the "
        f"full-batch gradient every {d['check_every']} steps, its EMA (0.9 per step) against "
        f"{d['switch']}, not before step {d.get('switch_after', 0)}, forced at step "
        f"{d.get('switch_by')}; then Adam, Dom-Adam and Bulk-Adam run "
        f"{d.get('after_switch')} steps from the same snapshot with the same minibatches, the "
        f"top-{k} Hessian basis refreshed every step. *Progress* is "
        "(L_switch − L_variant)/(L_switch − L_Adam): 1 trains like Adam, 0 stalls.",
        "",
        "## In short",
        "",
    ]
    by_rule_bulk = rule["bulk_progress"]
    fixed_txt = ", ".join(
        f"{_f(p['bulk_progress'])} at step {p['switch_step']} (χ_k {_f(p['chi_at_switch'])})"
        for p in s["fixed"]
    )
    both = s["sweep"]["both"]
    L += [
        (
            "* **It depends on when the switch comes.** "
            if s["fixed"] and max(p["bulk_progress"] for p in s["fixed"]) - by_rule_bulk > 0.3
            else "* **The switch step.** "
        )
        + f"At lr {_lr(rule['lr'])} the rule switches "
        f"at step {rule['switch_step']} ({REASON[rule['switch_reason']]}; χ_k "
        f"{_f(rule['chi_at_switch'])}, EMA {_f(rule['chi_ema'])}) and Bulk-Adam's progress is "
        f"{_f(by_rule_bulk)}; with a fixed switch it is {fixed_txt}.",
        "* **No Adam learning rate in the sweep gives both a switch by the rule and Bulk-Adam "
        f"like Adam** (progress ≥ {LIKE_ADAM})."
        if not both
        else "* **Learning rates with both a switch by the rule and Bulk-Adam like Adam** "
        f"(progress ≥ {LIKE_ADAM}): {', '.join(map(_lr, both))}.",
    ]
    L[-1] += (
        f" Swept: {', '.join(map(_lr, (p['lr'] for p in results['lr_sweep'])))}; the rule "
        f"switched at {', '.join(map(_lr, s['sweep']['by_rule'])) or 'none'}; Bulk kept up "
        f"with Adam at {', '.join(map(_lr, s['sweep']['bulk_like_adam'])) or 'none'}."
    )
    L += [
        f"* **The projection does what it says.** Over the {m['end_step'] - m['switch_step']} "
        "steps after the rule's switch, the realized Bulk step equals (I − P_k) applied to the "
        f"step Adam's own state gives, to {_f(mb['identity_rel_error_max'], '.1e')} relative "
        f"(largest; median {_f(mb['identity_rel_error_median'], '.1e')}). The warm basis has "
        f"eigen-residuals ‖Hu − λu‖/λ ≤ {_f(mb['max_rel_residual'], '.1e')} where sampled, and "
        "a cold Lanczos basis at every step gives the same "
        + ("stall" if max(mb["progress"], ml["progress"]) < 0.5 else "result")
        + " (final loss "
        f"{_f(ml['final_loss'], '.5f')}, progress {_f(ml['progress'])}, against "
        f"{_f(mb['final_loss'], '.5f')} and {_f(mb['progress'])} with the warm refresh).",
        f"* **Mechanism.** Bulk never moves along the top-{k} directions. Over the last "
        f"{head} steps of Bulk χ_k(∇L) averages {_f(mb['chi_late'])} (Adam: "
        f"{_f(mbase['chi_late'])}); the dominant part of Adam's first moment, ‖P_k m‖, goes "
        f"from {_f(mb['m_dom_norm_start'], '.3g')} to {_f(mb['m_dom_norm_end'], '.3g')} (Adam: "
        f"{_f(mbase['m_dom_norm_end'], '.3g')}); ‖P_kΔ‖/‖Δ‖ of Adam's own update is "
        f"{_f(mb['update_alignment_late'])} (Adam: {_f(mbase['update_alignment_late'])}); λ_1 "
        f"goes from {_f(mb['lambda_1_start'])} to {_f(mb['lambda_1_end'])} (Adam: "
        f"{_f(mbase['lambda_1_end'])}). Adam's per-coordinate scaling carries part of P_k m "
        "out of the dominant subspace, into the step Bulk keeps; to first order that part "
        f"changed the loss by {_f(mb['first_order']['leak'], '+.3f')} over the run, the rest "
        f"of the Bulk step by {_f(mb['first_order']['rest'], '+.3f')}: a first-order total of "
        f"{_f(mb['first_order']['realized'], '+.3f')}, against Adam's "
        f"{_f(mbase['first_order']['realized'], '+.3f')} (measured loss change "
        f"{_f(mb['loss_change'], '+.4f')} and {_f(mbase['loss_change'], '+.4f')}; the rest is "
        f"higher order, {_f(mb['higher_order'], '+.3f')} and {_f(mbase['higher_order'], '+.3f')})."
        + (
            " So the gradient's dominant part, which Bulk never steps along, accumulates in "
            "Adam's first moment, and the part of it that the scaling carries into the Bulk "
            "step raises the loss instead of lowering it. SGD has no such scaling: its Bulk "
            "step is exactly −η(I − P_k)∇L_B."
            if mb["first_order"]["leak"] > 0 and mb["m_dom_norm_end"] > mbase["m_dom_norm_end"]
            else " In this run the leak does not raise the loss while ‖P_k m‖ grows beyond "
            "Adam's: the explanation above does not apply to it."
        ),
        "",
    ]

    # ---- fixed switch
    L += [
        "## Bulk-Adam against the switch step",
        "",
        f"Adam lr {_lr(rule['lr'])}; `subspace-optim reproduce --optimizers adam --switch N` "
        "for the fixed steps, and the rule's run (the sweep's row at this learning rate). "
        "χ_k at the switch: measured at the parameters the runs start from; EMA: of the "
        "measurements before it. λ_1 at the switch: the largest Hessian eigenvalue there.",
        "",
    ]
    rows = []
    default_point = next(p for p in results["lr_sweep"] if p["lr"] == rule["lr"])
    points = sorted(
        [p for p in results["fixed_switch"] if "error" not in p] + [default_point],
        key=lambda p: p["switch_step"],
    )
    for p in points:
        rows.append(
            [
                str(p["switch_step"]),
                REASON[p["switch_reason"]],
                f"{_f(p['chi_at_switch'])} ({_f(p['chi_ema'])})",
                _f(p["lambda_1_at_switch"]),
                _f(p["loss_at_switch"], ".5f"),
                _f(p["runs"]["base"]["final_loss"], ".5f"),
                _f(p["runs"]["bulk"]["final_loss"], ".5f"),
                f"**{_f(p['runs']['bulk']['progress'])}**",
                _f(p["runs"]["dom"]["progress"]),
                _f(p["runs"]["bulk"]["removed_fraction"]),
            ]
        )
    L += _table(
        [
            "switch step",
            "by",
            "χ_k (EMA)",
            "λ_1",
            "L switch",
            "Adam final",
            "Bulk final",
            "Bulk progress",
            "Dom progress",
            "‖P_kΔ‖/‖Δ‖ in Bulk",
        ],
        rows,
    )

    # ---- the sweep
    L += [
        "## Adam's learning rate",
        "",
        "`subspace-optim reproduce --optimizers adam --lr adam=η`: the switch by the rule "
        f"(threshold {d['switch']}) or forced at step {d.get('switch_by')}, χ_k at the switch "
        "and its EMA, and Bulk's and Dom's progress relative to Adam.",
        "",
    ]
    rows = []
    for p in results["lr_sweep"]:
        if "error" in p:
            rows.append([_lr(p["lr"]), "diverged before the switch", "—", "—", "—", "—", "—"])
            continue
        rows.append(
            [
                _lr(p["lr"]) + (" (default)" if p["lr"] == rule["lr"] else ""),
                f"{REASON[p['switch_reason']]} at {p['switch_step']}",
                f"{_f(p['chi_at_switch'])} ({_f(p['chi_ema'])})",
                _f(p["loss_at_switch"], ".5f"),
                _f(p["runs"]["base"]["final_loss"], ".5f"),
                f"**{_f(p['runs']['bulk']['progress'])}**",
                _f(p["runs"]["dom"]["progress"]),
            ]
        )
    L += _table(
        [
            "Adam lr",
            "switch",
            "χ_k (EMA)",
            "L switch",
            "Adam final",
            "Bulk progress",
            "Dom progress",
        ],
        rows,
    )

    # ---- the mechanism
    steps = m["end_step"] - m["switch_step"]
    L += [
        "## Mechanism",
        "",
        f"Adam lr {_lr(m['lr'])}, from the rule's switch at step {m['switch_step']} (loss "
        f"{_f(m['loss_at_switch'], '.5f')}), {steps} steps. Adam's prefix is rerun as "
        "`run` runs it, then three runs take the same minibatches: Adam (basis refreshed every "
        "step, for the measurements only), Bulk-Adam with the default warm refresh, and "
        "Bulk-Adam with a cold Lanczos solve at every step (`--solver lanczos`, Adam's state "
        "carried over). At every step, with U the basis of that step (P_k = UUᵀ), g the "
        "full-batch gradient before the step, m and v Adam's moments after it and "
        "D(x) = −lr·(x/(1−β₁ᵗ))/(√(v/(1−β₂ᵗ)) + ε), so that Adam's own step is Δ = D(m):",
        "",
        "* *identity error*: ‖Δ_realized − (I − P_k)Δ‖/‖Δ_realized‖ (Adam: ‖Δ_realized − Δ‖/‖Δ_realized‖);",
        "* *leak* and *rest*: the first-order loss changes g·(I − P_k)D(P_k m) and "
        "g·(I − P_k)D((I − P_k)m), which add up to the Bulk step's g·Δ_realized; "
        "*dominant*: g·P_kΔ, the part Bulk removes (Adam takes it).",
        "",
        f"Instrumented runs against `run`'s: loss at the switch differs by "
        f"{_f(mech['vs_run']['loss_at_switch'], '.1e')}, Adam's final loss by "
        f"{_f(mech['vs_run']['base'], '.1e')}, Bulk's by {_f(mech['vs_run']['bulk'], '.1e')}.",
        "",
    ]
    names = [("base", "Adam"), ("bulk", "Bulk (warm)"), ("bulk_lanczos", "Bulk (Lanczos)")]
    quantity_rows: list[tuple[str, Any]] = [
        ("final loss", lambda r: _f(r["final_loss"], ".5f")),
        ("progress vs Adam", lambda r: _f(r["progress"])),
        (
            "identity error, max (median)",
            lambda r: (
                f"{_f(r['identity_rel_error_max'], '.1e')} ({_f(r['identity_rel_error_median'], '.1e')})"
            ),
        ),
        (
            f"‖P_kΔ‖/‖Δ‖ of Adam's update, first / last {head} steps",
            lambda r: f"{_f(r['update_alignment_early'])} / {_f(r['update_alignment_late'])}",
        ),
        (
            f"χ_k(∇L), first / last {head} steps",
            lambda r: f"{_f(r['chi_early'])} / {_f(r['chi_late'])}",
        ),
        (
            "‖m‖, start → end",
            lambda r: f"{_f(r['m_norm_start'], '.3g')} → {_f(r['m_norm_end'], '.3g')}",
        ),
        (
            "‖P_k m‖, start → end",
            lambda r: f"{_f(r['m_dom_norm_start'], '.3g')} → {_f(r['m_dom_norm_end'], '.3g')}",
        ),
        (
            "λ_1, start → end (max)",
            lambda r: (
                f"{_f(r['lambda_1_start'])} → {_f(r['lambda_1_end'])} ({_f(r['lambda_1_max'])})"
            ),
        ),
        ("first order, summed: leak", lambda r: _f(r["first_order"]["leak"], "+.4f")),
        ("first order, summed: rest", lambda r: _f(r["first_order"]["rest"], "+.4f")),
        ("first order, summed: dominant", lambda r: _f(r["first_order"]["dom"], "+.4f")),
        ("first order, summed: g·Δ_realized", lambda r: _f(r["first_order"]["realized"], "+.4f")),
        ("loss change (measured)", lambda r: _f(r["loss_change"], "+.4f")),
        ("higher order: measured − g·Δ_realized", lambda r: _f(r["higher_order"], "+.4f")),
        ("eigen-residual ‖Hu − λu‖/λ, max sampled", lambda r: _f(r["max_rel_residual"], ".1e")),
        (
            "unconverged refreshes / refreshes",
            lambda r: f"{r['unconverged_refreshes']:.0f} / {r['refreshes']:.0f}",
        ),
    ]
    L += _table(
        ["quantity", *(label for _, label in names)],
        [[q, *(fn(mech[n]) for n, _ in names)] for q, fn in quantity_rows],
    )
    L += [
        "The eigen-residual is of the basis the run projects with, checked against the "
        f"Hessian at the step's parameters every {st['residual_every']} steps. A refresh that "
        "stops short of the solver's tolerance keeps its best estimate and is counted as "
        "unconverged; the runs that carry the prefix's optimizer state (Adam, Bulk with the "
        "warm refresh) count the prefix's refreshes too.",
        "",
        f"### Along the run (every {st['sample_every']} steps)",
        "",
        "Cumulative leak / rest: the first-order sums so far.",
        "",
    ]
    samples = {n: m["runs"][n]["samples"] for n in ("base", "bulk")}
    rows = []
    for a, b in zip(samples["base"], samples["bulk"]):
        rows.append(
            [
                str(a["step"]),
                f"{_f(a['loss'], '.5f')} / {_f(b['loss'], '.5f')}",
                f"{_f(a['chi'])} / {_f(b['chi'])}",
                f"{_f(a['update_alignment'])} / {_f(b['update_alignment'])}",
                f"{_f(a['m_dom_norm'], '.3g')} / {_f(b['m_dom_norm'], '.3g')}",
                f"{_f(a['lambda_1'])} / {_f(b['lambda_1'])}",
                f"{_f(b['leak_cumulative'], '+.4f')} / {_f(b['rest_cumulative'], '+.4f')}",
            ]
        )
    L += _table(
        [
            "step",
            "loss Adam / Bulk",
            "χ_k(∇L)",
            "‖P_kΔ‖/‖Δ‖",
            "‖P_k m‖",
            "λ_1",
            "Bulk: leak / rest (cumulative)",
        ],
        rows,
    )
    return "\n".join(L).rstrip() + "\n"
