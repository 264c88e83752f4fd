"""`SubspaceSource`: what the wrapper asks of a subspace that needs no curvature product.

:class:`~subspace_optim.SubspaceProjectedOptimizer` takes either a curvature operator (the
top-k eigenvectors of a Hessian, GGN or gradient covariance, found by an eigensolver) or a
source. A source watches the run itself, step after step, and offers one basis per
parameter block; the wrapper calls, in this order within each step:

1. ``refresh(step)`` (the source recomputes its bases when it is due, from what it has seen
   before this step),
2. ``basis()`` (the bases this step's update is scaled with, or ``None`` before the first
   refresh: the update then passes unchanged),
3. ``observe(update, grad)`` after the base optimizer's step, with the base's own update
   ``Δ`` (before any scaling, so the subspace does not depend on the mode) and the
   mini-batch gradient, both flat ``(n,)`` in the wrapper's parameter order.

A step that was skipped (a NaN gradient) or undone is not observed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ..bases import BlockBasis

__all__ = ["SubspaceSource"]


@runtime_checkable
class SubspaceSource(Protocol):
    """A per-block subspace learned online (see the module docstring for the call order)."""

    def bind(self, params: Sequence[Tensor], ks: Sequence[int | None]) -> None:
        """Attach to the wrapper's parameters (flat order) with a per-parameter ``k``
        (``None``: the source's own); raises ``ValueError`` on a bad block, before any
        change. Called again by ``add_param_group`` with the longer list."""
        ...

    def refresh(self, step: int) -> float | None:
        """Recompute the bases if due; the seconds it took, or ``None`` if not due."""
        ...

    def basis(self) -> BlockBasis | None:
        """The current per-block bases, or ``None`` before the first refresh."""
        ...

    def observe(self, update: Tensor, grad: Tensor) -> None:
        """Record one step: the base optimizer's update and the mini-batch gradient."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for a bit-exact resume (tensors, numbers, strings, lists)."""
        ...

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` if ``state`` cannot be loaded; change nothing."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state that :meth:`check_state_dict` accepted."""
        ...
