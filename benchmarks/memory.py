"""Peak memory of one full-dataset Hessian block product against ``chunk_size`` and block width.

Each configuration runs in a fresh Python process (so memory the allocator kept from an
earlier configuration cannot hide a peak): the process builds the model and data, applies
one warm-up product of width 1 on a 1-example data set, then measures the peak of one
``HessianOperator.matmat`` of width ``b`` over the whole data set.

* CPU: peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` just before
  the product) minus the resident size just before it;
* CUDA: ``torch.cuda.max_memory_allocated`` during the product minus the allocated memory
  before it.

The model is an MLP 128-256-256-10 (101,386 parameters) in float32 on 2,048 synthetic
examples: large enough that the gradient graph of a whole-data-set pass (activations) and
the ``(n, b)`` blocks both show. Two sweeps per HVP back end: ``chunk_size`` at width 4, and
width at ``chunk_size=128``.

Run::

    OMP_NUM_THREADS=2 python benchmarks/memory.py                 # writes docs/memory_benchmark.md
    python benchmarks/memory.py --device cuda                     # on a GPU
    python benchmarks/memory.py --quick --out /tmp/memory.md      # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "memory_benchmark.md"

WIDTHS = (128, 256, 256, 10)
EXAMPLES = 2048


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def measure(config: dict) -> dict:
    """Run one configuration in this process; return the peak in MiB and the time."""
    import torch
    from torch import nn

    from subspace_optim import HessianOperator

    device = torch.device(config["device"])
    g = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(WIDTHS)):
        layers.append(nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers).to(device)
    X = torch.randn(config["examples"], WIDTHS[0], generator=g).to(device)
    Y = torch.randn(config["examples"], WIDTHS[-1], generator=g).to(device)

    def loss_fn(out, target):  # written out: F.mse_loss breaks forward-over-reverse
        return ((out - target) ** 2).mean()

    common = {"chunk_size": config["chunk"], "method": config["method"]}
    op = HessianOperator(model, loss_fn, (X, Y), memory_budget=config.get("budget"), **common)
    # the library's estimate for this chunk size (an unlimited budget: only the estimate)
    estimate = HessianOperator(model, loss_fn, (X, Y), memory_budget=2**62, **common)
    estimate = estimate.memory_estimate
    n = op.shape[0]
    warm = HessianOperator(model, loss_fn, (X[:1], Y[:1]), method=config["method"])
    warm.matvec(torch.zeros(n, device=device))  # load kernels, allocate workspaces
    V = torch.randn(n, config["width"], generator=g).to(device)
    per_pass = config["width"] if op.block_size is None else min(config["width"], op.block_size)
    block_bytes = n * config["width"] * V.element_size()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = _rss_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    c0 = time.process_time()
    HV = op.matmat(V)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _rss_kib("VmHWM") * 1024
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    assert torch.isfinite(HV).all()
    return {
        **config,
        "n": n,
        "per_pass": per_pass,
        "peak_mib": (peak - before) / 2**20,
        # the sub-block product's estimate plus the output block
        "estimate_mib": (estimate.peak(per_pass) + block_bytes) / 2**20,
        "graph_mib": estimate.graph_bytes / 2**20,
        "block_mib": block_bytes / 2**20,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    if device == "cuda":
        desc = f"{torch.cuda.get_device_name(0)} (host: {desc})"
    return desc


BUDGET_MIB = 12  # the memory_budget of the budget sweep


def configs(device: str, quick: bool) -> list[dict]:
    examples = 512 if quick else EXAMPLES
    chunks = (None, 256) if quick else (None, 512, 128)
    widths = (1, 4) if quick else (1, 4, 16)
    wide = widths[-1]
    out = []
    for method in ("autograd", "func"):
        for chunk in chunks:
            out.append({"sweep": "chunk_size", "method": method, "chunk": chunk, "width": wide})
        for width in widths:
            if width != wide:
                out.append(
                    {"sweep": "width", "method": method, "chunk": chunks[-1], "width": width}
                )
        # the budget chooses the columns per pass of a wide block
        out.append(
            {
                "sweep": "budget",
                "method": method,
                "chunk": chunks[-1],
                "width": wide,
                "budget": BUDGET_MIB * 2**20,
            }
        )
    for c in out:
        c.update(device=device, examples=examples)
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| HVP method | chunk_size | block width b | columns per pass | memory_budget (MiB) "
        "| peak (MiB) | estimate (MiB) | (n, b) block (MiB) | CPU time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    key = {"autograd": 0, "func": 1}
    for r in sorted(
        rows,
        key=lambda r: (key[r["method"]], r["width"], -(r["chunk"] or 10**9), "budget" in r),
    ):
        chunk = "whole set" if r["chunk"] is None else str(r["chunk"])
        budget = r.get("budget")
        per_pass = f"**{r['per_pass']}** (chosen)" if budget else str(r["per_pass"])
        lines.append(
            f"| {r['method']} | {chunk} | {r['width']} | {per_pass} | "
            f"{'' if budget is None else f'{budget / 2**20:.0f}'} | {r['peak_mib']:.1f} | "
            f"{r['estimate_mib']:.1f} | {r['block_mib']:.1f} | {r['cpu_seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="peak memory of Hessian block products")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the markdown page (default: docs/memory_benchmark.md; with --quick a temporary "
        "folder's memory_benchmark.md); the JSON goes to benchmarks/results (with --quick: "
        "next to the page)",
    )
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child is not None:  # one configuration, in a fresh process
        print(json.dumps(measure(json.loads(args._child))))
        return
    if args.out is None:  # a quick run never overwrites the committed page and results
        args.out = (
            Path(tempfile.mkdtemp(prefix="memory_quick_")) / "memory_benchmark.md"
            if args.quick
            else DEFAULT_OUT
        )
    results = args.out.parent if args.quick else ROOT / "benchmarks" / "results"

    rows = []
    for config in configs(args.device, args.quick):
        proc = subprocess.run(
            [sys.executable, __file__, "--_child", json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            },
        )
        if proc.returncode != 0:
            raise SystemExit(f"configuration {config} failed:\n{proc.stderr}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{row['method']:8s} chunk={row['chunk']!s:>5s} b={row['width']:3d} "
            f"per pass={row['per_pass']:3d}  peak {row['peak_mib']:8.1f} MiB  "
            f"estimate {row['estimate_mib']:8.1f} MiB  {row['cpu_seconds']:.2f} s CPU",
            flush=True,
        )
        rows.append(row)

    n, examples = rows[0]["n"], rows[0]["examples"]
    ratios = [r["peak_mib"] / r["estimate_mib"] for r in rows]
    budget_rows = [r for r in rows if r.get("budget")]
    within = all(r["peak_mib"] <= r["budget"] / 2**20 + r["block_mib"] for r in budget_rows)
    what = "peak RSS increase" if args.device == "cpu" else "CUDA max allocated increase"
    suffix = "" if args.device == "cpu" else "_cuda"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"memory{suffix}.json").write_text(
        json.dumps({"machine": machine(args.device), "quick": args.quick, "rows": rows}, indent=1)
    )
    text = f"""# Memory of full-dataset Hessian products

Generated by `benchmarks/memory.py` ({"quick smoke run" if args.quick else "full run"}) on:
{machine(args.device)}.

One `HessianOperator.matmat` of an `(n, b)` block over the whole data set, in a fresh
process per row; `peak` is the {what} during that one product, in MiB. Model: MLP
{"-".join(map(str, WIDTHS))}, tanh, float32, n = {n:,} parameters, {examples:,} examples.
`columns per pass` is how many columns of the block one pass over the data evaluates
(`max_block_size` / `memory_budget`; the whole block by default). `estimate` is the
library's estimate for that pass (`HessianOperator.memory_estimate.peak(columns per pass)`,
see the `memory_budget` note in the `HessianOperator` docstring) plus the `(n, b)` output
block. The `(n, b)` block column is the size of one such block (the caller's input block
is allocated before the measurement and not counted).

{table(rows)}

Reading the table:

* `chunk_size` bounds the activation memory (the gradient graph of one micro-batch lives at
  a time): the peak falls with the chunk until the `(n, b)` blocks dominate; the result is
  the same for every chunk size.
* The budget rows (`memory_budget` = {BUDGET_MIB} MiB at `chunk_size` {rows[-1]["chunk"]}) show
  the width the operator chose for a block of {budget_rows[0]["width"] if budget_rows else "?"}
  columns: {", ".join(f"{r['method']} {r['per_pass']}" for r in budget_rows)} columns per
  pass; the measured peak {"stayed" if within else "did NOT stay"} within the budget plus the
  output block in every budget row.
* Measured peak / estimate ranges from {min(ratios):.2f} to {max(ratios):.2f} over the rows
  (below 1: the estimate is conservative). The estimate counts tensors, not the allocator:
  small products sit in memory the process already holds, so their measured increase is
  below the estimate.
* `method="autograd"` evaluates the columns of a pass one after another on one shared
  gradient graph, so its peak grows with `b` through the `(n, b)` blocks and a few
  `n`-vectors per column, not through the activations: splitting its block changes the
  peak little (the output block stays whole), and differences of a few MiB between such
  rows are allocator noise. `method="func"` `vmap`s over the columns, so its activation
  memory is multiplied by the columns per pass: it is the method where a `memory_budget`
  (or a small `chunk_size`) matters.
* CPU time is the process time of that one product (the machine was shared; the
  sub-blocked rows pay one pass over the data per sub-block). `benchmarks/hvp.py` is the
  place for speed comparisons.
* `DistributedHessianOperator` adds one flat all-reduce buffer of `n·b + 3·world_size`
  numbers per product (one per block, however many sub-blocks).
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
