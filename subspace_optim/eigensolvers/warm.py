"""Warm refresh for training: block Rayleigh–Ritz from the previous basis, a few LOBPCG steps
checked by residuals, and a cold solve only when the residuals say so."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._utils import check_int, check_positive_float
from ..operators.base import LinearOperator
from . import _common
from .base import EigenResult, Eigensolver, SolveStatus
from .lobpcg import LOBPCG, lobpcg_iterations, pair_targets

__all__ = ["WarmRefresh"]

#: the default angle target (see :class:`WarmRefresh` for the measurement behind it)
DEFAULT_SIN_TOL = 0.04
#: the default residual target of the cold solve
DEFAULT_TOL = 3e-3
#: the default number of random probes of the sketched check (0: no check)
DEFAULT_PROBES = 2
#: the sketched check accepts the previous pairs when the root mean square of their estimated
#: residuals is at most this fraction of their targets (see :class:`WarmRefresh`)
CHECK_MARGIN = 0.5
#: a refresh that will be checked next time aims this much lower than the target, so that
#: the checks that follow have room for the drift
CHECK_TIGHTEN = 0.25
#: the longest run of refreshes without a check after repeated failed checks
MAX_BACKOFF = 8


@dataclass(frozen=True)
class _Kept:
    """The last accepted pairs, as the sketched check needs them.

    ``theta``: ``(k,)`` Ritz values; ``targets``: ``(k,)`` absolute residual targets.
    """

    theta: Tensor
    targets: Tensor


@dataclass(frozen=True)
class WarmState:
    """Everything a :class:`WarmRefresh` carries from one call to the next (a value).

    Attributes:
        guards: ``(n, g)`` guard columns of the last solve (the pairs beyond ``k``), or
            ``None``: appended to the next warm start.
        kept: the last accepted Ritz values and their residual targets, for the sketched
            check (``None``: nothing to check against; the next call refreshes fully).
        backoff: refreshes the check will skip after its next failure (0 until it has
            failed; doubles with every failure in a row, reset by a pass).
        skip: refreshes left before the check runs again.
    """

    guards: Tensor | None = None
    kept: _Kept | None = None
    backoff: int = 0
    skip: int = 0


class WarmRefresh(Eigensolver):
    """Refresh the top-``k`` eigenpairs of an operator that changes a little between calls.

    During training the Hessian moves slowly, so the previous eigenvectors are an excellent
    start. One refresh:

    1. forms the block ``[init, guards]`` of ``b = k + extra`` columns: the previous basis
       (``init``) widened by the ``extra`` guard columns that this object kept from its
       previous solve (random columns on the first warm call);
    2. applies the operator to the block once (``b`` matvecs, one batched product) and takes
       the Rayleigh–Ritz pairs; if every one of the top ``k`` pairs already meets the
       accuracy target it stops there;
    3. otherwise runs LOBPCG iterations (:func:`~subspace_optim.eigensolvers.lobpcg.lobpcg_iterations`)
       that expand only the residuals of the pairs that have not met it (soft locking),
       at most ``max_iter`` of them;
    4. escalates to the ``cold`` solver (a fresh start) only if those iterations did not
       meet the target, and keeps whichever answer has the smaller worst residual.

    Without ``init`` (the first refresh) it runs the ``cold`` solver on ``b`` pairs, which
    provides the guard columns for the next call.

    Before step 2, a *sketched check* (``probes`` > 0, the default) may accept the previous
    pairs for ``probes`` matvecs instead of ``b``: when ``init`` is exactly the basis this
    object returned last time, it draws a Gaussian ``Z`` ``(k, probes)`` and forms

    .. math::

        R\\,D^{-1} Z = A X D^{-1} Z - X\\,\\Theta\\,D^{-1} Z, \\qquad
        \\rho^2 = \\frac{\\|R\\,D^{-1} Z\\|_F^2}{\\text{probes}}, \\qquad
        \\mathbb{E}\\,\\rho^2 = \\sum_{i \\le k} \\frac{\\|A x_i - \\theta_i x_i\\|^2}{t_i^2},

    with ``X``, ``Θ`` the previous vectors and Ritz values and ``D = diag(t_i)`` their
    residual targets (the angle or residual target below). If the root mean square
    ``ρ / √k <= 1/2`` (:data:`CHECK_MARGIN`), the pairs are estimated to meet their targets
    with room to spare on average, and the previous pairs are returned as they are
    (``num_iterations`` 0, ``message`` "sketch check"; the residual norms reported are
    ``(ρ / √k) · t_i``, the estimates for a drift spread evenly over the pairs). Otherwise
    the full refresh follows, aiming at a quarter of the targets (:data:`CHECK_TIGHTEN`)
    so that the checks after it have room for the drift. The check runs again at the next
    call; only when it fails again in a row do the next ``1, 2, 4, …, 8`` refreshes skip it
    (:data:`MAX_BACKOFF`), so an operator that moves fast pays almost nothing for it, and one
    that drifts past the margin now and then is checked again right after its refresh. The check is
    attempted when ``init`` has orthonormal columns (to 1e-4); it verifies the pairs
    ``(θ_i, init_i)`` themselves, so a start that is not the previous basis (rotated within
    its span, reordered) simply fails it. The estimate is unbiased for the sum of squared
    ratios; the margin is on their mean because a refresh leaves every pair below a quarter
    of its target, and a margin on the sum (``ρ <= 1/2``) would then reject the pairs it has
    just accepted once ``k`` exceeds 4. The price: a drift that falls on one pair alone is
    accepted up to ``√k / 2`` of that pair's target (1.6 for ``k = 10``), more when the two
    probes underestimate (a single dominant residual is χ² with 2 degrees of freedom: below a
    quarter of its mean with probability ``1 − e^{−1/4} ≈ 0.22``), for one step before the
    next check.

    Two accuracy targets are available:

    * an angle (``sin_tol``; the default when neither ``tol`` nor ``sin_tol`` is given,
      ``0.04``): pair ``i`` stops when its Davis–Kahan estimate
      ``‖A v_i − θ_i v_i‖ / (θ_i − θ_b) <= sin_tol``, where ``θ_b`` is the lowest Ritz value
      of the block (:func:`~subspace_optim.eigensolvers.lobpcg.pair_targets`). The guard
      columns keep the eigenvalues just below ``θ_k`` inside the block, so the gap that
      counts is ``θ_i − θ_b``, not the tiny ``θ_k − θ_{k+1}`` of a clustered spectrum, and
      the top pairs, far from ``θ_b``, stop with larger residuals than the ``k``-th;
    * a residual (``tol`` given, ``sin_tol`` not): ``‖A v_i − θ_i v_i‖ <= tol · |θ_1|``
      for ``i <= k``, the target of every other solver.

    The default target was chosen by measurement (``python -m benchmarks.refresh_analysis``;
    results in ``benchmarks/results/refresh_analysis.json``, summary in the changelog).
    The Davis–Kahan estimate is not a bound: ``θ_b`` only stands in for the largest
    eigenvalue outside the block, and the angle to the top ``k`` also depends on how well
    the guards are resolved.

    Args:
        extra: guard columns beyond ``k`` (default 5; at least 1 with ``sin_tol``).
        tol: relative residual target. Given alone, it is the warm iterations' target;
            in every case it is the ``cold`` solver's (default ``3e-3``).
        max_iter: LOBPCG iterations before escalating (default 6).
        sin_tol: per-pair angle target (default ``0.04`` when ``tol`` is not given).
        cold: the solver for the first call and for escalation (default
            ``LOBPCG(tol=tol)``, which, unlike single-vector Lanczos, finds every copy of a
            repeated eigenvalue); any :class:`Eigensolver`.
        probes: random probes of the sketched check (default 2; 0 turns the check off,
            so every call spends at least ``b`` matvecs).
        which: see :class:`Eigensolver`.
        raise_on_failure: see :class:`Eigensolver`.

    Raises:
        ValueError: a count or tolerance out of range, ``sin_tol`` with ``extra=0`` (the
            gap needs guard columns), or a ``cold`` solver whose ``which`` differs.
        TypeError: ``cold`` is not an :class:`Eigensolver`, or is a ``WarmRefresh``.

    The cost of every call is in the returned :class:`EigenResult` (``num_matvecs``,
    ``num_iterations``; ``message`` says whether the call was cold, warm or escalated).

    .. note::
        This object is *stateful*: it remembers the ``extra`` guard columns of its last
        solve (one refresh strategy per training run; :meth:`reset` forgets them). The
        guards only add search directions, so a result never depends on them for
        correctness, only for cost; after a checkpoint reload the first refresh draws random
        guards and costs a little more. The previous basis ``init`` is what the caller owns.
        With the sketched check it also keeps the last Ritz values and their residual
        targets (``k`` numbers each, in :meth:`state_dict`).

    .. note::
        The paper recomputes the eigenvectors at every step. With the sketched check, a
        step may keep the previous basis when its residuals at the new parameters are
        estimated to be well within the target; the basis is then exactly as accurate as
        the check says, not recomputed. ``probes=0`` recomputes at every call.

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
        tol: float | None = None,
        max_iter: int = 6,
        sin_tol: float | None = None,
        cold: Eigensolver | None = None,
        probes: int = DEFAULT_PROBES,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        if tol is None and sin_tol is None:
            sin_tol = DEFAULT_SIN_TOL
        tol = DEFAULT_TOL if tol is None else tol
        super().__init__(tol=tol, max_iter=max_iter, which=which, raise_on_failure=raise_on_failure)
        self.extra = check_int("extra", extra, low=0)
        if sin_tol is not None:
            sin_tol = check_positive_float("sin_tol", sin_tol)
            if self.extra == 0:
                raise ValueError("sin_tol needs guard columns (extra >= 1) to measure the gap")
        self.sin_tol = sin_tol
        if cold is None:
            cold = LOBPCG(tol=tol, which=which)
        if not isinstance(cold, Eigensolver) or isinstance(cold, WarmRefresh):
            raise TypeError(
                "cold must be an Eigensolver other than WarmRefresh (e.g. Lanczos() or LOBPCG())"
            )
        if cold.which != self.which:
            raise ValueError(f"cold.which={cold.which!r} differs from which={self.which!r}")
        self.cold = cold
        self.probes = check_int("probes", probes, low=0)
        #: what the next call depends on (replaced, never mutated, by each call)
        self.warm_state = WarmState()

    def reset(self) -> None:
        """Forget the guard columns and the pairs kept from the previous solve."""
        self.warm_state = WarmState()

    def state_dict(self) -> dict[str, Any]:
        """What the next call depends on (checkpoints resume exactly): the guard columns,
        and for the sketched check the last Ritz values, their targets and the check's
        back-off counters.

        Returns:
            ``{"guards", "kept", "backoff", "skip"}``: tensors (cloned) or ``None``, and two
            counters; loadable with ``torch.load(..., weights_only=True)``.
        """
        w = self.warm_state
        return {
            "guards": None if w.guards is None else w.guards.clone(),
            "kept": None
            if w.kept is None
            else {"theta": w.kept.theta.clone(), "targets": w.kept.targets.clone()},
            "backoff": w.backoff,
            "skip": w.skip,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state with ``"guards"`` and no kept pairs loads
        too, and the next call then runs the full refresh.

        Args:
            state: a dict returned by :meth:`state_dict`.

        Raises:
            TypeError: ``"guards"`` is not a tensor or ``None``, or ``"kept"`` is not
                ``None`` or a dict of the tensors ``"theta"`` and ``"targets"``.
        """
        guards = state.get("guards")
        if guards is not None and not isinstance(guards, Tensor):
            raise TypeError(
                f"WarmRefresh state 'guards' must be a Tensor or None; got {type(guards).__name__}"
            )
        kept = state.get("kept")
        if kept is not None:
            if not isinstance(kept, dict) or not all(
                isinstance(kept.get(key), Tensor) for key in ("theta", "targets")
            ):
                raise TypeError(
                    "WarmRefresh state 'kept' must be None or a dict of the Tensors 'theta' "
                    "and 'targets'"
                )
            kept = _Kept(kept["theta"].clone(), kept["targets"].clone())
        self.warm_state = WarmState(
            guards=None if guards is None else guards.clone(),
            kept=kept,
            backoff=int(state.get("backoff", 0)),
            skip=int(state.get("skip", 0)),
        )

    def check_k(self, n: int, k: int) -> None:
        """:meth:`Eigensolver.check_k <subspace_optim.Eigensolver.check_k>`, and the cold
        solver's own check for the ``k + extra`` pairs (at most what ``n`` allows) that a
        cold solve asks it for.

        Args:
            n: the operator's size.
            k: the number of eigenpairs asked for.

        Raises:
            TypeError: ``k`` is not an int.
            ValueError: ``k`` out of range, or a cold solver that cannot give ``k + extra``
                pairs (a ``block_size`` narrower than that).
        """
        super().check_k(n, k)
        b = min(n - self.cold.min_gap_to_n, k + self.extra)
        try:
            self.cold.check_k(n, b)
        except ValueError as exc:
            raise ValueError(
                f"WarmRefresh asks its cold solver for k + extra = {b} pairs: {exc} "
                f"(or lower extra, now {self.extra})"
            ) from None

    def _usable_guards(self, op: LinearOperator) -> Tensor | None:
        G = self.warm_state.guards
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
        checked = self._check(op, k, init, generator)
        if checked is not None:
            return checked
        guards = self._usable_guards(op)
        block = init if guards is None else torch.cat([init, guards], dim=1)
        width = min(n - 1, max(b, init.shape[1]))
        X = _common.start_block(op, width, block[:, :width], generator)
        # aim lower when the next call will be checked: the checks need room for the drift
        tighten = CHECK_TIGHTEN if self.probes and self.warm_state.skip == 0 else 1.0
        state = lobpcg_iterations(
            op,
            X,
            k,
            tol=self.tol * (tighten if self.sin_tol is None else 1.0),
            max_iter=self.max_iter,
            which=self.which,
            expand_all=False,
            sin_tol=None if self.sin_tol is None else self.sin_tol * tighten,
        )
        if not bool(torch.isfinite(state.theta).all()):
            self.warm_state = dataclasses.replace(self.warm_state, kept=None)
            return self._finish(
                state.theta, state.X, state.residual_norms, k, state.iterations, "warm"
            )
        if state.converged or (tighten < 1 and self._meets(state.theta, state.residual_norms, k)):
            self._keep(state.theta, state.X, k)
            return self._finish(
                state.theta, state.X, state.residual_norms, k, state.iterations, "warm", met=True
            )
        cold = self._cold(op, k, b, generator, "escalated to a cold solve")
        warm_worst = float(state.residual_norms[:k].max())
        if cold.converged or float(cold.residual_norms.max()) <= warm_worst:
            return cold
        self._keep(state.theta, state.X, k)
        return self._finish(
            state.theta, state.X, state.residual_norms, k, state.iterations, "warm (cold was worse)"
        )

    def _targets(self, theta: Tensor, k: int) -> Tensor:
        """Absolute residual targets ``(k,)`` of the first ``k`` of the ``b`` pairs ``theta``."""
        floor = _common.tolerance(theta[:k], 0.0)
        if self.sin_tol is None:
            return _common.tolerance(theta[:k], self.tol).expand(k).clone()
        return torch.maximum(floor, pair_targets(theta, k, self.sin_tol, self.which)[:k])

    def _meets(self, theta: Tensor, res: Tensor, k: int) -> bool:
        """Whether the first ``k`` residuals meet the (untightened) targets."""
        return bool((res[:k] <= self._targets(theta, k)).all())

    def _check(
        self, op: LinearOperator, k: int, init: Tensor, generator: torch.Generator
    ) -> EigenResult | None:
        """The sketched check of the class docstring: the previous pairs if they pass, else
        ``None`` (the full refresh follows)."""
        w = self.warm_state
        kept = w.kept
        if not self.probes or kept is None or init.shape[1] < k or kept.theta.shape[0] != k:
            return None
        if w.skip > 0:
            self.warm_state = dataclasses.replace(w, skip=w.skip - 1)
            return None
        X = init[:, :k]
        if kept.theta.device != X.device or kept.theta.dtype != X.dtype:
            return None
        gram = X.T @ X
        gram.diagonal().sub_(1)
        if not float(gram.abs().max()) <= 1e-4:  # the result must have orthonormal columns
            return None
        Z = _common.random_block(k, self.probes, op, generator) / kept.targets[:, None]
        R = op.matmat(X @ Z) - X @ (kept.theta[:, None] * Z)
        rho = float(R.norm()) / math.sqrt(self.probes * k)  # root mean square over pairs
        if not math.isfinite(rho) or rho > CHECK_MARGIN:
            # skip 0 after a first failure, then 1, 2, 4, ... while it keeps failing
            backoff = min(MAX_BACKOFF, 2 * w.backoff) if w.backoff else 1
            self.warm_state = dataclasses.replace(w, backoff=backoff, skip=w.backoff)
            return None
        self.warm_state = dataclasses.replace(w, backoff=0)
        return EigenResult(
            eigenvalues=kept.theta.clone(),
            eigenvectors=X.clone(),
            residual_norms=kept.targets * rho,
            num_matvecs=0,
            num_iterations=0,
            outcome=SolveStatus.CONVERGED,
            message=f"WarmRefresh[sketch check]: previous pairs kept (estimated residuals "
            f"{rho:.2f} of their targets, root mean square, {self.probes} probes)",
        )

    def _keep(self, theta: Tensor, X: Tensor, k: int) -> None:
        guards = X[:, k:].detach().clone() if X.shape[1] > k else None
        kept = None
        if self.probes:
            kept = _Kept(theta[:k].detach().clone(), self._targets(theta.detach(), k))
        self.warm_state = dataclasses.replace(self.warm_state, guards=guards, kept=kept)

    def _cold(
        self, op: LinearOperator, k: int, b: int, generator: torch.Generator, why: str
    ) -> EigenResult:
        res = self.cold.solve(op, b, generator=generator)
        # the k-pair verdict: guards need not meet tol
        X, theta = res.eigenvectors, res.eigenvalues
        if bool(torch.isfinite(theta).all()):
            self._keep(theta, X, k)
        else:
            self.warm_state = dataclasses.replace(self.warm_state, kept=None)
        out = self._finish(theta, X, res.residual_norms, k, res.num_iterations, why)
        return out

    def _finish(
        self,
        theta: Tensor,
        X: Tensor,
        res: Tensor,
        k: int,
        iterations: int,
        how: str,
        *,
        met: bool = False,
    ) -> EigenResult:
        """The result for the first ``k`` pairs; ``met``: the warm iterations' own verdict
        (residual ``tol`` or, with ``sin_tol``, the Davis–Kahan targets) was reached."""
        if met and self.sin_tol is not None:
            out = _common.result(
                f"WarmRefresh[{how}]", _common.Ritz(theta, X, res), k, self.tol, iterations, ""
            )
            if out.outcome is SolveStatus.MAX_ITERATIONS:  # met the sin θ targets instead
                worst = float(
                    (res[:k] / pair_targets(theta, k, 1.0, self.which)[:k].clamp_min(1e-300)).max()
                )
                out = dataclasses.replace(
                    out,
                    outcome=SolveStatus.CONVERGED,
                    message=f"WarmRefresh[{how}]: converged after {iterations} iterations "
                    f"(largest Davis–Kahan sin θ estimate {worst:.2e} <= sin_tol {self.sin_tol:g})",
                )
            return out
        out = _common.result(
            f"WarmRefresh[{how}]",
            _common.Ritz(theta, X, res),
            k,
            self.tol,
            iterations,
            f"raise max_iter (now {self.max_iter}) or extra (now {self.extra}), or loosen tol",
        )
        return out

    def __repr__(self) -> str:
        return (
            f"WarmRefresh(extra={self.extra}, tol={self.tol}, sin_tol={self.sin_tol}, "
            f"max_iter={self.max_iter}, "
            f"cold={self.cold!r}, probes={self.probes}, which={self.which!r})"
        )
