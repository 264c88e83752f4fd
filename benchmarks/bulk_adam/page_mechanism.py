"""The mechanism section of the Bulk-Adam page: what the instrumented runs measured, as a
table of quantities and a table along the run."""

from __future__ import annotations

from typing import Any

from .text import _f, _lr, _table


def mechanism_section(results: dict[str, Any]) -> list[str]:
    st, m = results["study"], results["mechanism"]
    mech = results["summary"]["mechanism"]
    head = st["head"]
    L: list[str] = []
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
    L += _table(
        ["quantity", *(label for _, label in NAMES)],
        [[q, *(fn(mech[n]) for n, _ in NAMES)] for q, fn in _quantities(head)],
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
    return L + _along_the_run(m)


def _along_the_run(m: dict[str, Any]) -> list[str]:
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
    return _table(
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


NAMES = [("base", "Adam"), ("bulk", "Bulk (warm)"), ("bulk_lanczos", "Bulk (Lanczos)")]


def _quantities(head: int) -> list[tuple[str, Any]]:
    """The rows of the mechanism's table: a label and how to write it for one run."""
    return [
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
