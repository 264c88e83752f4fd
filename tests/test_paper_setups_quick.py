"""The real-data study of the paper's setups (``benchmarks/paper_setups/``, issue 24): the
switch rule it applies to a measured χ_k trajectory, and its ``--quick`` pipeline (runs,
results that ``--render`` turns into the same page, figures beside the page)."""

from __future__ import annotations

import importlib
import json
import math

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

rule = importlib.import_module("benchmarks.paper_setups.rule")


def test_ema_is_the_runners_per_measurement_factor() -> None:
    """0.9 per step measured every 5 steps: factor 0.9**5 per measurement, first value kept."""
    got = rule.ema([0.5, 1.0, 0.0], 5)
    beta = 0.9**5
    want = [0.5, beta * 0.5 + (1 - beta), beta * (beta * 0.5 + (1 - beta))]
    assert got == pytest.approx(want, rel=1e-15)


def test_threshold_is_the_papers_when_reached_else_the_highest_reached() -> None:
    track = rule.Trajectory([0, 50, 100, 150], [0.99, 0.3, 0.951, 0.6], [], [])
    track = rule.Trajectory(track.steps, track.chi, track.chi, [math.nan] * 4)
    assert rule.rule_threshold(track, 100) == (0.95, 0.951)
    # the initialization's 0.99 is before switch_after: it does not count
    low = rule.Trajectory([0, 100, 150], [0.99, 0.937, 0.5], [0.99, 0.937, 0.5], [1.0] * 3)
    assert rule.rule_threshold(low, 100) == (0.93, 0.937)
    with pytest.raises(ValueError, match="at or after step 200"):
        rule.rule_threshold(low, 200)
    # an EMA below every threshold (SST-2 at 24 sentences): 0.01, never met, so forced
    flat = rule.Trajectory([0, 100], [0.98, 0.0004], [0.98, 0.0004], [1.0] * 2)
    assert rule.rule_threshold(flat, 100) == (0.01, 0.0004)


def test_trajectory_keeps_the_triggering_measurement_of_a_rule_switch() -> None:
    """A switch by the rule rewinds to its measurement, which the base run then retakes:
    the trajectory reads the base run's rows too, in step order, and only full gradients."""
    rows = [
        {"variant": "base", "phase": "prefix", "step": 0, "gradient_source": "full",
         "grad_alignment": 0.9, "loss": 1.0},
        {"variant": "base", "phase": "prefix", "step": 5, "gradient_source": "minibatch",
         "grad_alignment": 0.1},
        {"variant": "bulk", "phase": "after switch", "step": 10, "gradient_source": "full",
         "grad_alignment": 0.2},
        {"variant": "base", "phase": "after switch", "step": 10, "gradient_source": "full",
         "grad_alignment": 0.97, "loss": 0.5},
    ]  # fmt: skip
    track = rule.trajectory(rows, 10)
    assert track.steps == [0, 10] and track.chi == [0.9, 0.97] and track.loss == [1.0, 0.5]


def test_quick_run_writes_results_and_a_page_that_render_reproduces(tmp_path) -> None:
    study = importlib.import_module("benchmarks.paper_setups.run")
    out = tmp_path / "results"
    page = study.main(["--quick", "--setups", "mnist", "--optimizers", "sgd", "--out", str(out)])
    saved = json.loads((out / "mnist" / "study.json").read_text())
    (r,) = saved["rules"]
    assert r["family"] == "sgd" and r["switch_reason"] in ("threshold", "forced")
    assert 0 < r["threshold"] <= 0.95 and r["threshold"] <= r["highest_ema"] + 1e-12
    text = page.read_text()
    assert text.startswith("# The paper's setups on real data")
    for png in ("mnist_chi.png", "mnist_loss.png"):
        assert (page.parent / "_static" / "paper_setups" / png).stat().st_size > 10_000
        assert f"_static/paper_setups/{png}" in text
    assert "| sgd | dom |" in text and "| sgd | bulk |" in text
    again = study.main(["--render", "--out", str(out), "--docs", str(tmp_path / "again.md")])
    assert again.read_text() == text
