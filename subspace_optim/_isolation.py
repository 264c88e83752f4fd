"""Run library work without changing the caller's global torch settings.

A refresh (products, an eigensolve, projections) may be called from anywhere in a training
loop: inside an autocast region, under ``torch.no_grad()``, with deterministic algorithms
switched on, between two draws of the global random generator. :func:`isolated` runs it in
full precision with autocast off and hands every one of those settings back unchanged, so
the training run it sits in is the one the user would have had without the library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["isolated"]


def _autocast_types(device: torch.device) -> tuple[str, ...]:
    """Device types whose autocast state a pass on ``device`` could pick up."""
    return ("cpu",) if device.type == "cpu" else ("cpu", device.type)


@contextlib.contextmanager
def isolated(device: torch.device | str = "cpu") -> Iterator[None]:
    """A region whose work leaves the caller's global torch state as it found it.

    Inside: autocast is disabled for the CPU and for ``device``'s type, so products, dense
    algebra and projections run in their tensors' own dtype. On exit, normal or by an
    exception, these are restored to their values at entry: the global CPU random state
    (and the CUDA one of ``device``, when it is a CUDA device), grad mode, and the
    deterministic-algorithms flags.

    Args:
        device: the device the work runs on.

    Example:
        >>> import torch
        >>> from subspace_optim._isolation import isolated
        >>> state = torch.get_rng_state()
        >>> with torch.autocast("cpu", dtype=torch.bfloat16), isolated("cpu"):
        ...     x = torch.randn(3, 3)  # draws from the global generator ...
        ...     y = x @ x
        >>> y.dtype, torch.equal(torch.get_rng_state(), state)  # ... which is handed back
        (torch.float32, True)
    """
    device = torch.device(device)
    cpu_state = torch.get_rng_state()
    cuda_state = None
    if device.type == "cuda" and torch.cuda.is_initialized():
        cuda_state = torch.cuda.get_rng_state(device)
    grad = torch.is_grad_enabled()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with contextlib.ExitStack() as stack:
            for device_type in _autocast_types(device):
                stack.enter_context(torch.autocast(device_type, enabled=False))
            yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
        torch.set_grad_enabled(grad)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
