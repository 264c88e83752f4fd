"""The ``--quick`` path of ``benchmarks/subspace_sources/``: it runs, its outputs parse,
and the measured fields are sane (angles, costs, the (a, b) rows, the SGD identity)."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("subspace_sources")
    module = importlib.import_module("benchmarks.subspace_sources.run")
    results = module.main(["--quick", "--out", str(out), "--docs", str(out / "page.md")])
    return module, results, out


def test_outputs_written_and_parse(study):
    _, results, out = study
    saved = json.loads((out / "subspace_sources.json").read_text())
    assert saved["quick"] is True and saved["command"].startswith("python -m benchmarks.")
    assert set(saved["setups"]) == {"mlp", "cnn"} == set(results["summary"])
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == sorted(
        f"{s}_{f}.png" for s in ("mlp", "cnn") for f in ("angles", "dom_bulk", "sweep")
    )
    include = (out / "figures" / "measured.inc").read_text()  # the guide's numbers
    assert ".. list-table::" in include and include.count("     - GGN") == 2
    md = (out / "subspace_sources.md").read_text()
    page = (out / "page.md").read_text()
    assert all(line in page.splitlines() for line in md.splitlines())  # every table, verbatim
    assert "figures/mlp_sweep.png" in page and "figures/cnn_angles.png" in page
    assert results["machine"]["cpu"] in md and "Wall time" in md


def test_angles_and_spectra(study):
    _, results, _ = study
    for block in results["setups"].values():
        k = block["config"]["k"]
        points = block["trajectory"]["points"]
        assert next(p["step"] for p in points) == 0 and len(points) >= 2
        for p in points:
            for other in ("ggn", "covariance", "fisher"):
                rec = p[f"hessian_vs_{other}"]
                assert len(rec["angles"]) == k
                assert all(0 <= a <= math.pi / 2 + 1e-6 for a in rec["angles"])
                assert 0 <= rec["sin_mean"] <= rec["sin_max"] <= 1 + 1e-6
            for c, ev in p["eigenvalues"].items():
                assert len(ev) == k + 1 and ev == sorted(ev, reverse=True)
                if c != "hessian":  # GGN and covariances are PSD
                    assert ev[-1] > -1e-4 * abs(ev[0])
            assert all(0 <= v <= 1 + 1e-6 for v in p["grad_alignment"].values())


def test_costs_positive(study):
    _, results, _ = study
    for block in results["setups"].values():
        k = block["config"]["k"]
        assert set(block["costs"]) == {"hessian", "ggn", "covariance"}
        for r in block["costs"].values():
            assert r["block_ms_median"] > 0 and r["single_ms_median"] > 0 and r["cold_ms"] > 0
            assert r["cold_matvecs"] >= k + 1 and r["warm_matvecs_median"] >= 1


def test_dom_bulk_and_sweep_rows(study):
    module, results, _ = study
    for name, block in results["setups"].items():
        cfg, s = block["config"], results["summary"][name]
        assert set(block["runs"]) == {
            f"{c}/{m}" for c in module.CURVATURES for m in ("dominant", "bulk")
        }
        for r in block["runs"].values():
            assert len(r["loss"]) == cfg["post"] + 1 and r["counters"]["refreshes"] >= 1
        rows = {(r["a"], r["b"]): r for r in s["sweep"]}
        assert set(rows) == {(a, b) for a in cfg["a_grid"] for b in cfg["b_grid"]}
        for r in rows.values():
            assert (
                r["max_b_lamk1"] >= 0 and r["edge_ratio"] >= 0 and isinstance(r["diverged"], bool)
            )
        # (1, 1) through the wrapper is plain SGD on the same mini-batches
        assert rows[(1.0, 1.0)]["loss_end"] == pytest.approx(rows[(1.0, 1.0)]["loss_sgd"], rel=1e-4)
        assert rows[(1.0, 1.0)]["progress"] == pytest.approx(1.0, abs=1e-2)
        # Dom keeps only the top-k component: it moves the loss far less than SGD
        for c in module.CURVATURES:
            assert abs(s["runs"][f"{c}/dominant"]["progress"]) < 0.5


def test_render_reproduces(study, tmp_path):
    module, _, out = study
    before = (out / "subspace_sources.md").read_text()
    (out / "subspace_sources.md").unlink()
    module.main(["--render", "--out", str(out), "--figures", str(tmp_path)])
    assert (out / "subspace_sources.md").read_text() == before
    assert len(list(tmp_path.glob("*.png"))) == 6


def test_quick_never_writes_the_committed_outputs(study):
    module, _, _ = study
    args = module.parse_args(["--quick", "--docs"])
    assert ROOT not in args.out.parents and args.out.is_dir()
    args.out.rmdir()  # the fresh, still empty temporary directory
    for path in (args.docs, args.figures):
        assert args.out in path.parents
    full = module.parse_args(["--docs"])
    assert full.out == ROOT / "benchmarks" / "results"
    assert full.docs == ROOT / "docs" / "subspace_sources.md"
    assert full.figures == ROOT / "docs" / "_static" / "subspace_sources"
