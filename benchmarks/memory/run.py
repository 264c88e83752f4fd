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

    OMP_NUM_THREADS=2 python -m benchmarks.memory                 # writes docs/memory_benchmark.md
    python -m benchmarks.memory --device cuda                     # on a GPU
    python -m benchmarks.memory --quick --out /tmp/memory.md      # smoke test
    python -m benchmarks.memory --render       # the page again from benchmarks/results/memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import DOCS, RESULTS, ROOT, cpu_name, output_dir

from .measure import configs, measure
from .page import page

DEFAULT_OUT = DOCS / "memory_benchmark.md"


def machine(device: str) -> str:
    import torch

    cpu = cpu_name()
    desc = (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    if device == "cuda":
        desc = f"{torch.cuda.get_device_name(0)} (host: {desc})"
    return desc


def parse(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the page from the saved JSON"
    )
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out is None:  # a quick run never overwrites the committed page and results
        folder = output_dir(None, args.quick, DEFAULT_OUT.parent, "memory")
        args.out = folder / DEFAULT_OUT.name
    args.results = args.out.parent if args.quick else RESULTS
    return args


def run_config(config: dict) -> dict:
    """One configuration in a fresh Python process; its row."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--_child", json.dumps(config)],
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
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args._child is not None:  # one configuration, in a fresh process
        print(json.dumps(measure(json.loads(args._child))))
        return
    suffix = "" if args.device == "cpu" else "_cuda"
    path = args.results / f"memory{suffix}.json"
    if args.render:
        results = json.loads(path.read_text())
    else:
        rows = [run_config(config) for config in configs(args.device, args.quick)]
        results = {"machine": machine(args.device), "quick": args.quick, "rows": rows}
        args.results.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page(results, args.device))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
