"""Interpolated updates ``mode=(a, b)`` outside the optimizer (issue 17, item 3): the pair in
every :class:`~subspace_optim.StepStats`, ``reproduce --mode-scales a,b`` (validated before
anything runs) and the fourth run, ``"scaled"``, in the table, the summary, the per-step
metrics and the loss figure; a run without the flag has none of it."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import subspace_optim as so
from subspace_optim.__main__ import build_parser, main
from subspace_optim.experiments import RunConfig
from subspace_optim.experiments.report import format_table, read_report

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

#: a short --quick run of one family: 20 steps to a fixed switch, 10 after it
SHORT = ["--quick", "--quiet", "--no-figures", "--optimizers", "sgd", "--steps", "30"]
SHORT += ["--switch", "20"]


# ------------------------------------------------------------------ StepStats
def _one_step(mode: Any) -> so.StepStats:
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    X, Y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    op = so.HessianOperator(model, loss_fn, (X, Y))
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = so.SubspaceProjectedOptimizer(base, op, k=1, mode=mode, eigensolver="eigh")
    opt.zero_grad()
    loss_fn(model(X), Y).backward()
    opt.step()
    assert opt.last_stats is not None
    return opt.last_stats


@pytest.mark.parametrize(
    ("mode", "pair"),
    [
        ((0.5, 1.5), (0.5, 1.5)),
        ("dominant", (1.0, 0.0)),
        ("bulk", (0.0, 1.0)),
        ("none", (1.0, 1.0)),
    ],
)
def test_step_stats_carry_the_mode_scales(mode: Any, pair: tuple[float, float]) -> None:
    stats = _one_step(mode)
    assert (stats.scale_dom, stats.scale_bulk) == pair
    d = stats.as_dict()
    assert (d["scale_dom"], d["scale_bulk"]) == pair


def test_records_without_the_scales_still_load() -> None:
    old = so.StepStats(step=0, projected=False, refreshed=False, gradient_source="none")
    assert math.isnan(old.scale_dom) and math.isnan(old.scale_bulk)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("nan,1", "finite"),
        ("1,inf", "finite"),
        ("-inf,1", "finite"),
        ("1", "two numbers"),
        ("1,2,3", "two numbers"),
        ("a,b", "two numbers"),
        ("0,0", "(0, 0) would never move"),
        ("0.0,-0", "(0, 0) would never move"),
    ],
)
def test_parser_refuses_bad_scales_before_anything_runs(
    value: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--quick", "--out", str(out), f"--mode-scales={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --mode-scales" in err and needle in err
    assert list(tmp_path.iterdir()) == []


def test_parser_takes_a_pair_including_a_negative_one() -> None:
    args = build_parser().parse_args(["reproduce", "--mode-scales", "0.5,1.5"])
    assert args.mode_scales == (0.5, 1.5)
    args = build_parser().parse_args(["reproduce", "--mode-scales=-0.5,2"])
    assert args.mode_scales == (-0.5, 2.0)
    assert build_parser().parse_args(["reproduce"]).mode_scales is None


@pytest.mark.parametrize(
    "scales", [(math.nan, 1.0), (1.0, math.inf), (0, 0), (1.0,), "fast", (1, 2, 3)]
)
def test_run_config_refuses_bad_scales(scales: Any) -> None:
    with pytest.raises(ValueError, match="mode scales"):
        RunConfig(optimizers="sgd", steps=12, switch=4, k=2, mode_scales=scales)


def test_run_config_keeps_the_pair_and_leaves_it_out_when_unset() -> None:
    config = RunConfig(optimizers="sgd", steps=12, switch=4, k=2, mode_scales=[1, 0.25])
    assert config.mode_scales == (1.0, 0.25) and config.as_dict()["mode_scales"] == (1.0, 0.25)
    assert "mode_scales" not in RunConfig(optimizers="sgd", steps=12, switch=4, k=2).as_dict()


# ------------------------------------------------------------------ the runs
def _reproduce(out: Path, *extra: str) -> dict[str, Any]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["reproduce", *SHORT, "--out", str(out), *extra])
    assert code == 0
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "out": out,
        "stdout": stdout.getvalue(),
        "summary": json.loads((out / "summary.json").read_text()),
        "metrics": json.loads((out / "metrics.json").read_text()),
        "csv": rows,
        "md": (out / "summary.md").read_text(),
    }


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _reproduce(tmp_path_factory.mktemp("scaled") / "run", "--mode-scales", "0.5,1.5")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _reproduce(tmp_path_factory.mktemp("plain") / "run")


def test_scaled_run_starts_from_the_same_snapshot(scaled: dict[str, Any]) -> None:
    summary = scaled["summary"]
    assert summary["config"]["mode_scales"] == [0.5, 1.5]
    (fam,) = summary["families"]
    assert list(fam["runs"]) == ["base", "dom", "bulk", "scaled"]
    run = fam["runs"]["scaled"]
    assert run["variant"] == "scaled" and run["status"] == "ok"
    assert run["steps_run"] == fam["runs"]["bulk"]["steps_run"] == 10
    assert math.isfinite(run["final_loss"]) and math.isfinite(run["progress"])
    rows = [r for r in scaled["metrics"] if r["variant"] == "scaled"]
    assert [r["step"] for r in rows] == list(range(20, 31))
    assert rows[0]["loss"] == pytest.approx(fam["loss_at_switch"], rel=1e-6)
    stepped = rows[:-1]  # the last row is the final evaluation, after the last step
    assert all(r["scale_dom"] == 0.5 and r["scale_bulk"] == 1.5 for r in stepped)
    assert all(r["projected"] for r in stepped)
    # the other runs' rows do not carry the pair (their names say it)
    assert not any("scale_dom" in r for r in scaled["metrics"] if r["variant"] != "scaled")
    csv_rows = [r for r in scaled["csv"] if r["variant"] == "scaled"]
    assert csv_rows[0]["scale_dom"] == "0.5" and csv_rows[0]["scale_bulk"] == "1.5"


def test_scaled_run_is_in_the_table_and_the_notes(scaled: dict[str, Any]) -> None:
    (fam,) = scaled["summary"]["families"]
    (row,) = scaled["summary"]["table"]
    run = fam["runs"]["scaled"]
    assert len(row) == 16
    assert row[-2] == f"{run['final_loss']:.4g}" and row[-1] == f"{run['progress']:.2f}"
    header = scaled["md"].splitlines()[6]
    assert header.startswith("| optimizer |")
    assert header.endswith("| scaled (0.5, 1.5) | scaled progress |")
    assert "(a, b) = (0.5, 1.5)" in scaled["md"] and "(a, b) = (0.5, 1.5)" in scaled["stdout"]
    assert "base vs Dom vs Bulk vs scaled (0.5, 1.5):" in scaled["md"]


def test_read_report_round_trips_the_scaled_run(scaled: dict[str, Any]) -> None:
    back = read_report(scaled["out"])
    (fam,) = back.families
    run = fam.runs["scaled"]
    assert run.final_loss == scaled["summary"]["families"][0]["runs"]["scaled"]["final_loss"]
    assert {r["variant"] for r in fam.rows} == {"base", "dom", "bulk", "scaled"}
    table = format_table(back, markdown=True)
    assert "| scaled (0.5, 1.5) | scaled progress |" in table.splitlines()[0]
    assert table.splitlines()[2] == "| " + " | ".join(scaled["summary"]["table"][0]) + " |"


def test_loss_figure_draws_the_scaled_run(scaled: dict[str, Any]) -> None:
    pytest.importorskip("matplotlib")
    from subspace_optim.experiments.plots import COLORS, plot_loss

    fig = plot_loss(read_report(scaled["out"]))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "scaled (0.5, 1.5)" in labels
    (ax,) = fig.axes
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "scaled (0.5, 1.5)")
    assert line.get_color() == COLORS["scaled"] and line.get_xdata()[0] == 20


def test_a_run_without_the_flag_has_no_scaled_variant(plain: dict[str, Any]) -> None:
    summary = plain["summary"]
    assert "mode_scales" not in summary["config"]
    (fam,) = summary["families"]
    assert list(fam["runs"]) == ["base", "dom", "bulk"]
    assert len(summary["table"][0]) == 14
    assert {r["variant"] for r in plain["metrics"]} == {"base", "dom", "bulk"}
    assert "scale_dom" not in plain["csv"][0] and "scale_bulk" not in plain["csv"][0]
    assert "scaled" not in plain["md"] and "scaled" not in plain["stdout"]
    assert "base vs Dom vs Bulk:" in plain["md"]


def test_the_scaled_flag_leaves_base_dom_bulk_unchanged(
    scaled: dict[str, Any], plain: dict[str, Any]
) -> None:
    """Same snapshot, same minibatches: the first three runs are the same with the flag."""
    for variant in ("base", "dom", "bulk"):
        a = [r["loss"] for r in scaled["metrics"] if r["variant"] == variant]
        b = [r["loss"] for r in plain["metrics"] if r["variant"] == variant]
        assert a == pytest.approx(b, rel=1e-6, nan_ok=True), variant
