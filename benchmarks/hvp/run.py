"""HVP back ends side by side: what one Hessian-vector product costs, per column of a block.

Every row evaluates products with the full-batch Hessian of the same model on the same data,
at the same parameters, in one process; the rows are timed round-robin (one repeat of each
row, then the next repeat) so that load on the machine hits them alike. Per-column time is
the median over repeats of ``block time / b``. Accuracy is the largest entry-wise error
against a float64 eager double-backward reference at the same parameters, relative to the
largest entry of the reference.

Rows:

* ``paper``: double backward with a fresh forward and gradient graph per vector (what the
  paper's code did), the baseline of every ratio;
* ``autograd``: :class:`~subspace_optim.HessianOperator` ``method="autograd"``,
  ``cache_graph=False``: one forward and one gradient graph per call, shared by the whole
  block (a loop of backward passes);
* ``autograd-cached``: the same with the operator's graph cache (its default for one
  batch): the forward pass and gradient graph are kept between calls at the same
  parameters, so a call is only the loop of backward passes (what every product of a solve
  after its first costs);
* ``autograd-batched``: one forward and gradient graph, the block in one
  ``torch.autograd.grad(..., is_grads_batched=True)`` call (vmap over the backward);
* ``func``: ``method="func"``, torch.func ``jvp`` of ``grad``, ``vmap``-ed over the block;
* ``func-compiled``: the same function through ``torch.compile``, compiled once for the
  block width (compile time reported separately, output checked against eager);
* ``func-compiled (padded)``: one column through that compiled function, padded with zero
  columns to the block width (no recompilation, the full width's cost);
* float32 and float64 of each;
* the other curvatures, per product against the Hessian's (each row's error is against a
  float64 evaluation of its own operator): ``ggn`` (:class:`~subspace_optim.GGNOperator`,
  JVP of the model, output-space Hessian of the loss, VJP; ``cache_graph=False``),
  ``ggn-cached`` (its forward graph kept between calls), ``ggn-func`` (torch.func ``jvp``
  and ``vjp``), ``covariance`` / ``covariance-cached`` / ``covariance-func``
  (:class:`~subspace_optim.GradientCovarianceOperator`, centred: JVP of the per-example
  losses, then a VJP, plus one gradient pass for the mean).

Run::

    OMP_NUM_THREADS=2 python -m benchmarks.hvp            # full (a few minutes)
    python -m benchmarks.hvp --quick --out /tmp/hvp        # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from benchmarks.harness import (
    RESULTS,
    command_line,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    output_dir,
    synchronize,
)
from benchmarks.performance_page import save_results
from benchmarks.projected_training.setups import Setup, make_setup
from subspace_optim import GGNOperator, GradientCovarianceOperator, HessianOperator
from subspace_optim._utils import block_to_columns, flatten, unflatten


def paper_hvp_block(model: nn.Module, loss_fn: Callable, X: Tensor, Y: Tensor, V: Tensor) -> Tensor:
    """Double backward, one fresh graph per column (the paper's HVP)."""
    params = [p for p in model.parameters() if p.requires_grad]
    cols = []
    for j in range(V.shape[1]):
        loss = loss_fn(model(X), Y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=unflatten(V[:, j], params))
        cols.append(flatten(hv))
    return torch.stack(cols, dim=1)


def batched_autograd_hvp_block(
    model: nn.Module, loss_fn: Callable, X: Tensor, Y: Tensor, V: Tensor
) -> Tensor:
    """One forward and gradient graph; the block in one ``is_grads_batched`` backward."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(X), Y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(
        grads, params, grad_outputs=unflatten(V, params), is_grads_batched=True
    )
    return block_to_columns(hv, V.shape[1])


def func_hvp_fn(model: nn.Module, loss_fn: Callable, X: Tensor, Y: Tensor) -> Callable:
    """``f(primals, tangent_parts) -> hv_parts``: jvp∘grad vmapped over the block."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]

    def loss_of(tensors: tuple[Tensor, ...]) -> Tensor:
        return loss_fn(functional_call(model, dict(zip(names, tensors)), (X,)), Y)

    grad_fn = torch.func.grad(loss_of)

    def block(primals: tuple[Tensor, ...], parts: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        def hvp(tangents: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return torch.func.jvp(grad_fn, (primals,), (tangents,))[1]

        return torch.func.vmap(hvp)(parts)

    return block


def build_rows(
    setup: str,
    dtype: torch.dtype,
    device: torch.device,
    block: int,
    compile_: bool,
    examples: int = 1000,
) -> tuple[list[dict[str, Any]], Tensor, Tensor, dict[str, Any]]:
    """Callables for every back end on one setup and dtype; returns rows, V, reference."""
    s = make_setup(setup, device=device, dtype=dtype, examples=examples)
    model, loss_fn, X, Y = s.model, s.loss_fn, s.X, s.Y
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(1)
    V64 = torch.randn(n, block, generator=g, dtype=torch.float64)
    V = V64.to(device=device, dtype=dtype)

    # float64 reference at the same parameters
    s64 = make_setup(setup, device=device, dtype=torch.float64, examples=examples)
    with torch.no_grad():
        for p64, p in zip(s64.model.parameters(), params):
            p64.copy_(p.to(torch.float64))
    reference = paper_hvp_block(s64.model, s64.loss_fn, s64.X, s64.Y, V64.to(device))

    op_autograd = HessianOperator(model, loss_fn, (X, Y), method="autograd", cache_graph=False)
    op_cached = HessianOperator(model, loss_fn, (X, Y), method="autograd", cache_graph=True)
    op_func = HessianOperator(model, loss_fn, (X, Y), method="func")
    block_fn = func_hvp_fn(model, loss_fn, X, Y)

    def primals() -> tuple[Tensor, ...]:
        return tuple(p.detach() for p in params)

    def func_eager(W: Tensor) -> Tensor:
        return block_to_columns(block_fn(primals(), tuple(unflatten(W, params))), W.shape[1])

    rows: list[dict[str, Any]] = []
    for b in (1, block):
        rows += [
            {"backend": "paper", "b": b, "fn": lambda W: paper_hvp_block(model, loss_fn, X, Y, W)},
            {"backend": "autograd", "b": b, "fn": op_autograd.matmat},
            {"backend": "autograd-cached", "b": b, "fn": op_cached.matmat},
            {
                "backend": "autograd-batched",
                "b": b,
                "fn": lambda W: batched_autograd_hvp_block(model, loss_fn, X, Y, W),
            },
            {"backend": "func", "b": b, "fn": op_func.matmat},
        ]
    rows += _curvature_rows(s, s64, V64.to(device), block)
    info: dict[str, Any] = {"n": n, "examples": int(X.shape[0])}
    if compile_:
        compiled = _compiled_rows(block_fn, params, V, block, info)
        rows += [dict(r, eager=func_eager) for r in compiled]
    return rows, V, reference, info


def _curvature_rows(s: Setup, s64: Setup, V64: Tensor, block: int) -> list[dict[str, Any]]:
    """The GGN's and the covariance's rows, each checked against a float64 evaluation of the
    same operator (``s64``: the setup in float64 at the same parameters)."""
    model, loss_fn, X, Y = s.model, s.loss_fn, s.X, s.Y
    rows: list[dict[str, Any]] = []
    for name, Op in (("ggn", GGNOperator), ("covariance", GradientCovarianceOperator)):
        ref = Op(s64.model, s64.loss_fn, (s64.X, s64.Y), cache_graph=False).matmat(V64)
        ops = {
            name: Op(model, loss_fn, (X, Y), cache_graph=False),
            f"{name}-cached": Op(model, loss_fn, (X, Y), cache_graph=True),
            f"{name}-func": Op(model, loss_fn, (X, Y), method="func"),
        }
        for b in (1, block):
            rows += [
                {"backend": key, "b": b, "fn": op.matmat, "reference": ref}
                for key, op in ops.items()
            ]
    return rows


def _compiled_rows(
    block_fn: Callable, params: list[Tensor], V: Tensor, block: int, info: dict[str, Any]
) -> list[dict[str, Any]]:
    """torch.compile of the torch.func block, compiled once for width ``block``; narrower
    blocks are padded with zero columns (one compilation serves every width, each pass
    costs the full width). Its compile time, or why it failed, goes into ``info``."""
    device = V.device
    rows: list[dict[str, Any]] = []

    def primals() -> tuple[Tensor, ...]:
        return tuple(p.detach() for p in params)

    compiled = torch.compile(block_fn, dynamic=False)

    def padded(W: Tensor) -> Tensor:
        P = torch.zeros(W.shape[0], block, dtype=W.dtype, device=W.device)
        P[:, : W.shape[1]] = W
        out = compiled(primals(), tuple(unflatten(P, params)))
        return block_to_columns(out, block)[:, : W.shape[1]]

    t0 = time.perf_counter()
    c0 = time.process_time()
    note = ""
    try:
        out = padded(V)
        synchronize(device)
        ok = bool(torch.isfinite(out).all())
    except Exception as exc:  # a back end that fails is a result, not a crash
        ok, note = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    info[f"compile_seconds_b{block}"] = time.perf_counter() - t0
    info[f"compile_cpu_seconds_b{block}"] = time.process_time() - c0
    if ok:
        for b in (1, block):
            rows.append(
                {
                    "backend": "func-compiled" if b == block else "func-compiled (padded)",
                    "b": b,
                    "fn": padded,
                }
            )
    else:
        info[f"compile_failure_b{block}"] = note
    return rows


def time_rows(rows: list[dict[str, Any]], V: Tensor, repeats: int, device: torch.device) -> None:
    for row in rows:  # warm-up (allocator, lazy init, compiled graph guards)
        row["fn"](V[:, : row["b"]])
    times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for _ in range(repeats):
        for i, row in enumerate(rows):
            W = V[:, : row["b"]]
            synchronize(device)
            t0 = time.perf_counter()
            c0 = time.process_time()
            row["fn"](W)
            synchronize(device)
            times[i].append(time.perf_counter() - t0)
            cpu[i].append(time.process_time() - c0)
    for i, row in enumerate(rows):
        row["ms_per_column"] = 1e3 * statistics.median(times[i]) / row["b"]
        row["cpu_ms_per_column"] = 1e3 * statistics.median(cpu[i]) / row["b"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    results: dict[str, Any] = {"machine": machine_info(device), "block": args.block, "rows": []}
    for setup in args.setups:
        for dtype in (torch.float32, torch.float64):
            rows, V, reference, info = build_rows(
                setup, dtype, device, args.block, args.compile, args.examples
            )
            time_rows(rows, V, args.repeats, device)
            base = {r["b"]: r["ms_per_column"] for r in rows if r["backend"] == "paper"}
            paper_b1 = base[1]
            for row in rows:
                W = V[:, : row["b"]]
                out = row["fn"](W).to(torch.float64)
                ref = row.get("reference", reference)[:, : row["b"]]
                err = float((out - ref).abs().max() / ref.abs().max())
                record = {
                    "setup": setup,
                    "n": info["n"],
                    "dtype": str(dtype).replace("torch.", ""),
                    "backend": row["backend"],
                    "b": row["b"],
                    "ms_per_column": row["ms_per_column"],
                    "cpu_ms_per_column": row["cpu_ms_per_column"],
                    "speedup_vs_paper": paper_b1 / row["ms_per_column"],
                    "rel_error_vs_float64": err,
                }
                if "eager" in row:
                    eager = row["eager"](W).to(torch.float64)
                    record["compiled_vs_eager"] = float(
                        (out - eager).abs().max() / eager.abs().max().clamp_min(1e-300)
                    )
                results["rows"].append(record)
            for key, value in info.items():
                if key.startswith("compile"):
                    results.setdefault("compile", {})[f"{setup}/{dtype}/{key}"] = value
            print(f"[hvp] {setup} {dtype}: done", flush=True)
    return results


HEADER = ["setup", "dtype", "back end", "b", "ms / column", "CPU ms / column", "speedup", "error"]


def _table_row(r: dict[str, Any]) -> list[str]:
    err = f"{r['rel_error_vs_float64']:.1e}"
    if "compiled_vs_eager" in r:
        err += f" (vs eager {r['compiled_vs_eager']:.1e})"
    return [
        f"{r['setup']} (n={r['n']:,})",
        r["dtype"],
        r["backend"],
        str(r["b"]),
        f"{r['ms_per_column']:.2f}",
        f"{r['cpu_ms_per_column']:.2f}" if "cpu_ms_per_column" in r else "",
        f"{r['speedup_vs_paper']:.2f}×",
        err,
    ]


def to_markdown(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    lines = [
        "## Hessian-vector products: back ends",
        "",
        machine_line(m, command),
        "",
        "Full-batch Hessian (all training examples), one row per back end, dtype and block "
        f"size `b` (1 or {results['block']} columns). `speedup` is relative to the paper's "
        "HVP (`paper`, b = 1) in the same dtype (wall time); `CPU ms / column` is the "
        "process time (all threads), which machine load distorts less; `error` is the largest "
        "entry-wise difference from a float64 reference, relative to its largest entry. "
        "`autograd` builds its forward pass and gradient graph on every call; "
        "`autograd-cached` keeps them between calls at the same parameters (the operator's "
        "graph cache, what every product of a solve after the first costs). "
        "`func-compiled` is torch.compile of the torch.func block, compiled once for width "
        f"{results['block']}; `func-compiled (padded)` feeds it one column padded with zeros "
        "to that width (one compilation for every width, at the full width's cost). "
        "`ggn*` and `covariance*` rows are products with the Gauss–Newton matrix and the "
        "centred gradient covariance (same data, same `b`; their error is against a float64 "
        "evaluation of the same operator; `-cached` keeps the forward graph between calls, "
        "`-func` is the torch.func back end): compare their ms / column with the Hessian "
        "rows of the same setup, dtype and `b`.",
        "",
    ]
    lines.append(markdown_table(HEADER, [_table_row(r) for r in results["rows"]]))
    compile_info = results.get("compile", {})
    if compile_info:
        lines += [
            "",
            "torch.compile (first call, includes compilation; wall time, and the CPU time of "
            "this process only: inductor's compile workers are other processes):",
            "",
        ]
        for key, value in compile_info.items():
            shown = f"{value:.1f} s" if isinstance(value, float) else str(value)
            lines.append(f"* `{key}`: {shown}")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--setups", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--block", type=int, default=20)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--quick", action="store_true", help="tiny settings for the smoke test")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/results; with --quick a new temporary folder",
    )
    p.add_argument("--docs", type=Path, default=None, help="write docs/performance.md here")
    p.add_argument(
        "--render", action="store_true", help="only rewrite the markdown from the saved JSON"
    )
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, RESULTS, "hvp")
    args.examples = 1000
    if args.quick:  # a smoke test: every row on 100 examples
        args.block, args.repeats, args.compile, args.examples = min(args.block, 4), 2, False, 100
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    command = command_line("hvp", argv)
    suffix = "" if args.device == "cpu" else f"_{torch.device(args.device).type}"
    if args.render:  # only the markdown, from the saved JSON
        results = json.loads((args.out / f"hvp{suffix}.json").read_text())
        md = to_markdown(results, results["command"])
        save_results(args.out, f"hvp{suffix}", {}, md, args.docs)
        return results
    results = run(args)
    results["command"] = command
    results["machine"]["load_average_at_end"] = load_average()
    md = to_markdown(results, results["command"])
    save_results(args.out, f"hvp{suffix}", results, md, args.docs)
    return results


if __name__ == "__main__":
    main()
