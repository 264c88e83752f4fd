"""`GradientSketch`: the dominant directions of each parameter block's mini-batch gradient
covariance, streamed through a Frequent Directions sketch."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .._utils import check_int, check_positive_float
from ._online import OnlineSource
from ._pca import Directions, frequent_directions_shrink, gram_directions

__all__ = ["GradientSketch"]


class GradientSketch(OnlineSource):
    """Per parameter block, the top-``k`` eigenvectors of the uncentred covariance of the
    mini-batch gradients ``Σ_t g_t g_tᵀ``, tracked by a Frequent Directions sketch of
    ``sketch`` rows (Liberty 2013; the fast variant of Ghashami et al. 2016).

    Each step's gradient of block ``b`` fills an empty row of its ``(ℓ, n_b)`` sketch
    ``B``; when no row is empty, ``B`` is shrunk
    (``sources/_pca.py``): its top
    ``⌈ℓ/2⌉`` directions are kept with their spread reduced by the ``⌊ℓ/2⌋``-th, the rest
    emptied, and everything multiplied by ``√decay`` (``decay < 1`` forgets old gradients
    geometrically). The basis is the sketch's top-``k`` right singular vectors, recomputed
    every ``refresh_every`` steps once the sketch has been filled. Blocks, per-group ``k``
    and ``min_ndim`` follow the rule of :class:`~subspace_optim.UpdateHistory`.

    Memory: ``sketch × n`` entries of ``dtype`` for ``n`` projected entries, plus the bases.
    A step costs one copy of the gradient; a shrink, every ``⌊ℓ/2⌋`` steps, ``O(ℓ² n)``.

    Args:
        k: directions per block, ``1 <= k < sketch``.
        sketch: rows of the sketch ``ℓ`` (default ``2k + 2``).
        refresh_every: steps between refreshes, once the sketch has been filled.
        decay: in ``(0, 1]``: the factor each shrink multiplies the sketch's second
            moment by (default 1: Frequent Directions as published).
        min_ndim: parameters with fewer dimensions are not projected (default 2).
        dtype: storage dtype of the sketch (``None``: float32).

    Raises:
        TypeError, ValueError: a setting out of range, or a block smaller than ``sketch``.

    Example:
        >>> import torch
        >>> import subspace_optim as so
        >>> model = torch.nn.Linear(8, 4)
        >>> src = so.GradientSketch(k=2, sketch=4, refresh_every=2)
        >>> opt = so.SubspaceProjectedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
        ...                                     src, mode="bulk")
        >>> x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
        >>> for _ in range(6):
        ...     opt.zero_grad(); model(x).square().mean().backward(); opt.step()
        >>> tuple(src.bases[0].shape), opt.last_stats.projected
        ((32, 2), True)
    """

    def __init__(
        self,
        k: int = 4,
        sketch: int | None = None,
        refresh_every: int = 16,
        *,
        decay: float = 1.0,
        min_ndim: int = 2,
        dtype: Any = None,
    ) -> None:
        super().__init__(k, refresh_every, min_ndim=min_ndim, dtype=dtype)
        self.sketch = check_int("sketch", 2 * self.k + 2 if sketch is None else sketch, low=2)
        if self.k >= self.sketch:
            raise ValueError(f"k={k} must be smaller than sketch={self.sketch}")
        self.decay = check_positive_float("decay", decay)
        if self.decay > 1:
            raise ValueError(f"decay must be in (0, 1]; got {decay}")
        self.rows = self.sketch
        self._used = 0  # filled rows of every sketch

    def _check_block(self, shape: tuple[int, ...], k: int) -> None:
        size = math.prod(shape)
        if k >= self.sketch or self.sketch > size:
            raise ValueError(
                f"a parameter of shape {shape} has {size} entries, too few for a sketch of "
                f"{self.sketch} rows (k={k}); give its group 'subspace_k': 0 to leave it "
                "unprojected, or a smaller k"
            )

    def _signal(self, update: Tensor, grad: Tensor) -> Tensor:
        return grad

    def _push(self, signal: Tensor) -> None:
        if self._used == self.sketch:
            for store in self._stores:
                if store is not None:
                    store.copy_(frequent_directions_shrink(store, decay=self.decay))
            self._used = self.sketch - self.sketch // 2
        row = self._used
        for store, piece in zip(self._stores, self.pieces(signal)):
            if store is not None and piece is not None:
                store[row].copy_(piece)
        self._used = row + 1

    def _directions(self, store: Tensor, k: int) -> Directions | None:
        return gram_directions(store, k, center=False)

    def _extra_state(self) -> dict[str, Any]:
        return {"used": self._used}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._used = int(state["used"])

    def _settings(self) -> str:
        return (
            f"k={self.k}, sketch={self.sketch}, refresh_every={self.refresh_every}, "
            f"decay={self.decay}, min_ndim={self.min_ndim}"
        )
