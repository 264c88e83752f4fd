"""Models and losses of the paper's experiments."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["cnn", "half_sum_mse", "mlp"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def mlp(
    widths: Sequence[int] = (64, 64, 64, 10),
    *,
    activation: str = "tanh",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """Fully connected network with layer widths ``widths`` (input first, output last).

    ``mlp((64, 64, 64, 10))`` is the digits network of the experiments: 64 inputs, two
    hidden layers of 64 with tanh, 10 outputs, 8,970 parameters. Weights use PyTorch's
    default initialization, drawn from ``generator`` when given (a private stream), so a
    seed reproduces the network without touching the global RNG.

    Example:
        >>> from subspace_optim.experiments import mlp
        >>> sum(p.numel() for p in mlp().parameters())
        8970
    """
    if len(widths) < 2:
        raise ValueError(f"widths needs at least an input and an output size; got {widths}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {sorted(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, dtype=dtype))
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[activation]())
    model = nn.Sequential(*layers)
    if generator is not None:
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / layer.in_features**0.5
                    layer.weight.copy_(
                        (
                            torch.rand(layer.weight.shape, generator=generator, dtype=torch.float64)
                            * 2
                            - 1
                        )
                        * bound
                    )
                    layer.bias.copy_(
                        (
                            torch.rand(layer.bias.shape, generator=generator, dtype=torch.float64)
                            * 2
                            - 1
                        )
                        * bound
                    )
    return model


def half_sum_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """``0.5 · Σ_j (f_j − y_j)²`` averaged over examples: the paper's MSE loss.

    Example:
        >>> import torch
        >>> from subspace_optim.experiments import half_sum_mse
        >>> float(half_sum_mse(torch.ones(2, 3), torch.zeros(2, 3)))
        1.5
    """
    return 0.5 * (outputs - targets).pow(2).sum(dim=-1).mean()


def cnn(
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    *,
    channels: int = 32,
    activation: str = "tanh",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """The CIFAR-10 network of the experiments: two 3×3 convolutions of ``channels`` channels
    (padding 1), each followed by the activation and 2×2 max pooling, then a linear head.

    For 3×32×32 inputs and 32 channels: 9,248 + 896 convolution weights and a 2,048 → 10
    head, 30,634 parameters. With ``generator`` the weights are drawn like PyTorch's default
    initialization (uniform ±1/√fan_in) from that private stream.

    Example:
        >>> from subspace_optim.experiments.models import cnn
        >>> sum(p.numel() for p in cnn().parameters())
        30634
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {sorted(_ACTIVATIONS)}")
    if image_size % 4:
        raise ValueError(f"image_size must be divisible by 4 (two 2×2 poolings); got {image_size}")
    act = _ACTIVATIONS[activation]
    model = nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, dtype=dtype),
        act(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, 3, padding=1, dtype=dtype),
        act(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * (image_size // 4) ** 2, num_classes, dtype=dtype),
    )
    if generator is not None:
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    fan_in = layer.weight[0].numel()
                    bound = 1.0 / fan_in**0.5
                    for p in (layer.weight, layer.bias):
                        u = torch.rand(p.shape, generator=generator, dtype=torch.float64)
                        p.copy_((u * 2 - 1) * bound)
    return model
