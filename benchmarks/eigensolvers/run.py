"""Eigensolvers side by side on the same Hessians, in one process, anchors included.

Workloads: the full-batch Hessian (1000 digits examples, 0.5·Σ(f−y)² loss) of the digits MLP
(64-64-64-10, tanh, 8,970 parameters) and of a small CNN (conv 3×3 ×8, tanh, linear; 2,970
parameters), each after 100 SGD steps (lr 0.1, batch 50), top-10, relative residual 1e-3
(``‖Hv − θv‖ <= tol·|λ_1|``).

Rows: our Lanczos, BlockLanczos (block 10 and 5), LOBPCG, PowerIteration, scipy ``eigsh`` on our operator (the adapter), the
warm refresh (``WarmRefresh``): its cold start, then one refresh after 1 and after 10 more SGD
steps from the basis and guard columns of that start; and the anchor libraries, when they are
importable, on the same model and data in the same process: pyhessian (power iteration with
deflation), hessian-eigenthings (``lanczos``) and curvlinops (``HessianLinearOperator`` +
scipy ``eigsh``). Every row's returned pairs are checked by one float64 Hessian operator (a
float64 copy of the model): residual, eigenvalue error and ``sin θ`` to an exact top-10.
Then a training run (Bulk-SGD, refresh every step after step 100) reports the warm refresh's
matvecs per step and ``sin θ`` against an exact top-10.

Usage (see the generated page for setting up the environment with the anchors)::

    OMP_NUM_THREADS=2 python -m benchmarks.eigensolvers [--train-steps 60] [--quick]
    python -m benchmarks.eigensolvers --render   # the page again from the saved JSON

Writes ``benchmarks/results/eigensolvers.{md,json}`` and ``docs/eigensolvers_benchmark.md``
(``--quick``: a tiny MLP on 100 examples, seconds, results in ``eigensolvers.quick.*`` in a temporary folder unless ``--out`` is given, and
no docs page unless ``--docs`` is given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    DOCS,
    RESULTS,
    ROOT,
    cpu_name,
    limit_blas_threads,
    load_average,
    output_dir,
    restore_blas_threads,
)
from subspace_optim.experiments import load_digits, mlp

from .anchors import ANCHORS, anchor_status
from .problems import Problem, small_cnn
from .report import _fmt_load, markdown
from .solves import Progress, _say
from .workload import summarize, training, workload


def machine_info() -> dict[str, Any]:
    """The machine record of this page (its own fields: the OpenMP setting, no GPU)."""
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": "none used (CPU run)",
        "load_average_at_start": load_average(),
    }


def library_state() -> dict[str, Any]:
    """The commit the library was imported from, and its uncommitted changes (the numbers
    belong to the working tree as it was)."""

    def git(*cmd: str) -> str:
        try:
            done = subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.rstrip()

    dirty = git("status", "--porcelain", "--", "subspace_optim").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": [d[3:] for d in dirty]}


# --------------------------------------------------------------------------- main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--quick", action="store_true", help="tiny MLP, 100 examples: seconds")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="cold solves and anchors are run this many times and the fastest time is "
        "reported (default 3; 1 with --quick)",
    )
    p.add_argument("--no-anchors", dest="anchors", action="store_false")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="cap NumPy/SciPy BLAS threads, which ARPACK (scipy eigsh, curvlinops) uses "
        "(default 1: their idle threads would take the cores from the next row; 0: leave them)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/results; with --quick a new temporary folder",
    )
    p.add_argument(
        "--docs", type=Path, default=None, help="default: docs/eigensolvers_benchmark.md"
    )
    p.add_argument(
        "--render", action="store_true", help="only rewrite the page from the saved JSON"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None, say: Progress = _say) -> dict[str, Any]:
    try:
        return _main(argv, say)
    finally:
        restore_blas_threads()  # the cap set in _main (main may run inside a test process)


def _problems(args: argparse.Namespace) -> list[Problem]:
    """The workloads: a tiny MLP for ``--quick``, else the digits MLP and the small CNN."""
    if args.quick:
        X, Y, _ = load_digits(100)
        model = mlp((64, 8, 10), generator=torch.Generator().manual_seed(0))
        size = sum(p.numel() for p in model.parameters())
        tiny = f"tiny MLP ({size:,} parameters)"
        return [Problem(tiny, model, X, Y, 20, [(1e-3, 100), (1e-7, 100)])]
    X, Y, _ = load_digits(1000)
    model = mlp(generator=torch.Generator().manual_seed(0))
    cnn = small_cnn(torch.Generator().manual_seed(0))
    size = sum(p.numel() for p in cnn.parameters())
    return [
        Problem("digits MLP (8,970 parameters)", model, X, Y),
        Problem(f"small CNN ({size:,} parameters)", cnn, X, Y),
    ]


def _anchors(args: argparse.Namespace, say: Progress) -> dict[str, dict[str, Any]]:
    status = anchor_status()
    if not args.anchors:
        status = {n: {"available": False, "reason": "--no-anchors"} for n in ANCHORS}
    for name, s in status.items():
        say(f"anchor {name}: " + (s["version"] if s["available"] else f"not run ({s['reason']})"))
    return status


def _command(argv: list[str] | None) -> str:
    omp = os.environ.get("OMP_NUM_THREADS")
    argv = sys.argv[1:] if argv is None else argv
    return (f"OMP_NUM_THREADS={omp} " if omp else "") + " ".join(
        [sys.executable, "-m", "benchmarks.eigensolvers", *argv]
    )


def _write(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """``eigensolvers{.quick}.{json,md}`` under ``--out``, and the page (``--docs``; by
    default ``docs/eigensolvers_benchmark.md`` for a full run)."""
    md = markdown(results)
    stem = "eigensolvers.quick" if args.quick else "eigensolvers"
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.render:
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{stem}.md").write_text(md)
    docs = args.docs
    if docs is None and not args.quick:
        docs = DOCS / "eigensolvers_benchmark.md"
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(md)
    print(md)


def _main(argv: list[str] | None, say: Progress) -> dict[str, Any]:
    args = parse(argv)
    args.out = output_dir(args.out, args.quick, RESULTS, "eigensolvers")
    if args.render:
        stem = "eigensolvers.quick" if args.quick else "eigensolvers"
        results = json.loads((args.out / f"{stem}.json").read_text())
        _write(args, results)
        return results
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    t_start = time.perf_counter()
    command = _command(argv)
    machine = machine_info()
    machine["blas"] = limit_blas_threads(args.blas_threads or None)
    library = library_state()
    say(
        f"{machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, load {_fmt_load(machine['load_average_at_start'])}"
    )
    status = _anchors(args, say)
    problems = _problems(args)
    rows = [r for p in problems for r in workload(p, status, say, repeats=args.repeats)]
    train_steps = 0 if args.quick else args.train_steps
    X, Y = problems[0].X, problems[0].Y
    train = training(X, Y, train_steps, say) if train_steps > 0 else None
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    summary = [summarize([r for r in rows if r["workload"] == w]) for w in workloads]
    machine["load_average_at_end"] = load_average()
    results = {
        "command": command,
        "machine": machine,
        "library": library,
        "anchors": status,
        "examples": int(X.shape[0]),
        "pre_steps": problems[0].pre_steps,
        "train_steps": train_steps,
        "rows": rows,
        "summary": summary,
        "training": train,
        "repeats": args.repeats,
        "total_minutes": round((time.perf_counter() - t_start) / 60, 1),
    }
    _write(args, results)
    return results


if __name__ == "__main__":
    main()
