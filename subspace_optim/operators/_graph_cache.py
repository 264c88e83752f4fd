"""A cache of per-micro-batch autograd graphs at one parameter point (private).

An eigensolve applies an operator many times at one point ``θ``. A back end that
differentiates a graph again and again (double backward through a gradient graph, or a
VJP through a forward graph) can build each micro-batch's graph once and reuse it for
every later product at that point. The cache is keyed by everything the loss reads that
can change in place, so it is never stale:

* each parameter's and buffer's version counter, storage and the integer sum of its bits
  (an optimizer step, ``p.data = ...``, a change through ``p.data`` such as weight
  clipping, a BatchNorm running-statistics update, ``load_state_dict``);
* the operator's ``train`` setting and the train/eval mode of every submodule;
* the identity, version and storage of every data tensor.

What the key cannot see is state outside tensors (a Python attribute the forward reads, a
stateful ``loss_fn``), for which operators must not cache, and a change of the data's values
through ``x.data``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from ._data import data_tensors, num_micro_batches

__all__ = ["GraphCache", "bits_sum", "resolve_cache_graph", "state_key"]

T = TypeVar("T")


#: the integer dtype of each element width, to read a tensor's bits
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits_sum(t: Tensor) -> Tensor:
    """The sum of ``t``'s elements read as integers of their own width (their bit
    patterns), in that width (wrapping around on overflow), as a 0-d ``int64`` tensor on
    ``t``'s device.

    Any change of one element changes it (two bit patterns of one width differ by a
    nonzero amount modulo ``2**width``), and so does any change of several unless they
    happen to compensate (a permutation of the values does). It reads ``t`` once, at the
    speed of a float sum, and needs no memory of ``t``'s size (a non-contiguous ``t`` is
    copied).
    """
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    bits = _BITS[flat.element_size()]
    return flat.view(bits).sum(dtype=bits).to(torch.int64)


def state_key(
    model: nn.Module, params: Sequence[Tensor], data: Any, train: bool | None
) -> tuple[Any, ...]:
    """Everything the loss of ``model`` over ``data`` reads that can change in place: the
    modes, every parameter (the operator's and the frozen ones the forward reads) and
    buffer by version counter, storage and :func:`bits_sum` (which sees a change through
    ``p.data``, as weight clipping makes, that moves neither of the other two), and the
    data by identity, version counter and storage.

    .. note::
        The data's values are not read (that would cost a pass over the data at every
        product): a change of the data through ``x.data`` is not seen. Free the cached
        graph after one (``with op.solve_scope(): pass``: a scope frees what was cached
        when it exits).
    """
    key: list[Any] = [train]
    key.extend(m.training for m in model.modules())
    # the operator's parameters are usually the model's: each tensor once
    tensors = list({id(t): t for t in (*params, *model.parameters(), *model.buffers())}.values())
    key.extend((t._version, t.data_ptr()) for t in tensors)
    if tensors:  # one synchronization for all the sums
        sums = [bits_sum(t).to(tensors[0].device) for t in tensors]
        key.append(tuple(torch.stack(sums).tolist()))
    for t in data_tensors(data):
        key.append((id(t), t._version, t.data_ptr()))
    return tuple(key)


class GraphCache(Generic[T]):
    """The graphs of one pass over the data, valid while the state key stays the same.

    Example:
        >>> cache = GraphCache()
        >>> cache.get(("θ0",), lambda: ["graph of θ0"])
        ['graph of θ0']
        >>> cache.get(("θ0",), lambda: ["rebuilt"])  # same key: reused
        ['graph of θ0']
        >>> cache.get(("θ1",), lambda: ["graph of θ1"])  # changed key: rebuilt
        ['graph of θ1']
        >>> cache.release(); cache.graphs is None
        True
    """

    def __init__(self) -> None:
        self.graphs: list[T] | None = None
        self.key: tuple[Any, ...] | None = None

    def get(self, key: tuple[Any, ...], build: Callable[[], list[T]]) -> list[T]:
        """The cached graphs if ``key`` matches, else ``build()`` (the old ones freed first)."""
        if self.graphs is None or key != self.key:
            self.release()
            self.graphs = build()
            self.key = key
        return self.graphs

    def release(self) -> None:
        """Free the graphs; the next :meth:`get` rebuilds them."""
        self.graphs = None
        self.key = None


def resolve_cache_graph(
    cache_graph: bool | None, *, method: str, cacheable: bool, data: Any, chunk_size: int | None
) -> bool:
    """Decide whether an operator caches its graphs.

    ``None`` caches when the back end can (``cacheable``) and ``data`` is one in-memory
    micro-batch (the cached graph is the one each product builds anyway, so peak memory does
    not grow); ``True`` caches every micro-batch of in-memory data; ``False`` never caches.

    Raises:
        TypeError: ``cache_graph`` is not a bool or ``None``.
        ValueError: ``True`` with a back end that cannot cache or with data that is not held
            in memory (a loader's batches may change between passes).
    """
    if cache_graph is not None and not isinstance(cache_graph, bool):
        raise TypeError(f"cache_graph must be True, False or None; got {cache_graph!r}")
    in_memory = isinstance(data, Sequence)
    if cache_graph is None:
        if not cacheable or not in_memory:
            return False
        return num_micro_batches(data, chunk_size) <= 1
    if cache_graph and not cacheable:
        raise ValueError(
            f"cache_graph=True needs method='autograd' (or 'auto'): method={method!r} "
            "rebuilds its forward pass by design. Drop cache_graph or the method"
        )
    if cache_graph and not in_memory:
        raise ValueError(
            f"cache_graph=True needs data held in memory (one batch or a list of batches); "
            f"got a {type(data).__name__}, whose batches may change between passes. "
            "Pass list(loader) or drop cache_graph"
        )
    return cache_graph
