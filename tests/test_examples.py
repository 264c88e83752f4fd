"""Every script under examples/ runs, with ``--quick``, and produces what it claims.

The scripts are executed in this process (``runpy``) so that torch is imported once; each
one runs under a forked RNG state and one thread, and anything it registers globally is
removed afterwards.
"""

from __future__ import annotations

import math
import runpy
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from subspace_optim import eigensolvers

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: examples tested elsewhere: the DDP script needs torchrun (tests/test_distributed.py)
ELSEWHERE = {"ddp_bulk_sgd.py"}


@pytest.fixture
def run_example(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[str], tuple[dict, str]]]:
    threads = torch.get_num_threads()
    registry = dict(eigensolvers._REGISTRY)
    torch.set_num_threads(1)

    def run(name: str) -> tuple[dict, str]:
        namespace = runpy.run_path(str(EXAMPLES / name), run_name="example")
        with torch.random.fork_rng():
            result = namespace["main"](["--quick"])
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


def test_wrap_sgd(run_example) -> None:
    result, out = run_example("wrap_sgd.py")
    assert result["switched_at"] is not None
    assert result["projected_steps"] > 0
    assert 0 < result["mean_removed"] < 1
    assert result["loss_final"] < result["loss_start"]
    assert "switched to Bulk-SGD at step" in out


def test_sharpness_monitor(run_example) -> None:
    result, out = run_example("sharpness_monitor.py")
    steps = [step for step, _, _ in result["history"]]
    assert steps == [0, 5]  # Every(5) over 10 steps
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
    assert math.isfinite(result["eta_ratio"])
    assert "eta_bulk/eta_dom" in out


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
