"""The memory model of a block product: estimated peak bytes against block width (private).

An operator measures ``G``, the bytes autograd saves for one micro-batch's pass (activations
and graph intermediates, parameters and inputs excluded), once at construction. Each
product back end states how its peak grows with the width ``w`` of a block:
``peak(w) = a·G + c·col + w·(b·G + d·col)`` with ``col`` the bytes of one column
(``n`` numbers). ``memory_budget`` then picks the widest sub-block that fits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._utils import check_int

__all__ = ["BlockMemoryEstimate", "MemoryRule", "check_budget", "saved_bytes"]


@dataclass(frozen=True)
class BlockMemoryEstimate:
    """Estimated peak memory of one block product, as a function of its width.

    ``peak(w) = fixed_bytes + w · bytes_per_column`` (see :class:`HessianOperator`'s note on
    ``memory_budget`` for how the two numbers follow from the measurement).

    Attributes:
        method: the product back end the estimate is for (``"autograd"`` or ``"func"``).
        graph_bytes: ``G``, bytes autograd saved for one micro-batch's loss and gradient
            graph, measured once on the first micro-batch.
        fixed_bytes: the part of the peak that does not grow with the width.
        bytes_per_column: what each further column adds.

    Example:
        >>> from subspace_optim.operators.hessian import BlockMemoryEstimate
        >>> est = BlockMemoryEstimate("autograd", 100, 600, 80)
        >>> est.peak(2), est.max_width(1000), est.max_width(500)
        (760, 5, 0)
    """

    method: str
    graph_bytes: int
    fixed_bytes: int
    bytes_per_column: int

    def peak(self, width: int) -> int:
        """Estimated peak bytes of a sub-block of ``width`` columns.

        Args:
            width: the number of columns of the sub-block.

        Returns:
            ``fixed_bytes + width · bytes_per_column``, in bytes.
        """
        return self.fixed_bytes + width * self.bytes_per_column

    def max_width(self, budget: int) -> int:
        """The widest sub-block whose estimated peak fits in ``budget`` bytes (may be 0).

        Args:
            budget: the memory allowed for one product, in bytes.

        Returns:
            The number of columns, ``0`` when not even one fits.
        """
        return max(0, (budget - self.fixed_bytes) // self.bytes_per_column)

    def describe(self) -> str:
        """One line: the two numbers and ``G``, for error messages.

        Returns:
            The line, with the method and the byte counts.
        """
        return (
            f"method {self.method!r}: {self.fixed_bytes:,} bytes fixed + "
            f"{self.bytes_per_column:,} per column; gradient graph of one micro-batch "
            f"{self.graph_bytes:,} bytes"
        )


@dataclass(frozen=True)
class MemoryRule:
    """How a back end's peak grows: ``a·G + c·col`` fixed, ``b·G + d·col`` per column."""

    graph_fixed: int
    col_fixed: int
    graph_per_column: int
    col_per_column: int

    def estimate(self, method: str, graph: int, col: int) -> BlockMemoryEstimate:
        """The estimate for a measured ``G = graph`` and column bytes ``col``."""
        return BlockMemoryEstimate(
            method,
            graph,
            self.graph_fixed * graph + self.col_fixed * col,
            self.graph_per_column * graph + self.col_per_column * col,
        )


def saved_bytes(fn: Callable[[], Any], exclude: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs.

    Storages of the tensors in ``exclude`` (parameters, inputs) are not counted.
    """
    seen = {t.untyped_storage().data_ptr() for t in exclude if isinstance(t, Tensor)}
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        if t.layout == torch.strided and not t.is_nested:
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
                return t
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def check_budget(memory_budget: int | None) -> int | None:
    """Validate ``memory_budget`` (bytes, positive, or ``None`` for no limit)."""
    if memory_budget is not None:
        check_int("memory_budget", memory_budget)
        if memory_budget <= 0:
            raise ValueError(
                f"memory_budget is in bytes and must be positive (e.g. 2**30 for 1 GiB); "
                f"got {memory_budget}. Omit it for no limit"
            )
    return memory_budget


def budget_message(memory_budget: int, estimate: BlockMemoryEstimate) -> str:
    """The error for a budget too small for one column: what it was and what to change."""
    return (
        f"memory_budget={memory_budget:,} bytes is too small for one column: the "
        f"estimated peak of a 1-column product is {estimate.peak(1):,} bytes "
        f"({estimate.describe()}). Raise memory_budget, lower chunk_size (the gradient "
        "graph shrinks with the micro-batch) or omit memory_budget"
    )
