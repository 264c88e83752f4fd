"""A cheap sharpness monitor: track the top Hessian eigenvalues while training as usual.

``mode="none"`` makes :class:`~subspace_optim.SubspaceProjectedOptimizer` a pure observer:
the base optimizer's steps are untouched, and every ``every`` steps the top-k eigenpairs of
the full-batch Hessian are refreshed, warm-started from the previous ones. Here full-batch
gradient descent on scikit-learn's digits sharpens progressively: the top eigenvalue λ_1
climbs towards the stability threshold 2/η (the Edge of Stability).

Run::

    python examples/sharpness_monitor.py          # 1000 examples, 300 steps
    python examples/sharpness_monitor.py --quick  # 64 examples, a narrower MLP, 10 steps
"""

from __future__ import annotations

import argparse

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="Track sharpness during full-batch GD.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args(argv)
    n, widths, steps, every = (
        (64, (64, 16, 10), 10, 5) if args.quick else (1000, (64, 64, 64, 10), 300, 10)
    )
    lr = 0.5

    X, Y, _ = load_digits(n)
    model = mlp(widths, generator=torch.Generator().manual_seed(0))
    loss_fn = half_sum_mse
    hessian = so.HessianOperator(model, loss_fn, (X, Y))
    base = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = so.SubspaceProjectedOptimizer(
        base, hessian, k=3, mode="none", refresh=so.Every(every)
    )

    history = []
    for _ in range(steps):
        monitor.zero_grad()
        loss_fn(model(X), Y).backward()  # full batch: gradient descent
        monitor.step()
        s = monitor.last_stats
        if s.refreshed:
            history.append((s.step, s.loss, s.eigenvalues))
            print(
                f"step {s.step:4d}  loss {s.loss:.4f}  top-3 eigenvalues "
                + " ".join(f"{v:6.3f}" for v in s.eigenvalues)
                + f"   (2/lr = {2 / lr:.1f})"
            )

    # how good is the monitor? refresh at the final parameters, and compare with a tight solve
    monitored = monitor.refresh()
    reference = so.Lanczos(tol=1e-8).solve(hessian, 3)
    print(
        f"final top eigenvalue: monitor {float(monitored.eigenvalues[0]):.5f} "
        f"({monitored.num_matvecs} HVPs, warm), "
        f"tight Lanczos {float(reference.eigenvalues[0]):.5f} ({reference.num_matvecs} HVPs, cold)"
    )
    return {
        "history": history,
        "monitored": monitored.eigenvalues.tolist(),
        "reference": reference.eigenvalues.tolist(),
        "threshold": 2 / lr,
    }


if __name__ == "__main__":
    main()
