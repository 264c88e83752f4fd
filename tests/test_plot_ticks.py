"""Tick labels of the loss figure's log axis: which minor ticks get a number."""

from __future__ import annotations

import pytest

from subspace_optim.experiments.plots import _minor_log_label, _sparse_minor_log_label


@pytest.mark.parametrize(
    ("value", "label"),
    [(0.07, "0.07"), (0.09, ""), (0.08, "0.08"), (0.1, ""), (0.101, ""), (2e-5, "2e-05"), (0.0, "")],
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
