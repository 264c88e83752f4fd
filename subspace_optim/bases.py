"""The basis a step projects with: one dense ``(n, k)`` block, or one small basis per
parameter block.

Both map a flat vector ``v`` (``(n,)``, the parameters in flat order) to its coordinates
``c = Uᵀv`` and back (``U c``), so the update math (``optim/_update.py``) is written once
for both. The columns of every basis are orthonormal, and the blocks of a
:class:`BlockBasis` are disjoint slices of the flat vector, so the blocks together are one
orthonormal basis of a subspace of dimension ``Σ k_b``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Basis", "BlockBasis", "DenseBasis", "as_basis"]


@runtime_checkable
class Basis(Protocol):
    """An orthonormal basis ``U`` of a subspace of the flat parameter space (a structural
    protocol: :class:`DenseBasis` and :class:`BlockBasis` satisfy it).

    Args:
        *args: none is accepted: a protocol is never instantiated.
        **kwargs: none is accepted either.

    Raises:
        TypeError: on ``Basis()``: a protocol cannot be instantiated.
    """

    @property
    def dim(self) -> int:
        """Number of columns of ``U`` (the subspace's dimension)."""
        ...

    def coords(self, v: Tensor) -> Tensor:
        """The coordinates of ``v`` in the basis.

        Args:
            v: ``(n,)``.

        Returns:
            ``Uᵀ v``, ``(dim,)``.
        """
        ...

    def dominant(self, v: Tensor) -> Tensor:
        """The component of ``v`` in the subspace.

        Args:
            v: ``(n,)``.

        Returns:
            ``U Uᵀ v``, ``(n,)``.
        """
        ...


@dataclass(frozen=True)
class DenseBasis:
    """One ``(n, k)`` block ``U`` with orthonormal columns (the curvature's top-k)."""

    U: Tensor

    @property
    def dim(self) -> int:
        return int(self.U.shape[1])

    def coords(self, v: Tensor) -> Tensor:
        """See :meth:`Basis.coords`.

        Args:
            v: ``(n,)``.

        Returns:
            ``Uᵀ v``.
        """
        return self.U.T @ v

    def dominant(self, v: Tensor) -> Tensor:
        """See :meth:`Basis.dominant`.

        Args:
            v: ``(n,)``.

        Returns:
            ``U Uᵀ v``.
        """
        return self.U @ (self.U.T @ v)


@dataclass(frozen=True)
class BlockBasis:
    """A basis per parameter block: block ``i`` covers ``v[offsets[i] : offsets[i] + sizes[i]]``
    with ``bases[i]`` (``(sizes[i], k_i)``, orthonormal columns) or not at all (``None``).

    Attributes:
        offsets: start of each block in the flat vector.
        sizes: entries of each block.
        bases: per block, the basis or ``None`` (the block is not projected).

    Example:
        >>> import torch
        >>> B = BlockBasis([0, 2], [2, 2], [torch.tensor([[1.0], [0.0]]), None])
        >>> B.dominant(torch.tensor([3.0, 4.0, 5.0, 6.0])).tolist(), B.dim
        ([3.0, 0.0, 0.0, 0.0], 1)
    """

    offsets: Sequence[int]
    sizes: Sequence[int]
    bases: Sequence[Tensor | None]

    @property
    def dim(self) -> int:
        return sum(int(U.shape[1]) for U in self.bases if U is not None)

    def projected(self) -> list[bool]:
        """Which blocks have a basis.

        Returns:
            Per block, ``True`` when it has one.
        """
        return [U is not None for U in self.bases]

    def _pieces(self, v: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [
            (U, v[o : o + m])
            for o, m, U in zip(self.offsets, self.sizes, self.bases)
            if U is not None
        ]

    def coords(self, v: Tensor) -> Tensor:
        """See :meth:`Basis.coords`.

        Args:
            v: ``(n,)``.

        Returns:
            The blocks' coordinates ``U_bᵀ v_b``, concatenated in block order.
        """
        parts = [U.T @ piece.to(U.dtype) for U, piece in self._pieces(v)]
        if not parts:
            return v.new_zeros(0)
        return torch.cat(parts).to(v.dtype)

    def dominant(self, v: Tensor) -> Tensor:
        """See :meth:`Basis.dominant`.

        Args:
            v: ``(n,)``.

        Returns:
            ``U_b U_bᵀ v_b`` in each block with a basis, zero elsewhere.
        """
        out = torch.zeros_like(v)
        for o, m, U in zip(self.offsets, self.sizes, self.bases):
            if U is not None:
                piece = v[o : o + m].to(U.dtype)
                out[o : o + m] = U @ (U.T @ piece)
        return out


def as_basis(U: Tensor | Basis) -> Basis:
    """A :class:`Basis` for a dense block or a basis.

    Args:
        U: an ``(n, k)`` tensor with orthonormal columns, or a :class:`Basis`.

    Returns:
        ``U`` itself if it is a :class:`Basis`, else a :class:`DenseBasis` over it.
    """
    return DenseBasis(U) if isinstance(U, Tensor) else U
