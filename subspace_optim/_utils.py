"""Small private helpers: flat parameter vectors, validation messages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector (a copy)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector (or the rows of an ``(n, b)`` block) into views shaped like ``like``.

    A vector ``(n,)`` gives tensors of each shape; a block ``(n, b)`` gives ``(b, *shape)``.
    """
    out = []
    offset = 0
    for t in like:
        m = t.numel()
        piece = vec[offset : offset + m]
        if vec.ndim == 1:
            out.append(piece.view_as(t))
        else:
            out.append(piece.T.reshape(vec.shape[1], *t.shape))
        offset += m
    if offset != vec.shape[0]:
        raise ValueError(
            f"vector of length {vec.shape[0]} does not match parameters of total size {offset}"
        )
    return out


def block_to_columns(parts: Sequence[Tensor], b: int) -> Tensor:
    """Inverse of :func:`unflatten` on a block: ``(b, *shape)`` pieces to an ``(n, b)`` block."""
    return torch.cat([p.reshape(b, -1) for p in parts], dim=1).T


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value}")
    return value


def check_positive_float(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not value == value or value in (float("inf"), float("-inf")):  # NaN / inf
        raise ValueError(f"{name} must be finite; got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value}")
    return value


def choice(name: str, value: object, valid: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(
            f"unknown {name} {value!r}; valid choices are {', '.join(map(repr, valid))}"
        )
    return value


def all_finite(x: Tensor) -> bool:
    """Every entry of ``x`` is finite (exactly ``bool(torch.isfinite(x).all())``).

    A finite sum proves it (a NaN or an infinity makes the sum NaN or infinite) in one fast
    reduction; only a non-finite sum, which an overflow can also produce, is confirmed
    entry by entry.

    Example:
        >>> import torch
        >>> all_finite(torch.tensor([1.0, 2.0])), all_finite(torch.tensor([1.0, float("nan")]))
        (True, False)
        >>> all_finite(torch.tensor([3e38, 3e38]))  # the sum overflows; the entries are finite
        True
    """
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())
