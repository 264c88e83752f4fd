"""The tiny problem every scenario trains, the training loop and in-memory checkpoints."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from subspace_optim.testing.checks import all_finite


def mse(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error written out (works with every HVP back end)."""
    return ((out - y) ** 2).mean()


def tiny_problem(
    seed: int = 0, *, dtype: torch.dtype = torch.float64, hidden: int = 6, examples: int = 32
) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], tuple[Tensor, Tensor]]:
    """``(model, loss_fn, (X, Y))``: an MLP 4-hidden-3 with tanh and a regression target,
    all drawn from a private generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    X = torch.randn(examples, 4, generator=g, dtype=dtype)
    Y = torch.randn(examples, 3, generator=g, dtype=dtype)
    return model, mse, (X, Y)


def train(
    opt: Optimizer,
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: tuple[Tensor, Tensor],
    steps: range | int,
    *,
    batch: int = 8,
    seed: int = 0,
    before_step: Callable[[int], None] | None = None,
    check_finite: bool = True,
    closure: bool = False,
) -> None:
    """Minibatch training; the batch of step ``t`` depends only on ``(seed, t)``, so a run
    resumed at any step sees the same batches as the uninterrupted one. ``closure=True``
    also passes the batch as ``step(closure)``, as SAM needs (after a first backward pass
    at the current parameters, as in the usual SAM loop).

    Raises:
        AssertionError: if ``check_finite`` and a parameter became non-finite.
    """
    X, Y = data
    for t in range(steps) if isinstance(steps, int) else steps:
        g = torch.Generator().manual_seed(seed * 100_003 + t)
        idx = torch.randint(0, X.shape[0], (min(batch, X.shape[0]),), generator=g)

        def evaluate(idx: Tensor = idx) -> Tensor:
            opt.zero_grad()
            loss = loss_fn(model(X[idx]), Y[idx])
            loss.backward()
            return loss

        evaluate()  # SAM-style loops backpropagate at θ_t before step(closure) too
        if before_step is not None:
            before_step(t)
        opt.step(evaluate if closure else None)
        if check_finite and not all_finite(model.parameters()):
            raise AssertionError(f"a parameter became non-finite at step {t}")


def full_loss(model: nn.Module, loss_fn: Callable, data: tuple[Tensor, Tensor]) -> float:
    """Mean loss of ``model`` over all of ``data``, as a float (no graph)."""
    with torch.no_grad():
        return float(loss_fn(model(data[0]), data[1]))


def checkpoint_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory (what a checkpoint file would hold)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_bytes(blob: bytes) -> Any:
    """``torch.load(..., weights_only=True)`` from :func:`checkpoint_bytes`."""
    return torch.load(io.BytesIO(blob), weights_only=True)


def half_mse(out: Tensor, y: Tensor) -> Tensor:
    """Half the squared error summed over outputs, averaged over examples."""
    return 0.5 * ((out - y) ** 2).sum(dim=1).mean()


def digits_problem(
    seed: int = 0, *, examples: int = 1000
) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], tuple[Tensor, Tensor]]:
    """``(model, half_mse, (X, Y))``: the digits MLP of ``subspace-optim reproduce`` and the
    reliability report, 64-64-64-10 with tanh (8,970 parameters, float32), on the first
    ``examples`` scikit-learn digits, standardized, one-hot targets. The initialization is
    drawn under a forked RNG seeded with ``seed`` (the global RNG is left as it was)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    Xt = torch.tensor(X[:examples], dtype=torch.float32)
    Xt = (Xt - Xt.mean(0)) / Xt.std(0).clamp_min(1e-6)
    Yt = nn.functional.one_hot(torch.tensor(y[:examples]), 10).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)
        )
    return model, half_mse, (Xt, Yt)
