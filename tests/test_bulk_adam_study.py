"""``python -m benchmarks.bulk_adam --quick``: it runs on tiny settings into a temporary
folder, never touches the committed results or page, and what it measures holds: the
realized Bulk-Adam step is ``(I − P_k)`` of Adam's own step, the instrumented runs retrace
``run``'s, and the first-order split adds up. No timing is asserted."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
COMMITTED = [BENCHMARKS / "results" / "bulk_adam_study.json", ROOT / "docs" / "bulk_adam.md"]

pytest.importorskip("sklearn")

#: the realized step must match the projected Adam step to this relative error (float32
#: parameters: the differences are rounding, about 1e-5)
IDENTITY_TOL = 1e-4


@pytest.fixture(scope="module")
def study():
    return importlib.import_module("benchmarks.bulk_adam.run")


def _fingerprint() -> dict[str, tuple[float, int] | None]:
    out: dict[str, tuple[float, int] | None] = {
        p.name: (p.stat().st_mtime, p.stat().st_size) for p in (BENCHMARKS / "results").iterdir()
    }
    for p in COMMITTED:
        out[str(p)] = (p.stat().st_mtime, p.stat().st_size) if p.exists() else None
    return out


@pytest.fixture(scope="module")
def quick(study, tmp_path_factory):
    before = _fingerprint()
    out = tmp_path_factory.mktemp("bulk_adam")
    results = study.main(["--quick", "--out", str(out), "--docs", str(out / "page.md")])
    assert _fingerprint() == before  # the committed results and page are untouched
    return results, out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_quick_writes_its_results_and_page(quick):
    _, out = quick
    saved = json.loads((out / "bulk_adam_study.json").read_text())
    assert saved["quick"] is True and saved["command"].startswith(
        "python -m benchmarks.bulk_adam --quick"
    )
    m = saved["machine"]
    assert m["torch_threads"] >= 1 and m["cpu"] and m["python"] and m["torch"]
    assert len(m["load_average_at_start"]) == 3 and len(m["load_average_at_end"]) == 3
    # the sweep and the fixed switches: every field there and finite
    assert [p["lr"] for p in saved["lr_sweep"]] == list(saved["study"]["lrs"])
    assert [p["switch_step"] for p in saved["fixed_switch"]] == list(saved["study"]["fixed"])
    for p in saved["lr_sweep"] + saved["fixed_switch"]:
        assert p["switch_reason"] in {"threshold", "forced", "fixed"}
        assert 0 <= p["chi_at_switch"] <= 1 and 0 <= p["chi_ema"] <= 1
        assert _finite(p["loss_at_switch"]) and _finite(p["lambda_1_at_switch"])
        assert set(p["runs"]) == {"base", "dom", "bulk"}
        for r in p["runs"].values():
            assert _finite(r["final_loss"]) and _finite(r["progress"])
        assert p["runs"]["base"]["progress"] == pytest.approx(1.0)
    assert all(p["switch_reason"] == "fixed" for p in saved["fixed_switch"])
    # the summary: every number finite
    summary = saved["summary"]
    for name in ("base", "bulk", "bulk_lanczos"):
        for key, value in summary["mechanism"][name].items():
            if isinstance(value, dict):
                assert all(_finite(v) for v in value.values()), (name, key)
            else:
                assert _finite(value), (name, key)
    page = (out / "page.md").read_text()
    assert page.startswith("# Why Bulk-Adam stalls on digits")
    assert "smoke run" in page and "Machine: " in page and "load average" in page
    for heading in (
        "## In short",
        "## Bulk-Adam against the switch step",
        "## Adam's learning rate",
        "## Mechanism",
    ):
        assert heading in page


def test_realized_bulk_step_is_adams_step_projected(quick):
    results, _ = quick
    runs = results["mechanism"]["runs"]
    for name in ("base", "bulk", "bulk_lanczos"):
        series = runs[name]["series"]
        assert len(series["identity_rel_error"]) == runs[name]["steps"] > 0
        assert max(series["identity_rel_error"]) < IDENTITY_TOL, name
        # the study's own ‖P_kΔ‖/‖Δ‖ of Adam's step is the wrapper's record of it
        assert results["summary"]["mechanism"][name]["update_alignment_vs_wrapper_max"] < 1e-4
    # the check can tell: leaving the projection out would be off by ‖P_kΔ‖/‖(I − P_k)Δ‖
    # at every Bulk step, far above the tolerance
    for a in runs["bulk"]["series"]["update_alignment"]:
        assert a / math.sqrt(1 - a * a) > 100 * IDENTITY_TOL


def test_first_order_split_and_retraced_runs(quick):
    results, _ = quick
    mech = results["summary"]["mechanism"]
    # the instrumented runs start from run()'s snapshot and take run()'s steps
    assert mech["vs_run"]["loss_at_switch"] < 1e-6
    assert mech["vs_run"]["base"] < 1e-6 and mech["vs_run"]["bulk"] < 1e-6
    for name in ("bulk", "bulk_lanczos"):
        s = results["mechanism"]["runs"][name]["series"]
        for leak, rest, realized in zip(s["leak"], s["rest"], s["realized"]):
            # Adam's step is linear in m: the two parts add up to the realized Bulk step
            assert leak + rest == pytest.approx(realized, rel=1e-3, abs=1e-9)
    base = results["mechanism"]["runs"]["base"]["series"]
    for leak, rest, dom, realized in zip(base["leak"], base["rest"], base["dom"], base["realized"]):
        assert leak + rest + dom == pytest.approx(realized, rel=1e-3, abs=1e-9)
    # the warm basis is a basis of eigenvectors where it was checked
    assert mech["bulk"]["max_rel_residual"] < 0.1


def test_render_rebuilds_the_page_from_the_json(study, quick):
    _, out = quick
    page = (out / "page.md").read_text()
    again = out / "again.md"
    study.main(["--quick", "--render", "--out", str(out), "--docs", str(again)])
    assert again.read_text() == page


def test_quick_defaults_to_a_temporary_folder(study):
    results = BENCHMARKS / "results"
    assert study.parse([]).out == results
    args = study.parse(["--quick", "--docs"])
    assert args.out != results and args.out.is_dir() and not any(args.out.iterdir())
    assert args.docs.parent == args.out  # the quick page never replaces docs/bulk_adam.md
    assert study.parse(["--docs"]).docs == ROOT / "docs" / "bulk_adam.md"
