"""
Checkpoint and resume a projected run, bit for bit
==================================================

:meth:`~subspace_optim.SubspaceProjectedOptimizer.state_dict` is the base optimizer's own
``state_dict()`` plus a ``"subspace"`` entry: the basis, the eigenvalues, the step counter,
the schedule's state (here the switch of :class:`~subspace_optim.AlignmentSwitch`), the
eigensolver's warm-start state and the wrapper's random generator. Everything in it is a
tensor or a plain value, so it loads with ``torch.load(..., weights_only=True)``.

The script trains Bulk-SGD on digits without interruption, then trains it again, stopping
halfway, saving a checkpoint, building every object anew, loading the checkpoint and
finishing the run. With the same minibatches the two runs end with identical parameters.

Run::

    python examples/checkpoint_resume.py          # 1000 examples, MLP 64-64-64-10, 120 steps
    python examples/checkpoint_resume.py --quick  # 300 examples, MLP 64-32-10, 40 steps (docs)

Threads: a small model, so one torch thread (see :doc:`/guide/troubleshooting`).
"""

from __future__ import annotations

import argparse
import io
import warnings

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

# %%
# Building the objects
# --------------------
#
# A resumed run builds the same objects as the original one, then loads the checkpoint
# into them.


def build(X, Y, widths, switch_by):
    """The model and Bulk-SGD around it, with the paper's switch protocol."""
    model = mlp(widths, generator=torch.Generator().manual_seed(0))
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        so.HessianOperator(model, half_sum_mse, (X, Y)),
        k=10,
        mode="bulk",
        refresh=so.AlignmentSwitch(check_every=5, max_steps=switch_by, warn_after=None),
    )
    return model, opt


def train(model, opt, X, Y, batches):
    """Minibatch steps; the full-batch loss after each."""
    losses = []
    for idx in batches:
        opt.zero_grad()
        half_sum_mse(model(X[idx]), Y[idx]).backward()
        opt.step()
        with torch.no_grad():
            losses.append(float(half_sum_mse(model(X), Y)))
    return losses


# %%
# Uninterrupted, then interrupted and resumed
# -------------------------------------------
#
# The checkpoint goes to an in-memory buffer here; ``torch.save(..., "ckpt.pt")`` is the
# same with a file.


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="Checkpoint and resume Bulk-SGD.")
    parser.add_argument("--quick", action="store_true", help="fewer examples and steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small model: one thread is fastest
    n, widths, steps, switch_by = (
        (300, (64, 32, 10), 40, 10) if args.quick else (1000, (64, 64, 64, 10), 120, 40)
    )
    X, Y, _ = load_digits(n)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(n, (50,), generator=g) for _ in range(steps)]
    half = steps // 2

    # the schedule warns when max_steps forces the switch (in both runs): show it once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, opt = build(X, Y, widths, switch_by)
        uninterrupted = train(model, opt, X, Y, batches)
        reference = [p.detach().clone() for p in model.parameters()]

        model, opt = build(X, Y, widths, switch_by)
        first = train(model, opt, X, Y, batches[:half])
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
        del model, opt  # as if the process had ended

        buffer.seek(0)
        ckpt = torch.load(buffer, weights_only=True)
        model, opt = build(X, Y, widths, switch_by)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        second = train(model, opt, X, Y, batches[half:])

    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}")
    identical = all(torch.equal(a, b) for a, b in zip(reference, model.parameters(), strict=True))
    print(f"checkpoint at step {half}: keys {sorted(ckpt['opt'])}")
    print(
        f"switched at step {opt.schedule.switched_at}; {int(opt.counters['refreshes'])} refreshes"
    )
    print(f"final full-batch loss: uninterrupted {uninterrupted[-1]:.6f}, resumed {second[-1]:.6f}")
    print(f"parameters identical: {identical}")
    return {
        "uninterrupted": uninterrupted,
        "resumed": first + second,
        "checkpoint_step": half,
        "identical": identical,
    }


# %%
# The figure
# ----------


def plot(result):
    """Both runs' full-batch losses; the resumed one continues from the checkpoint."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4), layout="constrained")
    ax.plot(result["uninterrupted"], color="#222222", lw=3, alpha=0.4, label="uninterrupted")
    ax.plot(result["resumed"], color="#1f77b4", lw=1.2, ls="--", label="saved and resumed")
    ax.axvline(result["checkpoint_step"] - 0.5, color="0.6", ls=":", lw=1)
    ax.set(yscale="log", xlabel="step", ylabel="full-batch training loss")
    ax.set_title("Bulk-SGD (momentum 0.9), checkpointed halfway")
    ax.legend(frameon=False)
    return fig


# %%
# Run it (the docs run ``--quick``)
# ---------------------------------

if __name__ == "__main__":
    import matplotlib.pyplot as plt

    plot(main())
    plt.show()
