"""Hessian-vector product back ends over one micro-batch (private).

* ``"autograd"``: double backward. One forward pass and one gradient graph
  (``create_graph=True``) per micro-batch, shared by every column of a block; each column
  is one more backward pass through the gradient graph. The graph can be cached between
  products at one point (:class:`ChunkGraph`).
* ``"func"``: forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad``,
  ``vmap``-ed over the columns of a block.

Both return the Hessian of the micro-batch's *mean* loss applied to a block ``V`` of shape
``(n, b)``; the operator weights micro-batches by their number of examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import block_to_columns, flatten, unflatten
from ._memory import MemoryRule

__all__ = ["PRODUCT_MEMORY_RULES", "ChunkGraph", "build_chunk_graph", "func_hvp", "graph_hvp"]

#: peak memory of a sub-block of ``w`` columns, ``G`` the graph bytes of one micro-batch and
#: ``col`` the bytes of one column: ``"autograd"`` ``5·G + 2·col + w·2·col`` (the graph is
#: shared by the columns; the double backward of one column allocates temporaries of the
#: same sizes; each column keeps its input and result, and one column at a time two more);
#: ``"func"`` ``G + w·(4·G + 3·col)`` (``vmap`` carries the tangents of the forward and
#: backward intermediates for every column). Calibration: ``python -m benchmarks.memory``.
PRODUCT_MEMORY_RULES = {
    "autograd": MemoryRule(graph_fixed=5, col_fixed=2, graph_per_column=0, col_per_column=2),
    "func": MemoryRule(graph_fixed=1, col_fixed=0, graph_per_column=4, col_per_column=3),
}


@dataclass
class ChunkGraph:
    """One micro-batch's loss, gradient graph (``None`` for unused leaves) and example count.

    ``live`` indexes the gradients that depend on the parameters (the ones double backward
    differentiates).
    """

    leaves: list[Tensor]
    loss: Tensor
    grads: tuple[Tensor | None, ...]
    live: list[int]
    count: int


def build_chunk_graph(
    loss_of: Callable[[Sequence[Tensor]], Tensor], leaves: list[Tensor], count: int
) -> ChunkGraph:
    """Loss of one micro-batch at ``leaves`` and its gradient graph, ready for double backward."""
    loss = loss_of(leaves)
    grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    return ChunkGraph(leaves, loss, grads, live, count)


def graph_hvp(graph: ChunkGraph, V: Tensor, params: Sequence[Tensor], *, keep: bool) -> Tensor:
    """``H_chunk V`` by double backward through ``graph``; ``keep=False`` frees it.

    ``params`` gives the shapes of the flat space (one tensor per leaf); returns ``(n, b)``
    with the dtype of ``V`` (a parameter the loss does not reach contributes zeros).
    """
    out = torch.zeros_like(V)
    if not graph.live:
        return out
    b = V.shape[1]
    parts_V = unflatten(V, params)
    for j in range(b):
        hv = torch.autograd.grad(
            [graph.grads[i] for i in graph.live],
            graph.leaves,
            grad_outputs=[parts_V[i][j] for i in graph.live],
            retain_graph=keep or j < b - 1,
            allow_unused=True,
        )
        out[:, j] = flatten(torch.zeros_like(p) if h is None else h for h, p in zip(hv, params))
    return out


def func_hvp(
    loss_of: Callable[[tuple[Tensor, ...]], Tensor],
    primals: tuple[Tensor, ...],
    V: Tensor,
    params: Sequence[Tensor],
) -> Tensor:
    """``H_chunk V`` by ``jvp`` of ``grad`` (torch.func), ``vmap``-ed over the columns.

    Raises:
        RuntimeError: torch.func cannot transform the model or loss; the message names
            ``method="autograd"`` as the way out.
    """
    grad_fn = torch.func.grad(loss_of)

    def hvp(tangents: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return torch.func.jvp(grad_fn, (primals,), (tangents,))[1]

    b = V.shape[1]
    parts = tuple(unflatten(V, params))
    try:
        if b == 1:
            hv = hvp(tuple(p[0] for p in parts))
            return flatten(hv).unsqueeze(1)
        return block_to_columns(torch.func.vmap(hvp)(parts), b)
    except RuntimeError as exc:
        # torch 2.13: F.mse_loss breaks forward-over-reverse ("ZeroTensors are immutable"),
        # which is why method="auto" takes double backward
        raise RuntimeError(
            f"method='func' (torch.func jvp of grad) failed on this model/loss: "
            f"{exc}. Use method='autograd' (the default), which supports every "
            "model (in torch 2.13, F.mse_loss breaks forward-over-reverse)."
        ) from exc
