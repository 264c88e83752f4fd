"""Why the projected-training benchmark caps NumPy/SciPy BLAS at one thread: a measurement.

The paper protocol's rows call scipy ``eigsh`` (ARPACK), whose BLAS is OpenBLAS. After each
call OpenBLAS's worker threads keep spinning for a while; on a small CPU they take the
cores from torch's threads in whatever runs next. This script runs the same rows as
``benchmarks/projected_training/`` (digits MLP, from the same step-100 snapshot, lockstep
with a rotating order), with the library default twice (two identical rows), in three
phases in one process:

* ``library rows alone``: SGD and the library-default rows, no paper protocol;
* ``with the paper protocol, BLAS threads at their default``;
* ``with the paper protocol, BLAS capped at 1 thread`` (what the benchmark does).

Run (about a minute on a 2-core CPU)::

    OMP_NUM_THREADS=2 python -m benchmarks.blas_interference --docs docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    RESULTS,
    command_line,
    limit_blas_threads,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    output_dir,
    restore_blas_threads,
    rotated,
)
from benchmarks.performance_page import save_results, write_performance_doc
from benchmarks.projected_training.runs import Run, RunSpec
from benchmarks.projected_training.setups import batch_schedule, make_setup, sgd_steps

ROWS = [
    RunSpec("SGD", "sgd"),
    RunSpec("Dom-SGD, paper protocol", "reference", "dominant"),
    RunSpec("Dom-SGD, library default", "library", "dominant"),
    RunSpec("Bulk-SGD, paper protocol", "reference", "bulk"),
    RunSpec("Bulk-SGD, library default", "library", "bulk"),
    RunSpec("Bulk-SGD, library default (second copy)", "library", "bulk"),
]


def phase(label: str, specs: list[RunSpec], snapshot: Any, batches: list, skip: int) -> list:
    device = torch.device("cpu")
    runs = [Run(spec, snapshot, device) for spec in specs]
    for t, idx in enumerate(batches):
        for run in rotated(runs, t):
            run.step(t, idx, False)
    out = []
    for run in runs:
        sec = run.step_seconds[skip:]
        out.append(
            {
                "phase": label,
                "row": run.spec.label,
                "ms_per_step": 1e3 * statistics.fmean(sec),
                "hvp_per_step": statistics.fmean(run.step_matvecs[skip:]),
            }
        )
        print(f"[{label}] {run.spec.label}: {out[-1]['ms_per_step']:.1f} ms/step", flush=True)
    return out


def to_markdown(results: dict[str, Any]) -> str:
    phases = list(dict.fromkeys(r["phase"] for r in results["rows"]))
    labels = list(dict.fromkeys(r["row"] for r in results["rows"] if r["row"] != "SGD"))
    cell = {(r["phase"], r["row"]): r for r in results["rows"]}
    table = []
    for label in labels:
        line = [label, f"{cell[(phases[-1], label)]['hvp_per_step']:.1f}"]
        for p in phases:
            r = cell.get((p, label))
            line.append("–" if r is None else f"{r['ms_per_step']:.1f}")
        table.append(line)
    return "\n".join(
        [
            "## Why the benchmark caps BLAS threads",
            "",
            machine_line(results["machine"], results["command"]),
            "",
            f"Digits MLP, {results['steps']} lockstep steps from the step-{results['switch']} "
            f"snapshot (the first {results['skip']} left out of the means), ms per projected "
            "step in three phases of one process. The paper protocol runs scipy `eigsh`, "
            "whose OpenBLAS threads keep spinning after each call and take the cores from "
            "the torch threads of the row that runs next; capped at one BLAS thread, the "
            "library rows are back near their time without the paper protocol beside them, "
            "and the paper protocol is faster too.",
            "",
            markdown_table(["row", "HVP/step", *phases], table),
            "",
        ]
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="100 examples, switch at 4, 2 steps")
    p.add_argument("--skip", type=int, default=3, help="first steps left out of the means")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/results; with --quick a new temporary folder",
    )
    p.add_argument("--docs", type=Path, default=None)
    p.add_argument(
        "--render", action="store_true", help="only rewrite the markdown from the saved JSON"
    )
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, RESULTS, "blas_interference")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.render:
        results = json.loads((args.out / "blas_interference.json").read_text())
        (args.out / "blas_interference.md").write_text(to_markdown(results))
        if args.docs is not None:
            write_performance_doc(args.out, args.docs)
        return results
    switch, examples = 100, 1000
    if args.quick:
        switch, examples, args.steps, args.skip = 4, 100, 2, 0
    machine = machine_info(torch.device("cpu"))
    s = make_setup("mlp", examples=examples)
    batches = batch_schedule(s.X.shape[0], s.batch, switch + args.steps)
    sgd_steps(s, batches[:switch])
    after = batches[switch:]
    alone = [r for r in ROWS if r.kind != "reference"]
    rows = phase("library rows alone", alone, s, after, args.skip)
    rows += phase("paper protocol beside, BLAS threads default", ROWS, s, after, args.skip)
    machine["blas"] = limit_blas_threads(1)
    try:
        rows += phase("paper protocol beside, BLAS capped at 1", ROWS, s, after, args.skip)
    finally:
        restore_blas_threads()
    machine["load_average_at_end"] = load_average()
    results = {
        "machine": machine,
        "command": command_line("blas_interference", argv),
        "steps": args.steps,
        "skip": args.skip,
        "switch": switch,
        "rows": rows,
    }
    save_results(args.out, "blas_interference", results, to_markdown(results), args.docs)
    return results


if __name__ == "__main__":
    main()
