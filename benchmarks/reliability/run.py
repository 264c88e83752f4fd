"""Reliability report: run every bad input, injected fault, determinism check and a long soak
from ``tests/scenarios/`` (the same catalogue the tests check) and write
what happened in each case.

Outputs a JSON artefact (``benchmarks/results/reliability.json``) and a markdown page
(``docs/reliability.md``), both naming the machine.

Run::

    OMP_NUM_THREADS=1 python -m benchmarks.reliability               # 5,000-step soak
    python -m benchmarks.reliability --soak-steps 200 --out /tmp/r   # quick
    python -m benchmarks.reliability --from-json benchmarks/results/reliability.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.harness import DOCS, RESULTS

from .cases import ACCUMULATION_TOL, measure
from .page import markdown


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--soak-steps",
        type=int,
        default=5000,
        help="a multiple of 2 x --soak-segments (default 5000)",
    )
    parser.add_argument("--soak-segments", type=int, default=10)
    parser.add_argument("--fault-steps", type=int, default=8)
    parser.add_argument(
        "--out", type=Path, default=None, help="directory for both outputs (default: the repo's)"
    )
    parser.add_argument(
        "--from-json", type=Path, default=None, help="only re-render the markdown from this JSON"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.from_json is not None:
        md_path = (args.out or DOCS) / "reliability.md"
        md_path.write_text(markdown(json.loads(args.from_json.read_text())))
        print(f"wrote {md_path}")
        return 0
    report = measure(args.fault_steps, args.soak_steps, args.soak_segments)
    json_path = (args.out or RESULTS) / "reliability.json"
    md_path = (args.out or DOCS) / "reliability.md"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown(report))
    failed = failures(report)
    print(f"wrote {json_path} and {md_path} in {report['seconds']:.0f} s")
    if failed:
        print("FAILED:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def failures(report: dict) -> list[str]:
    """The cases whose outcome breaks the policy (the report fails on any)."""
    bad, faults, det = report["bad_inputs"], report["faults"], report["determinism"]
    accumulated = report["accumulation"]
    failed = [
        r["name"]
        for r in bad
        if not (r["matched"] and r["state_unchanged"] and r["raised"] == r["expected"])
    ]
    failed += [r["name"] for r in faults if not r["params_finite"]]
    failed += [r["config"] for r in det if not r["ok"]]
    failed += [
        f"accumulation {r['family']} {r['mode']}"
        for r in accumulated
        if r["max_abs_diff"] > ACCUMULATION_TOL or r["refreshes"] != 3
    ]
    sk = report["soak"]
    if not (
        sk["params_finite"]
        and sk["resumes"] == sk["segments"] - 1
        and sk["counters"]["faults"] == sk["injected"]["nan_products"]
        and sk["injected"]["params_untouched_after_raise"] == sk["injected"]["loss_raises"] == 1
    ):
        failed.append("soak")
    return failed
