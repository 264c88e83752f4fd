"""Smoke tests of the benchmarks' ``--quick`` modes: they run, their outputs parse, and the
fields are sane. No timing is asserted (timings belong in the benchmarks themselves)."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytest.importorskip("scipy")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("benchmarks.projected_training.run"), importlib.import_module(
        "benchmarks.hvp.run"
    )


def test_projected_training_quick(bench, tmp_path):
    pt, _ = bench
    results = pt.main(
        [
            "--quick",
            "--setups",
            "mlp",
            "cnn",
            "--out",
            str(tmp_path),
            "--docs",
            str(tmp_path / "perf.md"),
        ]
    )
    saved = json.loads((tmp_path / "projected_training.json").read_text())
    assert saved["command"].startswith("python -m benchmarks.projected_training")
    assert saved["machine"]["device"] == "cpu" and saved["machine"]["description"]
    assert [b["setup"] for b in saved["setups"]] == ["mlp", "cnn"]
    for block in results["setups"]:
        runs = {r["label"]: r for r in block["runs"]}
        kinds = {r["kind"] for r in block["runs"]}
        assert {"sgd", "reference", "library"} <= kinds
        for r in block["runs"]:
            assert r["steps"] == 3 and r["ms_per_step_mean"] > 0 and math.isfinite(r["final_loss"])
            if r["kind"] == "sgd":
                assert r["matvecs_per_step"] == 0
                continue
            assert r["matvecs_per_step"] >= block["k"]  # a refresh needs at least k products
            assert r["sampled_steps"] == 2 and 0 <= r["sin_max"] <= 1
            assert r["speedup_vs_reference"] > 0
        # every projected run starts from the same snapshot on the same mini-batches and
        # uses an accurate basis, so its loss matches the paper protocol's closely
        for mode in ("Dom", "Bulk"):
            ref = runs[f"{mode}-SGD, paper protocol"]
            lib = runs[f"{mode}-SGD, library default"]
            assert ref["speedup_vs_reference"] == pytest.approx(1.0)
            assert abs(lib["loss_vs_reference"]) < 0.02
            assert ref["sin_max"] < 1e-2  # cold eigsh to tol=0 is essentially exact
        assert {"dominant", "bulk"} <= set(block["verdict"])
    md = (tmp_path / "projected_training.md").read_text()
    assert "paper protocol" in md and "library default" in md and saved["machine"]["cpu"] in md
    assert (tmp_path / "perf.md").read_text().startswith("# Performance")


def test_hvp_quick(bench, tmp_path):
    _, hvp = bench
    results = hvp.main(["--quick", "--setups", "mlp", "cnn", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "hvp.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    backends = {r["backend"] for r in results["rows"]}
    assert {"paper", "autograd", "autograd-cached", "autograd-batched", "func"} <= backends
    for r in results["rows"]:
        assert r["ms_per_column"] > 0 and r["speedup_vs_paper"] > 0
        # every back end computes the same product as the float64 double-backward reference
        bound = 1e-4 if r["dtype"] == "float32" else 1e-10
        assert r["rel_error_vs_float64"] < bound, r
    assert {r["dtype"] for r in results["rows"]} == {"float32", "float64"}
    assert "| setup |" in (tmp_path / "hvp.md").read_text()


def test_cnn_setup_shape(bench):
    setups = importlib.import_module("benchmarks.projected_training.setups")
    s = setups.make_setup("cnn", examples=20)
    assert sum(p.numel() for p in s.model.parameters()) == 1898
    assert s.model(s.X).shape == (20, 10)
    again = setups.make_setup("cnn", examples=20)
    assert all(torch.equal(a, b) for a, b in zip(s.model.parameters(), again.model.parameters()))


def test_eigensolvers_quick(tmp_path):
    """The eigensolver benchmark's quick mode: our rows carry every field and meet the residual
    target in the float64 check; anchors are run where importable, else recorded as not run."""
    eig = importlib.import_module("benchmarks.eigensolvers.run")
    from benchmarks.eigensolvers.problems import TOL, K

    results = eig.main(
        ["--quick", "--out", str(tmp_path), "--docs", str(tmp_path / "eig.md")], say=lambda _: None
    )
    saved = json.loads((tmp_path / "eigensolvers.quick.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    assert saved["machine"]["torch_threads"] >= 1 and "load_average_at_end" in saved["machine"]
    ours = [r for r in results["rows"] if r["kind"] != "anchor"]
    names = {r["solver"] for r in ours}
    assert {"Lanczos", "LOBPCG", "PowerIteration (block)", "scipy eigsh (adapter)"} <= names
    for r in ours:
        assert r["run"] and r["returned"] == K and r["matvecs"] >= K, r
        assert r["seconds"] > 0 and 0 <= r["sin_theta"] <= 1
        assert math.isfinite(r["max_rel_residual"]) and math.isfinite(r["max_eig_error"])
        # a solver that claims convergence at tol meets it in the float64 check too (float32
        # products leave a little slack)
        tol = 3e-3 if "tol=0.003" in r["solver"] else TOL
        if r["converged"]:
            assert r["max_rel_residual"] <= 1.5 * tol, r
    for r in results["rows"]:
        if r["kind"] == "anchor":
            assert r["run"] or r["reason"]
    (summary,) = results["summary"]
    assert summary["best_cold"]["solver"] in {"Lanczos", "LOBPCG", "PowerIteration (block)"}
    assert {"a", "c"} <= set(summary) and summary["c"]["ratio"] > 0
    md = (tmp_path / "eig.md").read_text()
    assert md.startswith("# Eigensolver benchmark") and "-m benchmarks.eigensolvers --quick" in md
    # the page renders again from its JSON, the same
    again = tmp_path / "again.md"
    eig.main(["--quick", "--render", "--out", str(tmp_path), "--docs", str(again)], say=print)
    assert again.read_text() == md
    assert ("not run" in md) == (not all(s["available"] for s in results["anchors"].values()))


def test_blas_interference_quick(bench, tmp_path):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.sparse.linalg  # noqa: F401  (its BLAS is loaded before the count below)

    before = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    mod = importlib.import_module("benchmarks.blas_interference.run")
    results = mod.main(["--quick", "--out", str(tmp_path)])
    phases = {r["phase"] for r in results["rows"]}
    assert len(phases) == 3
    for r in results["rows"]:
        assert r["ms_per_step"] > 0
        assert (r["hvp_per_step"] == 0) == (r["row"] == "SGD")
    assert "capped at 1 thread" in results["machine"]["blas"]
    md = (tmp_path / "blas_interference.md").read_text()
    assert "library default (second copy)" in md
    # the cap is undone when main returns: the test process keeps its BLAS threads
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()] == before


def _results_fingerprint() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (BENCHMARKS / "results").iterdir()}


SETUPS = ("mnist-mlp", "cifar-cnn", "sst2-transformer")


def test_paper_scale_quick(tmp_path):
    """python -m benchmarks.paper_scale --quick on narrow versions of the three setups (the
    Transformer's products and the paper protocol's go through attention; its data are
    fewer than a batch): every row and column is there and sane, the targets are checked,
    the profile is taken, and the performance page builds."""
    ps = importlib.import_module("benchmarks.paper_scale.run")
    rows = importlib.import_module("benchmarks.paper_scale.rows")
    before = _results_fingerprint()
    perf = tmp_path / "perf.md"
    results = ps.main(
        ["--quick", "--small", "--threads", "1", "--setups", *SETUPS, "--docs", str(perf)]
    )
    assert _results_fingerprint() == before  # a quick run never touches the committed results
    out = Path(results["out"])
    assert out != BENCHMARKS / "results" and (out / "paper_scale.quick.json").exists()
    assert [b["setup"] for b in results["setups"]] == list(SETUPS)
    for block in results["setups"]:
        runs = {r["label"]: r for r in block["runs"]}
        assert {"SGD", "paper protocol", "library default", rows.PREVIOUS_DEFAULT} <= set(runs)
        for r in block["runs"]:
            assert r["steps"] == 2 and r["ms_median"] > 0 and r["hours_20k"] > 0
            assert r["peak_mib"] >= 0 and math.isfinite(r["final_loss"])
            if r["kind"] == "sgd":
                assert r["hvp_per_step"] == 0 and math.isnan(r["sin_max"])
                continue
            assert 0 <= r["sin_max"] <= 1 and abs(r["loss_vs_paper"]) < 0.02, r
            assert r["ms_per_hvp_single"] > 0
        assert runs["paper protocol"]["hvp_per_step"] >= block["k"]
        assert runs["library default"]["ms_per_hvp_column"] > 0
        assert runs["library default"]["median_vs_default"] == pytest.approx(1.0)
        # χ_k at the first projected step, from the wrapper's own record, for every
        # library row; the blocked-product lever measured both ways
        assert 0 <= runs["library default"]["chi_first"] <= 1 and runs["SGD"]["chi_first"] is None
        assert block["column_ms"]["loop"] > 0 and block["column_ms"]["batched"] > 0
    md = (out / "paper_scale.quick.md").read_text()
    assert "## Paper scale" in md and "Targets (median step" in md and "torch.profiler" in md
    assert "is_grads_batched=True" in md and "where the floor is" in md
    assert perf.read_text().startswith("# Performance")
    # the saved JSON renders again, and two runs merge into one table
    again = ps.main(["--quick", "--render", "--out", str(out)])
    assert again["setups"] == json.loads(json.dumps(results["setups"]))
    merged = ps.main(
        ["--quick", "--out", str(tmp_path), "--merge", *[str(out / "paper_scale.quick.json")] * 2]
    )
    assert len(merged["setups"]) == 2 * len(results["setups"])


def test_quick_modes_write_to_a_temporary_folder():
    """Every benchmark's --quick defaults to a fresh temporary folder (never the committed
    benchmarks/results); an explicit --out is kept."""
    modules = [
        importlib.import_module(f"benchmarks.{m}.run")
        for m in ("projected_training", "hvp", "blas_interference", "paper_scale")
    ]
    eig = importlib.import_module("benchmarks.eigensolvers.run")
    results = BENCHMARKS / "results"
    for mod in modules:
        assert mod.parse([]).out == results
        quick = mod.parse(["--quick"]).out
        assert quick != results and quick.is_dir() and not any(quick.iterdir())
        assert mod.parse(["--quick", "--out", "/tmp/x"]).out == Path("/tmp/x")
    assert eig.parse(["--quick"]).out is None  # resolved in main, by the same helper
    from benchmarks.harness import output_dir

    assert output_dir(None, True, results, "t") != results
    assert output_dir(None, False, results, "t") == results


def test_refresh_analysis_quick(tmp_path):
    """The refresh-cost study on 4 steps: every strategy's row is there and sane, and the
    performance page's table is made from its JSON."""
    ra = importlib.import_module("benchmarks.refresh_analysis.run")
    page = importlib.import_module("benchmarks.performance_page")
    ra.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "refresh_analysis.json").read_text())
    assert saved["steps"] == 4 and saved["k"] == ra.K
    assert [r["label"] for r in saved["rows"]] == [label for label, _, _ in ra.strategies()]
    for r in saved["rows"]:
        assert r["matvecs_per_step"] > 0 and 0 <= r["sin_median"] <= r["sin_max"] <= 1
    notes = "\n".join(page.refresh_analysis_notes(tmp_path / "refresh_analysis.json"))
    assert "python -m benchmarks.refresh_analysis --steps 4" in notes
