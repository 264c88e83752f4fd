"""What each preset costs (``benchmarks/preset_cost/``, issue 24): the quick run measures
every phase, the estimate is the stated formula, and the README block is replaced in place
(the text around it untouched)."""

from __future__ import annotations

import importlib
import json

import pytest

pytest.importorskip("sklearn")

cost = importlib.import_module("benchmarks.preset_cost.run")


def test_quick_run_measures_every_phase(tmp_path) -> None:
    saved = cost.main(["--quick", "--out", str(tmp_path)])
    (row,) = saved["rows"]
    assert row["preset"] == "digits-quick" and row["examples"] == 100
    for key in ("prefix_step", "base", "dom", "bulk", "dom_first", "bulk_first", "wall"):
        assert row[key] > 0, key
    assert json.loads((tmp_path / "preset_cost.json").read_text())["rows"] == saved["rows"]
    block = saved["block"]
    assert block.startswith(cost.START) and block.endswith(cost.END)
    assert "| `digits-quick` | 100 |" in block


def test_estimate_is_the_protocol_from_the_rates() -> None:
    r = {"prefix_step": 0.01, "base": 0.02, "dom": 0.5, "bulk": 0.25, "dom_first": 7.0,
         "bulk_first": 5.0}  # fmt: skip
    prefix, after = cost.PROTOCOL
    want = (prefix * 0.01 + after * 0.02 + after * 0.75 + 12.0) / 3600
    assert cost.estimate_hours(r) == pytest.approx(want, rel=1e-12)


def test_readme_block_is_replaced_in_place(tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{cost.START}\nold\n{cost.END}\nafter\n")
    cost.write_readme(f"{cost.START}\nnew\n{cost.END}", readme)
    assert readme.read_text() == f"before\n{cost.START}\nnew\n{cost.END}\nafter\n"
