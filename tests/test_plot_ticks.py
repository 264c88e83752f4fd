"""Tick labels of the loss figure's log axis: which minor ticks get a number."""

from __future__ import annotations

import pytest

from subspace_optim.experiments.plots import _minor_log_label, _sparse_minor_log_label


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (0.07, "0.07"),
        (0.09, ""),
        (0.08, "0.08"),
        (0.1, ""),
        (0.101, ""),
        (2e-5, "2e-05"),
        (0.0, ""),
    ],
)
def test_minor_labels_within_a_decade(value: float, label: str) -> None:
    # every minor tick is labelled except next to a power of ten, where it would overlap
    assert _minor_log_label(value, 0) == label


@pytest.mark.parametrize(
    ("value", "label"),
    [(0.02, "0.02"), (0.05, "0.05"), (0.2, "0.2"), (5.0, "5"), (0.03, ""), (0.07, ""), (1.0, "")],
)
def test_minor_labels_over_two_decades_only_at_2_and_5(value: float, label: str) -> None:
    assert _sparse_minor_log_label(value, 0) == label


def test_a_panel_spanning_a_few_percent_is_linear_with_distinct_labels() -> None:
    """Base, Dom and Bulk 200 steps after a late switch differ by about 1%: on a log axis
    every label read "0.2"; such a panel is linear, and its labels are all different."""
    pytest.importorskip("matplotlib")
    from subspace_optim.experiments import (
        ExperimentResult,
        FamilyResult,
        RunSummary,
        VariantOutcome,
    )
    from subspace_optim.experiments.plots import plot_loss

    def row(variant: str, step: int, loss: float) -> dict:
        return {"variant": variant, "phase": "after switch", "step": step, "loss": loss}

    rows = [row("base", t, 0.203 - 1e-5 * t) for t in range(0, 201, 10)]
    rows += [row("dom", t, 0.2027) for t in range(0, 201, 10)]
    rows += [row("bulk", t, 0.203 - 0.8e-5 * t) for t in range(0, 201, 10)]
    runs = {
        v: RunSummary.from_outcome(VariantOutcome(v, [], f, steps_run=200), k=10, limit=20.0,
                                   loss_at_switch=0.203, base_final=0.201)
        for v, f in [("base", 0.201), ("dom", 0.2027), ("bulk", 0.2014)]
    }  # fmt: skip
    fam = FamilyResult("sgd", "SGD", lr=0.01, batch_size=50, stability_limit=200.0,
                       initial_sharpness=float("nan"), switch_step=0, switch_reason="fixed",
                       alignment_ema=0.9, chi_at_switch=0.95, initial_loss=0.203,
                       loss_at_switch=0.203, eta={}, runs=runs, prefix_seconds=0.0, rows=rows)  # fmt: skip
    fig = plot_loss(ExperimentResult("toy", {"k": 10}, {}, [fam], seconds=1.0))
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ax.get_yscale() == "linear"
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
