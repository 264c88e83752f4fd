"""What a row's numbers beside its step times come from: one product's cost alone and per
column of a block, the batched double backward, the angle to a tightly converged top-k and
the profile of a few projected steps."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile, record_function

import subspace_optim as so
from benchmarks.harness import synchronize
from benchmarks.projected_training.setups import Setup, params_of, write_flat

from .rows import Row, Spec

#: block width of the "per column" product timing (k + the warm refresh's 5 guards)
BLOCK = 15


def best_ms(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    before: Callable[[], object] | None = None,
) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` in ms, synchronized with ``device``;
    ``before`` runs untimed ahead of each call."""
    best = math.inf
    for _ in range(repeats):
        if before is not None:
            before()
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def _free(op: so.HessianOperator) -> None:
    """Free the graph the last product cached (an empty scope frees it on exit)."""
    with op.solve_scope():
        pass


def product_ms(op: so.HessianOperator, block: int, repeats: int = 2) -> tuple[float, float]:
    """ms of one full-data product alone (graph built each time) and per column of a block."""
    g = torch.Generator().manual_seed(0)
    V = torch.randn(op.shape[0], block, generator=g).to(op.device, op.dtype)
    times = {
        width: best_ms(lambda w=width: op.matmat(V[:, :w]), op.device, repeats, lambda: _free(op))
        / width
        for width in (1, block)
    }
    _free(op)
    return times[1], times[block]


def batched_column_ms(s: Setup, block: int, repeats: int = 2) -> dict[str, float]:
    """ms per column of one block of double backwards over the full data, two ways: a loop
    of single double backwards (what ``method="autograd"`` does) and one batched double
    backward (``torch.autograd.grad(..., is_grads_batched=True)``, a ``vmap`` over the
    backward), each with the gradient graph built once and kept."""
    params = params_of(s.model)
    g = torch.Generator().manual_seed(0)
    V = [torch.randn(block, *p.shape, generator=g).to(p.device, p.dtype) for p in params]
    out = {}
    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.autograd.grad(s.loss_fn(s.model(s.X), s.Y), params, create_graph=True)

        def loop() -> None:
            for j in range(block):
                torch.autograd.grad(grads, params, [v[j] for v in V], retain_graph=True)

        def batched() -> None:
            torch.autograd.grad(grads, params, V, retain_graph=True, is_grads_batched=True)

        for name, fn in (("loop", loop), ("batched", batched)):
            out[name] = best_ms(fn, s.X.device, repeats) / block
    return out


def reference_sin(s: Setup, samples: list[tuple[Tensor, Tensor]]) -> float:
    """Largest sin θ between each sampled basis and a tightly converged top-k at its θ."""
    if not samples:
        return math.nan
    model = copy.deepcopy(s.model)
    params = params_of(model)
    op = so.HessianOperator(model, s.loss_fn, (s.X, s.Y))
    worst = 0.0
    for theta, U in samples:
        write_flat(params, theta)
        with op.solve_scope():
            res = so.Lanczos(tol=1e-5, max_iter=50).solve(op, s.k + 1)
        W = res.eigenvectors[:, : s.k].to(torch.float64)
        worst = max(worst, float(so.subspace_distance(so.orthonormalize(U.to(torch.float64)), W)))
    return worst


def profile_row(
    spec: Spec, snapshot: Setup, device: torch.device, batches: list[Tensor]
) -> dict[str, Any]:
    """torch.profiler over the steps after the first: products, full gradient, dense
    algebra of the solve, the rest of the step, and wall time outside ATen operators."""
    row = Row(spec, snapshot, device)
    op = row.op
    assert op is not None and isinstance(row.opt, so.SubspaceProjectedOptimizer)

    def labelled(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        def wrapped(*a: Any, **kw: Any) -> Any:
            with record_function(name):
                return fn(*a, **kw)

        return wrapped

    op._matmat = labelled(op._matmat, "products")  # type: ignore[method-assign]
    op.loss_and_grad = labelled(op.loss_and_grad, "full gradient")  # type: ignore[method-assign]
    solver = row.opt.eigensolver
    solver.solve = labelled(solver.solve, "eigensolve")  # type: ignore[method-assign]
    row.step(batches[0], False)  # the cold start, outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for idx in batches[1:]:
            row.step(idx, False)
    wall = 1e3 * (time.perf_counter() - t0)
    events = prof.key_averages()
    total = {e.key: e.cpu_time_total / 1e3 for e in events}
    aten = [e for e in events if e.key.startswith("aten::")]
    op_self = sum(e.self_cpu_time_total for e in aten) / 1e3
    mm = (
        sum(
            e.self_cpu_time_total for e in aten if e.key in ("aten::mm", "aten::addmm", "aten::bmm")
        )
        / 1e3
    )
    products, gradient = total.get("products", 0.0), total.get("full gradient", 0.0)
    solve = total.get("eigensolve", 0.0)
    steps = len(batches) - 1
    return {
        "label": spec.label,
        "steps": steps,
        "ms_per_step": wall / steps,
        "products_pct": 100 * products / wall,
        "gradient_pct": 100 * gradient / wall,
        "dense_pct": 100 * max(0.0, solve - products) / wall,
        "rest_pct": 100 * max(0.0, wall - solve - gradient) / wall,
        "python_pct": 100 * max(0.0, wall - op_self) / wall,
        "mm_pct": 100 * mm / max(op_self, 1e-9),
    }
