"""Run library work without changing the caller's global torch settings.

A refresh (products, an eigensolve, projections) may be called from anywhere in a training
loop: inside an autocast region, under ``torch.no_grad()``, with deterministic algorithms
switched on, between two draws of the global random generator. :func:`isolated` runs it in
full precision with autocast off and hands every one of those settings back unchanged, so
the training run it sits in is the one the user would have had without the library.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor

_F = TypeVar("_F", bound=Callable[..., Any])


def full_precision(fn: _F) -> _F:
    """Decorate a function of tensors to run with autocast disabled on its tensors' device.

    The device is that of the first tensor argument (CPU when there is none), so a pure
    function called inside a mixed-precision region computes in its inputs' own dtype.

    Example:
        >>> import torch
        >>> from subspace_optim._isolation import full_precision
        >>> @full_precision
        ... def gram(U):
        ...     return U.T @ U
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     gram(torch.eye(3)).dtype
        torch.float32
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        device_type = "cpu" if first is None else first.device.type
        with torch.autocast(device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = ["forked_rng", "full_precision", "isolated"]


def _autocast_types(device: torch.device) -> tuple[str, ...]:
    """Device types whose autocast state a pass on ``device`` could pick up."""
    return ("cpu",) if device.type == "cpu" else ("cpu", device.type)


def _cuda_index(device: torch.device) -> int | None:
    """The CUDA device whose generator a pass on ``device`` draws from, if initialized."""
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def forked_rng(device: torch.device | str, generator: torch.Generator) -> Iterator[None]:
    """Let code that draws from the global generators draw from ``generator`` instead.

    The global CPU generator (and that of ``device`` when it is an initialized CUDA
    device) is seeded from one draw of ``generator`` on entry and restored on exit, normal
    or by an exception. Randomness the work cannot be handed a generator for (dropout
    masks, a ``DataLoader``'s shuffling and worker seeds) then comes from ``generator``,
    and the caller's global random stream is left exactly where it was.

    Args:
        device: the device the work runs on.
        generator: a CPU ``torch.Generator``; one number is drawn from it per entry.

    Example:
        >>> import torch
        >>> from subspace_optim._isolation import forked_rng
        >>> state, g = torch.get_rng_state(), torch.Generator().manual_seed(0)
        >>> with forked_rng("cpu", g):
        ...     a = torch.rand(2)
        >>> with forked_rng("cpu", torch.Generator().manual_seed(0)):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b), torch.equal(torch.get_rng_state(), state)
        (True, True)
    """
    device = torch.device(device)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    cpu_state = torch.get_rng_state()
    index = _cuda_index(device)
    cuda_state = None if index is None else torch.cuda.get_rng_state(index)
    try:
        torch.default_generator.manual_seed(seed)
        if index is not None:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, index)


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
    index = _cuda_index(device)
    cuda_state = None if index is None else torch.cuda.get_rng_state(index)
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
            torch.cuda.set_rng_state(cuda_state, index)
        torch.set_grad_enabled(grad)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
