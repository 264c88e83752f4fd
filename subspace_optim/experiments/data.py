"""Data sets of the paper's experiments, as tensors ready for full-batch Hessians."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["load_digits"]


def load_digits(
    n: int = 1000,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor, Tensor]:
    """scikit-learn's handwritten digits (ships with scikit-learn: no download).

    The first ``n`` examples (of 1797), features standardized per pixel over those ``n``
    examples (constant pixels stay 0), one-hot targets for the MSE loss.

    Returns:
        ``(X, Y, labels)`` with shapes ``(n, 64)``, ``(n, 10)`` and ``(n,)``.

    Example:
        >>> from subspace_optim.experiments import load_digits
        >>> X, Y, labels = load_digits(100)
        >>> tuple(X.shape), tuple(Y.shape), int(Y.sum())
        ((100, 64), (100, 10), 100)
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits data set ships with scikit-learn: pip install scikit-learn "
            "(or pip install 'subspace-optim[examples]')"
        ) from exc
    if not 1 <= n <= 1797:
        raise ValueError(f"digits has 1797 examples; n must be in [1, 1797], got {n}")
    data, target = _load(return_X_y=True)
    X = torch.tensor(data[:n], dtype=torch.float64)
    mean, std = X.mean(0), X.std(0)
    X = (X - mean) / torch.where(std > 0, std, torch.ones_like(std))
    labels = torch.tensor(target[:n], dtype=torch.long)
    Y = torch.nn.functional.one_hot(labels, 10).to(torch.float64)
    return X.to(dtype=dtype, device=device), Y.to(dtype=dtype, device=device), labels.to(device)
