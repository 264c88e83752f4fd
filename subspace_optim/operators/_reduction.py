"""How a curvature operator turns its local sums into products: the reduction (private).

A curvature operator over a model evaluates, over the data it holds, the *unnormalized*
sum ``Σ_chunks count · A_chunk V`` and its example count. Its reduction decides what
happens around that local work, at the four points where one process and a data-parallel
group differ:

* **construction**: :meth:`Reduction.construct` runs the operator's local set-up (and, for
  a group, makes every rank raise when one fails); :meth:`Reduction.join` then settles
  the block width that ``memory_budget`` allows (refusing a budget too small for one
  column) and :meth:`Reduction.self_check` runs the construction self-check;
* **products and gradients**: :meth:`Reduction.sum` turns the local sum and count into
  the sum and count over all the data (here: unchanged; for a group: one all-reduce);
* **agreement**: :meth:`Reduction.agree_tensors` gives every process the same tensors.

:class:`OneProcess` is the reduction of an operator that holds all of its data;
``_data_parallel.AllReduce`` is the one of a data-parallel operator
(:class:`~subspace_optim.DataParallel` in its settings). The operator holds one and never
asks which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor, nn

from ._data import RAN_DRY
from ._memory import BlockMemoryEstimate, budget_message
from ._selfcheck import Checkable, self_check

__all__ = ["Joining", "OneProcess", "Reduction"]


class Joining(Checkable, Protocol):
    """What a reduction reads of an operator that joins it (``ModelOperator`` has it)."""

    memory_estimate: BlockMemoryEstimate | None
    memory_budget: int | None


class Reduction(Protocol):
    """The part of an operator's construction and products that depends on where its data
    lives (see the module note)."""

    #: whether this process's data may hold no example (another rank has data)
    allows_empty_shard: bool

    def construct(self, build: Callable[[nn.Module], None], model: nn.Module) -> None:
        """Run the operator's local set-up ``build(model)``."""
        ...

    def join(self, op: Joining) -> int | None:
        """The block width ``op.memory_budget`` allows (``None``: no budget).

        Raises:
            ValueError: the budget is too small for one column.
        """
        ...

    def self_check(self, op: Checkable) -> None:
        """The construction self-check of ``op`` (``_selfcheck``)."""
        ...

    def sum(
        self, local: Callable[[], tuple[Tensor, int]], size: int, V: Tensor | None
    ) -> tuple[Tensor, int]:
        """The sum over all the data of ``local()``'s sum (``size`` numbers), and its count.

        ``V`` is the input block of a product (``None`` for a gradient).
        """
        ...

    def agree_tensors(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The tensors every process holds: rank 0's (``tensors`` for one process)."""
        ...

    def describe(self) -> str:
        """What the operator's ``repr`` adds (``""`` for one process)."""
        ...


class OneProcess:
    """The reduction of an operator that holds all of its data: nothing to reduce.

    Example:
        >>> import torch
        >>> from subspace_optim.operators._reduction import OneProcess
        >>> total, count = OneProcess().sum(lambda: (torch.ones(3), 4), 3, None)
        >>> total.tolist(), count
        ([1.0, 1.0, 1.0], 4)
    """

    allows_empty_shard = False
    #: the checks of the module note of ``_selfcheck``, on this process's data
    self_check = staticmethod(self_check)

    def construct(self, build: Callable[[nn.Module], None], model: nn.Module) -> None:
        build(model)

    def join(self, op: Joining) -> int | None:
        if op.memory_estimate is None or op.memory_budget is None:
            return None
        width = op.memory_estimate.max_width(op.memory_budget)
        if width < 1:
            raise ValueError(budget_message(op.memory_budget, op.memory_estimate))
        return width

    def sum(
        self, local: Callable[[], tuple[Tensor, int]], size: int, V: Tensor | None
    ) -> tuple[Tensor, int]:
        total, count = local()
        if count == 0:
            raise ValueError(RAN_DRY)
        return total, count

    def agree_tensors(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tensors

    def describe(self) -> str:
        return ""
