"""Matrix-free covariance of per-example gradients (centred), or the empirical Fisher.

.. math::

    C(\\theta) = \\frac{1}{N} \\sum_{i=1}^{N} (g_i - \\bar g)(g_i - \\bar g)^\\top
             = \\frac{1}{N} G^\\top G - \\bar g \\bar g^\\top, \\qquad
    g_i = \\nabla_\\theta\\, \\ell(f_\\theta(x_i), y_i), \\quad
    \\bar g = \\frac{1}{N} \\sum_i g_i

with ``G`` the ``(N, n)`` matrix of per-example gradients, never stored: ``G v`` is a JVP of
the vector of per-example losses and ``Gᵀ w`` a VJP of it. ``centered=False`` drops
``ḡḡᵀ`` (the empirical Fisher ``GᵀG / N``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._utils import unflatten
from ._data import Batch
from ._hvp import PRODUCT_MEMORY_RULES
from ._jacobian import OutputGraph, build_output_graph, func_jacobian_block, graph_jvp, graph_vjp
from ._memory import MemoryRule
from ._model_operator import ModelOperator
from .settings import PRODUCT_METHODS, OperatorSettings

__all__ = ["COVARIANCE_METHODS", "GradientCovarianceOperator"]

#: product back ends of :class:`GradientCovarianceOperator`: ``"autograd"`` (the double-VJP
#: trick through one graph of the per-example losses per micro-batch, cacheable),
#: ``"func"`` (torch.func ``jvp`` and ``vjp``, ``vmap``-ed over the block) and ``"auto"``
#: (``"autograd"``).
COVARIANCE_METHODS = PRODUCT_METHODS


class GradientCovarianceOperator(ModelOperator):
    """Covariance of the per-example gradients of ``loss_fn`` over ``data``, matrix-free.

    A :class:`~subspace_optim.Curvature` (positive semi-definite): products with ``C`` at
    the parameters' current values, and :meth:`loss_and_grad` gives the training loss and
    its gradient ``ḡ`` (the same as :class:`~subspace_optim.HessianOperator`'s).

    Per-example losses. ``loss_fn(outputs, targets)`` returns the *mean* loss of a batch,
    so the per-example loss of example ``i`` is taken to be ``loss_fn`` on the batch of that
    one example (``outputs[i:i+1]``, ``targets[i:i+1]``), evaluated for all examples at
    once with ``torch.func.vmap``; the model itself still runs on whole micro-batches. This
    is exact for every loss that is the plain mean of per-example terms (``MSELoss``,
    ``CrossEntropyLoss`` without class weights, …). For any other (class weights,
    ``reduction="sum"``, a loss coupling examples) pass ``per_example_loss``.

    Args:
        model, loss_fn, data: as in :class:`~subspace_optim.HessianOperator`; the model
            must return one Tensor unless ``per_example_loss`` handles its outputs.
        centered: subtract the mean gradient (the covariance, default); ``False`` gives the
            uncentred second moment ``GᵀG / N``, the empirical Fisher.
        per_example_loss: ``per_example_loss(outputs, targets)`` returning the ``(B,)``
            losses of a batch of ``B`` examples, whose mean is ``loss_fn(outputs,
            targets)``; ``None`` derives them from ``loss_fn`` as above.
        params, chunk_size, train, max_block_size, memory_budget, cache_graph: as in
            :class:`~subspace_optim.HessianOperator`.
        method: ``"autograd"`` (double-VJP trick, graph cacheable), ``"func"`` (torch.func
            ``jvp``/``vjp``) or ``"auto"`` (``"autograd"``).
        check, generator, settings: as in :class:`~subspace_optim.HessianOperator`.

    Raises:
        TypeError: ``centered`` is not a bool, ``per_example_loss`` is not callable, or
            the model's output is not a Tensor while ``per_example_loss`` is ``None``.
        ValueError: the per-example losses are not a ``(B,)`` vector, or their mean is not
            ``loss_fn``'s (a weighted or summed loss: pass ``per_example_loss``); checked
            at construction on the first micro-batch. Every other bad argument as in
            :class:`~subspace_optim.HessianOperator`.

    Shapes:
        ``matvec``: ``(n,) -> (n,)``; ``matmat``: ``(n, b) -> (n, b)``.

    .. note::
        Cost of a product of ``b`` columns, per micro-batch: one forward pass with its
        graph, then per column one JVP (a backward through the graph of ``Gᵀu``) and one
        VJP; the centred form adds one gradient pass per product for ``ḡ`` (free from the
        cached graph when the cache is on). The centring is applied after the
        (data-parallel) reduction, so ``ḡ`` is the mean over all examples.

    Example:
        Against the stacked per-example gradients of a least-squares model:

        >>> import torch
        >>> from torch import nn
        >>> import subspace_optim as so
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(3, 1).double()
        >>> X = torch.randn(10, 3, generator=g, dtype=torch.float64)
        >>> Y = torch.randn(10, 1, generator=g, dtype=torch.float64)
        >>> C = so.GradientCovarianceOperator(model, nn.MSELoss(), (X, Y))
        >>> A = torch.cat([X, torch.ones(10, 1, dtype=torch.float64)], 1)
        >>> r = (model(X) - Y).detach()
        >>> Gi = 2 * r * A                  # per-example gradients of (f(x_i) - y_i)², (10, 4)
        >>> D = Gi - Gi.mean(0)
        >>> torch.allclose(C.to_dense(), D.T @ D / 10)
        True
    """

    _auto_method: ClassVar[str] = "autograd"
    _cacheable_methods: ClassVar[tuple[str, ...]] = ("autograd",)
    _memory_rules: ClassVar[dict[str, MemoryRule]] = PRODUCT_MEMORY_RULES

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor],
        data: Batch | Any,
        *,
        centered: bool = True,
        per_example_loss: Callable[[Any, Tensor], Tensor] | None = None,
        params: Iterable[Tensor] | None = None,
        chunk_size: int | None = None,
        method: str = "auto",
        train: bool | None = None,
        max_block_size: int | None = None,
        memory_budget: int | None = None,
        cache_graph: bool | None = None,
        check: bool = True,
        generator: torch.Generator | None = None,
        settings: OperatorSettings | None = None,
    ) -> None:
        if not isinstance(centered, bool):
            raise TypeError(f"centered must be True or False; got {centered!r}")
        if per_example_loss is not None and not callable(per_example_loss):
            raise TypeError(
                "per_example_loss must be callable as per_example_loss(outputs, targets) -> (B,)"
            )
        self.centered = centered
        self.per_example_loss = per_example_loss
        super().__init__(
            model,
            loss_fn,
            data,
            params=params,
            chunk_size=chunk_size,
            method=method,
            train=train,
            max_block_size=max_block_size,
            memory_budget=memory_budget,
            cache_graph=cache_graph,
            check=check,
            generator=generator,
            settings=settings,
        )

    # ------------------------------------------------------ per-example losses
    def _per_example(self, out: Any, y: Tensor) -> Tensor:
        """The ``(B,)`` per-example losses of one micro-batch's outputs."""
        if self.per_example_loss is not None:
            losses = self.per_example_loss(out, y)
        else:
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"the model returns a {type(out).__name__}, not a Tensor: pass "
                    "per_example_loss(outputs, targets) -> (B,) losses"
                )

            def one(o: Tensor, t: Tensor) -> Tensor:
                return self.loss_fn(o.unsqueeze(0), t.unsqueeze(0))

            losses = torch.func.vmap(one)(out, y)
        if not isinstance(losses, Tensor) or losses.shape != (y.shape[0],):
            raise ValueError(
                f"per-example losses must be a ({y.shape[0]},) vector for a batch of "
                f"{y.shape[0]} examples; got "
                f"{tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__}"
            )
        return losses

    def _losses_of(self, x: Any, y: Tensor) -> Callable[[Sequence[Tensor]], Tensor]:
        targets = self._targets(y)
        return lambda tensors: self._per_example(self._outputs(tensors, x), targets)

    def _check_setup(self) -> None:
        """The per-example losses are a vector whose mean is the loss (first micro-batch)."""
        first = self._first_outputs()
        if first is None:  # a data-parallel rank with an empty shard
            return
        out, targets = first
        with self.evaluation_context(), torch.no_grad():
            full = self._checked_loss(out, targets)
            try:
                losses = self._per_example(out, targets)
            except (RuntimeError, NotImplementedError) as exc:
                raise ValueError(
                    f"loss_fn could not be evaluated one example at a time ({exc}); pass "
                    "per_example_loss(outputs, targets) -> (B,) losses"
                ) from exc
        rtol = 1e3 * torch.finfo(self.dtype).eps
        if not torch.allclose(losses.mean(), full, rtol=rtol, atol=rtol * float(full.abs())):
            raise ValueError(
                f"the mean of the per-example losses ({float(losses.mean()):.6g}) is not "
                f"loss_fn's value ({float(full):.6g}): loss_fn is not the plain mean of "
                "per-example terms (class weights? reduction='sum'?). Pass "
                "per_example_loss(outputs, targets) -> (B,) losses whose mean is loss_fn"
            )

    # -------------------------------------------------------------- products
    def _measured_pass(self, leaves: list[Tensor], x: Any, y: Tensor) -> None:
        build_output_graph(self._losses_of(x, y), leaves, 0)

    def _build_graph(self, x: Any, y: Tensor, count: int) -> OutputGraph:
        return build_output_graph(self._losses_of(x, y), self._leaves(), count)

    def _graph_product(self, graph: OutputGraph, W: Tensor) -> Tensor:
        """``GᵀG W / m`` for the micro-batch's ``m`` examples (the mean of ``g_i g_iᵀ W``)."""
        out = torch.zeros_like(W)
        parts = unflatten(W, self.params)
        for j in range(W.shape[1]):
            Gv = graph_jvp(graph, [p[j] for p in parts])
            out[:, j] = graph_vjp(graph, Gv, self.params)
        return out.div_(graph.z.shape[0])

    def _chunk_product(self, x: Any, y: Tensor, W: Tensor) -> Tensor:
        if self._resolved_method() == "autograd":
            return self._graph_product(self._build_graph(x, y, 0), W)
        out = func_jacobian_block(
            self._losses_of(x, y), self._primals(), W, self.params, lambda z, JV: JV
        )
        return out.div_(y.shape[0])

    def _payload_columns(self, b: int) -> int:
        return b + 1 if self.centered else b

    def _local_matmat(self, V: Tensor) -> tuple[Tensor, int]:
        """``Σ_i g_i g_iᵀ V`` and, centred, ``Σ_i g_i`` as one more column."""
        total, count = super()._local_matmat(V)
        if not self.centered:
            return total, count
        _, grad_sum, _ = self._local_loss_and_grad()
        return torch.cat([total, grad_sum.unsqueeze(1)], dim=1), count

    def _finish(self, total: Tensor, count: int, V: Tensor) -> Tensor:
        b = V.shape[1]
        second = total[:, :b].div(count)
        if not self.centered:
            return second
        mean = total[:, b].div(count)
        return second.sub_(torch.outer(mean, mean @ V))

    # -------------------------------------------------------------- gradient
    def _losses_and_grads(self) -> Iterator[tuple[Tensor, Sequence[Tensor | None], int]]:
        """From the cached graphs when the cache is on (their losses' mean is the loss)."""
        if not self.caches_graph:
            yield from super()._losses_and_grads()
            return
        for graph in self._cached_graphs():
            loss = graph.z.mean()
            grads = torch.autograd.grad(loss, graph.leaves, retain_graph=True, allow_unused=True)
            yield loss, grads, graph.count

    # -------------------------------------------------------------- protocol
    def _curvature_keywords(self) -> dict[str, Any]:
        return {"centered": self.centered, "per_example_loss": self.per_example_loss}
