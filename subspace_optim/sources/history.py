"""`UpdateHistory`: the dominant directions of each parameter block from a PCA of its last
few updates (the subspace estimator of BSFA, Zhou et al., EMNLP 2025)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .._utils import check_int
from ._online import OnlineSource
from ._pca import Directions, gram_directions

__all__ = ["UpdateHistory"]


class UpdateHistory(OnlineSource):
    """Per parameter block, the top-``k`` principal directions of the base optimizer's last
    ``window`` updates, recomputed every ``refresh_every`` steps.

    With ``R`` the ``(m, n_b)`` history of block ``b`` (one update a row, ``m = window``)
    and ``J`` the centring projector (``center=True``), the basis is the top-``k``
    eigenvectors of ``(JR)ᵀ(JR)``, found from the ``(m, m)`` Gram matrix
    ``JRRᵀJ`` (``sources/_pca.py``): no
    ``(n_b, n_b)`` matrix is ever formed. Used with
    :class:`~subspace_optim.SubspaceProjectedOptimizer` and ``mode=(α, γ)``, each update
    becomes ``α·P_kΔ + γ·(Δ − P_kΔ)`` block by block.

    Blocks. One basis per parameter tensor, over its flattened entries: a weight matrix
    ``(r, c)`` gets ``k`` directions in ``R^{r·c}``, as in BSFA. (A basis of rows or columns,
    ``ΔW ↦ ΔW V Vᵀ``, would be an ``r·k``-dimensional subspace with Kronecker structure, a
    different object; it is not offered.) Parameters with fewer than ``min_ndim``
    dimensions (biases and norm gains, which are 1-D) are not projected: their update
    passes unchanged, whatever the mode. Embeddings are weight matrices like any other. A
    parameter group's ``"subspace_k"`` entry sets ``k`` for its parameters (0: not
    projected).

    Memory: ``window × n`` entries of ``dtype`` for the history of ``n`` projected entries,
    plus ``k × n`` float32 for the bases; a refresh needs one block's history in float32 on
    top (when stored in half precision). :meth:`memory_bytes` reports it.

    Before the window is full the update passes unchanged (no basis yet).

    Args:
        k: directions per block, ``1 <= k < window`` (``k < n_b`` for every projected
            block).
        window: updates kept per block, ``m >= 2`` (``m <= n_b`` for every projected block).
        refresh_every: steps between refreshes, once the window is full.
        center: subtract the window's mean update before the PCA (default), so the
            directions are those along which the updates *vary*: oscillation, not the
            steady drift. ``False``: the uncentred second moment.
        min_ndim: parameters with fewer dimensions are not projected (default 2).
        dtype: storage dtype of the history (``None``: float32; ``torch.bfloat16`` halves
            the memory).

    Raises:
        TypeError, ValueError: a setting out of range, or (when the optimizer is built) a
            block smaller than ``k`` or ``window``: the message names the parameter and
            what to set.

    Example:
        >>> import torch
        >>> import subspace_optim as so
        >>> model = torch.nn.Linear(8, 4)
        >>> base = torch.optim.AdamW(model.parameters(), lr=1e-2)
        >>> src = so.UpdateHistory(k=2, window=4, refresh_every=4)
        >>> opt = so.SubspaceProjectedOptimizer(base, src, mode=(0.5, 2.0))
        >>> x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
        >>> for _ in range(6):
        ...     opt.zero_grad(); model(x).square().mean().backward(); opt.step()
        >>> [None if U is None else tuple(U.shape) for U in src.bases]
        [(32, 2), None]
    """

    def __init__(
        self,
        k: int = 4,
        window: int = 16,
        refresh_every: int = 16,
        *,
        center: bool = True,
        min_ndim: int = 2,
        dtype: Any = None,
    ) -> None:
        super().__init__(k, refresh_every, min_ndim=min_ndim, dtype=dtype)
        self.window = check_int("window", window, low=2)
        if self.k >= self.window:
            raise ValueError(
                f"k={k} directions need a window of more than k updates; got window={window}"
                " (BSFA-style settings keep k small, e.g. k=4 with window=16)"
            )
        self.center = bool(center)
        self.rows = self.window
        self._next = 0  # the history row the next update goes to

    def _check_block(self, shape: tuple[int, ...], k: int) -> None:
        size = math.prod(shape)
        if k >= size or self.window > size:
            raise ValueError(
                f"a parameter of shape {shape} has {size} entries, too few for k={k} "
                f"directions from a window of {self.window} updates; give its group "
                "'subspace_k': 0 to leave it unprojected (or a smaller k, or min_ndim=3 "
                "for all matrices)"
            )
        if k >= self.window:
            raise ValueError(f"subspace_k={k} must be smaller than window={self.window}")

    def _signal(self, update: Tensor, grad: Tensor) -> Tensor:
        return update

    def _push(self, signal: Tensor) -> None:
        row = self._next
        for store, piece in zip(self._stores, self.pieces(signal)):
            if store is not None and piece is not None:
                store[row].copy_(piece)
        self._next = (row + 1) % self.window

    def _directions(self, store: Tensor, k: int) -> Directions | None:
        return gram_directions(store, k, center=self.center)

    def _extra_state(self) -> dict[str, Any]:
        return {"next": self._next}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._next = int(state["next"])

    def _settings(self) -> str:
        return (
            f"k={self.k}, window={self.window}, refresh_every={self.refresh_every}, "
            f"center={self.center}, min_ndim={self.min_ndim}"
        )
