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
    """A per-block subspace learned online (see the module docstring for the call order).

    The protocol is structural (:class:`typing.Protocol`): a third-party source satisfies it
    by having these members, and ``isinstance(obj, SubspaceSource)`` checks that.

    Args:
        *args: none is accepted: a protocol is never instantiated.
        **kwargs: none is accepted either.

    Raises:
        TypeError: on ``SubspaceSource()``: a protocol cannot be instantiated.

    Example:
        >>> import subspace_optim as so
        >>> isinstance(so.UpdateHistory(), so.SubspaceSource)
        True
    """

    def bind(self, params: Sequence[Tensor], ks: Sequence[int | None]) -> None:
        """Attach to the wrapper's parameters; called again by ``add_param_group`` with the
        longer list.

        Args:
            params: the parameters, in the wrapper's flat order.
            ks: per parameter, its group's ``"subspace_k"`` (``None``: the source's own).

        Raises:
            ValueError: a block the source cannot serve (too small for its k), or other
                parameters than those it is bound to; nothing changes.
        """
        ...

    def refresh(self, step: int) -> float | None:
        """Recompute the bases if due.

        Args:
            step: the wrapper's step index.

        Returns:
            The seconds the refresh took, or ``None`` when none was due.
        """
        ...

    def basis(self) -> BlockBasis | None:
        """The bases this step's update is scaled with.

        Returns:
            The current per-block bases, or ``None`` before the first refresh.
        """
        ...

    def observe(self, update: Tensor, grad: Tensor) -> None:
        """Record one step.

        Args:
            update: ``(n,)`` the base optimizer's update ``Δ``, before any scaling.
            grad: ``(n,)`` the mini-batch gradient.
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        """The source's checkpoint.

        Returns:
            Everything needed for a bit-exact resume, as tensors, numbers, strings, lists
            and dicts (loadable with ``torch.load(..., weights_only=True)``).
        """
        ...

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Check a checkpoint before anything is loaded; changes nothing.

        Args:
            state: what :meth:`state_dict` returned.

        Raises:
            ValueError: ``state`` was saved by another kind of source or with other
                settings or blocks.
        """
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint.

        Args:
            state: what :meth:`state_dict` returned, accepted by :meth:`check_state_dict`.

        Raises:
            ValueError: as :meth:`check_state_dict`.
        """
        ...
