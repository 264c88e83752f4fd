"""
The paper's experiment on your own model, through the experiments API
======================================================================

:func:`subspace_optim.experiments.run` is what ``subspace-optim reproduce`` calls. Give it
any ``nn.Module``, a loss and the training set as two tensors; for each optimizer family it
trains with the unmodified optimizer until the switch, then runs the base optimizer, its
Dom variant and its Bulk variant from that same point with the same minibatches.
:func:`~subspace_optim.experiments.write_report` writes the table, CSV/JSON metrics and
figures.

Here the "own model" is a small convolutional network on scikit-learn's 8×8 digits.

Run::

    python examples/own_model_experiments.py --out runs/my-cnn   # SGD and Adam, minutes
    python examples/own_model_experiments.py --quick             # SGD only, a short run (docs)

Threads: a small CNN, so one torch thread (see :doc:`/guide/troubleshooting`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from subspace_optim.experiments import half_sum_mse, load_digits, run
from subspace_optim.experiments.report import format_table, write_report

# %%
# The model
# ---------


class SmallCNN(nn.Module):
    """Two 3×3 convolutions with pooling and a linear head, for 1×8×8 images."""

    def __init__(self, channels: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
        )
        self.head = nn.Linear(channels * 2 * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)).flatten(1))


# %%
# The experiment
# --------------
#
# :func:`~subspace_optim.experiments.run` trains to the switch, then runs base, Dom and Bulk
# from the same point; the report goes to a temporary folder unless ``--out`` names one.


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="Dom/Bulk experiment on your own model.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="run folder to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small CNN: one thread is fastest
    if args.quick:
        n, settings = 64, {"optimizers": "sgd", "steps": 10, "switch": 6, "k": 10}
    else:
        n, settings = 1000, {"optimizers": "sgd,adam", "steps": 300, "switch": 0.95, "k": 10}

    X, Y, _ = load_digits(n)
    torch.manual_seed(0)  # this script's own model initialization (the library never seeds)
    model = SmallCNN()
    result = run(
        model,
        half_sum_mse,
        (X, Y),
        batch_size=32,
        setup="digits-small-cnn",
        progress=not args.quick,
        **settings,
    )
    print(format_table(result))

    with tempfile.TemporaryDirectory() as tmp:
        out = write_report(result, args.out or Path(tmp) / "run", figures=not args.quick)
        files = sorted(p.name for p in out.iterdir())
        print(f"wrote {out}: {', '.join(files)}")

    fam = result.families[0]
    return {
        "family": fam.family,
        "switch_step": fam.switch_step,
        "loss_at_switch": fam.loss_at_switch,
        "final": {name: r.final_loss for name, r in fam.runs.items()},
        "files": files,
    }


# %%
# Run it (the docs run ``--quick``)
# ---------------------------------

if __name__ == "__main__":
    main()
