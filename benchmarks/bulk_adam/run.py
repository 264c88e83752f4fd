"""Why Bulk-Adam stalls on digits: the switch step, Adam's learning rate, and the mechanism.

``subspace-optim reproduce`` (scikit-learn digits, MLP 64-64-64-10, the paper's switch rule
with threshold 0.8) shows Bulk-Adam (lr 1e-3) making no progress after its switch, where
the paper's Bulk-Adam trains like Adam. This script measures why, with the objects the CLI
uses (:func:`subspace_optim.experiments.load_setup`, :class:`~subspace_optim.experiments.RunConfig`
built from the setup's defaults as ``reproduce --optimizers adam ...`` builds it,
:func:`subspace_optim.experiments.run`, and for the instrumented runs the same
:class:`~subspace_optim.experiments.context.RunContext` and
:class:`~subspace_optim.SubspaceProjectedOptimizer` that ``run`` builds):

1. **Learning-rate sweep** (``--optimizers adam --lr adam=η``, η from 3e-4 to 1e-2): how
   the switch happened (rule / forced), its step, χ_k there and its EMA, and the progress
   of Bulk and Dom relative to Adam over the 200 steps after it.
2. **Fixed switch step** (``--optimizers adam --switch N``, N = 100, 300, 500) next to the
   rule's step (the sweep's run at the default lr): Bulk-Adam's progress, χ_k at the switch.
3. **Mechanism**, at the default lr from the rule's switch step: Adam's prefix is rerun
   exactly as ``run`` runs it, then base Adam, Bulk-Adam (the default warm refresh) and
   Bulk-Adam with a cold Lanczos basis every step (``--solver lanczos``) take the same 200
   minibatch steps, instrumented at every step:

   * the realized Bulk step against ``(I − P_k)`` applied to the step Adam's own state
     gives (``−lr·m̂/(√v̂ + ε)`` from the moments after the step), as a relative error;
   * ``‖P_kΔ‖/‖Δ‖`` of Adam's own update ``Δ`` (the share Bulk removes), ``‖m‖`` and
     ``‖P_k m‖`` of the first moment, χ_k(∇L) of the full-batch gradient, λ_1;
   * the first-order loss change of each step, ``∇L·Δ_realized``, split along Adam's first
     moment: ``∇L·(I − P_k)D(P_k m)`` (the dominant part of ``m`` that Adam's
     per-coordinate scaling ``D`` carries out of the dominant subspace: the "leak") and
     ``∇L·(I − P_k)D((I − P_k) m)`` (the rest), summed over the run;
   * the relative eigen-residual ``‖Hu_i − λ_i u_i‖/λ_i`` of the warm basis, sampled.

   The instrumented base and Bulk runs must land on ``run``'s final losses (recorded).

Writes ``bulk_adam_study.json`` to ``--out`` (default ``benchmarks/results``) and, with
``--docs``, the page ``docs/bulk_adam.md``. ``--quick`` (a 150-example, 16-wide MLP, k = 3,
a few dozen steps; under 10 s of CPU, well within a minute) writes under ``--out`` or a fresh temporary folder,
never over the committed results or page. ``--render`` rewrites the page (and the JSON's
summary, which is derived from its measurements) from the JSON.

Run (the committed results: 445 s of wall and 431 s of CPU time on one thread of a shared
2-core CPU, the page says at what load)::

    OMP_NUM_THREADS=1 python -m benchmarks.bulk_adam --threads 1 --docs
    OMP_NUM_THREADS=1 python -m benchmarks.bulk_adam --quick      # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    DOCS,
    RESULTS,
    command_line,
    compact,
    load_average,
    machine_info,
    output_dir,
)

from . import page as report
from .mechanism import mechanism, trainable
from .points import FULL, QUICK, _say_point, config_for, make_setup, run_point
from .summary import summarize

STEM = "bulk_adam_study"
PAGE = DOCS / "bulk_adam.md"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the default paths resolved (``--quick``: all under ``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (about a minute), temp dir")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument(
        "--docs",
        nargs="?",
        type=Path,
        const=PAGE,
        default=None,
        help="also write the docs page (default path docs/bulk_adam.md)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--render",
        action="store_true",
        help="rewrite the page and the summary from the JSON's measurements",
    )
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, RESULTS, STEM)
    if args.quick and args.docs == PAGE:
        args.docs = args.out / "bulk_adam_page.md"  # --quick never touches the committed page
    return args


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    study = QUICK if args.quick else FULL
    command = command_line("bulk_adam", argv)
    machine = machine_info(torch.device("cpu"))
    machine.update(
        arch=platform.machine(),
        gpu_available=torch.cuda.is_available(),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
    )
    results: dict[str, Any] = {
        "command": command,
        "quick": args.quick,
        "study": asdict(study),
        "machine": machine,
    }
    t_all, c_all = time.perf_counter(), time.process_time()
    setup = make_setup(study)
    results["setup"] = {
        "name": setup.name,
        "description": setup.description,
        "defaults": dict(setup.defaults),
        "num_params": sum(p.numel() for p in trainable(setup.model)),
        "num_examples": int(setup.train_data[0].shape[0]),
    }
    print(f"setup: {setup.description}", flush=True)

    # 1. the learning-rate sweep, by the rule (its default-lr run is the rule's point below)
    sweep = []
    for lr in study.lrs:
        sweep.append(run_point(setup, config_for(setup, lr, None, study.seed)))
        print("  sweep " + _say_point(sweep[-1]), flush=True)
    results["lr_sweep"] = sweep
    default = next(p for p in sweep if p["lr"] == study.lr)
    if "error" in default:
        raise RuntimeError(f"Adam at its default lr diverged before the switch: {default}")

    # 2. fixed switch steps at the default lr
    fixed = []
    for step in study.fixed:
        fixed.append(run_point(setup, config_for(setup, study.lr, step, study.seed)))
        print(f"  switch {step}: " + _say_point(fixed[-1]), flush=True)
    results["fixed_switch"] = fixed

    # 3. the mechanism at the default lr, from the rule's switch step
    config = config_for(setup, study.lr, None, study.seed)
    results["mechanism"] = mechanism(setup, config, default["switch_step"], study)
    results["machine"]["load_average_at_end"] = load_average()
    results["wall_seconds"] = time.perf_counter() - t_all
    results["cpu_seconds"] = time.process_time() - c_all
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    path = args.out / f"{STEM}.json"
    if args.render:  # the measurements as saved; the summary derived from them again
        results = json.loads(path.read_text())
        results["summary"] = compact(summarize(results))
        path.write_text(json.dumps(results) + "\n")
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            results = measure(args, argv)
        finally:
            torch.set_num_threads(threads)  # main may run inside a test process
        results = compact(results)  # the page is made from the numbers as saved
        results["summary"] = compact(summarize(results))
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results) + "\n")
    results["summary"] = summarize(results)
    page = report.page(results)
    print(page)
    if args.docs is not None:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(page)
    results["out"] = str(args.out)
    return results


if __name__ == "__main__":
    main()
