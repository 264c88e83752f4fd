"""Warm refresh for training: block Rayleigh–Ritz from the previous basis, a few LOBPCG steps
checked by residuals, and a cold solve only when the residuals say so."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._utils import check_int
from ..operators.base import LinearOperator
from . import _common
from .base import EigenResult, Eigensolver
from .lobpcg import LOBPCG, lobpcg_iterations

__all__ = ["WarmRefresh"]


class WarmRefresh(Eigensolver):
    """Refresh the top-``k`` eigenpairs of an operator that changes a little between calls.

    During training the Hessian moves slowly, so the previous eigenvectors are an excellent
    start. One refresh:

    1. forms the block ``[init, guards]`` of ``b = k + extra`` columns: the previous basis
       (``init``) widened by the ``extra`` guard columns that this object kept from its
       previous solve (random columns on the first warm call);
    2. applies the operator to the block once (``b`` matvecs, one batched product) and takes
       the Rayleigh–Ritz pairs; if every one of the top ``k`` residuals already meets
       ``tol`` it stops there;
    3. otherwise runs LOBPCG iterations (:func:`~subspace_optim.eigensolvers.lobpcg.lobpcg_iterations`)
       that expand only the residuals of the pairs that have not converged (soft locking),
       at most ``max_iter`` of them;
    4. escalates to the ``cold`` solver (a fresh start) only if those iterations did not
       meet ``tol``, and keeps whichever answer has the smaller worst residual.

    Without ``init`` (the first refresh) it runs the ``cold`` solver on ``b`` pairs, which
    provides the guard columns for the next call.

    The accuracy target is the residual, as for every solver:
    ``‖A v_i − θ_i v_i‖ <= tol · |θ_1|`` for ``i <= k``. Its default, ``3e-3``, was chosen by
    measurement: on the digits MLP trained by SGD (lr 0.1, batch 50) it keeps the refreshed
    top-10 subspace within ``sin θ ≈ 0.025`` of the exact one while spending about 30 matvecs
    per step (``benchmarks/eigensolvers.py`` reports the current numbers). The spectrum there
    is clustered (``λ_10 − λ_11 ≈ 0.6 %`` of ``λ_1``), so the guard columns matter: they let
    the Rayleigh–Ritz step resolve the cluster around the ``k``-th eigenvalue.

    Args:
        extra: guard columns beyond ``k`` (default 5).
        tol: relative residual target (default ``3e-3``).
        max_iter: LOBPCG iterations before escalating (default 6).
        cold: the solver for the first call and for escalation (default
            ``LOBPCG(tol=tol)``, which, unlike single-vector Lanczos, finds every copy of a
            repeated eigenvalue); any :class:`Eigensolver`.
        which, raise_on_failure: see :class:`Eigensolver`.

    The cost of every call is in the returned :class:`EigenResult` (``num_matvecs``,
    ``num_iterations``; ``status`` says whether the call was cold, warm or escalated).

    .. note::
        This object is *stateful*: it remembers the ``extra`` guard columns of its last
        solve (one refresh strategy per training run; :meth:`reset` forgets them). The
        guards only add search directions, so a result never depends on them for
        correctness, only for cost; after a checkpoint reload the first refresh draws random
        guards and costs a little more. The previous basis ``init`` is what the caller owns.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, WarmRefresh
        >>> g = torch.Generator().manual_seed(0)
        >>> Q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
        >>> top = torch.tensor([9.0, 8.5, 8.0, 7.5, 7.0, 6.5, 6.2], dtype=torch.float64)
        >>> lam = torch.cat([top, torch.linspace(-1, 5, 293, dtype=torch.float64)])
        >>> warm = WarmRefresh(tol=1e-6)
        >>> first = warm.solve(DenseOperator.from_spectrum(lam, Q), 4)
        >>> # the operator moves a little: the refresh starts from the previous basis
        >>> E = 1e-3 * torch.randn(300, 300, generator=g, dtype=torch.float64)
        >>> moved = DenseOperator.from_spectrum(lam, Q).A + (E + E.T) / 2
        >>> again = warm.solve(DenseOperator(moved), 4, init=first.eigenvectors)
        >>> again.converged, again.num_matvecs < first.num_matvecs / 3
        (True, True)
    """

    def __init__(
        self,
        *,
        extra: int = 5,
        tol: float = 3e-3,
        max_iter: int = 6,
        cold: Eigensolver | None = None,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        super().__init__(tol=tol, max_iter=max_iter, which=which, raise_on_failure=raise_on_failure)
        self.extra = check_int("extra", extra, low=0)
        if cold is None:
            cold = LOBPCG(tol=tol, which=which)
        if not isinstance(cold, Eigensolver) or isinstance(cold, WarmRefresh):
            raise TypeError(
                "cold must be an Eigensolver other than WarmRefresh (e.g. Lanczos() or LOBPCG())"
            )
        if cold.which != self.which:
            raise ValueError(f"cold.which={cold.which!r} differs from which={self.which!r}")
        self.cold = cold
        self._guards: Tensor | None = None

    def reset(self) -> None:
        """Forget the guard columns kept from the previous solve."""
        self._guards = None

    def state_dict(self) -> dict[str, Any]:
        """The guard columns kept from the previous solve (checkpoints resume exactly)."""
        return {"guards": None if self._guards is None else self._guards.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        guards = state.get("guards")
        if guards is not None and not isinstance(guards, Tensor):
            raise TypeError(
                f"WarmRefresh state 'guards' must be a Tensor or None; got {type(guards).__name__}"
            )
        self._guards = None if guards is None else guards.clone()

    def _usable_guards(self, op: LinearOperator) -> Tensor | None:
        G = self._guards
        if G is None or G.shape[0] != op.shape[0] or G.dtype != op.dtype or G.device != op.device:
            return None
        return G

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        n = op.shape[0]
        b = min(n - self.cold.min_gap_to_n, k + self.extra)
        if init is None:
            return self._cold(op, k, b, generator, "cold start")
        guards = self._usable_guards(op)
        block = init if guards is None else torch.cat([init, guards], dim=1)
        width = min(n - 1, max(b, init.shape[1]))
        X = _common.start_block(op, width, block[:, :width], generator)
        state = lobpcg_iterations(
            op, X, k, tol=self.tol, max_iter=self.max_iter, which=self.which, expand_all=False
        )
        if not bool(torch.isfinite(state.theta).all()):
            return self._finish(
                state.theta, state.X, state.residual_norms, k, state.iterations, "warm"
            )
        if state.converged:
            self._keep(state.X, k)
            return self._finish(
                state.theta, state.X, state.residual_norms, k, state.iterations, "warm"
            )
        cold = self._cold(op, k, b, generator, "escalated to a cold solve")
        warm_worst = float(state.residual_norms[:k].max())
        if cold.converged or float(cold.residual_norms.max()) <= warm_worst:
            return cold
        self._keep(state.X, k)
        return self._finish(
            state.theta, state.X, state.residual_norms, k, state.iterations, "warm (cold was worse)"
        )

    def _keep(self, X: Tensor, k: int) -> None:
        self._guards = X[:, k:].detach().clone() if X.shape[1] > k else None

    def _cold(
        self, op: LinearOperator, k: int, b: int, generator: torch.Generator, why: str
    ) -> EigenResult:
        res = self.cold.solve(op, b, generator=generator)
        # the k-pair verdict: guards need not meet tol
        X, theta = res.eigenvectors, res.eigenvalues
        if bool(torch.isfinite(theta).all()):
            self._keep(X, k)
        out = self._finish(theta, X, res.residual_norms, k, res.num_iterations, why)
        return out

    def _finish(
        self, theta: Tensor, X: Tensor, res: Tensor, k: int, iterations: int, how: str
    ) -> EigenResult:
        out = _common.result(
            f"WarmRefresh[{how}]",
            theta,
            X,
            res,
            k,
            self.tol,
            iterations,
            f"raise max_iter (now {self.max_iter}) or extra (now {self.extra}), or loosen tol",
        )
        return out

    def __repr__(self) -> str:
        return (
            f"WarmRefresh(extra={self.extra}, tol={self.tol}, max_iter={self.max_iter}, "
            f"cold={self.cold!r}, which={self.which!r})"
        )
