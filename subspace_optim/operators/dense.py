"""An explicit symmetric matrix behind the :class:`LinearOperator` protocol."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LinearOperator

__all__ = ["DenseOperator"]


class DenseOperator(LinearOperator):
    """Wrap a dense symmetric matrix ``A`` of shape ``(n, n)``.

    Used in tests, for tiny models, and to build operators with a chosen spectrum.

    Args:
        A: square matrix, shape ``(n, n)``. Must be symmetric up to rounding.
        check_symmetric: verify ``max|A - Aᵀ| <= 1e-6 · max|A|`` at construction.

    Raises:
        ValueError: ``A`` is not square, or (with ``check_symmetric``) not symmetric.
        TypeError: ``A`` is complex.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator
        >>> Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64,
        ...                       generator=torch.Generator().manual_seed(0)))
        >>> op = DenseOperator.from_spectrum(torch.tensor([5., 4, 3, 2, 1], dtype=torch.float64), Q)
        >>> torch.linalg.eigvalsh(op.A).flip(0).round().tolist()
        [5.0, 4.0, 3.0, 2.0, 1.0]
    """

    def __init__(self, A: Tensor, *, check_symmetric: bool = True) -> None:
        super().__init__()
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"DenseOperator needs a square matrix; got shape {tuple(A.shape)}")
        if A.is_complex():
            raise TypeError("complex matrices are not supported: the Hessian is real symmetric")
        if check_symmetric and A.numel():
            scale = A.abs().max()
            if (A - A.T).abs().max() > 1e-6 * scale:
                raise ValueError("DenseOperator needs a symmetric matrix; pass (A + A.T) / 2")
        self.A = A
        self.shape = (A.shape[0], A.shape[0])
        self.dtype = A.dtype
        self.device = A.device

    @classmethod
    def from_spectrum(cls, eigenvalues: Tensor, Q: Tensor | None = None) -> DenseOperator:
        """Build ``Q diag(λ) Qᵀ``; ``Q`` defaults to the identity.

        Args:
            eigenvalues: ``λ``, shape ``(n,)``.
            Q: orthonormal eigenvectors as columns, shape ``(n, n)``, or ``None`` for the
                identity (the operator is then ``diag(λ)``).

        Returns:
            The operator, in the dtype and on the device of ``eigenvalues`` (and ``Q``),
            symmetrized exactly.
        """
        if Q is None:
            return cls(torch.diag(eigenvalues))
        A = (Q * eigenvalues) @ Q.T
        return cls((A + A.T) / 2)

    def _matmat(self, V: Tensor) -> Tensor:
        return self.A @ V
