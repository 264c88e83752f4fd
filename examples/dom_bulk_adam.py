"""Dom-Adam and Bulk-Adam from one switch point, with effective learning rates.

Adam trains the digits MLP for ``switch`` steps; the run is then continued three ways from
the very same parameters and optimizer state: unmodified Adam, Dom-Adam (only the part of
each realized Adam update inside the top-10 Hessian subspace) and Bulk-Adam (that part
removed). As in the paper, the projected update is the *realized* update of the
unmodified optimizer, whose moments keep accumulating raw gradients.

The unmodified continuation is wrapped with ``mode="none"``, which leaves its steps alone
but records the effective learning rates along the dominant and bulk directions of the
full-batch gradient; :func:`~subspace_optim.effective_lr_summary` summarises them as a
ratio of sums (the paper's Table 1: Adam moves much faster along the bulk).

Run::

    python examples/dom_bulk_adam.py          # 1000 examples, switch at 100, 200 more steps
    python examples/dom_bulk_adam.py --quick  # 64 examples, a narrower MLP, 10 + 4 steps
"""

from __future__ import annotations

import argparse
import copy

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="Adam vs Dom-Adam vs Bulk-Adam on digits.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args(argv)
    n, widths, switch, more = (
        (64, (64, 16, 10), 10, 4) if args.quick else (1000, (64, 64, 64, 10), 100, 200)
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
    final, summaries = {}, {}
    for mode in ("none", "dominant", "bulk"):
        m = copy.deepcopy(model)
        base = torch.optim.Adam(m.parameters(), lr=1e-3)
        base.load_state_dict(adam.state_dict())
        opt = so.SubspaceProjectedOptimizer(
            base, so.HessianOperator(m, loss_fn, (X, Y)), k=10, mode=mode, refresh=so.Every(1)
        )
        records = []
        for idx in batches:
            opt.zero_grad()
            loss_fn(m(X[idx]), Y[idx]).backward()
            opt.step()
            records.append(opt.last_stats)
        final[mode] = full_loss(m)
        summaries[mode] = so.effective_lr_summary(records)

    eta = summaries["none"]
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
    }


if __name__ == "__main__":
    main()
