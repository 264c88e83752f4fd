"""The linear-operator protocol every eigensolver consumes.

An operator is a symmetric linear map on the flat parameter space ``R^n``. Subclasses
implement one method, :meth:`LinearOperator._matmat`, on a block of column vectors; the base
class validates shapes, counts applications (the library's cost model) and offers
``matvec``, ``@`` and ``to_dense``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["LinearOperator"]


class LinearOperator(ABC):
    """A symmetric matrix-free operator ``A`` of shape ``(n, n)``.

    Subclasses set :attr:`shape`, :attr:`dtype` and :attr:`device` and implement
    :meth:`_matmat`. Every application is counted in :attr:`num_matvecs` (a block of ``b``
    columns counts ``b``), which is what benchmarks and diagnostics read.

    Attributes:
        shape: ``(n, n)``, with ``n`` the number of parameters; set by the subclass.
        dtype: the dtype of the vectors the operator takes and returns; set by the
            subclass.
        device: the device of those vectors; set by the subclass.
        num_matvecs: operator applications so far: a block of ``b`` columns counts ``b``.
            The eigensolvers' results, the optimizer's ``counters["matvecs"]`` and the
            benchmarks read it.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)))
        >>> (op @ torch.ones(2, dtype=torch.float64)).tolist()
        [3.0, 1.0]
        >>> op.num_matvecs
        1
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    def __init__(self) -> None:
        self.num_matvecs = 0

    @abstractmethod
    def _matmat(self, V: Tensor) -> Tensor:
        """Apply the operator to a validated block ``V`` of shape ``(n, b)``."""

    def matmat(self, V: Tensor) -> Tensor:
        """Apply the operator to the columns of ``V``.

        Args:
            V: block of vectors, shape ``(n, b)``, on :attr:`device` with :attr:`dtype`.

        Returns:
            ``A @ V``, shape ``(n, b)``.

        Raises:
            ValueError: ``V`` is not of shape ``(n, b)``.
            TypeError: ``V`` is not of the operator's dtype.
        """
        n = self.shape[0]
        if V.ndim != 2 or V.shape[0] != n:
            raise ValueError(
                f"matmat expects a block of shape ({n}, b); got {tuple(V.shape)}. "
                "Stack vectors as columns."
            )
        if V.dtype != self.dtype:
            raise TypeError(
                f"matmat got dtype {V.dtype} but the operator works in {self.dtype}; "
                f"convert with V.to({self.dtype})."
            )
        if V.shape[1] == 0:
            return V.clone()
        out = self._matmat(V)
        self.num_matvecs += V.shape[1]
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """Apply the operator to one vector ``v`` of shape ``(n,)``.

        Args:
            v: the vector, shape ``(n,)``, on :attr:`device` with :attr:`dtype`.

        Returns:
            ``A @ v``, shape ``(n,)``; counts one application.

        Raises:
            ValueError: ``v`` is not of shape ``(n,)``.
            TypeError: ``v`` is not of the operator's dtype.
        """
        if v.ndim != 1:
            raise ValueError(
                f"matvec expects a vector of shape ({self.shape[0]},); got {tuple(v.shape)}"
            )
        return self.matmat(v.unsqueeze(1)).squeeze(1)

    def _release_cache(self) -> None:
        """Free state cached between products at one point (a no-op here; an operator that
        caches overrides it). Callers use :meth:`solve_scope`."""
        return None

    @contextlib.contextmanager
    def solve_scope(self) -> Iterator[None]:
        """A context for one solve: products inside may share state cached at one point.

        :class:`~subspace_optim.HessianOperator` keeps the gradient graph of its data while
        the parameters stay the same. On exit, normal or by an exception, that state is
        freed, so callers never have to remember to; the next product rebuilds it. Scopes
        may nest; the state is freed when each one exits. The subspace optimizer and
        :func:`~subspace_optim.top_k_eigenpairs` run each solve in one; an empty scope
        (``with op.solve_scope(): pass``) frees what earlier products cached.

        Returns:
            A context manager; it yields ``None``.

        Example:
            >>> import torch
            >>> from subspace_optim import DenseOperator
            >>> op = DenseOperator(torch.eye(3, dtype=torch.float64))
            >>> with op.solve_scope():
            ...     y = op @ torch.ones(3, dtype=torch.float64)
            >>> y.tolist()
            [1.0, 1.0, 1.0]
        """
        try:
            yield
        finally:
            self._release_cache()

    def agree_tensors(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The same ``tensors`` on every process that holds this operator: rank 0's.

        A single-process operator returns ``tensors`` unchanged; a data-parallel one
        (:class:`~subspace_optim.DistributedHessianOperator`) broadcasts rank 0's bits to
        every rank, so a solve's eigenpairs, and with them the replicas, stay identical. A
        collective where it is one: every process passes tensors of the same shapes and
        dtypes, in the same order.

        Args:
            *tensors: this process's tensors, of any shapes, dtypes and devices.

        Returns:
            The tensors every process holds, in the order given, each of the shape, dtype
            and device it came with: ``tensors`` themselves here.

        Example:
            >>> import torch
            >>> from subspace_optim import DenseOperator
            >>> op = DenseOperator(torch.eye(2, dtype=torch.float64))
            >>> x = torch.ones(2, dtype=torch.float64)
            >>> op.agree_tensors(x)[0] is x
            True
        """
        return tensors

    def __matmul__(self, other: Tensor) -> Tensor:
        return self.matvec(other) if other.ndim == 1 else self.matmat(other)

    def to_dense(self, *, block_size: int = 64) -> Tensor:
        """Materialize ``A`` as a dense ``(n, n)`` tensor (small operators only).

        Built from ``n`` matvecs against identity columns, ``block_size`` at a time, and
        symmetrized is *not* applied, so the result exposes any asymmetry of the operator.

        Args:
            block_size: how many identity columns to apply per product.

        Returns:
            ``A`` as a dense tensor, shape ``(n, n)``, in :attr:`dtype` on :attr:`device`.

        Raises:
            ValueError: ``n > 20000`` (the dense matrix would not fit in memory).
        """
        n = self.shape[0]
        if n > 20_000:
            raise ValueError(
                f"to_dense() on an operator of size {n} would need {n * n * 8 / 1e9:.1f} GB; "
                "use an eigensolver instead."
            )
        cols = []
        for start in range(0, n, block_size):
            stop = min(n, start + block_size)
            E = torch.zeros(n, stop - start, dtype=self.dtype, device=self.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1
            cols.append(self.matmat(E))
        return torch.cat(cols, dim=1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"
        )
