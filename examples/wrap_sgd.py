"""Wrap SGD in one line: Bulk-SGD on scikit-learn's digits.

The digits MLP trains with plain SGD while the wrapper tracks how well the full-batch
gradient aligns with the top-10 Hessian subspace. Once the moving average of that
alignment passes 0.95 (the paper's switch protocol, :class:`~subspace_optim.AlignmentSwitch`),
every step removes the update's component inside the subspace (Bulk-SGD). The training
loop itself is the usual ``zero_grad(); loss.backward(); step()``.

Run::

    python examples/wrap_sgd.py           # 1000 examples, 400 steps: a few minutes on 2 CPU cores
    python examples/wrap_sgd.py --quick   # 64 examples, a narrower MLP, 8 steps: seconds
"""

from __future__ import annotations

import argparse
import math

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="Bulk-SGD on digits, wrapped in one line.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args(argv)
    # --quick: fewer examples, a narrower network and a short run (same code path)
    n, widths, steps, latest_switch = (
        (64, (64, 16, 10), 8, 4) if args.quick else (1000, (64, 64, 64, 10), 400, 150)
    )

    g = torch.Generator().manual_seed(0)
    X, Y, _ = load_digits(n)
    model = mlp(widths, generator=g)
    loss_fn = half_sum_mse

    base = torch.optim.SGD(model.parameters(), lr=0.1)
    # --- the one line: Bulk-SGD over the top-10 subspace of the full-batch Hessian ---
    opt = so.SubspaceProjectedOptimizer(
        base,
        so.HessianOperator(model, loss_fn, (X, Y)),
        k=10,
        mode="bulk",
        refresh=so.AlignmentSwitch(threshold=0.95, check_every=4, max_steps=latest_switch),
    )

    with torch.no_grad():
        loss_start = float(loss_fn(model(X), Y))
    removed = []
    for step in range(steps):  # the training loop is unchanged
        idx = torch.randint(n, (50,), generator=g)
        opt.zero_grad()
        loss = loss_fn(model(X[idx]), Y[idx])
        loss.backward()
        opt.step()

        stats = opt.last_stats
        if stats.projected:
            removed.append(stats.update_alignment)
        if stats.refreshed and (step % 50 == 0 or step == opt.schedule.switched_at):
            print(
                f"step {step:4d}  full-batch loss {stats.loss:.4f}  "
                f"chi_k(grad) {stats.grad_alignment:.3f}  top eigenvalue {stats.eigenvalues[0]:.3f}"
                + ("  <- switch to Bulk-SGD" if step == opt.schedule.switched_at else "")
            )

    with torch.no_grad():
        loss_final = float(loss_fn(model(X), Y))
    switched_at = opt.schedule.switched_at
    mean_removed = sum(removed) / len(removed) if removed else math.nan
    print(f"switched to Bulk-SGD at step {switched_at}")
    print(f"full-batch loss: {loss_start:.4f} at start -> {loss_final:.4f} after {steps} steps")
    print(
        f"Bulk-SGD removed on average {100 * mean_removed:.1f}% of the update's norm "
        f"({int(opt.counters['matvecs'])} Hessian-vector products in "
        f"{opt.counters['refresh_seconds']:.1f} s of refreshes)"
    )
    return {
        "loss_start": loss_start,
        "loss_final": loss_final,
        "switched_at": switched_at,
        "projected_steps": len(removed),
        "mean_removed": mean_removed,
    }


if __name__ == "__main__":
    main()
