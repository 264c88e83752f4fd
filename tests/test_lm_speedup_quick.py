"""The language-model speed-up study (``benchmarks/lm_speedup/``, issue 23): its
``--quick`` mode runs and writes sane outputs that ``--render`` reproduces, and its verdict
follows the numbers (a made-up result flips it). No download: without the cached corpus the
quick run trains on a small text written here."""

from __future__ import annotations

import importlib
import json
import math
import random
from pathlib import Path

import pytest

import subspace_optim as so


@pytest.fixture(scope="module")
def lm():
    module = importlib.import_module("benchmarks.lm_speedup.run")
    module.metrics = importlib.import_module("benchmarks.lm_speedup.metrics")  # the report's
    return module


def small_text(path: Path) -> Path:
    """A few hundred lines of pseudo-verse from a fixed generator (no corpus download)."""
    words = (
        "the king queen lord lady love death night day sword crown heart honour fair "
        "foul speak hear thou thee thy art doth hath shall not be what is this"
    ).split()
    r = random.Random(0)
    lines = [
        " ".join(r.choice(words) for _ in range(r.randint(4, 9))).capitalize() + r.choice(".,;!?")
        for _ in range(300)
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_quick_run_writes_finite_results_that_render_again(lm, tmp_path):
    argv = ["--quick", "--out", str(tmp_path), "--docs", str(tmp_path / "page.md")]
    if not lm.text.cache_path().exists():
        argv += ["--text", str(small_text(tmp_path / "small.txt"))]
    results = lm.main(argv)
    saved = json.loads((tmp_path / "lm_speedup.json").read_text())
    expected = [n for n in lm.QUICK_ARMS if hasattr(so, "UpdateHistory") or "history" not in n]
    assert [a["name"] for a in saved["arms"]] == expected
    assert {r["arm"] for r in saved["runs"]} == set(expected)
    assert len(saved["runs"]) == len(expected) * 2  # two seeds
    for r in saved["runs"]:
        assert r["steps_done"] == 20 and not r["diverged"]
        assert all(math.isfinite(x) for x in r["val_loss"] + r["train_loss"])
        assert r["train_seconds"] == sorted(r["train_seconds"]) and r["opt_step_ms"] > 0
    by = {(r["arm"], r["seed"]): r for r in saved["runs"]}
    # the seed fixes the initialization: every arm starts from the same validation loss
    assert by[("adamw-lr1e-3", 0)]["val_loss"][0] == by[("blockscale-2", 0)]["val_loss"][0]
    assert by[("adamw-lr1e-3", 0)]["val_loss"][0] != by[("adamw-lr1e-3", 1)]["val_loss"][0]
    assert saved["oracle"]["runs"] and saved["machine"]["description"]
    analysis = results["analysis"]
    assert analysis["main"]["tuned"] in ("adamw-lr1e-3", "adamw-lr4e-3")
    assert analysis["verdict"]["text"].startswith(("Target met", "Target not met", "No verdict"))
    assert (tmp_path / "figures" / "val_loss.png").stat().st_size > 0
    md = (tmp_path / "lm_speedup.md").read_text()
    assert analysis["verdict"]["text"] in md and "![val_loss]" in (tmp_path / "page.md").read_text()
    lm.main(["--render", "--out", str(tmp_path)])
    assert (tmp_path / "lm_speedup.md").read_text() == md


def _run(arm: str, losses: list[float], seconds_per_step: float, seed: int = 0) -> dict:
    steps = [0, 100, 200, 300, 400]
    return {
        "arm": arm, "seed": seed, "eval_steps": steps, "val_loss": losses,
        "train_seconds": [s * seconds_per_step for s in steps], "diverged": False,
        "step_ms": 1000 * seconds_per_step, "opt_step_ms": 100 * seconds_per_step,
    }  # fmt: skip


FAMILIES = {"adamw-lr1e-3": "adamw", "adamw-lr2e-3": "adamw", "history": "source",
            "adamw-lrx2": "control", "blockscale-2": "control"}  # fmt: skip
KINDS = {"adamw-lr1e-3": "adamw", "adamw-lr2e-3": "adamw", "history": "history",
         "adamw-lrx2": "adamw", "blockscale-2": "blockscale"}  # fmt: skip


def _verdict(lm, history: tuple[list[float], float], lrx: list[float] | None = None) -> dict:
    runs = [
        _run("adamw-lr1e-3", [4.0, 3.5, 3.0, 2.8, 2.6], 0.1),
        _run("adamw-lr2e-3", [4.0, 3.0, 2.5, 2.2, 2.0], 0.1),  # tuned: target 2.0 at 40 s
        _run("history", *history),
        _run("adamw-lrx2", lrx or [4.0, 2.9, 2.4, 2.1, 1.95], 0.1),  # reaches 2.0 at 36.7 s
        _run("blockscale-2", [4.0, 3.1, 2.6, 2.3, 2.1], 0.1),  # never reaches 2.0
    ]
    summary = lm.metrics.summarize_all(runs, FAMILIES)
    assert summary["tuned"] == "adamw-lr2e-3" and summary["target"] == 2.0
    return lm.metrics.verdict(summary, FAMILIES, KINDS)


def test_the_verdict_follows_the_numbers(lm):
    fast = ([4.0, 2.5, 2.0, 1.9, 1.8], 0.1)  # 2.0 at step 200: 20 s, 0.5× AdamW's 40 s
    v = _verdict(lm, fast)
    assert v["passed"] and v["best"] == "history" and v["ratio"] == pytest.approx(0.5)
    assert v["text"].startswith("Target met") and "0.50×" in v["text"]
    # the same curve with a step 30 % dearer: 26 s, 0.65× — over the 0.6× target
    v = _verdict(lm, (fast[0], 0.13))
    assert not v["passed"] and v["ratio"] == pytest.approx(0.65) and "over the 0.6×" in v["text"]
    # fast enough, but a plain learning-rate increase gets there sooner still
    v = _verdict(lm, fast, lrx=[4.0, 2.2, 1.9, 1.8, 1.7])
    assert not v["passed"] and v["beats"] == {"AdamW lr×γ": False, "block-scale": True}
    assert "does not beat the AdamW lr×γ control (adamw-lrx2)" in v["text"]
    # never reaching the target is reported as such
    v = _verdict(lm, ([4.0, 3.0, 2.6, 2.3, 2.1], 0.05))
    assert not v["passed"] and "does not reach" in v["text"] and v["ratio"] is None


def test_crossing_interpolates_between_evaluations(lm):
    crossing = lm.metrics.crossing
    assert crossing([0, 10, 20], [3.0, 2.0, 1.0], 1.5) == pytest.approx(15.0)
    assert crossing([0, 10, 20], [3.0, 2.0, 1.0], 0.5) is None
    assert crossing([0, 10, 20], [3.0, float("nan"), 1.0], 2.0) == pytest.approx(20.0)
