"""The data/loss half every curvature operator over a model shares (private).

:class:`ModelOperator` owns what does not depend on which curvature is applied: the
parameter space, the data and its micro-batches, the evaluation context of a pass, the
functional loss, the memory budget, the graph cache, the training loss and gradient, and
the :class:`~subspace_optim.Curvature` protocol members (``extended``, ``solve_scope``).
A concrete operator (Hessian, Gauss–Newton, gradient covariance) fills in the products of
one micro-batch:

* :meth:`ModelOperator._chunk_product` ``(x, y, W) -> (n, w)``: the micro-batch's matrix
  applied to ``W``, normalized per example (the mean over its examples);
* with a graph cache, :meth:`ModelOperator._build_graph` and
  :meth:`ModelOperator._graph_product` instead;
* optionally :meth:`ModelOperator._finish`, applied after the (data-parallel) reduction.

Micro-batches are weighted by their number of examples, so every operator is the mean over
all examples whatever the batching.

Its settings are one frozen :class:`~subspace_optim.OperatorSettings` (``op.settings``),
built from the constructor's keywords and passed on whole by :meth:`ModelOperator.extended`.
Where the data lives is the settings' ``parallel`` field: the operator composes the
matching reduction (``_reduction.OneProcess``, or ``_data_parallel.AllReduce`` for a
:class:`~subspace_optim.DataParallel`) around its local sums, and its own code is the same
either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._isolation import forked_rng
from .._utils import flatten
from . import _data
from ._data import Batch
from ._data_parallel import reduction_for
from ._graph_cache import GraphCache, resolve_cache_graph, state_key
from ._memory import BlockMemoryEstimate, MemoryRule, saved_bytes
from ._params import check_model, missing_from, select_params
from ._reduction import Reduction
from .base import LinearOperator
from .settings import OperatorSettings, settings_from

__all__ = ["ModelOperator"]


def _setting(name: str) -> property:
    """A read-only attribute that reads the field ``name`` of the operator's settings."""
    return property(
        lambda self: getattr(self.settings, name),
        doc=f"``settings.{name}`` (read-only; see :class:`~subspace_optim.OperatorSettings`).",
    )


class ModelOperator(LinearOperator):
    """Base of the curvature operators defined by ``model``, ``loss_fn`` and ``data``.

    The constructor's arguments are documented on :class:`~subspace_optim.HessianOperator`;
    its keyword settings build :attr:`settings` (or ``settings=`` gives them whole), and the
    :attr:`reduction` that :attr:`settings`'s ``parallel`` asks for is composed around the
    local sums. Subclasses set the class attributes below and implement the product hooks.

    Attributes:
        settings: the :class:`~subspace_optim.OperatorSettings` of this operator (its
            generator the one products draw from); :meth:`extended` passes it on.
        reduction: how local sums become products: over this process's data, or
            all-reduced over a process group (``settings.parallel``).
    """

    #: the back end ``"auto"`` stands for, and those that can cache a graph
    _auto_method: ClassVar[str] = "auto"
    _cacheable_methods: ClassVar[tuple[str, ...]] = ()
    #: the peak-memory rule of each back end (see ``_memory``)
    _memory_rules: ClassVar[dict[str, MemoryRule]] = {}

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor],
        data: Batch | Iterable[Batch],
        *,
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
        super().__init__()
        settings = settings_from(
            settings,
            chunk_size=chunk_size,
            method=method,
            train=train,
            max_block_size=max_block_size,
            memory_budget=memory_budget,
            cache_graph=cache_graph,
            check=check,
            generator=generator,
        )
        if settings.generator is None:
            settings = dataclasses.replace(settings, generator=torch.Generator().manual_seed(0))
        self.settings = settings
        self.reduction: Reduction = reduction_for(settings.parallel)
        self.reduction.construct(lambda m: self._build(m, loss_fn, data, params), model)
        width = self.reduction.join(self)
        if width is not None:
            self.block_size = (
                width if self.max_block_size is None else min(width, self.max_block_size)
            )
        if settings.check:
            self.reduction.self_check(self)

    def _build(self, model: nn.Module, loss_fn: Any, data: Any, params: Any) -> None:
        """This process's part of the construction: everything but the budget's verdict
        and the self-check, which depend on the reduction."""
        self.model = check_model(model, loss_fn)
        self.loss_fn = loss_fn
        space = select_params(self.model, params)
        self.params: list[Tensor] = space.params
        self.param_names = space.names
        self.shape = (space.n, space.n)
        self.param_dtype = space.param_dtype
        self.dtype = space.dtype
        self.device = space.device
        self._cache: GraphCache[Any] = GraphCache()

        self.data: Any = _data.normalize_data(data)
        allow_empty = self.reduction.allows_empty_shard
        with forked_rng(self.device, self.generator):  # a loader's first batch: not the
            _data.validate_data(self.data, allow_empty=allow_empty)  # caller's RNG

        self.memory_estimate: BlockMemoryEstimate | None = None
        self.block_size: int | None = self.max_block_size
        if self.memory_budget is not None:
            self.memory_estimate = self._estimate_block_memory()
        self.caches_graph = resolve_cache_graph(
            self.settings.cache_graph,
            method=self.method,
            cacheable=self._resolved_method() in self._cacheable_methods,
            data=self.data,
            chunk_size=self.chunk_size,
        )
        self._check_setup()

    # the settings, read-only: one truth, in ``settings``
    chunk_size = _setting("chunk_size")
    method = _setting("method")
    train = _setting("train")
    max_block_size = _setting("max_block_size")
    memory_budget = _setting("memory_budget")
    check = _setting("check")
    generator = _setting("generator")

    def _check_setup(self) -> None:
        """Refuse a model or loss this operator cannot be built from (default: accept).

        Runs at the end of construction, before any product.
        """

    def _resolved_method(self) -> str:
        """The back end ``"auto"`` stands for (a fixed rule, never a timing race)."""
        return self._auto_method if self.method == "auto" else self.method

    # ------------------------------------------------------------------ data
    def chunks(self) -> Iterator[tuple[Any, Tensor, int]]:
        """Yield ``(inputs, targets, count)`` micro-batches on the operator's device."""
        return _data.micro_batches(self.data, self.chunk_size, self.device)

    def first_batch(self) -> tuple[Any, Tensor] | None:
        """The first micro-batch, drawn without the caller's random state.

        Returns:
            ``(inputs, targets)``, the targets as ``loss_fn`` receives them (in the
            operator's ``dtype`` for half-precision parameters); ``None`` when this process
            holds no data.
        """
        first = self._first_chunk()
        return None if first is None else (first[0], self._targets(first[1]))

    def outputs(self, inputs: Any) -> Any:
        """The model's outputs on ``inputs`` at the current parameters (buffers untouched).

        Run it inside :meth:`evaluation_context` for the operator's settings (mode,
        randomness, autocast off), as every product does.

        Args:
            inputs: one micro-batch's inputs: a tensor, a tuple of them (positional
                arguments) or a dict of them (keyword arguments).

        Returns:
            What the model returns.
        """
        return self._outputs(self._primals(), inputs)

    def _first_chunk(self) -> tuple[Any, Tensor, int] | None:
        """The first micro-batch (``None``: no data), drawn without the caller's RNG."""
        with forked_rng(self.device, self.generator):
            batches = self.chunks()
            first = next(batches, None)
            batches.close()  # type: ignore[attr-defined]
        return first

    def _first_outputs(self) -> tuple[Any, Tensor] | None:
        """The model's outputs on the first micro-batch at the current parameters (no
        graph) and its targets, for checks at construction; ``None`` on an empty shard."""
        first = self.first_batch()
        if first is None:
            return None
        x, y = first
        with self.evaluation_context(), torch.no_grad():
            return self.outputs(x), y

    # ------------------------------------------------------- functional model
    @contextlib.contextmanager
    def evaluation_context(self) -> Iterator[None]:
        """The settings every pass of the operator runs under, and its failure rule.

        Gradients on, autocast off, the model in the requested mode, randomness (dropout
        masks, a loader's shuffling) drawn from the operator's ``generator`` with the caller's global
        random state handed back, and scaled dot-product attention on its math kernel:
        the fused kernels (flash, memory-efficient, cuDNN) have no double backward, so a
        product through ``nn.MultiheadAttention`` or ``F.scaled_dot_product_attention``
        would fail on them. A pass that raises frees
        the cached graph, so a retry rebuilds it instead of reusing a graph built by the
        failed call.
        """
        model = self.model
        # every module's own flag: model.train(flag) would set them all alike on the way
        # back, unfreezing a BatchNorm the user had put in eval mode
        modes = [(m, m.training) for m in model.modules()] if self.train is not None else []
        if self.train is not None:
            model.train(self.train)
        try:
            device_type = self.device.type if self.device.type in ("cuda", "cpu") else "cpu"
            with (
                torch.enable_grad(),
                torch.autocast(device_type, enabled=False),
                sdpa_kernel(SDPBackend.MATH),
                forked_rng(self.device, self.generator),
            ):
                yield
        except BaseException:
            self._release_cache()
            raise
        finally:
            for module, training in modes:
                module.training = training

    def _outputs(self, tensors: Sequence[Tensor], x: Any) -> Any:
        """The model's outputs on ``x`` with the parameters replaced by ``tensors``.

        Buffers are cloned, so BatchNorm running statistics never move.
        """
        state: dict[str, Tensor] = dict(zip(self.param_names, tensors))
        for name, p in self.model.named_parameters():  # outside the operator's space:
            if name not in state:  # constants, so no product carries a graph into them
                state[name] = self._upcast(p.detach()) if self._upcasting else p.detach()
        for name, b in self.model.named_buffers():
            state[name] = self._upcast(b) if self._upcasting else b.clone()
        cast = self._upcast if self._upcasting else (lambda t: t)
        if isinstance(x, dict):  # model(**inputs)
            kwargs = {k: cast(t) for k, t in x.items()}
            return functional_call(self.model, state, (), kwargs, strict=False, tie_weights=True)
        args = tuple(map(cast, x)) if isinstance(x, (tuple, list)) else (cast(x),)
        return functional_call(self.model, state, args, strict=False, tie_weights=True)

    def _targets(self, y: Tensor) -> Tensor:
        return self._upcast(y) if self._upcasting else y

    def _loss(self, tensors: Sequence[Tensor], x: Any, y: Tensor) -> Tensor:
        """Mean loss of one micro-batch at ``tensors``; refuses a non-scalar loss."""
        out = self._outputs(tensors, x)
        return self._checked_loss(out, self._targets(y))

    def _checked_loss(self, out: Any, y: Tensor) -> Tensor:
        loss = self.loss_fn(out, y)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ValueError(
                "loss_fn must return a scalar (the mean loss of the batch); got "
                f"{type(loss).__name__}{'' if not isinstance(loss, Tensor) else tuple(loss.shape)}"
            )
        return loss

    @property
    def _upcasting(self) -> bool:
        return self.dtype != self.param_dtype

    def _upcast(self, t: Tensor) -> Tensor:
        """Half-precision parameters: evaluate in :attr:`dtype` (a copy of ``t``)."""
        return t.to(self.dtype) if t.is_floating_point() else t.clone()

    def _leaves(self) -> list[Tensor]:
        return [p.detach().to(self.dtype).requires_grad_(True) for p in self.params]

    def _primals(self) -> tuple[Tensor, ...]:
        return tuple(p.detach().to(self.dtype) for p in self.params)

    # ---------------------------------------------------------------- memory
    def _measured_pass(self, leaves: list[Tensor], x: Any, y: Tensor) -> None:
        """The pass whose saved tensors define ``G`` (default: loss and gradient graph)."""
        loss = self._loss(leaves, x, y)
        torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)

    def _estimate_block_memory(self) -> BlockMemoryEstimate:
        """Measure ``G`` on the first micro-batch and apply the back end's memory rule."""
        method = self._resolved_method()
        first = self._first_chunk()
        graph = 0
        if first is not None:  # a data-parallel rank with an empty shard holds no graph
            x, y, _ = first
            inputs = _data.input_tensors(x)
            with self.evaluation_context():
                leaves = self._leaves()
                graph = saved_bytes(
                    lambda: self._measured_pass(leaves, x, y), [*leaves, *self.params, *inputs, y]
                )
        col = self.shape[0] * torch.empty((), dtype=self.dtype).element_size()
        return self._memory_rules[method].estimate(method, graph, col)

    # ----------------------------------------------------------- graph cache
    @property
    def _graph(self) -> list[Any] | None:
        """The cached graphs (one per micro-batch), or ``None`` when none is held."""
        return self._cache.graphs

    def _cached_graphs(self) -> list[Any]:
        key = state_key(self.model, self.params, self.data, self.train)
        return self._cache.get(
            key, lambda: [self._build_graph(x, y, m) for x, y, m in self.chunks()]
        )

    def _release_cache(self) -> None:
        """Free the cached graph (the next product rebuilds it); a no-op without one."""
        self._cache.release()

    # -------------------------------------------------------------- products
    def _build_graph(self, x: Any, y: Tensor, count: int) -> Any:
        """The graph one micro-batch's products share (back ends that cache)."""
        raise NotImplementedError

    def _graph_product(self, graph: Any, W: Tensor) -> Tensor:
        """The micro-batch's matrix applied to ``W`` through a cached ``graph``."""
        raise NotImplementedError

    def _graph_count(self, graph: Any) -> int:
        return graph.count

    def _chunk_product(self, x: Any, y: Tensor, W: Tensor) -> Tensor:
        """The micro-batch's (per-example mean) matrix applied to ``W``, shape ``(n, w)``."""
        raise NotImplementedError

    def _local_matmat(self, V: Tensor) -> tuple[Tensor, int]:
        """Unnormalized ``Σ_chunks count · A_chunk V`` and the number of examples.

        Columns go :attr:`block_size` at a time, each sub-block in its own pass over the
        data; a column's result does not depend on the other columns of its pass.
        """
        b = V.shape[1]
        width = b if self.block_size is None else min(b, self.block_size)
        total = torch.zeros_like(V)
        with self.evaluation_context():
            graphs = self._cached_graphs() if self.caches_graph else None
            for start in range(0, b, width):
                W = V[:, start : start + width]
                part = total[:, start : start + width]
                count = 0
                if graphs is not None:
                    for graph in graphs:
                        m = self._graph_count(graph)
                        part.add_(self._graph_product(graph, W), alpha=m)
                        count += m
                    continue
                for x, y, m in self.chunks():
                    part.add_(self._chunk_product(x, y, W), alpha=m)
                    count += m
        return total, count

    def _payload_columns(self, b: int) -> int:
        """Columns of the local result of a ``b``-column product (``b`` unless extended)."""
        return b

    def _finish(self, total: Tensor, count: int, V: Tensor) -> Tensor:
        """The product from the summed local results over ``count`` examples in all."""
        return total.div_(count)

    def _matmat(self, V: Tensor) -> Tensor:
        size = V.shape[0] * self._payload_columns(V.shape[1])
        total, count = self.reduction.sum(lambda: self._local_matmat(V), size, V)
        return self._finish(total.view(V.shape[0], -1), count, V)

    # -------------------------------------------------------------- gradient
    def _local_loss_and_grad(self) -> tuple[Tensor, Tensor, int]:
        loss_sum = torch.zeros((), dtype=self.dtype, device=self.device)
        grad_sum = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        count = 0
        with self.evaluation_context():
            for loss, grads, m in self._losses_and_grads():
                g = flatten(
                    torch.zeros_like(p) if gi is None else gi.detach()
                    for gi, p in zip(grads, self.params)
                )
                grad_sum.add_(g, alpha=m)
                loss_sum.add_(loss.detach(), alpha=m)
                count += m
        return loss_sum, grad_sum, count

    def _losses_and_grads(self) -> Iterator[tuple[Tensor, Sequence[Tensor | None], int]]:
        """``(loss, gradients, count)`` of each micro-batch (one forward and backward each)."""
        for x, y, m in self.chunks():
            leaves = self._leaves()
            loss = self._loss(leaves, x, y)
            yield loss, torch.autograd.grad(loss, leaves, allow_unused=True), m

    def loss_and_grad(self) -> tuple[Tensor, Tensor]:
        """Mean loss and its flat gradient ``∇L`` over all of ``data``, shapes ``()`` and ``(n,)``.

        The training loss, whichever curvature the operator applies. Does not touch
        ``.grad`` of the parameters.
        """

        def local() -> tuple[Tensor, int]:
            loss_sum, grad_sum, count = self._local_loss_and_grad()
            return torch.cat([loss_sum.reshape(1), grad_sum]), count

        total, count = self.reduction.sum(local, self.shape[0] + 1, None)
        return total[0] / count, total[1:] / count

    # -------------------------------------------------------------- protocol
    def agree_tensors(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The same ``tensors`` on every process that holds this operator: rank 0's.

        ``tensors`` themselves for an operator over one process's data; for a data-parallel
        one a collective that broadcasts rank 0's bits (see
        :meth:`~subspace_optim.LinearOperator.agree_tensors`).

        Args:
            *tensors: this process's tensors, of any shapes, dtypes and devices.

        Returns:
            Rank 0's tensors, in the order given, each of the shape, dtype and device given.
        """
        return self.reduction.agree_tensors(*tensors)

    def _curvature_keywords(self) -> dict[str, Any]:
        """The constructor's keywords of this curvature beyond :attr:`settings` (none)."""
        return {}

    def extended(self, params: Sequence[Tensor]) -> Any:
        """The same operator over ``params``, a superset of :attr:`params`, settings kept.

        Data, loss and :attr:`settings` (micro-batching, method, mode, memory budget, block
        width, graph cache, generator, process group) are this operator's.

        Args:
            params: the parameters of the new operator, in flat-vector order; every tensor
                of :attr:`params` must be among them.

        Returns:
            A new operator of the same class; this one is unchanged.

        Raises:
            ValueError: a tensor of :attr:`params` is missing, or one is not a parameter of
                the model.
            TypeError: the new parameters mix dtypes or are not tensors.
        """
        params = list(params)
        missing = missing_from(self.params, params)
        if missing:
            raise ValueError(
                f"extended() takes a superset of the operator's parameters; shapes {missing[:4]} "
                "are missing. Pass [*op.params, *new_params]"
            )
        return type(self)(
            self.model,
            self.loss_fn,
            self.data,
            params=params,
            settings=self.settings,
            **self._curvature_keywords(),
        )

    def flat_params(self) -> Tensor:
        """The current parameters as one flat vector (a copy), shape ``(n,)``."""
        return flatten(p.detach() for p in self.params)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, "
            f"device={self.device}{self.reduction.describe()})"
        )
