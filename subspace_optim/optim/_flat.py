"""The wrapper's parameters as one flat vector: read, written and projected in place.

The projection is global: it acts on the concatenation of every parameter the curvature
covers, in the operator's order. :class:`FlatParams` is the only place that converts
between that ``(n,)`` vector (in the operator's dtype, float32 at least) and the
parameter tensors or their ``.grad``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .._utils import flatten

__all__ = ["FlatParams"]


class FlatParams:
    """Parameters ``params`` seen as one vector of dtype ``dtype``.

    Args:
        params: the parameters, in flat order.
        dtype: the dtype of the flat vectors (the curvature's: half-precision parameters
            are projected in float32).

    Example:
        >>> import torch
        >>> a, b = torch.zeros(2), torch.ones(1, 2)
        >>> flat = FlatParams([a, b], torch.float64)
        >>> flat.values().tolist(), flat.sizes
        ([0.0, 0.0, 1.0, 1.0], [2, 2])
        >>> flat.write(torch.arange(4.0, dtype=torch.float64), add=True)
        >>> b.tolist()
        [[3.0, 4.0]]
    """

    def __init__(self, params: Sequence[Tensor], dtype: torch.dtype) -> None:
        self.params = list(params)
        self.dtype = dtype
        self.sizes = [p.numel() for p in self.params]

    def values(self) -> Tensor:
        """``(n,)`` the current parameter values."""
        return flatten(p.detach() for p in self.params).to(self.dtype)

    def flat(self, tensors: Iterable[Tensor | None]) -> Tensor:
        """``(n,)`` concatenation of per-parameter tensors, zeros for ``None``."""
        return flatten(
            torch.zeros_like(p) if t is None else t for t, p in zip(tensors, self.params)
        ).to(self.dtype)

    def grads(self) -> Tensor:
        """``(n,)`` the gradients in ``.grad`` (zeros where there is none)."""
        return self.flat(p.grad for p in self.params)

    def frozen(self) -> list[bool]:
        """Per parameter: it has no gradient (torch's optimizers leave it untouched)."""
        return [p.grad is None for p in self.params]

    def write(self, vec: Tensor, *, add: bool) -> None:
        """Add ``vec`` (``(n,)``) to the parameters, or copy it over them."""
        offset = 0
        for p, m in zip(self.params, self.sizes):
            piece = vec[offset : offset + m].view_as(p)
            if add:
                p.add_(piece)
            else:
                p.copy_(piece)
            offset += m

    def set_grads(self, vec: Tensor) -> None:
        """Overwrite each existing ``.grad`` with its slice of ``vec`` (``(n,)``)."""
        offset = 0
        for p, m in zip(self.params, self.sizes):
            if p.grad is not None:
                p.grad.copy_(vec[offset : offset + m].view_as(p))
            offset += m

    def check_dense_grads(self) -> None:
        """Refuse sparse gradients (``TypeError``): the projection needs dense ones."""
        for p in self.params:
            if p.grad is not None and p.grad.is_sparse:
                raise TypeError(
                    f"a parameter of shape {tuple(p.shape)} has a sparse gradient: the projection "
                    "needs dense gradients. Build embeddings with sparse=False"
                )
