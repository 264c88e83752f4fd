"""Full-batch GD at the Edge of Stability, and Dom-GD / Bulk-GD there (issue 4).

Digits (1000 examples), MLP 64-64-64-10 (tanh), the paper's MSE, full-batch GD. Runs:

1. GD from initialization, tracking the top eigenvalues against ``2/η`` with
   :class:`subspace_optim.SharpnessTracker` (progressive sharpening, then EoS).
2. From the same state at ``--switch``: GD, Dom-GD (k=10), Bulk-GD (k=10, tracking λ_11..λ_13
   against 2/η) and Bulk-GD with ``adaptive_k`` (every eigenvalue above a fraction of 2/η,
   capped), each for ``--post`` steps with a warm-started basis refreshed every step.

Writes ``docs/_static/eos_sharpening.png``, ``docs/_static/eos_variants.png``,
``docs/_static/eos_study.json`` and ``docs/eos_findings.md``.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.eos            # ~15-25 min on a loaded 2-core CPU
    OMP_NUM_THREADS=1 python -m benchmarks.eos --quick    #
    python -m benchmarks.eos --from-json    # the figures and the page again from the JSON smoke run, minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from benchmarks.harness import DOCS, output_dir
from subspace_optim.experiments import load_digits

from .report import plot, report
from .runs import gd_phase, variant

STATIC = DOCS / "_static"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=0.7)
    p.add_argument("--switch", type=int, default=200)
    p.add_argument("--post", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--k-cap", type=int, default=30)
    p.add_argument("--fraction", type=float, default=0.9)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--track-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="switch 60, 30 steps: a smoke run")
    p.add_argument(
        "--from-json", action="store_true", help="rewrite figures and report from eos_study.json"
    )
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.quick:
        args.switch, args.post, args.track_every = 60, 30, 10
    # a quick run writes its figures and JSON to a temporary folder, never over docs/_static
    args.static = output_dir(None, True, STATIC, "eos") if args.quick else STATIC
    args.static.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    if args.from_json:
        render(args)
    else:
        measure(args)


def render(args: argparse.Namespace) -> None:
    """The figures and the page again from ``docs/_static/eos_study.json``."""
    saved = json.loads((STATIC / "eos_study.json").read_text())
    for key, value in saved["args"].items():
        if key not in ("argv", "from_json", "static"):
            setattr(args, key, value)
    args.argv = saved["args"]["argv"]
    if isinstance(args.argv, str):
        args.argv = []
    plot(args, saved["gd_trace"], saved["runs"])
    (DOCS / "eos_findings.md").write_text(
        report(args, saved["gd_trace"], saved["runs"], saved.get("machine", "see header"))
    )


def measure(args: argparse.Namespace) -> None:
    """GD to the switch, every variant from there; the figures, the JSON and the page."""
    X, Y, _ = load_digits()
    t0 = time.perf_counter()
    trace, snapshot, mv = gd_phase(args, X, Y)
    print(f"GD phase: {time.perf_counter() - t0:.0f}s, {mv} HVPs", flush=True)
    runs = {}
    for name, mode, adaptive in [
        ("GD", "none", None),
        ("Dom-GD (k=10)", "dominant", None),
        ("Bulk-GD (k=10)", "bulk", None),
        ("Bulk-GD (adaptive k)", "bulk", args.fraction),
    ]:
        runs[name] = variant(args, X, Y, snapshot, mode, adaptive)
        r = runs[name]
        print(
            f"{name}: final {r['final_loss']:.4f} in {r['seconds']:.0f}s, warned at {r['warned_at']}",
            flush=True,
        )
    machine = (
        f"{platform.machine()} CPU ({torch.get_num_threads()} thread), Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    plot(args, trace, runs)
    (args.static / "eos_study.json").write_text(
        json.dumps(
            {
                "args": {k: v for k, v in vars(args).items() if k not in ("findings", "static")},
                "gd_trace": trace,
                "runs": runs,
                "machine": machine,
            },
            default=str,
        )
    )
    if not args.quick:
        (DOCS / "eos_findings.md").write_text(report(args, trace, runs, machine))
    else:
        print(report(args, trace, runs, machine))


if __name__ == "__main__":
    main()
