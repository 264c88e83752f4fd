"""Bookkeeping shared by the online sources: blocks, stores, the refresh rule, counters and
checkpoints. A concrete source says what it stores per block and how a store becomes
directions (:class:`OnlineSource`'s four hooks).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._utils import check_int
from ..bases import BlockBasis
from ._pca import Directions

__all__ = ["Block", "OnlineSource"]

STORE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Block:
    """One parameter of the wrapper, as the source sees it.

    Attributes:
        offset: start of the parameter in the flat vector.
        size: its number of entries.
        k: directions kept for it (0: not projected, its update passes unchanged).
    """

    offset: int
    size: int
    k: int


class OnlineSource:
    """Base of :class:`~subspace_optim.UpdateHistory` and
    :class:`~subspace_optim.GradientSketch` (not public: implement
    :class:`~subspace_optim.SubspaceSource` for a new source).

    Args:
        k: directions per block (a group's ``"subspace_k"`` entry overrides it; 0 leaves
            the group's parameters unprojected).
        refresh_every: recompute the bases every this many observed steps, once ready.
        min_ndim: parameters with fewer dimensions (biases, norm gains: 1-D) are not
            projected.
        dtype: storage dtype of the per-block observations (``None``: float32, or the
            parameters' dtype if wider). ``torch.bfloat16`` halves the memory; directions are
            computed in float32 either way.
    """

    #: observations needed before the first refresh (set by each source)
    rows: int = 1

    def __init__(self, k: int, refresh_every: int, *, min_ndim: int, dtype: Any) -> None:
        self.k = check_int("k", k, low=1)
        self.refresh_every = check_int("refresh_every", refresh_every, low=1)
        self.min_ndim = check_int("min_ndim", min_ndim, low=0)
        if dtype is not None and dtype not in STORE_DTYPES:
            raise ValueError(f"dtype must be None or one of {STORE_DTYPES}; got {dtype!r}")
        self.dtype = dtype
        self.blocks: list[Block] = []
        self.bases: list[Tensor | None] = []
        self.singular_values: list[Tensor | None] = []
        self._stores: list[Tensor | None] = []
        self._shapes: list[tuple[int, ...]] = []
        self.observed = 0
        self._last_refresh: int | None = None
        self.counters: dict[str, float] = {
            "refreshes": 0,
            "skipped_refreshes": 0,
            "refresh_seconds": 0.0,
        }

    # ------------------------------------------------------------ hooks
    def _check_block(self, shape: tuple[int, ...], k: int) -> None:
        """Raise ``ValueError`` when ``k`` directions cannot be learned for ``shape``."""
        raise NotImplementedError

    def _new_store(self, size: int, like: Tensor) -> Tensor:
        """An empty ``(rows, size)`` store."""
        return torch.zeros(self.rows, size, dtype=self._store_dtype(like), device=like.device)

    def _push(self, signal: Tensor) -> None:
        """Record one flat observation into every block's store."""
        raise NotImplementedError

    def _directions(self, store: Tensor, k: int) -> Directions | None:
        """Directions of one block's store, or ``None`` (non-finite or empty)."""
        raise NotImplementedError

    def _signal(self, update: Tensor, grad: Tensor) -> Tensor:
        """Which flat vector the source learns from."""
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    # ------------------------------------------------------------ protocol
    def _store_dtype(self, like: Tensor) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.float64 if like.dtype == torch.float64 else torch.float32

    def bind(self, params: Sequence[Tensor], ks: Sequence[int | None]) -> None:
        """See :meth:`~subspace_optim.SubspaceSource.bind` (appends the new parameters on a
        second call; the first ones must be the same)."""
        old = len(self._shapes)
        shapes = [tuple(p.shape) for p in params]
        if shapes[:old] != self._shapes:
            raise ValueError(
                "this source is already bound to other parameters; a source serves one "
                "optimizer: build a new one for each SubspaceProjectedOptimizer"
            )
        blocks, offset = [], sum(b.size for b in self.blocks)
        for p, k in zip(params[old:], ks[old:]):
            kb = self.k if k is None else check_int("subspace_k", k, low=0)
            if p.dim() < self.min_ndim:
                kb = 0
            if kb:
                self._check_block(tuple(p.shape), kb)
            blocks.append(Block(offset=offset, size=p.numel(), k=kb))
            offset += p.numel()
        for p, block in zip(params[old:], blocks):  # nothing changed before this line
            self.blocks.append(block)
            self._stores.append(self._new_store(block.size, p) if block.k else None)
            self.bases.append(None)
            self.singular_values.append(None)
        self._shapes = shapes

    def due(self) -> bool:
        """Enough observations, and ``refresh_every`` of them since the last refresh."""
        if self.observed < self.rows:
            return False
        return (
            self._last_refresh is None or self.observed - self._last_refresh >= self.refresh_every
        )

    @torch.no_grad()
    def refresh(self, step: int) -> float | None:
        """See :meth:`~subspace_optim.SubspaceSource.refresh`. A block whose store holds
        NaN/Inf keeps its previous basis, its store is emptied, and
        ``counters["skipped_refreshes"]`` counts it."""
        if not self.due():
            return None
        start = time.perf_counter()
        for i, (block, store) in enumerate(zip(self.blocks, self._stores)):
            if store is None:
                continue
            found = self._directions(store, block.k)
            if found is None:
                if not bool(torch.isfinite(store).all()):
                    store.zero_()
                    self.counters["skipped_refreshes"] += 1
                continue
            self.bases[i], self.singular_values[i] = found.basis, found.singular_values
        self._last_refresh = self.observed
        seconds = time.perf_counter() - start
        self.counters["refreshes"] += 1
        self.counters["refresh_seconds"] += seconds
        return seconds

    def basis(self) -> BlockBasis | None:
        """See :meth:`~subspace_optim.SubspaceSource.basis`."""
        if all(U is None for U in self.bases):
            return None
        return BlockBasis(
            offsets=[b.offset for b in self.blocks],
            sizes=[b.size for b in self.blocks],
            bases=list(self.bases),
        )

    @torch.no_grad()
    def observe(self, update: Tensor, grad: Tensor) -> None:
        """See :meth:`~subspace_optim.SubspaceSource.observe`."""
        if not self.blocks:
            raise RuntimeError("the source is not bound: pass it to SubspaceProjectedOptimizer")
        self._push(self._signal(update, grad))
        self.observed += 1

    def memory_bytes(self) -> int:
        """Bytes held by the stores and bases (the source's whole memory)."""
        tensors = [t for t in (*self._stores, *self.bases) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def pieces(self, vec: Tensor) -> list[Tensor | None]:
        """The slice of ``vec`` (``(n,)``) of each projected block (``None`` for others)."""
        return [vec[b.offset : b.offset + b.size] if b.k else None for b in self.blocks]

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """See :meth:`~subspace_optim.SubspaceSource.state_dict` (tensors cloned)."""

        def clone(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return {
            "kind": type(self).__name__,
            "ks": [b.k for b in self.blocks],
            "sizes": [b.size for b in self.blocks],
            "stores": [clone(t) for t in self._stores],
            "bases": [clone(t) for t in self.bases],
            "singular_values": [clone(t) for t in self.singular_values],
            "observed": self.observed,
            "last_refresh": self._last_refresh,
            "counters": dict(self.counters),
            **self._extra_state(),
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """See :meth:`~subspace_optim.SubspaceSource.check_state_dict`."""
        if state.get("kind") != type(self).__name__:
            raise ValueError(
                f"the checkpoint's source is {state.get('kind')!r}, this optimizer's is "
                f"{type(self).__name__!r}: build the optimizer with the source it was saved with"
            )
        ks, sizes = [b.k for b in self.blocks], [b.size for b in self.blocks]
        if list(state["ks"]) != ks or list(state["sizes"]) != sizes:
            raise ValueError(
                "the checkpoint's source has other blocks (per-parameter k or sizes) than this "
                "one: build it with the same k, min_ndim and parameter groups"
            )
        for mine, saved in zip(self._stores, state["stores"]):
            if (mine is None) != (saved is None) or (
                mine is not None and tuple(mine.shape) != tuple(saved.shape)
            ):
                raise ValueError(
                    "the checkpoint's source stores have other shapes than this one: build "
                    "it with the same window (or sketch) size"
                )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """See :meth:`~subspace_optim.SubspaceSource.load_state_dict`."""
        self.check_state_dict(state)
        for mine, saved in zip(self._stores, state["stores"]):
            if mine is not None:
                mine.copy_(saved)

        def moved(t: Tensor | None, like: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            device = like.device if like is not None else t.device
            return t.to(device=device).clone()

        self.bases = [moved(t, s) for t, s in zip(state["bases"], self._stores)]
        self.singular_values = [moved(t, s) for t, s in zip(state["singular_values"], self._stores)]
        self.observed = int(state["observed"])
        last = state["last_refresh"]
        self._last_refresh = None if last is None else int(last)
        self.counters = {**self.counters, **state["counters"]}
        self._load_extra_state(state)

    def _settings(self) -> str:
        return f"k={self.k}, refresh_every={self.refresh_every}, min_ndim={self.min_ndim}"

    def __repr__(self) -> str:
        dtype = "" if self.dtype is None else f", dtype={self.dtype}"
        return f"{type(self).__name__}({self._settings()}{dtype})"
