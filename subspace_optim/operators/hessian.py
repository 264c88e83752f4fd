"""Matrix-free Hessian of a model's mean training loss over one batch or a whole dataset.

.. math::

    L(\\theta) = \\frac{1}{N} \\sum_{i=1}^{N} \\ell(f_\\theta(x_i), y_i), \\qquad
    H(\\theta) = \\nabla^2_\\theta L(\\theta)

over the flattened trainable parameters. ``loss_fn(outputs, targets)`` returns the *mean*
loss of a batch; batches of unequal size are weighted by their number of examples, so the
operator is the Hessian of the mean over all examples, whatever the batching.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._utils import block_to_columns, check_int, choice, flatten, unflatten
from .base import LinearOperator

__all__ = ["HVP_METHODS", "HessianOperator"]

#: HVP back ends: ``"autograd"`` (double backward, one forward and one gradient graph per
#: micro-batch shared by the whole block), ``"func"`` (forward-over-reverse ``jvp∘grad`` from
#: torch.func, ``vmap``-ed over the block) and ``"auto"``.
HVP_METHODS = ("auto", "autograd", "func")

Batch = tuple[Any, Tensor]

_RAN_DRY = (
    "data yielded no examples although it was not empty at construction: it is probably a "
    "one-shot iterable (its __iter__ returns an exhausted iterator). Pass a list of batches "
    "or a DataLoader"
)


def _batch_size(x: Any) -> int:
    if isinstance(x, Tensor):
        return x.shape[0] if x.ndim else 0
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], Tensor):
        return x[0].shape[0]
    raise TypeError(
        f"inputs must be a Tensor or a tuple of Tensors; got {type(x).__name__}. "
        "Wrap other input types in a module that takes a Tensor."
    )


def _is_single_batch(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[1], Tensor)
        and (
            isinstance(data[0], Tensor)
            or (
                isinstance(data[0], (tuple, list))
                and bool(data[0])
                and all(isinstance(t, Tensor) for t in data[0])
            )
        )
    )


def _check_batch(batch: Any, index: int) -> int:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            f"batch {index} of data is a {type(batch).__name__}; each batch must be an "
            "(inputs, targets) pair"
        )
    x, y = batch
    if not isinstance(y, Tensor):
        raise TypeError(f"batch {index}: targets must be a Tensor; got {type(y).__name__}")
    nx, ny = _batch_size(x), (y.shape[0] if y.ndim else 0)
    if nx != ny:
        raise ValueError(
            f"batch {index}: inputs hold {nx} examples but targets hold {ny}; "
            "the first dimension of both must be the batch dimension"
        )
    for t in x if isinstance(x, (tuple, list)) else (x,):
        if t.is_complex():
            raise TypeError(
                f"batch {index}: complex inputs are not supported; pass real tensors (e.g. "
                "torch.view_as_real(x))"
            )
    return nx


def _split(x: Any, size: int) -> list[Any]:
    if isinstance(x, Tensor):
        return list(torch.split(x, size))
    pieces = [torch.split(t, size) for t in x]
    return [type(x)(p) for p in zip(*pieces)]


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    return type(x)(t.to(device, non_blocking=True) for t in x)


@dataclass(frozen=True)
class BlockMemoryEstimate:
    """Estimated peak memory of one block product, as a function of its width.

    ``peak(w) = fixed_bytes + w · bytes_per_column`` (see :class:`HessianOperator`'s note on
    ``memory_budget`` for how the two numbers follow from the measurement).

    Attributes:
        method: the HVP back end the estimate is for (``"autograd"`` or ``"func"``).
        graph_bytes: ``G``, bytes autograd saved for one micro-batch's loss and gradient
            graph, measured once on the first micro-batch.
        fixed_bytes: the part of the peak that does not grow with the width.
        bytes_per_column: what each further column adds.
    """

    method: str
    graph_bytes: int
    fixed_bytes: int
    bytes_per_column: int

    def peak(self, width: int) -> int:
        """Estimated peak bytes of a sub-block of ``width`` columns."""
        return self.fixed_bytes + width * self.bytes_per_column

    def max_width(self, budget: int) -> int:
        """The widest sub-block whose estimated peak fits in ``budget`` bytes (may be 0)."""
        return max(0, (budget - self.fixed_bytes) // self.bytes_per_column)

    def describe(self) -> str:
        return (
            f"method {self.method!r}: {self.fixed_bytes:,} bytes fixed + "
            f"{self.bytes_per_column:,} per column; gradient graph of one micro-batch "
            f"{self.graph_bytes:,} bytes"
        )


@dataclass
class _ChunkGraph:
    """One micro-batch's loss, gradient graph (``None`` for unused leaves) and example count.

    ``live`` indexes the gradients that depend on the parameters (the ones double backward
    differentiates).
    """

    leaves: list[Tensor]
    loss: Tensor
    grads: tuple[Tensor | None, ...]
    live: list[int]
    count: int


def _saved_bytes(fn: Callable[[], Any], exclude: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
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


class HessianOperator(LinearOperator):
    """Hessian of the mean loss of ``model`` over ``data``, as a matrix-free operator.

    Products are evaluated at the parameters' *current* values, so one operator follows the
    model through training. Parameters, buffers (BatchNorm running statistics) and ``.grad``
    are left bit-for-bit unchanged by every product.

    Args:
        model: the network. Its parameters are read live; buffers are cloned for each pass.
        loss_fn: ``loss_fn(outputs, targets)`` returning the mean loss of a batch (a scalar).
        data: one ``(inputs, targets)`` batch, or a re-iterable of such batches (a list, a
            ``DataLoader``): the whole training set, as in the paper. ``inputs`` is a Tensor
            (or a tuple of Tensors passed as ``model(*inputs)``) whose first dimension is the
            batch. A one-shot iterator (a generator) is refused, because every product
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

    Attributes:
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
        later one only differentiates that graph again (``benchmarks/hvp.py`` measures a
        shared graph per column against a fresh one). Before each product the operator
        compares a key of everything the loss reads: each parameter's and buffer's
        version counter and storage (an optimizer step, ``p.data = ...``, a BatchNorm
        running-statistics update or ``load_state_dict`` all change it), the train/eval
        mode of every submodule, and the identity, version and storage of every data
        tensor. A changed key rebuilds the graph. What the key cannot see is state outside
        tensors (a Python attribute the forward reads, a stateful ``loss_fn``): pass
        ``cache_graph=False`` for such models. Dropout in train mode draws its masks once
        per cached graph, so repeated products at one ``θ`` apply the same (symmetric)
        matrix. :meth:`release_graph` frees the cache early; the subspace optimizer and
        :func:`~subspace_optim.top_k_eigenpairs` call it when their solve is done.

    .. note::
        ``method="auto"`` picks double backward because it works for every model and
        loss (in torch 2.13, ``F.mse_loss`` breaks torch.func's forward-over-reverse with
        "ZeroTensors are immutable") and shares one forward pass and one gradient graph
        across a whole block of vectors. Which back end is faster depends on the model and
        the machine (``benchmarks/hvp.py`` and ``docs/performance.md`` measure both; on the
        digits MLP the two were within about 20% of each other on a 2-core CPU), so pass
        ``method="func"`` where it measures faster. ``"auto"`` is a fixed rule, never a
        timing race: a fresh process makes the same choice, so checkpoint-resume stays
        bit-for-bit.

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

        The multiples of ``G`` are calibrated against measured peaks (RSS on a CPU, tanh MLP,
        ``benchmarks/memory.py``, which prints both), where the estimate came out at or above
        the measured peak, by a wide margin for whole-data-set ``vmap`` passes. Limits:
        the estimate counts tensors, not allocator caching or fragmentation; other
        architectures may need other multiples; and it is measured on the first
        micro-batch only (larger later batches, or data-dependent control flow, use more). The input block, the output block and (distributed) the
        all-reduce buffer, ``n·b`` numbers each, come on top. ``benchmarks/memory.py``
        compares the estimate with measured peaks (``docs/memory_benchmark.md``).

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

    #: whether this process's data may hold no examples (a data-parallel subclass: another
    #: rank has data); the single-process operator refuses empty data at construction
    _allow_empty_data = False
    #: whether a too small ``memory_budget`` is refused by the subclass in a collective (so
    #: that every rank raises, not only the ranks whose first micro-batch is large)
    _collective_budget_check = False

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
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        orig = getattr(model, "_orig_mod", None)
        if isinstance(orig, nn.Module):
            # a torch.compile'd model: products run on the eager module underneath (it shares
            # the parameters; aot_autograd has no double backward, and the solve stays eager)
            model = orig
        self.model = model
        self.loss_fn = loss_fn
        self.method = choice("method", method, HVP_METHODS)
        if chunk_size is not None:
            check_int("chunk_size", chunk_size, low=1)
        self.chunk_size = chunk_size
        if train is not None and not isinstance(train, bool):
            raise TypeError(f"train must be True, False or None; got {train!r}")
        self.train = train

        names = {id(p): name for name, p in model.named_parameters()}
        if params is None:
            chosen = [p for p in model.parameters() if p.requires_grad]
        else:
            if isinstance(params, Tensor):
                params = [params]
            chosen = []
            seen: set[int] = set()
            for p in params:
                if not isinstance(p, Tensor):
                    raise TypeError(f"params must be tensors; got {type(p).__name__}")
                if id(p) not in names:
                    raise ValueError(
                        f"a tensor of shape {tuple(p.shape)} in params is not a parameter of "
                        "the model; pass tensors from model.parameters()"
                    )
                if id(p) not in seen:
                    seen.add(id(p))
                    chosen.append(p)
        if not chosen:
            raise ValueError(
                "the model has no trainable parameters (none with requires_grad); pass params="
            )
        dtypes = {p.dtype for p in chosen}
        devices = {p.device for p in chosen}
        if len(dtypes) > 1:
            raise TypeError(f"parameters mix dtypes {sorted(map(str, dtypes))}; use one dtype")
        if len(devices) > 1:
            raise ValueError(
                f"parameters live on several devices {sorted(map(str, devices))}; move the "
                "model to one device"
            )
        (dtype,) = dtypes
        if not dtype.is_floating_point:
            raise TypeError(f"parameters must be real floating point; got {dtype}")
        chosen_ids = {id(p) for p in chosen}
        for mod_name, module in model.named_modules():
            if (
                isinstance(module, (nn.Embedding, nn.EmbeddingBag))
                and module.sparse
                and id(module.weight) in chosen_ids
            ):
                raise TypeError(
                    f"module {mod_name!r} is an {type(module).__name__} with sparse=True: sparse "
                    "gradients can be neither differentiated twice nor projected. Build it "
                    "with sparse=False"
                )
        self.params: list[Tensor] = chosen
        self.param_names = [names[id(p)] for p in chosen]
        n = sum(p.numel() for p in chosen)
        self.shape = (n, n)
        self.param_dtype = dtype
        # half-precision parameters: products (hence the basis and the eigensolve) in float32
        self.dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self.device = next(iter(devices))

        if _is_single_batch(data):
            self.data: Any = [tuple(data)]
        else:
            if isinstance(data, (str, bytes, Tensor)) or not isinstance(data, Iterable):
                raise TypeError(
                    "data must be one (inputs, targets) batch or an iterable of such batches; "
                    f"got {type(data).__name__}"
                )
            if isinstance(data, Iterator):
                raise TypeError(
                    "data is a one-shot iterator (e.g. a generator): it would be exhausted "
                    "after the first Hessian product. Pass a list of batches or a DataLoader."
                )
            self.data = data
        self._validate_data()

        if max_block_size is not None:
            check_int("max_block_size", max_block_size, low=1)
        if memory_budget is not None:
            check_int("memory_budget", memory_budget)
            if memory_budget <= 0:
                raise ValueError(
                    f"memory_budget is in bytes and must be positive (e.g. 2**30 for 1 GiB); "
                    f"got {memory_budget}. Omit it for no limit"
                )
        self.max_block_size = max_block_size
        self.memory_budget = memory_budget
        self.memory_estimate: BlockMemoryEstimate | None = None
        self.block_size: int | None = max_block_size
        if memory_budget is not None:
            self.memory_estimate = self._estimate_block_memory()
            width = self.memory_estimate.max_width(memory_budget)
            if width < 1 and not self._collective_budget_check:
                raise ValueError(self._budget_message())
            width = max(width, 1)  # a data-parallel subclass refuses 0 with one collective
            self.block_size = width if max_block_size is None else min(width, max_block_size)

        self.caches_graph = self._resolve_cache_graph(cache_graph)
        self._graph: list[_ChunkGraph] | None = None
        self._graph_key: tuple[Any, ...] | None = None

    def _num_micro_batches(self) -> int:
        """Micro-batches in one pass over in-memory ``data`` (no tensor is moved)."""
        total = 0
        for i, batch in enumerate(self.data):
            count = _check_batch(batch, i)
            if count:
                total += 1 if self.chunk_size is None else -(-count // self.chunk_size)
        return total

    def _resolve_cache_graph(self, cache_graph: bool | None) -> bool:
        if cache_graph is not None and not isinstance(cache_graph, bool):
            raise TypeError(f"cache_graph must be True, False or None; got {cache_graph!r}")
        in_memory = isinstance(self.data, Sequence)
        if cache_graph is None:
            if self._resolved_method() != "autograd" or not in_memory:
                return False
            return self._num_micro_batches() <= 1
        if cache_graph and self._resolved_method() != "autograd":
            raise ValueError(
                "cache_graph=True needs method='autograd' (or 'auto'): torch.func products "
                "rebuild their forward pass by design. Drop cache_graph or the method"
            )
        if cache_graph and not in_memory:
            raise ValueError(
                f"cache_graph=True needs data held in memory (one batch or a list of batches); "
                f"got a {type(self.data).__name__}, whose batches may change between passes. "
                "Pass list(loader) or drop cache_graph"
            )
        return cache_graph

    def _budget_message(self) -> str:
        estimate = self.memory_estimate
        assert estimate is not None and self.memory_budget is not None
        return (
            f"memory_budget={self.memory_budget:,} bytes is too small for one column: the "
            f"estimated peak of a 1-column product is {estimate.peak(1):,} bytes "
            f"({estimate.describe()}). Raise memory_budget, lower chunk_size (the gradient "
            "graph shrinks with the micro-batch) or omit memory_budget"
        )

    # ------------------------------------------------------------------ data
    def _validate_data(self) -> None:
        if isinstance(self.data, Sequence):
            batches: Iterable[Any] = self.data
        else:  # only look at the first batch of a loader: a full pass could be expensive
            iterator = iter(self.data)
            if iterator is self.data or (
                not isinstance(self.data, torch.utils.data.DataLoader)  # persistent workers reuse
                and iter(self.data) is iterator
            ):
                raise TypeError(
                    f"data ({type(self.data).__name__}) hands out the same iterator every time: "
                    "it would be exhausted after the first Hessian product. Pass a list of "
                    "batches or a DataLoader"
                )
            first = next(iterator, None)
            batches = [] if first is None else [first]
        total = 0
        for i, batch in enumerate(batches):
            total += _check_batch(batch, i)
        if total == 0 and not self._allow_empty_data:
            raise ValueError(
                "data yields no examples; pass at least one non-empty (inputs, targets) batch"
            )

    def chunks(self) -> Iterator[tuple[Any, Tensor, int]]:
        """Yield ``(inputs, targets, count)`` micro-batches on the operator's device."""
        for i, batch in enumerate(self.data):
            count = _check_batch(batch, i)
            if count == 0:
                continue
            x, y = batch
            if self.chunk_size is None or count <= self.chunk_size:
                yield _to(x, self.device), y.to(self.device, non_blocking=True), count
                continue
            for xs, ys in zip(_split(x, self.chunk_size), torch.split(y, self.chunk_size)):
                yield _to(xs, self.device), ys.to(self.device, non_blocking=True), ys.shape[0]

    # ------------------------------------------------------- functional model
    @contextlib.contextmanager
    def _evaluation_context(self) -> Iterator[None]:
        """The settings every pass of the operator runs under, and its failure rule.

        Gradients on, autocast off, the model in the requested mode, and scaled dot-product
        attention on its math kernel: the fused kernels (flash, memory-efficient, cuDNN)
        have no double backward, so a Hessian product through ``nn.MultiheadAttention`` or
        ``F.scaled_dot_product_attention`` would fail on them. A pass that raises frees
        the cached gradient graph, so a retry rebuilds it instead of reusing a graph built
        by the failed call.
        """
        model = self.model
        previous = model.training
        if self.train is not None and self.train != previous:
            model.train(self.train)
        try:
            device_type = self.device.type if self.device.type in ("cuda", "cpu") else "cpu"
            with (
                torch.enable_grad(),
                torch.autocast(device_type, enabled=False),
                sdpa_kernel(SDPBackend.MATH),
            ):
                yield
        except BaseException:
            self.release_graph()
            raise
        finally:
            if self.train is not None and self.train != previous:
                model.train(previous)

    def _loss(self, tensors: Sequence[Tensor], x: Any, y: Tensor) -> Tensor:
        state: dict[str, Tensor] = dict(zip(self.param_names, tensors))
        # buffers are cloned so that BatchNorm running statistics never move
        for name, b in self.model.named_buffers():
            state[name] = self._upcast(b) if self._upcasting else b.clone()
        args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        if self._upcasting:
            args, y = tuple(self._upcast(a) for a in args), self._upcast(y)
        out = functional_call(self.model, state, args, strict=False, tie_weights=True)
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

    def _estimate_block_memory(self) -> BlockMemoryEstimate:
        """Measure ``G`` on the first micro-batch and apply the rule of the class note."""
        method = self._resolved_method()
        first = next(iter(self.chunks()), None)
        graph = 0
        if first is not None:  # a data-parallel rank with an empty shard holds no graph
            x, y, _ = first
            inputs = list(x) if isinstance(x, (tuple, list)) else [x]
            with self._evaluation_context():
                leaves = self._leaves()

                def run() -> None:
                    loss = self._loss(leaves, x, y)
                    torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)

                graph = _saved_bytes(run, [*leaves, *self.params, *inputs, y])
        col = self.shape[0] * torch.empty((), dtype=self.dtype).element_size()
        if method == "autograd":
            return BlockMemoryEstimate(method, graph, 5 * graph + 2 * col, 2 * col)
        return BlockMemoryEstimate(method, graph, graph, 4 * graph + 3 * col)

    # -------------------------------------------------------------- products
    def _resolved_method(self) -> str:
        return "autograd" if self.method == "auto" else self.method

    def _chunk_graph(self, x: Any, y: Tensor, count: int) -> _ChunkGraph:
        """Loss of one micro-batch and its gradient graph, ready for double backward."""
        leaves = self._leaves()
        loss = self._loss(leaves, x, y)
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return _ChunkGraph(leaves, loss, grads, live, count)

    def _graph_hvp(self, graph: _ChunkGraph, V: Tensor, *, keep: bool) -> Tensor:
        """``H_chunk V`` by double backward through ``graph``; ``keep=False`` frees it."""
        out = torch.zeros_like(V)
        if not graph.live:
            return out
        b = V.shape[1]
        parts_V = unflatten(V, self.params)
        for j in range(b):
            hv = torch.autograd.grad(
                [graph.grads[i] for i in graph.live],
                graph.leaves,
                grad_outputs=[parts_V[i][j] for i in graph.live],
                retain_graph=keep or j < b - 1,
                allow_unused=True,
            )
            out[:, j] = flatten(
                torch.zeros_like(p, dtype=self.dtype) if h is None else h
                for h, p in zip(hv, self.params)
            )
        return out

    def _chunk_hvp_autograd(self, x: Any, y: Tensor, V: Tensor) -> Tensor:
        return self._graph_hvp(self._chunk_graph(x, y, 0), V, keep=False)

    # ----------------------------------------------------------- graph cache
    def _state_key(self) -> tuple[Any, ...]:
        """Everything the loss reads that can change in place (see the class note)."""
        key: list[Any] = [self.train]
        key.extend(m.training for m in self.model.modules())
        for t in (*self.params, *self.model.buffers()):
            key.append((t._version, t.data_ptr()))
        for batch in self.data:
            x, y = batch
            for t in (*(x if isinstance(x, (tuple, list)) else (x,)), y):
                if isinstance(t, Tensor):
                    key.append((id(t), t._version, t.data_ptr()))
        return tuple(key)

    def _cached_graphs(self) -> list[_ChunkGraph]:
        key = self._state_key()
        if self._graph is None or key != self._graph_key:
            self.release_graph()
            self._graph = [self._chunk_graph(x, y, m) for x, y, m in self.chunks()]
            self._graph_key = key
        return self._graph

    def release_graph(self) -> None:
        """Free the cached gradient graph (the next product rebuilds it); a no-op without one."""
        self._graph = None
        self._graph_key = None

    def _chunk_hvp_func(self, x: Any, y: Tensor, V: Tensor) -> Tensor:
        primals = tuple(p.detach().to(self.dtype) for p in self.params)

        def loss_of(tensors: tuple[Tensor, ...]) -> Tensor:
            return self._loss(tensors, x, y)

        grad_fn = torch.func.grad(loss_of)

        def hvp(tangents: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return torch.func.jvp(grad_fn, (primals,), (tangents,))[1]

        b = V.shape[1]
        parts = tuple(unflatten(V, self.params))
        if b == 1:
            hv = hvp(tuple(p[0] for p in parts))
            return flatten(hv).unsqueeze(1)
        return block_to_columns(torch.func.vmap(hvp)(parts), b)

    def _local_matmat(self, V: Tensor) -> tuple[Tensor, int]:
        """Unnormalized ``Σ_chunks count · H_chunk V`` and the number of examples.

        Columns go :attr:`block_size` at a time, each sub-block in its own pass over the
        data; a column's result does not depend on the other columns of its pass.
        """
        b = V.shape[1]
        width = b if self.block_size is None else min(b, self.block_size)
        total = torch.zeros_like(V)
        count = 0
        with self._evaluation_context():
            graphs = self._cached_graphs() if self.caches_graph else None
            for start in range(0, b, width):
                W = V[:, start : start + width]
                part = total[:, start : start + width]
                count = 0
                if graphs is not None:
                    for graph in graphs:
                        part.add_(self._graph_hvp(graph, W, keep=True), alpha=graph.count)
                        count += graph.count
                    continue
                for x, y, m in self.chunks():
                    part.add_(self._chunk_hvp(x, y, W), alpha=m)
                    count += m
        return total, count

    def _chunk_hvp(self, x: Any, y: Tensor, V: Tensor) -> Tensor:
        if self._resolved_method() == "autograd":
            return self._chunk_hvp_autograd(x, y, V)
        try:
            return self._chunk_hvp_func(x, y, V)
        except RuntimeError as exc:
            raise RuntimeError(
                f"method='func' (torch.func jvp of grad) failed on this model/loss: "
                f"{exc}. Use method='autograd' (the default), which supports every "
                "model (in torch 2.13, F.mse_loss breaks forward-over-reverse)."
            ) from exc

    def _matmat(self, V: Tensor) -> Tensor:
        total, count = self._local_matmat(V)
        if count == 0:
            raise ValueError(_RAN_DRY)
        return total.div_(count)

    # -------------------------------------------------------------- gradient
    def _local_loss_and_grad(self) -> tuple[Tensor, Tensor, int]:
        loss_sum = torch.zeros((), dtype=self.dtype, device=self.device)
        grad_sum = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        count = 0
        with self._evaluation_context():
            for loss, grads, m in self._losses_and_grads():
                g = flatten(
                    torch.zeros_like(p, dtype=self.dtype) if gi is None else gi.detach()
                    for gi, p in zip(grads, self.params)
                )
                grad_sum.add_(g, alpha=m)
                loss_sum += loss.detach().to(self.dtype) * m
                count += m
        return loss_sum, grad_sum, count

    def _losses_and_grads(self) -> Iterator[tuple[Tensor, Sequence[Tensor | None], int]]:
        """``(loss, gradients, count)`` of each micro-batch, from the graph cache if on.

        With the cache, the graph built here is the one the products that follow at this
        ``θ`` (a refresh) reuse, so they skip the forward pass.
        """
        if self.caches_graph:
            for graph in self._cached_graphs():
                yield graph.loss, graph.grads, graph.count
            return
        for x, y, m in self.chunks():
            leaves = self._leaves()
            loss = self._loss(leaves, x, y)
            yield loss, torch.autograd.grad(loss, leaves, allow_unused=True), m

    def loss_and_grad(self) -> tuple[Tensor, Tensor]:
        """Mean loss and its flat gradient ``∇L`` over all of ``data``, shapes ``()`` and ``(n,)``.

        Does not touch ``.grad`` of the parameters.
        """
        loss_sum, grad_sum, count = self._local_loss_and_grad()
        if count == 0:
            raise ValueError(_RAN_DRY)
        return loss_sum / count, grad_sum / count

    # -------------------------------------------------------------- protocol
    def _settings(self) -> dict[str, Any]:
        """The constructor's keywords (all but ``params``) that reproduce this operator."""
        return {
            "chunk_size": self.chunk_size,
            "method": self.method,
            "train": self.train,
            "max_block_size": self.max_block_size,
            "memory_budget": self.memory_budget,
            "cache_graph": self.caches_graph,
        }

    def extended(self, params: Sequence[Tensor]) -> HessianOperator:
        """The same operator over ``params``, a superset of :attr:`params`, settings kept.

        Data, micro-batching, method, mode, memory budget, block width and graph cache are
        those of this operator (and the process group, for a data-parallel one).

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
        kept = {id(p) for p in params}
        missing = [tuple(p.shape) for p in self.params if id(p) not in kept]
        if missing:
            raise ValueError(
                f"extended() takes a superset of the operator's parameters; shapes {missing[:4]} "
                "are missing. Pass [*op.params, *new_params]"
            )
        return type(self)(self.model, self.loss_fn, self.data, params=params, **self._settings())

    def flat_params(self) -> Tensor:
        """The current parameters as one flat vector (a copy), shape ``(n,)``."""
        return flatten(p.detach() for p in self.params)
