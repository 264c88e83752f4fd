"""`Curvature`: what the subspace optimizer needs from a curvature operator beyond products.

A :class:`~subspace_optim.LinearOperator` gives products, :meth:`~LinearOperator.solve_scope`
(state cached for one solve, freed when the solve ends) and
:meth:`~LinearOperator.agree_tensors` (rank 0's tensors on every data-parallel rank). A
*curvature* is such an operator defined by a model's training loss over its parameters: the
Hessian, and any other matrix built from the same model, loss and data. It adds three things the wrapper reads:

* :attr:`params`: the parameters (the flat space is their concatenation, in this order);
* :meth:`loss_and_grad`: the mean loss and its gradient at the current parameters;
* :meth:`extended`: the same operator over more parameters, every other setting kept.

The protocol is structural (:class:`typing.Protocol`): a third-party operator satisfies it
by having these members; no base class is needed. An operator without them (a
:class:`~subspace_optim.DenseOperator`) still works with the wrapper, without the
statistics that need the gradient and without :meth:`add_param_group` for new parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Curvature"]


@runtime_checkable
class Curvature(Protocol):
    """A symmetric operator over a model's parameters, defined by its loss and data.

    Attributes:
        shape: ``(n, n)``, ``n`` the total number of entries of :attr:`params`.
        dtype: the dtype of products, bases and solves.
        device: where products run.
        num_matvecs: operator applications so far (a block of ``b`` columns counts ``b``).
        params: the parameters the operator is defined over, in flat-vector order.

    Args:
        *args: none is accepted: a protocol is never instantiated. An operator satisfies
            it by having the members below (``isinstance`` checks that).
        **kwargs: none is accepted either.

    Raises:
        TypeError: on ``Curvature()``: a protocol cannot be instantiated.

    Example:
        >>> import torch
        >>> import subspace_optim as so
        >>> model = torch.nn.Linear(3, 1).double()
        >>> X, Y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
        >>> op = so.HessianOperator(model, lambda out, y: ((out - y) ** 2).mean(), (X, Y))
        >>> isinstance(op, so.Curvature), isinstance(so.DenseOperator(torch.eye(2)), so.Curvature)
        (True, False)
        >>> loss, grad = op.loss_and_grad()
        >>> grad.shape
        torch.Size([4])
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    num_matvecs: int
    params: Sequence[Tensor]

    def matmat(self, V: Tensor) -> Tensor:
        """``A @ V`` for a block ``V`` of shape ``(n, b)``; returns shape ``(n, b)``.

        Args:
            V: the block, shape ``(n, b)``, in :attr:`dtype` on :attr:`device`.

        Returns:
            ``A @ V``, shape ``(n, b)``; counts ``b`` in :attr:`num_matvecs`.
        """
        ...

    def loss_and_grad(self) -> tuple[Tensor, Tensor]:
        """Mean loss and flat gradient at the current parameters, shapes ``()`` and ``(n,)``.

        Reads the same data as the products, does not touch ``.grad``, and is a collective
        for a data-parallel operator (every rank calls it).

        Returns:
            ``(loss, grad)``: the mean training loss, shape ``()``, and its gradient with
            respect to :attr:`params` flattened, shape ``(n,)``.
        """
        ...

    def extended(self, params: Sequence[Tensor]) -> Curvature:
        """The same operator over ``params`` (a superset, in the new flat order).

        Every setting (data, micro-batching, memory budget, block width, graph cache,
        process group, …) is kept. Raises before anything changes if a tensor is not a
        parameter of the model or mixes dtypes/devices.

        Args:
            params: the parameters of the new operator, in flat-vector order; every tensor
                of :attr:`params` must be among them.

        Returns:
            A new operator of the same kind; this one is unchanged.
        """
        ...

    def solve_scope(self) -> AbstractContextManager[None]:
        """A context for one solve: state cached between its products is freed on exit.

        Returns:
            A context manager that yields ``None``.
        """
        ...

    def agree_tensors(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Rank 0's ``tensors`` on every rank (``tensors`` themselves for one process).

        Args:
            *tensors: this process's tensors; every rank passes the same shapes and dtypes.

        Returns:
            The tensors every rank holds, each of the shape, dtype and device given.
        """
        ...
