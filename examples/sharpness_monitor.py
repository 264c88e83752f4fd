"""
A sharpness monitor: the top Hessian eigenvalues during full-batch gradient descent
====================================================================================

``mode="none"`` makes :class:`~subspace_optim.SubspaceProjectedOptimizer` a pure observer:
the base optimizer's steps are untouched, and every ``every`` steps the top-k eigenpairs of
the full-batch Hessian are refreshed, warm-started from the previous ones. Here full-batch
gradient descent on scikit-learn's digits sharpens progressively: the top eigenvalue λ_1
climbs towards the stability threshold 2/η (the Edge of Stability).

Run::

    python examples/sharpness_monitor.py          # 1000 examples, MLP 64-64-64-10, 300 steps
    python examples/sharpness_monitor.py --quick  # 300 examples, MLP 64-32-10, 120 steps (docs)

Threads: a small model, so one torch thread (see :doc:`/guide/troubleshooting`).
"""

from __future__ import annotations

import argparse

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

# %%
# Monitor while training
# ----------------------
#
# ``k=3`` eigenpairs, refreshed every ``every`` steps; the projection is off
# (``mode="none"``), so the training is plain full-batch gradient descent.


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="Track sharpness during full-batch GD.")
    parser.add_argument("--quick", action="store_true", help="fewer examples and steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small model: one thread is fastest
    n, widths, steps, every = (
        (300, (64, 32, 10), 120, 5) if args.quick else (1000, (64, 64, 64, 10), 300, 10)
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
        if s.refreshed and s.step % (4 * every) == 0:
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


# %%
# The figure
# ----------


def plot(result):
    """Top eigenvalues against the stability threshold 2/η, and the loss, over the steps."""
    import matplotlib.pyplot as plt

    steps = [step for step, _, _ in result["history"]]
    eig = list(zip(*(e for _, _, e in result["history"]), strict=True))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6.4, 4.6), layout="constrained")
    for i, values in enumerate(eig):
        top.plot(steps, values, marker=".", lw=1.2, label=f"$\\lambda_{i + 1}$")
    top.axhline(result["threshold"], color="0.4", ls="--", lw=1, label="$2/\\eta$")
    top.set(ylabel="eigenvalue", title="Progressive sharpening under full-batch GD")
    top.legend(frameon=False, ncol=4)
    bottom.plot(steps, [loss for _, loss, _ in result["history"]], color="#222222")
    bottom.set(yscale="log", xlabel="step", ylabel="full-batch loss")
    return fig


# %%
# Run it (the docs run ``--quick``)
# ---------------------------------

if __name__ == "__main__":
    import matplotlib.pyplot as plt

    plot(main())
    plt.show()
