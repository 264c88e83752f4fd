"""effective_lr_summary refuses records whose realized updates were projected.

The refusal is decided from the records (their ``projected`` field), so it works for
:class:`~subspace_optim.StepStats` and for rows read back from a CSV file alike.
"""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch
from torch import nn

import subspace_optim as so


def _records(mode: str, steps: int = 4) -> list[so.StepStats]:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    X = torch.randn(32, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        so.HessianOperator(model, loss_fn, (X, Y)),
        k=2,
        mode=mode,
        eigensolver="eigh",
    )
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(X), Y).backward()
        opt.step()
        out.append(opt.last_stats)
    return out


def test_unprojected_run_gives_the_learning_rate() -> None:
    summary = so.effective_lr_summary(_records("none"))
    assert summary["steps"] == 4
    assert summary["eta_dom"] == pytest.approx(0.05, rel=1e-9)
    assert summary["ratio"] == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("mode", ["bulk", "dominant"])
def test_projected_run_is_refused(mode: str) -> None:
    records = _records(mode)
    assert all(r.projected for r in records)
    with pytest.raises(ValueError, match="projected") as err:
        so.effective_lr_summary(records)
    assert "mode='none'" in str(err.value)  # the message says what to do
    # the refused number was meaningless: Bulk's eta_dom is 0 (Dom's eta_bulk is 0)
    key = "dot_dom" if mode == "bulk" else "dot_bulk"
    assert all(abs(getattr(r, key)) < 1e-12 for r in records)


def test_one_projected_record_in_a_window_is_refused() -> None:
    records = _records("none") + _records("bulk", steps=1)
    with pytest.raises(ValueError, match=r"1 of 5 records \(first: step 0\)"):
        so.effective_lr_summary(records)
    # keeping the unprojected steps, as the message suggests, works
    kept = so.effective_lr_summary([r for r in records if not r.projected])
    assert kept["steps"] == 4


def test_csv_rows_are_judged_by_their_projected_column() -> None:
    buffer = io.StringIO()
    rows = [r.as_dict() for r in _records("bulk", steps=2)]
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    buffer.seek(0)
    read_back = list(csv.DictReader(buffer))
    assert read_back[0]["projected"] == "True"  # strings, as a CSV gives them back
    with pytest.raises(ValueError, match="projected"):
        so.effective_lr_summary(read_back)
    for row in read_back:
        row["projected"] = "False"
    assert math.isfinite(so.effective_lr_summary(read_back)["eta_bulk"])


def test_steps_without_a_full_gradient_are_skipped_not_refused() -> None:
    skipped = so.StepStats(step=9, projected=True, refreshed=False, gradient_source="none")
    summary = so.effective_lr_summary([*_records("none"), skipped])
    assert summary["steps"] == 4


def test_a_reports_own_rows_summarise_from_csv_and_json(tmp_path) -> None:
    """The report writes a missing or non-finite term as "" (CSV) or null (JSON), and its
    final loss-only row has no terms at all: such rows are skipped, as the docstring says,
    and every form of the rows gives the in-memory records' summary."""
    import json

    from conftest import tiny_reproduction

    from subspace_optim.experiments import read_report, write_report

    result = tiny_reproduction(track_every=2)
    path = write_report(result, tmp_path / "run", figures=False)
    base = [r for r in result.families[0].rows if r["variant"] == "base"]
    expected = so.effective_lr_summary(base)
    with open(path / "metrics.csv") as f:
        from_csv = [r for r in csv.DictReader(f) if r["variant"] == "base"]
    from_json = [
        r for r in json.loads((path / "metrics.json").read_text()) if r["variant"] == "base"
    ]
    read_back = [r for r in read_report(path).families[0].rows if r["variant"] == "base"]
    for rows in (from_csv, from_json, read_back):
        assert so.effective_lr_summary(rows) == pytest.approx(expected)
