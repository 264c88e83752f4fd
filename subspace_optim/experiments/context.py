"""The shared state of one reproduction run: checked data, the device, the minibatch order,
and the factories every family's runs use (Hessian operator, solver copies, generators).
"""

from __future__ import annotations

import copy
import os
import platform
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..operators.hessian import HessianOperator
from .config import RunConfig

__all__ = ["RunContext", "check_data", "machine_info", "resolve_device"]


def check_data(train_data: Any) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` after checking the pair before any work.

    Args:
        train_data: the whole training set as an ``(inputs, targets)`` pair of tensors.

    Returns:
        The two tensors, unchanged.

    Raises:
        TypeError: not a pair of tensors.
        ValueError: mismatched first dimensions, no examples, or non-finite float inputs.

    Example:
        >>> import torch
        >>> from subspace_optim.experiments.context import check_data
        >>> X, Y = check_data((torch.zeros(4, 3), torch.zeros(4, 2)))
        >>> check_data((torch.zeros(4, 3), torch.zeros(5, 2)))
        Traceback (most recent call last):
        ...
        ValueError: inputs and targets must share their first (example) dimension; got shapes (4, 3) and (5, 2)
    """
    if not (
        isinstance(train_data, (tuple, list))
        and len(train_data) == 2
        and all(isinstance(t, Tensor) for t in train_data)
    ):
        raise TypeError(
            "train_data must be an (inputs, targets) pair of tensors holding the whole training "
            f"set (e.g. the first 1000 examples); got {type(train_data).__name__}"
        )
    X, Y = train_data
    if X.ndim == 0 or Y.ndim == 0 or X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"inputs and targets must share their first (example) dimension; got shapes "
            f"{tuple(X.shape)} and {tuple(Y.shape)}"
        )
    if X.shape[0] == 0:
        raise ValueError("train_data holds no examples")
    if X.is_floating_point() and not bool(torch.isfinite(X).all()):
        raise ValueError("the inputs contain NaN or inf; clean or standardize the data first")
    return X, Y


def resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """The device to train on: ``device``, or the model's when ``None``.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`, or ``None``.
        model: its first parameter's device is the default (CPU without parameters).

    Returns:
        The :class:`torch.device`.

    Raises:
        ValueError: an unknown device, or CUDA / MPS requested where it is not available.

    Example:
        >>> import torch
        >>> from subspace_optim.experiments.context import resolve_device
        >>> resolve_device(None, torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:0'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but CUDA is not available; use --device cpu"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {device!r} was requested but MPS is not available; use --device cpu"
        )
    return dev


def machine_info(device: torch.device) -> dict[str, Any]:
    """Platform, Python, torch, CPU count, threads and device, for reports.

    Args:
        device: the device the run uses (a CUDA device adds its name).

    Returns:
        A JSON-ready dict of those values.
    """
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class RunContext:
    """Shared, read-only state of one call to :func:`~subspace_optim.experiments.run`: the
    data on its device, the settings, the minibatch order (``batches``: ``(steps, batch)``
    indices drawn from a private generator) and factories for operators and generators.

    Args:
        model: the network at initialization (never modified).
        loss_fn: ``loss_fn(outputs, targets)``, the mean loss of a batch.
        X, Y: the whole training set, on ``device``.
        config: the run's settings.
        device: where the runs train.
        progress: show progress bars.
        log: receives one-line messages.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor],
        X: Tensor,
        Y: Tensor,
        config: RunConfig,
        device: torch.device,
        progress: bool,
        log: Callable[[str], None],
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.X, self.Y = X, Y
        self.config = config
        self.device = device
        self.progress = progress
        self.log = log
        n = X.shape[0]
        # one shared minibatch sequence: epochs of random permutations, private generator
        g = torch.Generator().manual_seed(config.seed + 1)
        bs = min(config.batch_size, n)
        per_epoch = n // bs
        epochs = -(-config.steps // per_epoch)
        order = torch.cat([torch.randperm(n, generator=g)[: per_epoch * bs] for _ in range(epochs)])
        self.batches = order[: config.steps * bs].view(config.steps, bs).to(device)

    def solver_kwargs(self) -> dict[str, Any]:
        """The wrapper's eigensolver argument for one run.

        Returns:
            ``{}`` (the wrapper's default solver), or ``{"eigensolver": copy}`` with a deep
            copy of the configured solver, since some (WarmRefresh) keep per-run state.
        """
        """Returns: ``{"eigensolver": <a fresh copy of the configured solver>}`` or ``{}``."""
        # a fresh solver per optimizer: some (WarmRefresh) keep per-run state between calls
        solver = self.config.solver
        return {} if solver is None else {"eigensolver": copy.deepcopy(solver)}

    def generator(self) -> torch.Generator:
        """A fresh generator for a run's eigensolver start vectors.

        Returns:
            A generator on the run's device seeded with ``config.seed + 2``, the same
            stream for every run.
        """
        """Returns: a new generator on the device, seeded ``seed + 2`` (solver start vectors)."""
        return torch.Generator(device=self.device).manual_seed(self.config.seed + 2)

    def operator(self, model: nn.Module) -> HessianOperator:
        """The full-batch Hessian of ``model`` on the training data.

        Args:
            model: the run's model.

        Returns:
            A :class:`~subspace_optim.HessianOperator` over ``(X, Y)`` with the configured
            ``chunk_size``.
        """
        """Returns: the full training-set Hessian of ``model`` (micro-batches of ``chunk_size``)."""
        return HessianOperator(
            model, self.loss_fn, (self.X, self.Y), chunk_size=self.config.chunk_size
        )

    @torch.no_grad()
    def full_loss(self, model: nn.Module) -> float:
        """The mean training loss of ``model`` over all of ``(X, Y)``, without gradients.

        Args:
            model: the run's model; its buffers (BatchNorm statistics) are restored after
                the evaluation.

        Returns:
            The loss averaged over examples, as a float.
        """
        """Returns: the training loss of ``model`` over the whole set (buffers restored)."""
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        chunk = self.config.chunk_size or self.X.shape[0]
        total, count = 0.0, 0
        for xs, ys in zip(torch.split(self.X, chunk), torch.split(self.Y, chunk)):
            total += float(self.loss_fn(model(xs), ys)) * xs.shape[0]
            count += xs.shape[0]
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        return total / count
