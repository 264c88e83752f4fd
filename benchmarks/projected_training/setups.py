"""The training problems of the projected-training study (digits MLP and a small digits CNN,
the paper's loss and SGD protocol) and the small helpers on their parameters."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from subspace_optim._utils import unflatten
from subspace_optim.experiments import half_sum_mse, load_digits, mlp


def digits_cnn(*, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Two tanh conv layers (8 and 16 channels, 3×3) with average pooling on 1×8×8 digits.

    Input: the flat ``(N, 64)`` digits features; output ``(N, 10)``. 1,898 parameters,
    initialised like PyTorch's default (uniform ±1/√fan_in) from ``generator``.
    """
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).to(dtype)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                for p in (layer.weight, layer.bias):
                    u = torch.rand(p.shape, generator=generator, dtype=torch.float64)
                    p.copy_((2 * u - 1) / math.sqrt(fan_in))
    return model


@dataclass
class Setup:
    """One training problem: model, loss, full training set and the SGD protocol."""

    name: str
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    X: Tensor
    Y: Tensor
    lr: float = 0.1
    batch: int = 50
    k: int = 10


def make_setup(
    name: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    examples: int = 1000,
) -> Setup:
    """``"mlp"`` (the digits MLP, 8,970 parameters) or ``"cnn"`` (:func:`digits_cnn`)."""
    X, Y, _ = load_digits(examples, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        model = mlp(generator=g, dtype=dtype)
    elif name == "cnn":
        model = digits_cnn(generator=g, dtype=dtype)
    else:
        raise ValueError(f"unknown setup {name!r}; valid: 'mlp', 'cnn'")
    return Setup(name, model.to(device), half_sum_mse, X, Y)


def batch_schedule(n: int, batch: int, steps: int, seed: int = 0) -> list[Tensor]:
    """Index sets of ``steps`` mini-batches: reshuffled epochs, drawn from a private generator
    (a batch larger than the data is the whole data)."""
    if n < 1 or batch < 1 or steps < 0:
        raise ValueError(f"need n >= 1, batch >= 1 and steps >= 0; got {n}, {batch}, {steps}")
    batch = min(batch, n)
    g = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g)
        out += [perm[i : i + batch] for i in range(0, n - batch + 1, batch)]
    return out[:steps]


def params_of(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def write_flat(params: list[Tensor], vec: Tensor) -> None:
    with torch.no_grad():
        for p, piece in zip(params, unflatten(vec, params)):
            p.copy_(piece)


@torch.no_grad()
def full_loss(s: Setup) -> float:
    return float(s.loss_fn(s.model(s.X), s.Y))


def sgd_steps(s: Setup, batches: list[Tensor]) -> None:
    """Plain SGD (the setup's lr) on ``batches`` in place: the run to the switch step."""
    base = torch.optim.SGD(params_of(s.model), lr=s.lr)
    for idx in batches:
        base.zero_grad()
        s.loss_fn(s.model(s.X[idx]), s.Y[idx]).backward()
        base.step()
