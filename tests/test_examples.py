"""Every script under examples/ runs, with ``--quick``, and produces what it claims.

The scripts are executed in this process (``runpy``) so that torch is imported once; each
one runs under a forked RNG state, anything it registers globally is removed afterwards,
and the thread count it sets is restored. Each script sets one torch thread itself (small
models), and its figure function draws from the returned result.
"""

from __future__ import annotations

import math
import runpy
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from subspace_optim.eigensolvers import registry as eigensolvers

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: examples tested elsewhere: the DDP script needs torchrun (tests/test_distributed.py)
ELSEWHERE = {"ddp_bulk_sgd.py"}


@pytest.fixture
def run_example(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[str], tuple[dict, str]]]:
    threads = torch.get_num_threads()
    registry = dict(eigensolvers._REGISTRY)
    torch.set_num_threads(2)  # each script must set its own count

    def run(name: str) -> tuple[dict, str]:
        namespace = runpy.run_path(str(EXAMPLES / name), run_name="example")
        with torch.random.fork_rng():
            result = namespace["main"](["--quick"])
        assert torch.get_num_threads() == 1, f"{name} does not set one thread"
        if "plot" in namespace:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig = namespace["plot"](result)
            assert fig.axes and all(ax.has_data() for ax in fig.axes)
            plt.close(fig)
        return result, capsys.readouterr().out

    yield run
    torch.set_num_threads(threads)
    eigensolvers._REGISTRY.clear()
    eigensolvers._REGISTRY.update(registry)


def test_every_example_is_tested_here() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - ELSEWHERE
    tested = {
        name.removeprefix("test_") + ".py"
        for name in globals()
        if name.startswith("test_") and name != "test_every_example_is_tested_here"
    }
    assert scripts <= tested, f"examples without a test: {sorted(scripts - tested)}"


def test_every_example_says_how_it_uses_threads() -> None:
    for script in EXAMPLES.glob("*.py"):
        doc = script.read_text(encoding="utf-8").split('"""')[1]
        assert "Threads:" in doc, script.name


def test_wrap_sgd(run_example) -> None:
    result, out = run_example("wrap_sgd.py")
    switch = result["switched_at"]
    assert switch is not None and 0 < switch < len(result["losses"]["sgd"])
    assert result["projected_steps"] == len(result["losses"]["bulk"]) - switch
    assert 0 < result["mean_removed"] < 1
    sgd, dom, bulk = (result["losses"][k] for k in ("sgd", "dom", "bulk"))
    # identical until the switch (same initialization, same minibatches, no projection)
    assert sgd[:switch] == dom[:switch] == bulk[:switch]
    # the paper's Figure 1: Dom-SGD stalls near the loss at the switch, Bulk-SGD keeps up
    at_switch = sgd[switch - 1]
    assert sgd[-1] < at_switch and bulk[-1] < at_switch
    assert (at_switch - dom[-1]) < 0.25 * (at_switch - sgd[-1])
    assert (at_switch - bulk[-1]) > 0.75 * (at_switch - sgd[-1])
    assert f"switched at step {switch}" in out


def test_sharpness_monitor(run_example) -> None:
    result, out = run_example("sharpness_monitor.py")
    steps = [step for step, _, _ in result["history"]]
    assert steps == list(range(0, 120, 5))  # Every(5) over 120 steps
    # progressive sharpening: the top eigenvalue climbs over the second half of the run
    top = [eig[0] for _, _, eig in result["history"]]
    assert top[-1] > top[len(top) // 2]
    for _, loss, eig in result["history"]:
        assert math.isfinite(loss)
        assert list(eig) == sorted(eig, reverse=True) and len(eig) == 3
    # the warm-started monitor agrees with a tight cold solve at the final parameters
    assert result["monitored"][0] == pytest.approx(result["reference"][0], rel=1e-2)
    assert "top-3 eigenvalues" in out


def test_dom_bulk_adam(run_example) -> None:
    result, out = run_example("dom_bulk_adam.py")
    assert all(math.isfinite(result[key]) for key in ("loss_switch", "adam", "dom", "bulk"))
    # even in the tiny run, Dom-Adam makes less progress than Adam and Bulk-Adam
    progress = {key: result["loss_switch"] - result[key] for key in ("adam", "dom", "bulk")}
    assert progress["adam"] > 0
    assert progress["dom"] < progress["bulk"]
    assert progress["dom"] < progress["adam"]
    assert math.isfinite(result["eta_ratio"]) and result["eta_ratio"] > 1  # Adam: bulk faster
    assert "eta_bulk/eta_dom" in out
    assert len(result["curves"]["none"]) == len(result["curves"]["bulk"])


def test_checkpoint_resume(run_example) -> None:
    result, out = run_example("checkpoint_resume.py")
    assert result["identical"]
    assert result["resumed"] == result["uninterrupted"]
    assert "parameters identical: True" in out


def test_custom_eigensolver(run_example) -> None:
    result, out = run_example("custom_eigensolver.py")
    assert result["converged"]
    assert result["eigenvalues"] == pytest.approx(result["exact"], abs=1e-8)
    assert result["eigenvalues"] == pytest.approx([9.0, 7.0, 5.0, 4.0], abs=1e-8)
    assert result["refreshes"] == 3
    assert len(result["optimizer_eigenvalues"]) == 10
    assert "ArpackEigsh" in out


def test_own_model_experiments(run_example) -> None:
    result, out = run_example("own_model_experiments.py")
    assert result["family"] == "sgd"
    assert result["switch_step"] == 6
    assert set(result["final"]) == {"base", "dom", "bulk"}
    assert all(math.isfinite(v) for v in result["final"].values())
    assert {"metrics.csv", "metrics.json", "summary.md"} <= set(result["files"])
    assert "Dom/Bulk progress" in out


def test_train_char_gpt(run_example) -> None:
    result, out = run_example("train_char_gpt.py")
    curves = result["curves"]
    assert len(curves) == 2
    for curve in curves.values():
        assert all(math.isfinite(v) for _, v in curve)
        assert curve[-1][1] < curve[0][1]  # both runs learn
    assert 0 < result["update_alignment"] < 1  # the dominant part is a share of the update
    assert "projected=True" in out
