"""Dom/Bulk training side by side: the paper's protocol against this library's default.

The study is described in the package's docstring; this module runs it, or renders its
table again from the saved JSON (``--render``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    RESULTS,
    command_line,
    limit_blas_threads,
    load_average,
    machine_info,
    output_dir,
    restore_blas_threads,
)
from benchmarks.performance_page import save_results, write_performance_doc

from .report import to_markdown
from .study import run_setup


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--setups", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument(
        "--examples", type=int, default=None, help="training examples (default: mlp 1000, cnn 500)"
    )
    p.add_argument("--switch", type=int, default=100)
    p.add_argument(
        "--steps", type=int, default=None, help="projected steps (default: mlp 150, cnn 40)"
    )
    p.add_argument(
        "--samples", type=int, default=6, help="steps whose basis is checked against the exact one"
    )
    p.add_argument("--no-levers", dest="levers", action="store_false")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="cap NumPy/SciPy BLAS threads (default 1, see limit_blas_threads; 0: leave them)",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings for the smoke test")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: benchmarks/results; with --quick a new temporary folder)",
    )
    p.add_argument("--docs", type=Path, default=None, help="also write docs/performance.md here")
    p.add_argument(
        "--render", action="store_true", help="only rewrite the markdown from the saved JSON"
    )
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, RESULTS, "projected_training")
    if args.quick:
        args.examples, args.switch, args.samples = 100, 4, 2
        args.steps = args.steps or 3
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = torch.device(args.device)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    if args.render:
        results = json.loads((args.out / f"projected_training{suffix}.json").read_text())
        (args.out / f"projected_training{suffix}.md").write_text(to_markdown(results))
        if args.docs is not None:
            write_performance_doc(args.out, args.docs)
        return results
    command = command_line("projected_training", argv)
    blas = limit_blas_threads(args.blas_threads or None)
    results: dict[str, Any] = {
        "machine": machine_info(device, blas),
        "command": command.strip(),
        "setups": [],
    }
    try:
        for name in args.setups:
            results["setups"].append(run_setup(name, args, device))
    finally:
        restore_blas_threads()
    results["machine"]["load_average_at_end"] = load_average()
    save_results(args.out, f"projected_training{suffix}", results, to_markdown(results), args.docs)
    return results


if __name__ == "__main__":
    main()
