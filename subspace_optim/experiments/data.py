"""Data sets of the paper's experiments, as tensors ready for full-batch Hessians."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["DataUnavailableError", "load_cifar10", "load_digits", "load_mnist", "standardize"]


class DataUnavailableError(RuntimeError):
    """A data set is not installed or downloaded; the message says how to get it.

    Example:
        Building the CIFAR-10 setup from an empty folder, without ``download=True``; the
        message names the data set whether torchvision is missing or the files are:

        >>> import tempfile
        >>> from subspace_optim.experiments import DataUnavailableError, load_setup
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     try:
        ...         load_setup("cifar10-5k-cnn", data_dir=empty)
        ...     except DataUnavailableError as err:
        ...         print(str(err).split()[0], "--download" in str(err))
        CIFAR10 True
        >>> issubclass(DataUnavailableError, RuntimeError)
        True
    """


def standardize(X: Tensor) -> Tensor:
    """Centre and scale each feature (column) over the rows; constant features stay 0.

    Args:
        X: ``(n, d)``, examples as rows.

    Returns:
        ``(n, d)`` float32, each column with mean 0 and standard deviation 1 (or all 0).

    Example:
        >>> import torch
        >>> from subspace_optim.experiments.data import standardize
        >>> standardize(torch.tensor([[1.0, 5.0], [3.0, 5.0]])).tolist()
        [[-0.7071067690849304, 0.0], [0.7071067690849304, 0.0]]
    """
    X = X.to(torch.float64)
    mean, std = X.mean(0), X.std(0)
    scaled = (X - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, scaled, torch.zeros_like(scaled)).to(torch.float32)


def load_digits(
    n: int = 1000,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor, Tensor]:
    """scikit-learn's handwritten digits (ships with scikit-learn: no download).

    The first ``n`` examples (of 1797), features standardized per pixel over those ``n``
    examples (constant pixels stay 0), one-hot targets for the MSE loss.

    Args:
        n: how many examples, in ``[1, 1797]``.
        dtype: the dtype of ``X`` and ``Y``.
        device: where the tensors go.

    Returns:
        ``(X, Y, labels)`` with shapes ``(n, 64)``, ``(n, 10)`` and ``(n,)``.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: ``n`` is outside ``[1, 1797]``.

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


def _torchvision(name: str, data_dir: str | Path, download: bool) -> Any:
    flag = "--download" if download is False else ""
    try:
        import torchvision
    except ImportError:
        raise DataUnavailableError(
            f"{name} loads through torchvision, which is not installed. Install the build that "
            f"matches your torch (pip install torchvision; see pytorch.org), then rerun with "
            f"--download to fetch {name} into --data-dir ({data_dir}), or use the offline "
            "default setup (digits)."
        ) from None
    cls = getattr(torchvision.datasets, name)
    root = Path(data_dir).expanduser()
    try:
        return cls(root=str(root), train=True, download=download)
    except (RuntimeError, OSError) as exc:
        raise DataUnavailableError(
            f"{name} was not found under {str(root)!r} ({exc}). Rerun with {flag or '--download'} "
            "to fetch it (about 50-170 MB), or point --data-dir at the folder that holds it "
            f"(torchvision's layout: {name}/raw or cifar-10-batches-py)."
        ) from None


def _check_size(name: str, ds: Any, n: int) -> None:
    if len(ds.data) < n:
        raise DataUnavailableError(
            f"the {name} copy found holds only {len(ds.data)} training images; {n} are needed. "
            "Point --data-dir at a complete copy or rerun with --download"
        )


def _one_hot(labels: Tensor, device: str | torch.device, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(labels, 10).to(dtype=dtype, device=device)


def load_mnist(
    n: int = 5000,
    *,
    data_dir: str | Path = "data",
    download: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor, Tensor]:
    """MNIST's first ``n`` training images, flattened to 784 features scaled to ``[0, 1]``
    (pixel / 255, no centring: as in the public code that accompanies the paper); one-hot
    targets.

    Needs torchvision and the data under ``data_dir`` (or ``download=True``); raises
    :class:`DataUnavailableError` with instructions otherwise.

    Args:
        n: how many images, in ``[1, 60000]``.
        data_dir: the folder that holds (or receives) torchvision's copy.
        download: fetch the data set into ``data_dir`` if it is not there.
        dtype: the dtype of ``X`` and ``Y``.
        device: where the tensors go.

    Returns:
        ``(X, Y, labels)`` with shapes ``(n, 784)``, ``(n, 10)`` and ``(n,)``.

    Raises:
        ValueError: ``n`` is outside ``[1, 60000]``.
        DataUnavailableError: torchvision is not installed, the data is not under
            ``data_dir``, or the copy found holds fewer than ``n`` images.

    Example:
        With the data in place, ``load_mnist(5000, data_dir="data")`` returns the tensors
        above. From an empty folder (and no ``download=True``) it says what to do, whether
        or not torchvision is installed:

        >>> import tempfile
        >>> from subspace_optim.experiments import DataUnavailableError, load_mnist
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     try:
        ...         load_mnist(100, data_dir=empty)
        ...     except DataUnavailableError as err:
        ...         print(str(err).split()[0], "--download" in str(err))
        MNIST True
    """
    if not 1 <= n <= 60000:
        raise ValueError(f"MNIST has 60,000 training images; n must be in [1, 60000], got {n}")
    ds = _torchvision("MNIST", data_dir, download)
    _check_size("MNIST", ds, n)
    images = torch.as_tensor(ds.data[:n]).reshape(n, -1).to(torch.float64) / 255.0
    labels = torch.as_tensor(ds.targets[:n]).long()
    X = images.to(dtype=dtype, device=device)
    return X, _one_hot(labels, device, dtype), labels.to(device)


def load_cifar10(
    n: int = 5000,
    *,
    data_dir: str | Path = "data",
    download: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor, Tensor]:
    """CIFAR-10's first ``n`` training images as ``(n, 3, 32, 32)``: pixel / 255, then each of
    the 3,072 features centred and divided by its standard deviation, both taken over all
    50,000 training images (population std), as in the public code that accompanies the
    paper; one-hot targets.

    Needs torchvision and the data under ``data_dir`` (or ``download=True``); raises
    :class:`DataUnavailableError` with instructions otherwise.

    Args:
        n: how many images, in ``[1, 50000]``.
        data_dir: the folder that holds (or receives) torchvision's copy.
        download: fetch the data set into ``data_dir`` if it is not there.
        dtype: the dtype of ``X`` and ``Y``.
        device: where the tensors go.

    Returns:
        ``(X, Y, labels)`` with shapes ``(n, 3, 32, 32)``, ``(n, 10)`` and ``(n,)``.

    Raises:
        ValueError: ``n`` is outside ``[1, 50000]``, or the copy found is not an array of
            ``(N, 32, 32, 3)`` images.
        DataUnavailableError: torchvision is not installed, the data is not under
            ``data_dir``, or the copy found holds fewer than ``n`` images.

    Example:
        ``n`` is checked before anything is read; from an empty folder (and no
        ``download=True``) the error says what to do, whether or not torchvision is
        installed:

        >>> import tempfile
        >>> from subspace_optim.experiments import DataUnavailableError, load_cifar10
        >>> load_cifar10(60000)
        Traceback (most recent call last):
        ...
        ValueError: CIFAR-10 has 50,000 training images; n must be in [1, 50000], got 60000
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     try:
        ...         load_cifar10(100, data_dir=empty)
        ...     except DataUnavailableError as err:
        ...         print(str(err).split()[0], "--download" in str(err))
        CIFAR10 True
    """
    if not 1 <= n <= 50000:
        raise ValueError(f"CIFAR-10 has 50,000 training images; n must be in [1, 50000], got {n}")
    ds = _torchvision("CIFAR10", data_dir, download)
    _check_size("CIFAR10", ds, n)
    everything = torch.as_tensor(ds.data)  # (50000, 32, 32, 3) uint8
    if everything.ndim != 4 or everything.shape[-1] != 3:
        raise ValueError(f"unexpected CIFAR-10 array of shape {tuple(everything.shape)}")
    flat = everything.permute(0, 3, 1, 2).reshape(everything.shape[0], -1).to(torch.float64)
    flat /= 255.0
    mean, std = flat.mean(0), flat.std(0, correction=0)
    images = (flat[:n] - mean) / std
    labels = torch.as_tensor(list(ds.targets[:n])).long()
    X = images.reshape(n, 3, 32, 32).to(dtype=dtype, device=device)
    return X, _one_hot(labels, device, dtype), labels.to(device)
