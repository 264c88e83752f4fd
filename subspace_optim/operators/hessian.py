"""Matrix-free Hessian of a model's mean training loss over one batch or a whole dataset.

.. math::

    L(\\theta) = \\frac{1}{N} \\sum_{i=1}^{N} \\ell(f_\\theta(x_i), y_i), \\qquad
    H(\\theta) = \\nabla^2_\\theta L(\\theta)

over the flattened trainable parameters. ``loss_fn(outputs, targets)`` returns the *mean*
loss of a batch; batches of unequal size are weighted by their number of examples, so the
operator is the Hessian of the mean over all examples, whatever the batching.

The data, micro-batching, memory budget and graph cache are shared with the other
curvature operators (``_model_operator``); the product back ends are in ``_hvp``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from torch import Tensor

from ._hvp import PRODUCT_MEMORY_RULES, ChunkGraph, build_chunk_graph, func_hvp, graph_hvp
from ._memory import BlockMemoryEstimate, MemoryRule
from ._model_operator import ModelOperator
from .settings import PRODUCT_METHODS

__all__ = ["HVP_METHODS", "BlockMemoryEstimate", "HessianOperator"]

#: HVP back ends: ``"autograd"`` (double backward, one forward and one gradient graph per
#: micro-batch shared by the whole block), ``"func"`` (forward-over-reverse ``jvp∘grad`` from
#: torch.func, ``vmap``-ed over the block) and ``"auto"``.
HVP_METHODS = PRODUCT_METHODS


class HessianOperator(ModelOperator):
    """Hessian of the mean loss of ``model`` over ``data``, as a matrix-free operator.

    Products are evaluated at the parameters' *current* values, so one operator follows the
    model through training. Parameters, buffers (BatchNorm running statistics) and ``.grad``
    are left bit-for-bit unchanged by every product.

    Args:
        model: the network. Its parameters are read live; buffers are cloned for each pass.
        loss_fn: ``loss_fn(outputs, targets)`` returning the mean loss of a batch (a scalar).
        data: one ``(inputs, targets)`` batch, or a re-iterable of such batches (a list, a
            ``DataLoader``): the whole training set, as in the paper. ``inputs`` is a Tensor,
            a tuple of Tensors passed as ``model(*inputs)`` or a dict of Tensors passed as
            ``model(**inputs)``; the first dimension of every tensor is the batch. A one-shot iterator (a generator) is refused, because every product
            traverses the data again.
        params: the parameters that span the flat space, in this order. Defaults to every
            parameter of ``model`` with ``requires_grad``; tied parameters count once.
        chunk_size: split batches into micro-batches of at most this many examples, so peak
            memory is bounded by the chunk, not the batch (the result is the same).
        method: ``"autograd"`` (double backward; works for every model and loss),
            ``"func"`` (torch.func ``jvp`` of ``grad``, ``vmap``-ed
            over a block) or ``"auto"`` (see note).
        train: evaluate the loss with the model in train (``True``) or eval (``False``) mode;
            ``None`` uses whatever mode the model is in at each product. The mode is
            restored afterwards.
        max_block_size: evaluate at most this many columns of a block per pass over the
            data (a wider block is split into sub-blocks; the result is the same).
        memory_budget: bytes that one sub-block product may use on top of the input and
            output blocks; the operator picks the widest sub-block whose estimated peak
            fits (see note) and raises ``ValueError`` at construction when not even one
            column fits. Combined with ``max_block_size``, the smaller width wins.
        cache_graph: keep the forward pass and gradient graph of every micro-batch between
            products while the parameters stay the same, so that the next product runs
            only its double backward (``method="autograd"`` only). ``None`` (default)
            caches when ``data`` is held in memory (a batch or a list of batches) and is a
            single micro-batch, where the cached graph is the one each product builds
            anyway: peak memory does not grow, only how long the graph lives. ``True``
            also caches every micro-batch of a list (their graphs are held together);
            ``False`` never caches. See the note on invalidation.
        check: run the self-check at construction (two forward passes on at most 64
            examples of the first micro-batch and two products, not counted in
            ``num_matvecs``): a ``model`` or
            ``loss_fn`` that fails on the data, a non-scalar loss and a loss that sums over
            the batch are refused with what to do, and products that differ between two
            identical calls (dropout in train mode, a loader that shuffles or drops
            batches) give a :class:`~subspace_optim.CurvatureCheckWarning`. ``False`` skips
            it.
        generator: a CPU ``torch.Generator`` that every pass over the data draws its
            randomness from (dropout masks, a ``DataLoader``'s shuffling and worker seeds);
            the caller's global random state is never touched. Default: a private
            generator seeded with 0.
        settings: every keyword setting above at once, as one
            :class:`~subspace_optim.OperatorSettings` (to share them between operators);
            pass either ``settings`` or the keywords, not both.

    Attributes:
        settings: the :class:`~subspace_optim.OperatorSettings` the keywords built (with
            the generator products draw from); ``chunk_size``, ``method``, ``train``,
            ``max_block_size``, ``memory_budget``, ``check`` and ``generator`` read it.
        params: the parameters that span the flat space, in the order of the flat
            vectors.
        block_size: columns evaluated per pass (``None``: the whole block at once).
        memory_estimate: the estimate behind ``block_size`` when ``memory_budget`` was
            given, else ``None``: a ``BlockMemoryEstimate`` record with ``graph_bytes``,
            ``fixed_bytes``, ``bytes_per_column`` and ``peak(width)``.
        caches_graph: whether products reuse a cached gradient graph (``cache_graph``
            resolved).

    Shapes:
        ``matvec``: ``(n,) -> (n,)``; ``matmat``: ``(n, b) -> (n, b)`` with
        ``n = sum(p.numel() for p in params)``.

    .. note::
        Graph cache. An eigensolve calls many products at one point ``θ``; with the cache,
        the first builds the loss and its gradient graph (``create_graph=True``) and every
        later one only differentiates that graph again. Before each product the operator
        compares a key of everything the loss reads: each parameter's and buffer's
        version counter, storage and the integer sum of its bits (an optimizer step,
        ``p.data = ...``, a change through ``p.data``, a BatchNorm running-statistics
        update or ``load_state_dict`` all change it), the train/eval mode of every
        submodule, and the identity, version and storage of every data tensor. A changed
        key rebuilds the graph. What the key cannot see is state outside tensors (a Python
        attribute the forward reads, a stateful ``loss_fn``), for which you pass
        ``cache_graph=False``, and a change of the data's values through ``x.data``.
        Dropout in train mode draws its masks once per cached graph, so repeated products
        at one ``θ`` apply the same (symmetric) matrix. The cache lives until the end of the enclosing :meth:`solve_scope` (the
        subspace optimizer and :func:`~subspace_optim.top_k_eigenpairs` run each solve in
        one).

    .. note::
        ``method="auto"`` picks double backward because it works for every model and
        loss (torch.func's forward-over-reverse fails on some losses, see
        ``operators/_hvp.py``) and shares one forward pass and one gradient graph
        across a whole block of vectors. Which back end is faster depends on the model and
        the machine (``python -m benchmarks.hvp`` measures both, ``docs/performance.md``
        reports the numbers), so pass ``method="func"`` where it measures faster. ``"auto"`` is a
        fixed rule, never a timing race: a fresh process makes the same choice, so
        checkpoint-resume stays bit-for-bit.

    .. note::
        ``memory_budget`` rule. At construction the operator runs the loss and its gradient
        graph (``create_graph=True``) once on the first micro-batch and adds up the bytes of
        the tensors autograd saves for backward (``G``: activations and gradient-graph
        intermediates; parameters and inputs excluded). With ``s`` the bytes of one number
        and ``n`` the parameter count, the estimated peak of a sub-block of ``w`` columns is

        * ``"autograd"``: ``5·G + 2·n·s + w·2·n·s`` (the graph is shared by the columns;
          the double backward of one column allocates temporaries of the same sizes; each
          column keeps its input and result, ``n`` numbers each, and one column at a time
          holds two more);
        * ``"func"``: ``G + w·(4·G + 3·n·s)`` (``vmap`` carries the tangents of the forward
          and backward intermediates for every column).

        The estimate is meant to bound the peak from above; its multiples of ``G`` are
        calibrated by ``python -m benchmarks.memory``, which compares it with measured peaks
        (``docs/memory_benchmark.md``). Limits: it counts tensors, not allocator caching or
        fragmentation; other architectures may need other multiples; and it is measured on
        the first micro-batch only (larger later batches, or data-dependent control flow,
        use more). The input block, the output block and (distributed) the all-reduce
        buffer, ``n·b`` numbers each, come on top.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from subspace_optim import HessianOperator
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(3, 1).double()
        >>> X = torch.randn(20, 3, generator=g, dtype=torch.float64)
        >>> y = torch.randn(20, 1, generator=g, dtype=torch.float64)
        >>> H = HessianOperator(model, nn.MSELoss(), (X, y))
        >>> H.shape
        (4, 4)
        >>> # least squares: H = (2/N) [X 1]ᵀ[X 1], exactly
        >>> A = torch.cat([X, torch.ones(20, 1, dtype=torch.float64)], 1)
        >>> torch.allclose(H.to_dense(), 2 * A.T @ A / 20)
        True
    """

    _auto_method: ClassVar[str] = "autograd"
    _cacheable_methods: ClassVar[tuple[str, ...]] = ("autograd",)
    _memory_rules: ClassVar[dict[str, MemoryRule]] = PRODUCT_MEMORY_RULES

    # -------------------------------------------------------------- products
    def _build_graph(self, x: Any, y: Tensor, count: int) -> ChunkGraph:
        """Loss of one micro-batch and its gradient graph, ready for double backward."""
        return build_chunk_graph(lambda leaves: self._loss(leaves, x, y), self._leaves(), count)

    def _graph_product(self, graph: ChunkGraph, W: Tensor) -> Tensor:
        return graph_hvp(graph, W, self.params, keep=True)

    def _chunk_product(self, x: Any, y: Tensor, W: Tensor) -> Tensor:
        if self._resolved_method() == "autograd":
            return graph_hvp(self._build_graph(x, y, 0), W, self.params, keep=False)
        return func_hvp(lambda tensors: self._loss(tensors, x, y), self._primals(), W, self.params)

    # -------------------------------------------------------------- gradient
    def _losses_and_grads(self) -> Iterator[tuple[Tensor, Sequence[Tensor | None], int]]:
        """``(loss, gradients, count)`` of each micro-batch, from the graph cache if on.

        With the cache, the graph built here is the one the products that follow at this
        ``θ`` (a refresh) reuse, so they skip the forward pass.
        """
        if self.caches_graph:
            for graph in self._cached_graphs():
                yield graph.loss, graph.grads, graph.count
            return
        yield from super()._losses_and_grads()
