"""Products with the Jacobian of a micro-batch's outputs, both ways (private).

The Gauss–Newton and gradient-covariance operators are both of the form
``Jᵀ M J`` for a function ``z(θ)`` of the parameters (the model's outputs, or the vector of
per-example losses) and a small matrix ``M`` in the space of ``z``. This module applies
``J`` and ``Jᵀ`` to blocks:

* ``"autograd"``: one forward pass builds ``z`` and the graph of ``Jᵀu`` for a dummy ``u``
  (``create_graph=True``); ``J v`` is then the gradient of ``⟨Jᵀu, v⟩`` with respect to
  ``u`` (the double-VJP trick) and ``Jᵀ w`` one more backward pass through ``z``'s graph.
  The graph is shared by the columns of a block and can be cached between products.
* ``"func"``: ``torch.func.jvp`` for ``J v`` and ``torch.func.vjp`` for ``Jᵀ w``, both
  ``vmap``-ed over the columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._utils import block_to_columns, flatten, unflatten

__all__ = ["OutputGraph", "build_output_graph", "func_jacobian_block", "graph_jvp", "graph_vjp"]


@dataclass
class OutputGraph:
    """``z`` of one micro-batch with its graph, and the graph of ``Jᵀu``.

    Attributes:
        leaves: the parameter leaves ``z`` was computed from.
        z: the function's value, with its graph.
        u: the dummy cotangent (zeros, ``requires_grad``) that ``jt`` is linear in.
        jt: ``Jᵀu`` for each leaf (``None`` where the leaf does not reach ``z``).
        live: indices of the leaves whose ``jt`` depends on ``u``.
        count: examples in the micro-batch.
        extra: what the operator keeps next to it (its matrix ``M``, say).
    """

    leaves: list[Tensor]
    z: Tensor
    u: Tensor
    jt: tuple[Tensor | None, ...]
    live: list[int]
    count: int
    extra: Any = None


def build_output_graph(
    z_of: Callable[[Sequence[Tensor]], Tensor], leaves: list[Tensor], count: int
) -> OutputGraph:
    """Evaluate ``z_of(leaves)`` and build the graph of ``Jᵀu`` for the double-VJP trick."""
    z = z_of(leaves)
    u = torch.zeros_like(z, requires_grad=True)
    if not z.requires_grad:  # z does not depend on the parameters: J = 0
        return OutputGraph(leaves, z, u, tuple(None for _ in leaves), [], count)
    jt = torch.autograd.grad(z, leaves, grad_outputs=u, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(jt) if g is not None and g.requires_grad]
    return OutputGraph(leaves, z, u, jt, live, count)


def graph_jvp(graph: OutputGraph, v_parts: Sequence[Tensor]) -> Tensor:
    """``J v`` (shape of ``z``) for one column given as per-leaf pieces ``v_parts``."""
    if not graph.live:
        return torch.zeros_like(graph.z)
    # every live piece of Jᵀu is linear in u, so the gradient with respect to u exists
    (jv,) = torch.autograd.grad(
        [graph.jt[i] for i in graph.live],
        graph.u,
        grad_outputs=[v_parts[i] for i in graph.live],
        retain_graph=True,
    )
    return jv


def graph_vjp(graph: OutputGraph, w: Tensor, params: Sequence[Tensor]) -> Tensor:
    """``Jᵀ w`` as a flat vector of shape ``(n,)`` (``w`` has the shape of ``z``), in the
    parameters' dtype (``w``'s when no parameter reaches ``z``); callers store it into their
    block, which casts."""
    if not graph.z.requires_grad:
        return w.new_zeros(sum(p.numel() for p in params))
    parts = torch.autograd.grad(
        graph.z, graph.leaves, grad_outputs=w, retain_graph=True, allow_unused=True
    )
    return flatten(torch.zeros_like(p) if g is None else g for g, p in zip(parts, params))


def func_jacobian_block(
    z_of: Callable[[tuple[Tensor, ...]], Tensor],
    primals: tuple[Tensor, ...],
    V: Tensor,
    params: Sequence[Tensor],
    middle: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``Jᵀ M J V`` by torch.func: ``jvp`` then ``middle(z, JV)`` then ``vjp``, all columns.

    ``middle(z, JV)`` gets ``z`` and the block ``JV`` of shape ``(b, *z.shape)`` and returns
    ``M JV`` of the same shape. Returns ``(n, b)``.

    Raises:
        RuntimeError: torch.func cannot transform the model (BatchNorm in train mode, say);
            the message names ``method="autograd"`` as the way out.
    """
    b = V.shape[1]
    parts = tuple(unflatten(V, params))
    try:
        z, vjp_fn = torch.func.vjp(z_of, primals)

        def jvp(tangents: tuple[Tensor, ...]) -> Tensor:
            return torch.func.jvp(z_of, (primals,), (tangents,))[1]

        JV = torch.func.vmap(jvp)(parts)
        MJV = middle(z.detach(), JV)
        (out,) = torch.func.vmap(vjp_fn)(MJV)
    except RuntimeError as exc:
        raise RuntimeError(
            f"method='func' (torch.func jvp and vjp of the model) failed on this model/loss: "
            f"{exc}. Use method='autograd' (the default), which supports every model."
        ) from exc
    return block_to_columns(out, b)
