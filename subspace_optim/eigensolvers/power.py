"""Block subspace iteration with Rayleigh–Ritz, and single-vector power iteration with deflation."""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import check_int, choice
from ..operators.base import LinearOperator
from ..subspace import orthonormalize
from . import _common
from .base import EigenResult, Eigensolver

__all__ = ["PowerIteration"]


class _Shift:
    """``σ(θ_b) = -(min(λ̂_min, θ_b) + θ_b) / 2`` for a block whose smallest Ritz value is
    ``θ_b``, and ``σ = -λ̂_min`` for a single vector (``θ_b`` omitted), with ``λ̂_min`` from
    ``steps`` Lanczos products started at ``start``, computed at the first call
    (``steps == 0``: ``σ = 0``)."""

    def __init__(self, op: LinearOperator, steps: int, start: Tensor | None) -> None:
        self._op, self._steps, self._start = op, steps, start
        self._low: Tensor | None = None

    def __call__(self, theta_b: Tensor | None = None) -> Tensor | float:
        if self._start is None:
            return 0.0
        if self._low is None:
            self._low = _common.lower_end(self._op, self._steps, self._start)
        if theta_b is None:
            return -self._low
        return -(torch.minimum(self._low, theta_b) + theta_b) / 2


class PowerIteration(Eigensolver):
    """Power iteration on a block, with Rayleigh–Ritz (subspace iteration).

    .. math::

        X_{j+1} = \\operatorname{orth}(A X_j), \\qquad
        (\\Theta, S) = \\operatorname{eig}(X^\\top A X), \\quad X \\leftarrow X S

    Each iteration costs one block product of ``block_size`` columns, which batched HVPs
    evaluate far faster than ``block_size`` single products, and a warm start from the
    previous basis typically needs one or two iterations during training. Convergence of
    pair ``i`` is linear with rate ``|λ_{b+1} / λ_i|`` (``b`` = block size), so a wider block
    than ``k`` speeds it up.

    Args:
        block_size: columns of the iterated block, ``>= k`` (default ``k + max(2, k // 2)``).
        variant: ``"block"`` (subspace iteration, default) or ``"deflation"`` (one vector at
            a time, deflating the ones found before: the form PyHessian uses; slower). Its
            vectors are orthonormal and its eigenvalues their Rayleigh quotients, but each
            residual is that of the deflated operator ``(I - QQᵀ) A (I - QQᵀ)`` (``Q``: the
            vectors found before): the residual in ``A`` projected off ``Q``, so at most
            the residual in ``A``, short of it by the earlier vectors' own errors.
        shift_steps: Lanczos steps spent estimating the lower end of the spectrum for the
            ``which="LA"`` shift (default 20; 0 disables the shift).
        tol, max_iter, which, raise_on_failure: see :class:`Eigensolver`.

    .. note::
        Power iteration converges to the eigenvalues of largest *magnitude*. With
        ``which="LA"`` it iterates :math:`A + \\sigma I` with the shift that maps the
        unwanted interval :math:`[\\lambda_{\\min}, \\theta_b]` symmetrically around 0,

        .. math::

            \\sigma = -\\tfrac{1}{2}(\\hat\\lambda_{\\min} + \\theta_b),

        where :math:`\\theta_b` is the block's smallest Ritz value and
        :math:`\\hat\\lambda_{\\min}` a lower-end estimate from ``shift_steps`` Lanczos steps
        (spent once per solve, at its first shifted step: a solve that stops at its first
        block product, such as ``max_iter=1``, spends none). Then no eigenvalue outside the
        block can dominate a wanted one, even when the negative end of the spectrum is
        larger in magnitude than the top, and for a nearly positive spectrum the (negative)
        shift speeds convergence up: the rate of pair ``i`` is
        :math:`(\\lambda_{b+1} + \\sigma)/(\\lambda_i + \\sigma)`. A shift read from the
        block alone, :math:`\\sigma = \\max(0, -\\theta_{\\min})`, cannot see eigenvalues
        below the block and would let them win. The ``"deflation"`` variant has one vector
        and no ``θ_b`` below it: it iterates :math:`A - \\hat\\lambda_{\\min} I`, whose
        top is the wanted end, at the rate
        :math:`(\\lambda_{i+1} - \\lambda_{\\min})/(\\lambda_i - \\lambda_{\\min})`.
        ``shift_steps=0`` turns the shift off (plain power iteration, as PyHessian).

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, PowerIteration
        >>> op = DenseOperator.from_spectrum(torch.tensor([10., 5, 1, 0.5, 0.1], dtype=torch.float64))
        >>> res = PowerIteration(tol=1e-8, max_iter=500).solve(op, 2)
        >>> [round(x, 6) for x in res.eigenvalues.tolist()], res.converged
        ([10.0, 5.0], True)
    """

    def __init__(
        self,
        *,
        block_size: int | None = None,
        variant: str = "block",
        shift_steps: int = 20,
        tol: float = 1e-3,
        max_iter: int = 100,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        super().__init__(tol=tol, max_iter=max_iter, which=which, raise_on_failure=raise_on_failure)
        if block_size is not None:
            check_int("block_size", block_size, low=1)
        self.block_size = block_size
        self.variant = choice("variant", variant, ("block", "deflation"))
        self.shift_steps = check_int("shift_steps", shift_steps, low=0)

    def _shift_rule(self, op: LinearOperator, generator: torch.Generator) -> _Shift:
        """The shift of this solve. Its start vector is drawn now, so the generator's
        stream is the same whether or not a shifted step follows; its ``shift_steps``
        products are spent at the first shifted step, never by a solve that stops first
        (``max_iter=1``, or converged at the start)."""
        if self.which != "LA" or self.shift_steps == 0:
            return _Shift(op, 0, None)
        start = _common.random_block(op.shape[0], 1, op, generator)[:, 0]
        return _Shift(op, self.shift_steps, start)

    def _width(self, n: int, k: int) -> int:
        if self.block_size is not None:
            if self.block_size < k:
                raise ValueError(f"block_size={self.block_size} must be >= k={k}")
            return min(n, self.block_size)
        return min(n, k + max(2, k // 2))

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        if self.variant == "deflation":
            return self._deflation(op, k, init, generator)
        n = op.shape[0]
        b = self._width(n, k)
        shift = self._shift_rule(op, generator)
        X = _common.start_block(op, b, init, generator)
        AX = op.matmat(X)
        iterations = 0
        while True:
            iterations += 1
            theta, X, AX = _common.rayleigh_ritz(X, AX, self.which)
            res = _common.residual_norms(X, AX, theta)
            if not torch.isfinite(theta).all():
                break
            target = _common.tolerance(theta[:k], self.tol)
            if bool((res[:k] <= target).all()) or iterations >= self.max_iter:
                break
            X = orthonormalize(AX + shift(theta.min()) * X, generator=generator)
            AX = op.matmat(X)
        return _common.result(
            "PowerIteration",
            _common.Ritz(theta, X, res),
            k,
            self.tol,
            iterations,
            f"raise max_iter (now {self.max_iter}) or block_size (now {b}), or use Lanczos/LOBPCG",
        )

    def _deflation(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        n = op.shape[0]
        shift = self._shift_rule(op, generator)
        found: list[Tensor] = []
        values: list[Tensor] = []
        residuals: list[Tensor] = []
        iterations = 0
        for i in range(k):
            Q = torch.stack(found, dim=1) if found else None
            if init is not None and i < init.shape[1]:
                v = init[:, i].clone()
            else:
                v = _common.random_block(n, 1, op, generator)[:, 0]
            theta = torch.zeros((), dtype=op.dtype, device=op.device)
            res = torch.full((), float("inf"), dtype=op.dtype, device=op.device)
            for step in range(self.max_iter):
                iterations += 1
                if Q is not None:
                    v = v - Q @ (Q.T @ v)
                v = v / v.norm().clamp_min(torch.finfo(op.dtype).tiny)
                Bv = op.matvec(v)
                if Q is not None:  # deflate: B = (I - QQᵀ) A (I - QQᵀ)
                    Bv = Bv - Q @ (Q.T @ Bv)
                theta = v @ Bv
                res = (Bv - theta * v).norm()
                scale = max(abs(float(theta)), abs(float(values[0])) if values else 0.0)
                if not torch.isfinite(theta) or float(res) <= self.tol * scale:
                    break
                if step + 1 < self.max_iter:  # shifted step: A - λ̂_min I has the wanted
                    v = Bv + shift() * v  # end on top (mapping [λ_min, θ] around 0 stalls
                    # as θ nears λ_1: λ_min's component decays no faster than λ_1's)
            found.append(v)  # the unit vector whose Rayleigh quotient is theta
            values.append(theta)
            residuals.append(res)
        theta = torch.stack(values)
        X = torch.stack(found, dim=1)
        idx = _common.order(theta, self.which)
        return _common.result(
            "PowerIteration(deflation)",
            _common.Ritz(theta[idx], X[:, idx], torch.stack(residuals)[idx]),
            k,
            self.tol,
            iterations,
            f"raise max_iter (now {self.max_iter}) or use the block variant",
        )
