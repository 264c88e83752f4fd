"""`CompositeOptimizer`: what a wrapper needs to know about an optimizer that steps others.

An optimizer such as :class:`~subspace_optim.SAM` takes its step *through* another
optimizer, and may spread one step over several calls (``first_step`` / ``unperturb`` /
``step``). A wrapper that projects updates (:class:`~subspace_optim.SubspaceProjectedOptimizer`)
must then know three things, and this protocol is how it asks, without knowing which
optimizer it holds:

* ``inner_optimizers``: which optimizers it steps (the wrapper
  refuses direct steps of all of them, since those would bypass the projection);
* ``check_ready_to_step`` and
  ``step_in_progress``: whether a step can be taken now, and
  whether part of the current step already ran outside the wrapper;
* ``uses_existing_gradient``: whether ``step(closure)`` will read
  the gradient already in ``.grad`` (so a gradient projection must project it first).

The protocol is structural (:class:`typing.Protocol`): a third-party two-step optimizer
satisfies it by having these four methods. An optimizer without them is treated as a plain
one-call optimizer: it steps nothing else, is always ready, and uses ``.grad`` whenever a
gradient is there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch.optim import Optimizer

__all__ = ["CompositeOptimizer", "inner_chain"]


@runtime_checkable
class CompositeOptimizer(Protocol):
    """An optimizer whose step runs through other optimizers, possibly over several calls.

    Every method is a query or a check: none may change parameters, gradients or state.

    Args:
        *args: none is accepted: a protocol is never instantiated. An optimizer satisfies
            it by defining the four methods below (``isinstance`` checks that).
        **kwargs: none is accepted either.

    Raises:
        TypeError: on ``CompositeOptimizer()``: a protocol cannot be instantiated.

    Example:
        >>> import torch
        >>> import subspace_optim as so
        >>> from subspace_optim.optim import CompositeOptimizer
        >>> w = [torch.zeros(2, requires_grad=True)]
        >>> sgd = torch.optim.SGD(w, lr=0.1)
        >>> sam = so.SAM(sgd, rho=0.05)
        >>> isinstance(sam, CompositeOptimizer), isinstance(sgd, CompositeOptimizer)
        (True, False)
        >>> sam.inner_optimizers() == [sgd], sam.step_in_progress()
        (True, False)
    """

    def inner_optimizers(self) -> Sequence[Optimizer]:
        """The optimizers this one steps directly (SAM: its base optimizer).

        Returns:
            Those optimizers, outermost first; empty for one that steps no other.
        """
        ...

    def check_ready_to_step(self, *, closure: bool) -> None:
        """Raise (``RuntimeError`` or ``ValueError``, saying what to do) if ``step(closure)``
        cannot be done right now, ``closure`` telling whether one would be passed.

        Args:
            closure: whether the coming ``step`` call passes a closure.

        Raises:
            RuntimeError: the optimizer is in a state that forbids the step now (SAM: at its
                perturbed point, before ``unperturb()``).
            ValueError: the step cannot be done with (or without) a closure (SAM: no
                closure and no ``unperturb()`` before).
        """
        ...

    def step_in_progress(self) -> bool:
        """Part of the current step already ran in earlier calls (parameters moved, or a
        gradient left in ``.grad`` for the final call), outside any wrapper.

        Returns:
            ``True`` while a step spread over several calls is unfinished.
        """
        ...

    def uses_existing_gradient(self) -> bool:
        """``step(closure)`` would use the gradient now in ``.grad`` instead of calling the
        closure for it first.

        Returns:
            ``True`` when the next ``step(closure)`` reads the existing gradient.
        """
        ...


def inner_chain(optimizer: Optimizer) -> list[Optimizer]:
    """``optimizer`` and every optimizer it steps through, outermost first.

    Args:
        optimizer: any optimizer; a :class:`~subspace_optim.optim.CompositeOptimizer` is followed into its inner
            optimizers (depth first, each listed once).

    Returns:
        The list, starting with ``optimizer``.

    Example:
        >>> import torch
        >>> import subspace_optim as so
        >>> sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> [type(o).__name__ for o in inner_chain(so.SAM(sgd))]
        ['SAM', 'SGD']
    """
    out: list[Optimizer] = []
    todo = [optimizer]
    while todo:
        o = todo.pop(0)
        if any(o is seen for seen in out):
            continue
        out.append(o)
        if isinstance(o, CompositeOptimizer):
            todo = [*o.inner_optimizers(), *todo]
    return out
