"""`SubspaceProjectedOptimizer`: any torch optimizer, its update projected onto or out of the
dominant Hessian subspace (Dom-SGD / Bulk-SGD of Song, Ahn & Yun, 2025)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._utils import check_int, choice, flatten
from ..diagnostics import StepStats
from ..eigensolvers import EigenResult, Eigensolver, resolve_eigensolver
from ..operators.base import LinearOperator
from ..operators.hessian import HessianOperator
from ..schedules import RefreshSchedule, resolve_schedule
from ..subspace import orthonormalize
from . import _faults, _guard
from .eos import EdgeOfStabilityWarning, choose_k, stability_threshold
from .sam import SAM

__all__ = ["MODES", "ON_FAULT", "SubspaceProjectedOptimizer"]

#: the valid ``mode`` values: ``"bulk"``, ``"dominant"`` and ``"none"``
MODES = ("bulk", "dominant", "none")
PROJECT = ("update", "gradient")
#: the valid ``on_fault`` policies: ``"keep"``, ``"cold"`` and ``"raise"``
ON_FAULT = ("keep", "cold", "raise")


class SubspaceProjectedOptimizer(Optimizer):
    """Wrap ``base`` so that each update is projected onto or out of the top-k Hessian subspace.

    With ``U`` the ``(n, k)`` orthonormal top-k eigenvectors of the curvature operator and
    ``Δ = θ_after − θ_before`` the update the unmodified base optimizer makes from the raw
    gradient (``project="update"``, the paper's convention):

    .. math::

        \\theta_{t+1} = \\theta_t + \\begin{cases}
            U U^\\top \\Delta & \\text{mode = "dominant" (Dom-SGD)} \\\\
            \\Delta - U U^\\top \\Delta & \\text{mode = "bulk" (Bulk-SGD)} \\\\
            \\Delta & \\text{mode = "none" (track only)}
        \\end{cases}

    The base optimizer's state (momentum, Adam moments) keeps accumulating unprojected
    gradients. With ``project="gradient"`` the gradient is projected *before* the base step
    instead; with ``step(closure)`` that is the gradient already in ``.grad`` if the base
    uses it and every gradient the closure produces, so for
    :class:`~subspace_optim.SAM` both the ascent gradient (the perturbation ``ε`` stays in
    the subspace) and the gradient at ``θ + ε``, and for LBFGS each evaluation. SAM's
    two-call API is refused with ``project="gradient"`` (its ``first_step`` moves along the
    unprojected gradient outside the wrapper). A third-party SAM is an ordinary optimizer
    here: what gets projected is the gradient in ``.grad`` when ``step`` is called and the
    closure's gradients, which covers ports whose ``step(closure)`` perturbs along the
    existing gradient (``davda54/sam``) or along the closure's. The projection is global
    over the flattened parameters (the Hessian couples layers). The training loop is
    unchanged: ``zero_grad(); loss.backward(); step()``.

    Once wrapped, the base optimizer (and SAM's inner optimizer) is stepped only by the
    wrapper: ``base.step()`` or ``scaler.step(base)`` raises ``RuntimeError`` before it
    changes anything (it would bypass the projection); dropping the wrapper lifts this.
    With ``torch.amp.GradScaler``, step the wrapper: ``scaler.scale(loss).backward();
    scaler.step(opt); scaler.update()`` (``scaler.unscale_(opt)`` in between for clipping).
    The scaler then unscales once and skips the step on inf/NaN exactly as for a plain
    optimizer (the wrapper's step is not called, so nothing of it changes). Pass the
    scaler as ``grad_scaler`` to have the wrapper also refuse the misuses it cannot see
    otherwise (``docs/guide/optimizers.rst``, AMP).

    It is a real :class:`torch.optim.Optimizer`: ``param_groups`` and ``state`` are the base
    optimizer's own (LR schedulers, hooks and trainers act on the base), step hooks fire,
    ``step(closure)`` works, and :meth:`state_dict` holds the base state plus the subspace
    (basis, eigenvalues, counters, schedule, generator) under ``"subspace"``, loadable with
    ``torch.load(..., weights_only=True)``.

    Args:
        base: the optimizer to wrap (SGD, Adam, SAM, …), already constructed.
        curvature: a symmetric operator over the base's parameters; usually
            :class:`~subspace_optim.HessianOperator` over the training set. Its parameters
            must be exactly the trainable parameters of ``base``.
        k: dimension of the dominant subspace (the paper: number of classes). ``k = 0``
            makes the wrapper a no-op.
        mode: ``"bulk"``, ``"dominant"`` or ``"none"``.
        eigensolver: a solver instance or a registered name (``"warm"``, the default: a
            :class:`~subspace_optim.WarmRefresh` that refreshes from the previous basis by
            block Rayleigh–Ritz and LOBPCG steps, ``"lanczos"``, ``"lobpcg"``, ``"power"``,
            ``"eigh"``, ...).
        refresh: a :class:`~subspace_optim.RefreshSchedule`, ``"every"`` (default,
            ``Every(1)``) or ``"switch"`` (``AlignmentSwitch()``).
        project: ``"update"`` (default) or ``"gradient"``.
        num_extra: track this many eigenpairs beyond ``k`` (e.g. to watch λ_{k+1} against
            2/η at the Edge of Stability); they are not projected. In ``"bulk"`` mode, when
            the base optimizer has a stability threshold (SGD, momentum, Nesterov, SAM(SGD);
            see :func:`~subspace_optim.stability_threshold`) and λ_{k+1} exceeds it, an
            :class:`~subspace_optim.EdgeOfStabilityWarning` is issued (once per episode) and
            ``counters["unstable_refreshes"]`` counts such refreshes: Bulk dynamics are then
            unstable (``docs/eos_findings.md``).
        adaptive_k: a fraction ``c`` in ``(0, 1]``: at each refresh project onto (or out of)
            every eigen-direction whose eigenvalue is at least ``c`` times the stability
            threshold, at most ``k`` of them (``k`` becomes the cap; ``active_k`` holds the
            current count, which may be 0). Needs a base optimizer with a stability
            threshold.
        on_fault: what a failed refresh (non-finite HVPs or eigenpairs, or a
            ``torch.linalg.LinAlgError`` / :class:`~subspace_optim.EigensolverError` inside
            the solver) does: ``"keep"`` the previous basis (default), retry ``"cold"`` from
            a random start (then keep), or ``"raise"`` :class:`FloatingPointError`. A
            minibatch gradient holding NaN/Inf skips the step before the base optimizer
            runs (its state never sees the fault; ``"raise"`` raises instead), and an update
            that comes out non-finite is undone; each is counted in ``counters`` and
            ``last_stats``. Non-numerical errors (a bug, a wrong ``loss_fn``) propagate with
            the parameters untouched. An eigensolver that stops short of its tolerance is
            not a fault: its best estimate is used and counted in
            ``counters["unconverged"]``; build it with ``raise_on_failure=True`` to treat
            that as a fault too.
        generator: randomness for eigensolver start vectors; default a private generator
            seeded with 0 (the global RNG is never touched).
        grad_scaler: the loop's ``torch.amp.GradScaler``, optional. The wrapper reads its
            per-optimizer bookkeeping and refuses, before any change, a step whose
            gradients are still scaled (``opt.step()`` instead of ``scaler.step(opt)``),
            were unscaled twice (``scaler.unscale_`` on the wrapper *and* on its base, which
            share the gradients), or come from a closure (``scaler.step(opt, closure)``:
            the scaler cannot unscale them).

    Attributes:
        last_stats: :class:`~subspace_optim.StepStats` of the latest step.
        basis: current ``(n, k + num_extra)`` eigenvector block, or ``None``.
        eigenvalues: current ``(k + num_extra,)`` eigenvalues, descending, or ``None``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import subspace_optim as so
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> X, Y = torch.randn(32, 4, generator=g), torch.randn(32, 3, generator=g)
        >>> loss_fn = nn.MSELoss()
        >>> base = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> opt = so.SubspaceProjectedOptimizer(base, so.HessianOperator(model, loss_fn, (X, Y)), k=3)
        >>> for _ in range(3):
        ...     opt.zero_grad(); loss_fn(model(X), Y).backward(); opt.step()
        >>> opt.last_stats.projected, len(opt.last_stats.eigenvalues)
        (True, 3)
    """

    def __init__(
        self,
        base: Optimizer,
        curvature: LinearOperator,
        k: int = 10,
        mode: str = "bulk",
        *,
        eigensolver: str | Eigensolver = "warm",
        refresh: str | RefreshSchedule | None = None,
        project: str = "update",
        num_extra: int = 0,
        on_fault: str = "keep",
        generator: torch.Generator | None = None,
        adaptive_k: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        # ---- validate everything before touching any state ----
        if not isinstance(base, Optimizer):
            raise TypeError(
                f"base must be a torch.optim.Optimizer (e.g. torch.optim.SGD(model.parameters(), "
                f"lr=0.1)); got {type(base).__name__}"
            )
        if isinstance(base, SubspaceProjectedOptimizer):
            raise TypeError(
                "base is already a SubspaceProjectedOptimizer; wrap the underlying optimizer "
                "once (use num_extra or a second HessianOperator to track more directions)"
            )
        if not isinstance(curvature, LinearOperator):
            raise TypeError(
                "curvature must be a LinearOperator such as "
                "subspace_optim.HessianOperator(model, loss_fn, data); got "
                f"{type(curvature).__name__}"
            )
        self.mode = choice("mode", mode, MODES)
        self.project_target = choice("project", project, PROJECT)
        if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
            raise TypeError(
                "grad_scaler must be the torch.amp.GradScaler of the training loop (or None); "
                f"got {type(grad_scaler).__name__}"
            )
        if isinstance(base, SAM) and (base._perturbed or base.awaiting_step):
            raise ValueError(
                "the SAM optimizer is in the middle of a step (first_step() without "
                "second_step()); finish it before wrapping"
            )
        self.on_fault = choice("on_fault", on_fault, ON_FAULT)
        n = curvature.shape[0]
        self.k = check_int("k", k, low=0)
        if self.k >= n:
            raise ValueError(
                f"k={k} must be smaller than the number of parameters ({n}); the paper uses k = "
                "number of classes"
            )
        self.num_extra = check_int("num_extra", num_extra, low=0)
        self.eigensolver = resolve_eigensolver(eigensolver)
        if self.k > 0:  # k + num_extra too large for the solver, or wider than its block
            self.eigensolver.check_k(n, self.k + self.num_extra)
        self.schedule = resolve_schedule(refresh)
        if adaptive_k is not None:
            if (
                isinstance(adaptive_k, bool)
                or not isinstance(adaptive_k, (int, float))
                or not (0 < adaptive_k <= 1)
            ):
                raise ValueError(f"adaptive_k is a fraction of 2/η in (0, 1]; got {adaptive_k!r}")
            if stability_threshold(base) is None:
                raise ValueError(
                    f"adaptive_k needs a stability threshold, which {type(base).__name__} does not "
                    "define (only SGD, with momentum/Nesterov, or SAM around SGD); pass a fixed k"
                )
        self.adaptive_k = None if adaptive_k is None else float(adaptive_k)
        self.active_k = self.k
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        self._params = self._check_coverage(base, curvature)
        for p in self._params:
            if p.is_complex():
                raise TypeError(
                    "complex parameters are not supported: the Hessian subspace is defined over "
                    "real parameters; store complex weights as real pairs (torch.view_as_real)"
                )
        devices = {p.device for p in self._params}
        if devices != {curvature.device}:
            raise ValueError(
                f"the parameters live on {sorted(map(str, devices))} but the curvature operator "
                f"works on {curvature.device}; move the model to one device before building "
                "the operator and the optimizer"
            )
        self._check_finite_params(when="at construction")

        self.base = base
        self.curvature = curvature
        super().__init__(base.param_groups, {})
        # share (not copy) the base's groups and state: schedulers and hooks act on the base
        self.param_groups = base.param_groups
        self.state = base.state
        self.defaults = base.defaults  # OneCycleLR & co. read momentum/betas support here
        self._ready = True
        if generator is None:
            generator = torch.Generator(device=curvature.device).manual_seed(0)
        self.generator = generator
        self.basis: Tensor | None = None
        self.eigenvalues: Tensor | None = None
        self.last_result: EigenResult | None = None
        self.last_stats: StepStats | None = None
        self._step = 0
        self.counters: dict[str, float] = {
            "refreshes": 0,
            "matvecs": 0,
            "refresh_seconds": 0.0,
            "faults": 0,
            "skipped_steps": 0,
            "unconverged": 0,
            "reorthonormalized": 0,
            "cold_restarts": 0,
            "unstable_refreshes": 0,
        }
        self.grad_scaler = grad_scaler
        # stepping the base (or SAM's inner optimizer) other than through this wrapper
        # would bypass the projection: refused from now on, while the wrapper lives
        self._chain = _guard.chain(base)
        _guard.guard(self, self._chain)

    # ------------------------------------------------------------ validation
    @staticmethod
    def _check_coverage(base: Optimizer, curvature: LinearOperator) -> list[Tensor]:
        op_params = getattr(curvature, "params", None)
        base_params = [p for g in base.param_groups for p in g["params"]]
        if op_params is None:
            n = curvature.shape[0]
            total = sum(p.numel() for p in base_params if p.requires_grad)
            if total != n:
                raise ValueError(
                    f"the curvature operator has size {n} but the optimizer's trainable "
                    f"parameters hold {total} entries; they must be the same parameters"
                )
            return [p for p in base_params if p.requires_grad]
        op_ids = {id(p) for p in op_params}
        base_ids = {id(p) for p in base_params}
        missing = [tuple(p.shape) for p in base_params if p.requires_grad and id(p) not in op_ids]
        if missing:
            raise ValueError(
                f"the optimizer updates parameters the curvature operator does not cover "
                f"(shapes {missing[:4]}); build the operator with "
                "params=[p for g in base.param_groups for p in g['params']]"
            )
        extra = [tuple(p.shape) for p in op_params if id(p) not in base_ids]
        if extra:
            raise ValueError(
                f"the curvature operator covers parameters the optimizer does not update "
                f"(shapes {extra[:4]}); build the operator with params= the optimizer's parameters"
            )
        for p in base_params:
            if p.requires_grad and p.grad is not None and p.grad.is_sparse:
                raise TypeError("sparse gradients are not supported; use dense embeddings")
        return list(op_params)

    def _check_finite_params(self, *, when: str) -> None:
        _faults.check_finite_params(self._params, when=when)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (e.g. unfreezing layers while fine-tuning).

        With a :class:`~subspace_optim.HessianOperator` over the same model, the operator is
        extended to the new parameters and the basis is recomputed at the next projected
        step (the parameter space changed). Other operators must already cover them.
        """
        if not getattr(self, "_ready", False):  # from Optimizer.__init__: the base's own groups
            super().add_param_group(param_group)
            return
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        covered = {id(p) for p in self._params}
        new = [p for p in params if id(p) not in covered and p.requires_grad]
        curvature = self.curvature
        if new:
            c = self.curvature
            if type(c) is not HessianOperator:
                raise ValueError(
                    "the new parameters are not covered by the curvature operator "
                    f"({type(c).__name__}): the projection is defined on the operator's "
                    "parameter space. Build a new operator and wrapper."
                )
            # built first: a bad parameter (not in the model, other dtype) raises here,
            # before anything changes
            curvature = HessianOperator(
                c.model,
                c.loss_fn,
                c.data,
                params=[*c.params, *new],
                chunk_size=c.chunk_size,
                method=c.method,
                train=c.train,
            )
        self.base.add_param_group({**param_group, "params": params})
        self.param_groups = self.base.param_groups
        if curvature is not self.curvature:
            self.curvature = curvature
            self._params = list(curvature.params)
            self.basis = self.eigenvalues = None
            self.active_k = self.k

    # ------------------------------------------------------------- refresh
    @torch.no_grad()
    def refresh(self) -> EigenResult | None:
        """Recompute the basis at the current parameters now (warm-started), and return the
        solver's result; on a fault, apply the ``on_fault`` policy and return ``None``."""
        result, _, _ = self._refresh(compute_gradient=False)
        return result

    def _solve(self, init: Tensor | None) -> EigenResult:
        return self.eigensolver.solve(
            self.curvature, self.k + self.num_extra, init=init, generator=self.generator
        )

    def _refresh(
        self, compute_gradient: bool
    ) -> tuple[EigenResult | None, Tensor | None, Tensor | None]:
        t0 = time.perf_counter()
        before = self.curvature.num_matvecs
        gradient = None
        if compute_gradient and isinstance(self.curvature, HessianOperator):
            gradient = self.curvature.loss_and_grad
        try:
            result, error, loss_grad = _faults.solve_with_policy(
                self._solve,
                self.basis,
                self.on_fault,
                self.counters,
                before=gradient,
                reset=self.curvature.release_graph,
            )
        finally:
            # the step that follows moves θ: a cached gradient graph is stale from here on
            self.curvature.release_graph()
        loss, grad = loss_grad if loss_grad is not None else (None, None)
        agree = getattr(self.curvature, "broadcast_result", None)
        if result is not None and agree is not None:
            # data-parallel operators: every rank takes rank 0's basis bit for bit
            result = agree(result)
        if self.curvature.device.type == "cuda":
            torch.cuda.synchronize(self.curvature.device)
        seconds = time.perf_counter() - t0
        self.counters["refreshes"] += 1
        self.counters["matvecs"] += self.curvature.num_matvecs - before
        self.counters["refresh_seconds"] += seconds
        self._last_refresh_cost = (self.curvature.num_matvecs - before, seconds)
        if result is None or not _faults.usable(result):
            _faults.refresh_failed(result, error, self.on_fault, self.counters)
            self._last_converged = False
            return None, loss, grad
        if not result.converged:
            self.counters["unconverged"] += 1
        self._last_converged = result.converged
        U = result.eigenvectors
        gram = U.T @ U
        if (
            float((gram - torch.eye(gram.shape[0], dtype=U.dtype, device=U.device)).abs().max())
            > 1e-4
        ):
            U = orthonormalize(
                U, generator=self.generator
            )  # the solver's basis lost orthonormality
            self.counters["reorthonormalized"] += 1
        self.basis = U.detach().clone()
        self.eigenvalues = result.eigenvalues.detach().clone()
        self.last_result = result
        return result, loss, grad

    # ---------------------------------------------------------------- step
    def _flat(self, tensors: list[Tensor | None]) -> Tensor:
        return flatten(
            torch.zeros_like(p) if t is None else t for t, p in zip(tensors, self._params)
        ).to(self.curvature.dtype)  # half-precision parameters: project in float32

    def _write(self, vec: Tensor, *, add: bool) -> None:
        offset = 0
        for p in self._params:
            m = p.numel()
            piece = vec[offset : offset + m].view_as(p)
            if add:
                p.add_(piece)
            else:
                p.copy_(piece)
            offset += m

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one projected step.

        Args:
            closure: re-evaluates the model and returns the loss (passed to the base
                optimizer, as SAM and LBFGS need). Required with a SAM base, except right
                after ``sam.unperturb()`` (SAM's two-call API, e.g. with a GradScaler).

        Raises:
            ValueError: a SAM base without a closure (and no ``unperturb()`` before), SAM's
                two-call API with ``project="gradient"``, or a closure while a GradScaler
                is attached.
            RuntimeError: SAM is between ``first_step()`` and ``unperturb()``, or the
                attached GradScaler's bookkeeping shows the gradients still scaled or
                unscaled twice.
        """
        # misuse is refused here, before anything (basis, counters, parameters) changes
        _guard.check_step_call(self, closure)
        with _guard.stepping(self._chain):
            return self._projected_step(closure)

    def _projected_step(self, closure: Callable[[], Tensor] | None) -> Tensor | None:
        t = self._step
        active = self.k > 0
        theta_old = g_mini = None
        grad_finite = True
        if active:
            # bad input and gradient faults are caught here, before any state changes
            theta_old = flatten(p.detach() for p in self._params).to(self.curvature.dtype)
            if not bool(torch.isfinite(theta_old).all()):
                self._check_finite_params(when=f"before step {t}")
            if closure is None:
                self._check_dense_grads()
                g_mini = self._flat([p.grad for p in self._params])
                grad_finite = bool(torch.isfinite(g_mini).all())
                if not grad_finite and self.on_fault == "raise":
                    raise FloatingPointError(
                        f"step {t}: the gradient holds NaN/Inf (on_fault='raise'); parameters "
                        "and optimizer state are unchanged. Check the loss of this batch"
                    )
        decision = self.schedule.decide(t)
        wants_projection = active and self.mode != "none" and decision.project
        refreshed = False
        loss_full = grad_full = None
        matvecs, seconds = 0, 0.0
        if active and (decision.refresh or (wants_projection and self.basis is None)):
            _, loss_full, grad_full = self._refresh(compute_gradient=True)
            refreshed = True
            matvecs, seconds = self._last_refresh_cost
        if refreshed:
            self._check_stability(t)
        U = None if self.basis is None else self.basis[:, : self.active_k]
        project_now = wants_projection and U is not None

        skip = None
        if not grad_finite:
            skip = "the gradient holds NaN/Inf"
        elif wants_projection and U is None:
            skip = "no usable basis for a projected step"
        loss = None
        try:
            if skip is not None:
                # skipped like torch.amp.GradScaler does: the base optimizer is not stepped, so
                # neither the parameters nor its state (momentum, Adam moments) see the fault
                if closure is not None:
                    with torch.enable_grad():
                        loss = closure()
            else:
                if closure is not None and active:
                    closure = _faults.guarded(closure, self._params)
                raw: list[Tensor] = []  # the first unprojected closure gradient, for the record
                if project_now and self.project_target == "gradient":
                    assert U is not None
                    if closure is None:
                        assert g_mini is not None
                        self._project_grads(g_mini, U)
                    else:
                        # the gradient already in .grad that the base will use (SAM's ascent
                        # direction after the usual loss.backward()) is projected, and so is
                        # every gradient the closure produces, however often the base
                        # evaluates it (SAM at θ + ε, LBFGS line searches)
                        self._project_existing_grads(U, raw)
                        closure = self._projecting(closure, U, raw)

                if closure is not None:
                    with torch.enable_grad():
                        loss = self.base.step(closure)
                    if raw and g_mini is None:
                        g_mini = raw[0]
                else:
                    loss = self.base.step()
        except _faults.NonFiniteGradient:
            assert theta_old is not None
            self._write(theta_old, add=False)  # e.g. SAM moved θ before calling the closure
            if self.on_fault == "raise":
                raise FloatingPointError(
                    f"step {t}: the closure's loss or gradient holds NaN/Inf (on_fault='raise'); "
                    "the base optimizer was stopped before its update and the parameters restored"
                ) from None
            skip = "the closure's loss or gradient holds NaN/Inf"
        if skip is not None:
            if g_mini is None:
                g_mini = self._flat([p.grad for p in self._params])
            zero = torch.zeros_like(g_mini)
            _faults.count_skip(self.counters, t, skip)
            self.last_stats = self._record(
                t,
                False,
                refreshed,
                U,
                zero,
                zero,
                g_mini,
                grad_full,
                loss_full,
                matvecs,
                seconds,
                True,
            )
            self._step += 1
            return loss

        stats = StepStats(step=t, projected=False, refreshed=refreshed, gradient_source="none")
        skipped = False
        if active:
            assert theta_old is not None
            if g_mini is None:  # closure path: the base refreshed .grad at θ_old
                g_mini = self._flat([p.grad for p in self._params])
            delta_base = flatten(p.detach() for p in self._params).to(theta_old.dtype) - theta_old
            delta = delta_base
            dom = None
            if project_now and self.project_target == "update":
                assert U is not None
                dom = self._mask_no_grad(U @ (U.T @ delta_base))
                delta = dom if self.mode == "dominant" else delta_base - dom
            if not bool(torch.isfinite(delta).all()):
                # e.g. a closure whose loss was NaN: never write NaN into the parameters
                self._write(theta_old, add=False)
                delta = torch.zeros_like(delta_base)
                skipped = True
                _faults.count_skip(self.counters, t, "the update was not finite")
            elif dom is not None:
                if self.mode == "dominant":
                    self._write(theta_old + dom, add=False)
                else:
                    self._write(-dom, add=True)
            stats = self._record(
                t,
                project_now and not skipped,
                refreshed,
                U,
                delta_base,
                delta,
                g_mini,
                grad_full,
                loss_full,
                matvecs,
                seconds,
                skipped,
            )
        self.last_stats = stats
        self._step += 1
        return loss

    def _record(
        self,
        t: int,
        projected: bool,
        refreshed: bool,
        U: Tensor | None,
        delta_base: Tensor,
        delta: Tensor,
        g_mini: Tensor,
        grad_full: Tensor | None,
        loss_full: Tensor | None,
        matvecs: int,
        seconds: float,
        skipped: bool,
    ) -> StepStats:
        """The step's record, against the full-data gradient when this step refreshed (else
        the mini-batch one); a refresh also feeds the schedule the measured alignment."""
        full = grad_full is not None
        g = grad_full if full else g_mini
        eig: tuple[float, ...] = ()
        if self.eigenvalues is not None:
            eig = tuple(float(x) for x in self.eigenvalues.tolist())
        stats = StepStats(
            step=t,
            projected=projected,
            refreshed=refreshed,
            gradient_source="full" if full else "minibatch",
            eigenvalues=eig,
            refresh_matvecs=matvecs,
            refresh_seconds=seconds,
            refresh_converged=getattr(self, "_last_converged", True) if refreshed else True,
            skipped=skipped,
            faults=int(self.counters["faults"]),
            **({} if U is None else _update_metrics(U, delta_base, delta, g, loss_full)),
        )
        if refreshed:
            self.schedule.observe(t, stats.grad_alignment if full else None)
        return stats

    def _mask_no_grad(self, vec: Tensor) -> Tensor:
        """Zero the entries of parameters without a gradient: torch leaves those untouched,
        and so does the projection (frozen layers stay frozen)."""
        if all(p.grad is not None for p in self._params):
            return vec
        offset = 0
        for p in self._params:
            m = p.numel()
            if p.grad is None:
                vec[offset : offset + m] = 0
            offset += m
        return vec

    def _check_stability(self, t: int) -> None:
        """After a refresh: pick ``active_k`` (``adaptive_k``) and compare the top eigenvalue
        the projected update still moves along with the base's stability threshold."""
        if self.eigenvalues is None:
            return
        threshold = stability_threshold(self.base)
        if threshold is None:
            return
        eig = self.eigenvalues
        if self.adaptive_k is not None:
            self.active_k = choose_k(eig, threshold, self.adaptive_k, self.k)
        j = self.active_k  # λ_{k+1}, 0-based
        if self.mode != "bulk" or j >= eig.shape[0]:
            return
        lam = float(eig[j])
        unstable = lam > threshold
        if unstable:
            self.counters["unstable_refreshes"] = self.counters.get("unstable_refreshes", 0) + 1
            if not getattr(self, "_unstable", False):
                warnings.warn(
                    f"step {t}: λ_{j + 1} = {lam:.4g} exceeds the stability threshold "
                    f"{threshold:.4g} (2/η for SGD): Bulk dynamics are unstable along directions "
                    "the projection no longer removes, and the loss may rise. Raise k (or use "
                    "adaptive_k), lower the learning rate, or use mode='none'",
                    EdgeOfStabilityWarning,
                    stacklevel=4,
                )
        self._unstable = unstable

    def _check_dense_grads(self) -> None:
        for p in self._params:
            if p.grad is not None and p.grad.is_sparse:
                raise TypeError(
                    f"a parameter of shape {tuple(p.shape)} has a sparse gradient: the projection "
                    "needs dense gradients. Build embeddings with sparse=False"
                )

    def _project_grads(self, g: Tensor, U: Tensor) -> None:
        """Overwrite ``.grad`` with the Dom (``U Uᵀ g``) or Bulk (``g − U Uᵀ g``) part of ``g``."""
        coef = U.T @ g
        g_proj = U @ coef if self.mode == "dominant" else g - U @ coef
        offset = 0
        for p in self._params:
            m = p.numel()
            if p.grad is not None:
                p.grad.copy_(g_proj[offset : offset + m].view_as(p))
            offset += m

    def _project_existing_grads(self, U: Tensor, raw: list[Tensor]) -> None:
        """Project the gradient in ``.grad`` before a closure step, if the base will use it:
        our SAM only when it is fresh (a stale one, left by the previous step, is not used
        and projecting it in place would make it look fresh); any other base whenever a
        gradient is there."""
        if all(p.grad is None for p in self._params):
            return
        if isinstance(self.base, SAM) and not self.base._has_fresh_gradient():
            return
        g = self._flat([p.grad for p in self._params])
        raw.append(g)
        self._project_grads(g, U)

    def _projecting(
        self, closure: Callable[[], Tensor], U: Tensor, raw: list[Tensor]
    ) -> Callable[[], Tensor]:
        def projecting() -> Tensor:
            loss = closure()
            g = self._flat([p.grad for p in self._params])
            if not raw:
                raw.append(g)
            self._project_grads(g, U)
            return loss

        return projecting

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the base optimizer's parameters."""
        self.base.zero_grad(set_to_none=set_to_none)

    # ---------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's ``state_dict()`` plus ``"subspace"``: basis, eigenvalues,
        step, counters, schedule, eigensolver and generator state (all ``weights_only``-safe),
        enough for a resumed run to reproduce the uninterrupted one bit for bit."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = dict(self.base.state_dict())
        sd["subspace"] = {
            "k": self.k,
            "num_extra": self.num_extra,
            "mode": self.mode,
            "n": self.curvature.shape[0],
            "shapes": [list(p.shape) for g in self.base.param_groups for p in g["params"]],
            "step": self._step,
            "active_k": self.active_k,
            "basis": None if self.basis is None else self.basis.clone(),
            "eigenvalues": None if self.eigenvalues is None else self.eigenvalues.clone(),
            "counters": dict(self.counters),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "eigensolver": self.eigensolver.state_dict(),
        }
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            out = post_hook(self, sd)
            if out is not None:
                sd = out
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; checked against this wrapper before any change."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            out = pre_hook(self, state_dict)
            if out is not None:
                state_dict = out
        if "subspace" not in state_dict:
            raise ValueError(
                "state_dict has no 'subspace' entry: it was not saved by a "
                "SubspaceProjectedOptimizer (load a base optimizer's state into opt.base instead)"
            )
        sub = state_dict["subspace"]
        n = self.curvature.shape[0]
        if sub["n"] != n:
            raise ValueError(
                f"state_dict is for a model with {sub['n']} parameters, this one has {n}; load "
                "the checkpoint into the model it was saved from"
            )
        if sub["k"] != self.k or sub["num_extra"] != self.num_extra:
            raise ValueError(
                f"state_dict was saved with k={sub['k']}, num_extra={sub['num_extra']}; this "
                f"optimizer has k={self.k}, num_extra={self.num_extra}; build the optimizer with "
                "the same k and num_extra to resume"
            )
        shapes = [list(p.shape) for g in self.base.param_groups for p in g["params"]]
        saved_shapes = sub.get("shapes")
        if saved_shapes is not None and [list(s) for s in saved_shapes] != shapes:
            saved = [tuple(s) for s in saved_shapes]
            here = [tuple(s) for s in shapes]
            raise ValueError(
                f"state_dict is for a different model: its parameter shapes are {saved[:6]}"
                f"{' ...' if len(saved) > 6 else ''}, this optimizer's are {here[:6]}"
                f"{' ...' if len(here) > 6 else ''}; load the checkpoint into the architecture "
                "it was saved from"
            )
        width = self.k + self.num_extra
        basis, eig = sub["basis"], sub["eigenvalues"]
        if basis is not None and tuple(basis.shape) != (n, width):
            raise ValueError(f"saved basis has shape {tuple(basis.shape)}, expected ({n}, {width})")
        if eig is not None and tuple(eig.shape) != (width,):
            raise ValueError(
                f"saved eigenvalues have shape {tuple(eig.shape)}, expected ({width},)"
            )
        if (basis is None) != (eig is None):
            raise ValueError("state_dict holds a basis without eigenvalues (or the reverse)")
        if basis is not None and not (
            bool(torch.isfinite(basis).all()) and bool(torch.isfinite(eig).all())
        ):
            raise ValueError(
                "the saved basis or eigenvalues hold NaN/Inf: the checkpoint is corrupted. Set "
                "state_dict['subspace']['basis'] and ['eigenvalues'] to None to recompute them "
                "at the next step"
            )
        try:  # validate the generator state on a scratch generator before changing anything
            torch.Generator(device=self.generator.device).set_state(sub["generator"])
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"state_dict['subspace']['generator'] is not a valid state for a generator on "
                f"{self.generator.device} ({exc})"
            ) from exc
        base_sd = {key: v for key, v in state_dict.items() if key != "subspace"}
        self.base.load_state_dict(base_sd)
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        device, dtype = self.curvature.device, self.curvature.dtype
        if basis is not None:
            basis = basis.to(device=device, dtype=dtype).clone()
            gram = basis.T @ basis
            if float((gram - torch.eye(width, dtype=dtype, device=device)).abs().max()) > 1e-4:
                basis = orthonormalize(basis, generator=self.generator)
        self.basis = basis
        self.eigenvalues = None if eig is None else eig.to(device=device, dtype=dtype).clone()
        self._step = int(sub["step"])
        self.active_k = int(sub.get("active_k", self.k))
        self.counters = {**self.counters, **sub["counters"]}
        self.schedule.load_state_dict(sub["schedule"])
        self.eigensolver.load_state_dict(sub.get("eigensolver", {}))
        self.generator.set_state(sub["generator"])
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __repr__(self) -> str:
        return (
            f"SubspaceProjectedOptimizer(base={type(self.base).__name__}, k={self.k}, "
            f"mode={self.mode!r}, eigensolver={self.eigensolver!r}, refresh={self.schedule!r})"
        )


def _update_metrics(
    U: Tensor, delta_base: Tensor, delta: Tensor, g: Tensor, loss_full: Tensor | None
) -> dict[str, float]:
    """χ_k of ``g``, the Dom share of the base update and the effective-LR terms (one sync)."""
    cg = U.T @ g
    cd = U.T @ delta
    cb = U.T @ delta_base
    sq_dom = cg @ cg
    sq_bulk = (g @ g - sq_dom).clamp_min(0)
    dot_dom = -(cd @ cg)
    dot_bulk = -(delta @ g) - dot_dom
    nan_t = torch.full((), math.nan, dtype=g.dtype, device=g.device)
    values = torch.stack(
        [
            sq_dom,
            sq_bulk,
            dot_dom,
            dot_bulk,
            g.norm(),
            cg.norm(),
            delta_base.norm(),
            cb.norm(),
            nan_t if loss_full is None else loss_full.to(g.dtype),
        ]
    ).tolist()
    sqd, sqb, dd, db, gn, cgn, dn, cbn, lf = values
    nan = math.nan
    return {
        "loss": lf,
        "grad_alignment": cgn / gn if gn > 0 else nan,
        "update_alignment": cbn / dn if dn > 0 else nan,
        "eta_dom": dd / sqd if sqd > 0 else nan,
        "eta_bulk": db / sqb if sqb > 0 else nan,
        "dot_dom": dd,
        "dot_bulk": db,
        "sq_dom": sqd,
        "sq_bulk": sqb,
    }
