"""Matrix-free generalized Gauss–Newton matrix of a model's mean training loss.

.. math::

    G(\\theta) = \\frac{1}{N} \\sum_{i=1}^{N} J_i^\\top\\,
        \\nabla^2_{z}\\, \\ell(z, y_i)\\big|_{z = f_\\theta(x_i)}\\, J_i,
    \\qquad J_i = \\frac{\\partial f_\\theta(x_i)}{\\partial \\theta}

The Hessian of the loss splits as ``H = G + Σ_i Σ_c (∂ℓ/∂z_{ic}) ∇²_θ f_{ic} / N``: the GGN
keeps the first term, which is positive semi-definite whenever the loss is convex in the
outputs, and drops the second, which vanishes where the residuals do (and, for a model
linear in its parameters, everywhere).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .._utils import unflatten
from ._hvp import PRODUCT_MEMORY_RULES
from ._jacobian import OutputGraph, build_output_graph, func_jacobian_block, graph_jvp, graph_vjp
from ._memory import MemoryRule
from ._model_operator import ModelOperator
from .settings import PRODUCT_METHODS

__all__ = ["GGN_METHODS", "SUPPORTED_GGN_LOSSES", "GGNOperator"]

#: product back ends of :class:`GGNOperator`: ``"autograd"`` (the double-VJP trick through
#: one forward graph per micro-batch, cacheable), ``"func"`` (torch.func ``jvp`` and
#: ``vjp``, ``vmap``-ed over the block) and ``"auto"`` (``"autograd"``).
GGN_METHODS = PRODUCT_METHODS

#: losses whose output-space Hessian the GGN needs and gets (twice differentiable and
#: convex in the outputs): any ``loss_fn(outputs, targets)`` of this kind works, these are
#: the ones the tests check
SUPPORTED_GGN_LOSSES = (
    "MSELoss / 0.5·Σ(f − y)² averaged over the batch",
    "CrossEntropyLoss (logits)",
    "BCEWithLogitsLoss",
    "GaussianNLLLoss with a fixed variance",
)


class _OutputHessian:
    """``∇²_z L(z, y)`` at ``z`` (one micro-batch's outputs), applied by double backward."""

    def __init__(self, op: GGNOperator, z: Tensor, y: Tensor) -> None:
        self.z = z.detach().requires_grad_(True)
        loss = op._checked_loss(self.z, y)
        (grad,) = torch.autograd.grad(loss, self.z, create_graph=True, allow_unused=True)
        if grad is None or not grad.requires_grad:
            raise ValueError(
                "the loss's output-space Hessian cannot be formed: its gradient with respect "
                "to the model's outputs is "
                + ("missing" if grad is None else "constant (the loss is piecewise linear)")
                + ". GGNOperator needs a loss that is twice differentiable in the outputs, "
                f"such as {', '.join(SUPPORTED_GGN_LOSSES)}; use HessianOperator otherwise"
            )
        self.grad = grad

    def apply(self, w: Tensor) -> Tensor:
        (hw,) = torch.autograd.grad(self.grad, self.z, grad_outputs=w, retain_graph=True)
        return hw


class GGNOperator(ModelOperator):
    """Generalized Gauss–Newton matrix of the mean loss of ``model`` over ``data``.

    A :class:`~subspace_optim.Curvature`: products with ``G`` at the parameters' current
    values, and :meth:`loss_and_grad` gives the *training* loss and gradient (the same as
    :class:`~subspace_optim.HessianOperator`'s). One product per micro-batch is a JVP of the
    model, the output-space Hessian of the loss, and a VJP — no second-order pass through
    the network.

    Args:
        model, loss_fn, data: as in :class:`~subspace_optim.HessianOperator`. ``model``
            must return one Tensor, and ``loss_fn(outputs, targets)`` must be twice
            differentiable in ``outputs`` (see :data:`SUPPORTED_GGN_LOSSES`); ``G`` is
            positive semi-definite when the loss is convex in the outputs.
        params, chunk_size, train, max_block_size, memory_budget, cache_graph: as in
            :class:`~subspace_optim.HessianOperator`.
        method: ``"autograd"`` (the double-VJP trick: one forward graph per micro-batch
            shared by the block, and cached between products at one point like the
            Hessian's gradient graph), ``"func"`` (torch.func ``jvp`` and ``vjp``,
            ``vmap``-ed over the block; fails on BatchNorm in train mode) or ``"auto"``
            (``"autograd"``, a fixed rule).

    Raises:
        TypeError: the model's output is not a Tensor (checked on the first micro-batch).
        ValueError: the loss's output-space Hessian cannot be formed (a loss that is
            piecewise linear in the outputs, such as ``L1Loss``, or one that ignores them),
            or it is indefinite on a random probe (a loss that is not convex in the
            outputs: ``G`` would not be PSD; use ``HessianOperator``). Checked at
            construction, on the first micro-batch; every other bad argument as in
            :class:`~subspace_optim.HessianOperator`.

    Shapes:
        ``matvec``: ``(n,) -> (n,)``; ``matmat``: ``(n, b) -> (n, b)``.

    .. note::
        Micro-batches are weighted by their number of examples, so ``G`` is the mean over
        all examples whatever the batching, exactly as for the Hessian; a data-parallel
        variant is :class:`~subspace_optim.DistributedGGNOperator`.

    Example:
        For a model linear in its parameters under the squared error, ``G`` equals the
        Hessian:

        >>> import torch
        >>> from torch import nn
        >>> import subspace_optim as so
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(3, 2).double()
        >>> X = torch.randn(20, 3, generator=g, dtype=torch.float64)
        >>> Y = torch.randn(20, 2, generator=g, dtype=torch.float64)
        >>> mse = lambda out, y: ((out - y) ** 2).sum(1).mean() / 2
        >>> G = so.GGNOperator(model, mse, (X, Y))
        >>> H = so.HessianOperator(model, mse, (X, Y))
        >>> torch.allclose(G.to_dense(), H.to_dense())
        True
        >>> bool(torch.linalg.eigvalsh(G.to_dense()).min() > -1e-12)  # PSD
        True
    """

    _auto_method: ClassVar[str] = "autograd"
    _cacheable_methods: ClassVar[tuple[str, ...]] = ("autograd",)
    _memory_rules: ClassVar[dict[str, MemoryRule]] = PRODUCT_MEMORY_RULES

    # ------------------------------------------------------------ validation
    def _check_setup(self) -> None:
        """Refuse a model or loss the GGN cannot be built from (on the first micro-batch)."""
        first = self._first_outputs()
        if first is None:  # a data-parallel rank with an empty shard
            return
        z, targets = first
        if not isinstance(z, Tensor):
            raise TypeError(
                f"GGNOperator needs a model that returns one Tensor of outputs; got "
                f"{type(z).__name__}. Wrap the model so that it returns the tensor the loss "
                "reads"
            )
        with self.evaluation_context():
            M = _OutputHessian(self, z, targets)
            gen = torch.Generator(device=z.device).manual_seed(0)
            r = torch.randn(z.shape, generator=gen, dtype=z.dtype, device=z.device)
            Mr = M.apply(r)
        if not bool(Mr.any()):
            raise ValueError(
                "the loss's output-space Hessian is zero (the loss is piecewise linear in the "
                "outputs, e.g. L1Loss or a hinge loss), so the GGN would be zero. GGNOperator "
                f"needs a loss that is twice differentiable in the outputs, such as "
                f"{', '.join(SUPPORTED_GGN_LOSSES)}; use HessianOperator otherwise"
            )
        curvature = float((r * Mr).sum())
        if curvature < -1e-6 * float(Mr.norm() * r.norm()):
            raise ValueError(
                "the loss is not convex in the model's outputs (its output-space Hessian has "
                f"a negative direction: r·Mr = {curvature:.3e}), so the GGN would not be "
                f"positive semi-definite. Use a convex loss ({', '.join(SUPPORTED_GGN_LOSSES)}) "
                "or HessianOperator"
            )

    # -------------------------------------------------------------- products
    def _measured_pass(self, leaves: list[Tensor], x: Any, y: Tensor) -> None:
        build_output_graph(lambda t: self._outputs(t, x), leaves, 0)

    def _build_graph(self, x: Any, y: Tensor, count: int) -> OutputGraph:
        graph = build_output_graph(lambda t: self._outputs(t, x), self._leaves(), count)
        graph.extra = _OutputHessian(self, graph.z, self._targets(y))
        return graph

    def _graph_product(self, graph: OutputGraph, W: Tensor) -> Tensor:
        out = torch.zeros_like(W)
        parts = unflatten(W, self.params)
        for j in range(W.shape[1]):
            Jv = graph_jvp(graph, [p[j] for p in parts])
            out[:, j] = graph_vjp(graph, graph.extra.apply(Jv), self.params)
        return out

    def _chunk_product(self, x: Any, y: Tensor, W: Tensor) -> Tensor:
        if self._resolved_method() == "autograd":
            return self._graph_product(self._build_graph(x, y, 0), W)

        def middle(z: Tensor, JV: Tensor) -> Tensor:
            M = _OutputHessian(self, z, self._targets(y))
            return torch.stack([M.apply(JV[j]) for j in range(JV.shape[0])])

        return func_jacobian_block(
            lambda t: self._outputs(t, x), self._primals(), W, self.params, middle
        )
