"""Measure the numbers quoted on docs/guide/troubleshooting.rst, on the machine it runs on.

Run from the repository root (prints a small report; nothing is written)::

    python docs/_tools/measure_troubleshooting.py

1. Threads: seconds per Bulk-SGD step (one refresh every step) on the digits MLP
   64-64-64-10 over 1000 examples, with torch's default thread count and with one thread.
2. Refresh cost: Hessian-vector products of a cold and of a warm refresh (the default
   solver), and the seconds of one product and of one forward + backward pass over 250 and
   over 1000 examples.
"""

from __future__ import annotations

import os
import time

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp


def bulk_steps(threads: int, steps: int = 30) -> float:
    """Seconds per Bulk-SGD step (refresh every step) with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    X, Y, _ = load_digits(1000)
    model = mlp((64, 64, 64, 10), generator=torch.Generator().manual_seed(0))
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        so.HessianOperator(model, half_sum_mse, (X, Y)),
        k=10,
        mode="bulk",
    )
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(1000, (50,), generator=g) for _ in range(steps + 5)]
    for i, idx in enumerate(batches):
        if i == 5:  # after the cold first refresh and warm-up
            t0 = time.perf_counter()
        opt.zero_grad()
        half_sum_mse(model(X[idx]), Y[idx]).backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def product_seconds(n: int, repeats: int = 20) -> float:
    """Seconds of one Hessian-vector product over ``n`` examples (one thread)."""
    torch.set_num_threads(1)
    X, Y, _ = load_digits(n)
    model = mlp((64, 64, 64, 10), generator=torch.Generator().manual_seed(0))
    H = so.HessianOperator(model, half_sum_mse, (X, Y))
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(2))
    H.matvec(v)
    t0 = time.perf_counter()
    for _ in range(repeats):
        H.matvec(v)
    return (time.perf_counter() - t0) / repeats


def gradient_seconds(n: int, repeats: int = 20) -> float:
    """Seconds of one forward and backward pass over ``n`` examples (one thread)."""
    torch.set_num_threads(1)
    X, Y, _ = load_digits(n)
    model = mlp((64, 64, 64, 10), generator=torch.Generator().manual_seed(0))
    half_sum_mse(model(X), Y).backward()
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.zero_grad()
        half_sum_mse(model(X), Y).backward()
    return (time.perf_counter() - t0) / repeats


def refresh_products() -> tuple[int, int]:
    """HVPs of the first (cold) and of the second (warm, one SGD step later) refresh."""
    torch.set_num_threads(1)
    X, Y, _ = load_digits(1000)
    model = mlp((64, 64, 64, 10), generator=torch.Generator().manual_seed(0))
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        so.HessianOperator(model, half_sum_mse, (X, Y)),
        k=10,
        mode="bulk",
    )
    counts = []
    for _ in range(2):
        opt.zero_grad()
        half_sum_mse(model(X[:50]), Y[:50]).backward()
        opt.step()
        counts.append(opt.last_stats.refresh_matvecs)
    return counts[0], counts[1]


if __name__ == "__main__":
    default = torch.get_num_threads()
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, default threads {default}"
    )
    print(f"Bulk-SGD step, torch default ({default} threads): {bulk_steps(default):.4f} s")
    print(f"Bulk-SGD step, 1 thread: {bulk_steps(1):.4f} s")
    cold, warm = refresh_products()
    print(f"refresh products: cold {cold}, warm {warm}")
    for n in (250, 1000):
        product, gradient = product_seconds(n), gradient_seconds(n)
        print(
            f"over {n} examples: one product {1e3 * product:.2f} ms, one forward + backward "
            f"{1e3 * gradient:.2f} ms (ratio {product / gradient:.1f})"
        )
