"""
Wrap SGD in one line: SGD, Dom-SGD and Bulk-SGD on digits
=========================================================

The digits MLP (scikit-learn's 8×8 handwritten digits, the paper's MLP and MSE loss) trains
with plain SGD while the wrapper tracks how well the full-batch gradient aligns with the
top-10 Hessian subspace. Once the moving average of that alignment passes 0.95 (the paper's
switch protocol, :class:`~subspace_optim.AlignmentSwitch`), every step removes the update's
component inside the subspace: Bulk-SGD. On digits with the MSE loss that average stays well
below 0.95, so ``max_steps`` forces the switch (the script prints which happened; a switch
that never happens is a :doc:`troubleshooting </guide/troubleshooting>` entry). The
training loop itself is the usual ``zero_grad(); loss.backward(); step()``.

From the same switch point and with the same minibatches, the script also runs unmodified
SGD and Dom-SGD (only the component inside the subspace kept), and plots the three
full-batch losses: the paper's Figure 1. Dom-SGD stalls at the loss of the switch; Bulk-SGD,
whose steps avoid the top-10 directions entirely, keeps up with SGD.

Run::

    python examples/wrap_sgd.py           # 1000 examples, MLP 64-64-64-10, 400 steps
    python examples/wrap_sgd.py --quick   # 500 examples, MLP 64-32-10, 150 steps (the docs)

Threads: the products here are tiny (an MLP with a few thousand parameters), so torch's
intra-op threads only add overhead; the script uses one thread (see
:doc:`/guide/troubleshooting`).
"""

from __future__ import annotations

import argparse
import math
import warnings

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

# %%
# One run
# -------
#
# ``mode`` picks the variant; ``refresh`` decides when to start projecting. Before the
# switch every variant takes exactly the steps plain SGD takes.


def train(mode, switch, X, Y, widths, batches, *, max_switch=None):
    """Train one variant from the same initialization; full-batch loss after every step.

    ``switch`` is ``None`` for the paper's χ_k protocol, or a step to start projecting at.
    """
    model = mlp(widths, generator=torch.Generator().manual_seed(0))
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    if switch is None:
        refresh = so.AlignmentSwitch(threshold=0.95, check_every=5, max_steps=max_switch)
    else:
        refresh = so.Every(1, start=switch)
    hessian = so.HessianOperator(model, half_sum_mse, (X, Y))  # full-batch curvature
    # --- the one line: wrap the optimizer you already have ---
    opt = so.SubspaceProjectedOptimizer(base, hessian, k=10, mode=mode, refresh=refresh)

    losses, removed = [], []
    for idx in batches:  # the training loop is unchanged
        opt.zero_grad()
        loss = half_sum_mse(model(X[idx]), Y[idx])
        loss.backward()
        opt.step()
        if opt.last_stats.projected:
            removed.append(opt.last_stats.update_alignment)
        with torch.no_grad():
            losses.append(float(half_sum_mse(model(X), Y)))
    return opt, losses, removed


# %%
# SGD until the switch, then three ways
# -------------------------------------
#
# Bulk-SGD decides the switch with :class:`~subspace_optim.AlignmentSwitch`; Dom-SGD then
# projects from that very step (:class:`~subspace_optim.Every` with ``start``), and SGD is
# the base optimizer wrapped with ``mode="none"`` and no refreshes.


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="SGD, Dom-SGD and Bulk-SGD on digits.")
    parser.add_argument("--quick", action="store_true", help="fewer examples and steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small model: one thread is fastest (and fair to neighbours)
    n, widths, steps, latest_switch = (
        (500, (64, 32, 10), 150, 60) if args.quick else (1000, (64, 64, 64, 10), 400, 150)
    )
    X, Y, _ = load_digits(n)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(n, (50,), generator=g) for _ in range(steps)]

    # the schedule warns when max_steps forces the switch; show its message here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bulk, bulk_losses, removed = train(
            "bulk", None, X, Y, widths, batches, max_switch=latest_switch
        )
    for warning in caught:
        print(f"{warning.category.__name__}: {warning.message}")
    switched_at = bulk.schedule.switched_at
    _, dom_losses, _ = train("dominant", switched_at, X, Y, widths, batches)
    _, sgd_losses, _ = train("none", steps, X, Y, widths, batches)  # never refreshes

    mean_removed = sum(removed) / len(removed) if removed else math.nan
    forced = " (forced: the threshold was not reached)" if bulk.schedule.forced else ""
    print(f"switched at step {switched_at}, EMA of chi_k {bulk.schedule.value:.3f}{forced}")
    print(
        f"full-batch loss after {steps} steps: SGD {sgd_losses[-1]:.4f}  "
        f"Dom-SGD {dom_losses[-1]:.4f}  Bulk-SGD {bulk_losses[-1]:.4f}"
    )
    print(
        f"Bulk-SGD removed on average {100 * mean_removed:.1f}% of the update's norm "
        f"({int(bulk.counters['matvecs'])} Hessian-vector products in "
        f"{int(bulk.counters['refreshes'])} refreshes)"
    )
    return {
        "switched_at": switched_at,
        "losses": {"sgd": sgd_losses, "dom": dom_losses, "bulk": bulk_losses},
        "projected_steps": len(removed),
        "mean_removed": mean_removed,
    }


# %%
# The figure
# ----------


def plot(result):
    """The paper's Figure 1: full-batch loss of SGD, Dom-SGD and Bulk-SGD, log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    colors = {"sgd": "#222222", "dom": "#d62728", "bulk": "#1f77b4"}
    labels = {"sgd": "SGD", "dom": "Dom-SGD", "bulk": "Bulk-SGD"}
    # SGD last, dashed: where Bulk-SGD keeps up with it, both lines stay visible
    styles = {"sgd": {"lw": 1.2, "ls": (0, (4, 3))}, "dom": {"lw": 1.6}, "bulk": {"lw": 2.2}}
    for key in ("dom", "bulk", "sgd"):
        ax.plot(result["losses"][key], color=colors[key], label=labels[key], **styles[key])
    ax.axvline(result["switched_at"], color="0.6", ls="--", lw=1)
    ax.annotate(
        "switch", (result["switched_at"], 1), xycoords=("data", "axes fraction"),
        xytext=(4, -12), textcoords="offset points", color="0.4",
    )  # fmt: skip
    ax.set(yscale="log", xlabel="step", ylabel="full-batch training loss")
    ax.set_title("Digits MLP: projecting out the dominant subspace does not hurt")
    ax.legend(frameon=False)
    return fig


# %%
# Run it (the docs run ``--quick``)
# ---------------------------------

if __name__ == "__main__":
    import matplotlib.pyplot as plt

    plot(main())
    plt.show()
