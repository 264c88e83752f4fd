"""
Adam, Dom-Adam and Bulk-Adam from one switch point, with effective learning rates
=================================================================================

Adam trains the digits MLP for ``switch`` steps; the run is then continued three ways from
the very same parameters and optimizer state: unmodified Adam, Dom-Adam (only the part of
each realized Adam update inside the top-10 Hessian subspace) and Bulk-Adam (that part
removed). As in the paper, the projected update is the *realized* update of the
unmodified optimizer, whose moments keep accumulating raw gradients.

The unmodified continuation is wrapped with ``mode="none"``, which leaves its steps alone
but records the effective learning rates along the dominant and bulk directions of the
full-batch gradient; :func:`~subspace_optim.effective_lr_summary` summarises them as a
ratio of sums (the paper's Table 1: Adam moves much faster along the bulk). Effective
learning rates describe the optimizer's own updates, so they are measured on the
unprojected run: on a projected one they describe the projection (Bulk's η_dom is zero by
construction), and :func:`~subspace_optim.effective_lr_summary` refuses such records.

Run::

    python examples/dom_bulk_adam.py          # 1000 examples, switch at 100, 200 more steps
    python examples/dom_bulk_adam.py --quick  # 300 examples, MLP 64-32-10, 30 + 40 steps (docs)

Threads: a small model, so one torch thread (see :doc:`/guide/troubleshooting`).
"""

from __future__ import annotations

import argparse
import copy

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

# %%
# Adam to the switch, then three continuations
# --------------------------------------------
#
# The three continuations share the parameters, the Adam moments and the minibatches at
# the switch; only ``mode`` differs.


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="Adam vs Dom-Adam vs Bulk-Adam on digits.")
    parser.add_argument("--quick", action="store_true", help="fewer examples and steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small model: one thread is fastest
    n, widths, switch, more = (
        (300, (64, 32, 10), 30, 40) if args.quick else (1000, (64, 64, 64, 10), 100, 200)
    )
    X, Y, _ = load_digits(n)
    loss_fn = half_sum_mse

    def full_loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(loss_fn(model(X), Y))

    # phase 1: plain Adam up to the switch
    g = torch.Generator().manual_seed(0)
    model = mlp(widths, generator=g)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(switch):
        idx = torch.randint(n, (50,), generator=g)
        adam.zero_grad()
        loss_fn(model(X[idx]), Y[idx]).backward()
        adam.step()
    loss_switch = full_loss(model)

    # phase 2: the same minibatches for every variant, from the same state
    batches = [torch.randint(n, (50,), generator=g) for _ in range(more)]
    final, curves = {}, {}
    for mode in ("none", "dominant", "bulk"):
        m = copy.deepcopy(model)
        base = torch.optim.Adam(m.parameters(), lr=1e-3)
        base.load_state_dict(adam.state_dict())
        opt = so.SubspaceProjectedOptimizer(
            base, so.HessianOperator(m, loss_fn, (X, Y)), k=10, mode=mode, refresh=so.Every(1)
        )
        records, curves[mode] = [], [loss_switch]
        for idx in batches:
            opt.zero_grad()
            loss_fn(m(X[idx]), Y[idx]).backward()
            opt.step()
            records.append(opt.last_stats)
            curves[mode].append(full_loss(m))
        final[mode] = curves[mode][-1]
        if mode == "none":  # effective learning rates of Adam itself: the unprojected run
            eta = so.effective_lr_summary(records)

    print(f"loss at the switch (step {switch}): {loss_switch:.4f}")
    print(
        f"after {more} more steps:  Adam {final['none']:.4f}   "
        f"Dom-Adam {final['dominant']:.4f}   Bulk-Adam {final['bulk']:.4f}"
    )
    print(
        f"Adam's effective learning rates: eta_dom {eta['eta_dom']:.2e}, "
        f"eta_bulk {eta['eta_bulk']:.2e}, eta_bulk/eta_dom {eta['ratio']:.2f}"
    )
    return {
        "loss_switch": loss_switch,
        "adam": final["none"],
        "dom": final["dominant"],
        "bulk": final["bulk"],
        "eta_ratio": eta["ratio"],
        "switch": switch,
        "curves": curves,
    }


# %%
# The figure
# ----------


def plot(result):
    """Full-batch loss of the three continuations after the switch, log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    steps = range(result["switch"], result["switch"] + len(result["curves"]["none"]))
    for mode, label, color in (
        ("none", "Adam", "#222222"),
        ("dominant", "Dom-Adam", "#d62728"),
        ("bulk", "Bulk-Adam", "#1f77b4"),
    ):
        ax.plot(steps, result["curves"][mode], color=color, label=label, lw=1.4)
    ax.set(yscale="log", xlabel="step", ylabel="full-batch training loss")
    ax.set_title(
        f"After the switch (Adam's $\\eta_{{bulk}}/\\eta_{{dom}}$ = {result['eta_ratio']:.1f})"
    )
    ax.legend(frameon=False)
    return fig


# %%
# Run it (the docs run ``--quick``)
# ---------------------------------

if __name__ == "__main__":
    import matplotlib.pyplot as plt

    plot(main())
    plt.show()
