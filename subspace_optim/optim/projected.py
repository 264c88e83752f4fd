"""`SubspaceProjectedOptimizer`: any torch optimizer, its update projected onto or out of the
dominant subspace of a curvature operator (Dom-SGD / Bulk-SGD of Song, Ahn & Yun, 2025).

A step is a pipeline over one :class:`~subspace_optim.optim._step.StepFacts` record:
begin → refresh → base step → project → record (``docs/guide/architecture.rst``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._utils import all_finite
from ..bases import BlockBasis
from ..diagnostics import StepStats
from ..eigensolvers import EigenResult, Eigensolver
from ..operators.base import LinearOperator
from ..operators.protocol import Curvature
from ..schedules import RefreshSchedule
from ..sources.protocol import SubspaceSource
from . import _checkpoint, _config, _faults, _guard
from ._blockwise import delta_of, scale_blocks
from ._config import MODES, ON_FAULT
from ._flat import FlatParams
from ._refresh import RefreshOutcome, refresh_basis
from ._stages import StepFacts, project_existing_grads, projecting_closure, step_record
from ._state import ProjectionState
from ._update import (
    dominant_part,
    moved_eigenvalue,
    plan_blockwise,
    plan_update,
    project_gradient,
    zero_frozen,
)
from .eos import choose_k, stability_threshold, warn_unstable
from .protocol import inner_chain

__all__ = ["MODES", "ON_FAULT", "SubspaceProjectedOptimizer"]


class SubspaceProjectedOptimizer(Optimizer):
    """Wrap ``base`` so that each update is projected onto or out of the top-k Hessian subspace.

    With ``U`` the ``(n, k)`` orthonormal top-k eigenvectors of the curvature operator and
    ``Δ = θ_after − θ_before`` the update the unmodified base optimizer makes from the raw
    gradient (``project="update"``, the paper's convention):

    .. math::

        \\theta_{t+1} = \\theta_t + \\begin{cases}
            U U^\\top \\Delta & \\text{mode = "dominant" (Dom-SGD)} \\\\
            \\Delta - U U^\\top \\Delta & \\text{mode = "bulk" (Bulk-SGD)} \\\\
            \\Delta & \\text{mode = "none" (track only)} \\\\
            a\\, U U^\\top \\Delta + b\\, (\\Delta - U U^\\top \\Delta)
                & \\text{mode = (a, b)}
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
            must be exactly the trainable parameters of ``base``. Or a
            :class:`~subspace_optim.SubspaceSource` (:class:`~subspace_optim.UpdateHistory`,
            :class:`~subspace_optim.GradientSketch`): one basis per parameter block learned
            from the run, no curvature product. The update is then scaled block by block
            (1-D parameters pass unchanged, before the first refresh every update does),
            the source carries ``k`` and its refresh period, and ``k``, ``eigensolver``,
            ``refresh``, ``num_extra``, ``adaptive_k`` and ``project="gradient"`` are
            refused. A group's ``"subspace_k"`` sets the source's k for its parameters.
        k: dimension of the dominant subspace (the paper: number of classes; default 10).
            ``k = 0`` makes the wrapper a no-op.
        mode: ``"bulk"``, ``"dominant"``, ``"none"``, or a pair ``(a, b)`` of finite reals
            scaling the dominant and bulk parts of the update (Zakarin & Singh 2025
            interpolate this way). ``"dominant"`` is ``(1, 0)``, ``"bulk"`` ``(0, 1)`` and
            ``"none"`` ``(1, 1)``, exactly (a pair equal to one of these is that mode);
            ``(0, 0)`` is refused; ``"dom"`` (the paper's name) is ``"dominant"``. The scales
            are in ``opt.scales`` and the checkpoint. A parameter group's
            ``"subspace_mode"`` entry (any of these values) overrides them for its
            parameters; it is read at every step, like a learning rate.
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
            unstable (``docs/eos_findings.md``). A pair ``mode=(a, b)`` is checked the same
            way, with ``b·λ_{k+1}`` when ``a < b`` and ``a·λ_1`` when ``a > 1``.
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

    Raises:
        TypeError: ``base`` is not a :class:`torch.optim.Optimizer` or is already a
            wrapper, ``curvature`` is not a :class:`~subspace_optim.LinearOperator`, ``k``
            or ``num_extra`` is not an int, ``mode`` is a sequence that is not a pair of
            reals, ``generator`` or ``grad_scaler`` has the wrong type, a parameter is
            complex, or a gradient is sparse.
        ValueError: a value out of range (an unknown ``mode``, ``project``, ``on_fault``,
            ``eigensolver`` or ``refresh`` name, ``k`` not in ``[0, n)``, a negative
            ``num_extra``, ``mode`` scales that are not finite or are ``(0, 0)``,
            ``adaptive_k`` outside ``(0, 1]`` or with a base that has no stability
            threshold, ``k + num_extra`` beyond what the solver can compute); a base
            composite optimizer in the middle of a step; an operator and an optimizer over
            different parameters or devices; or parameters that already hold NaN/Inf.

    Attributes:
        subspace: the wrapper's state between steps, one value: ``step``, ``active_k``,
            ``basis``, ``eigenvalues``, ``last_result``, ``counters`` (the properties of
            the same names read it); a checkpoint restores it as a new value.
        source: the :class:`~subspace_optim.SubspaceSource`, or ``None`` with a curvature.
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
        curvature: LinearOperator | SubspaceSource,
        k: int | None = None,
        mode: str | tuple[float, float] = "bulk",
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
        if isinstance(base, SubspaceProjectedOptimizer):
            raise TypeError(
                "base is already a SubspaceProjectedOptimizer; wrap the underlying optimizer "
                "once (use num_extra or a second HessianOperator to track more directions)"
            )
        args = dict(
            mode=mode,
            eigensolver=eigensolver,
            refresh=refresh,
            project=project,
            num_extra=num_extra,
            on_fault=on_fault,
            generator=generator,
            adaptive_k=adaptive_k,
            grad_scaler=grad_scaler,
        )
        # a subspace source learns its bases from the run; a curvature needs an eigensolver
        self.source: SubspaceSource | None = None
        if isinstance(curvature, SubspaceSource):
            cfg = _config.check_source_arguments(base, curvature, k=k, **args)
            self.source, dtype, device = curvature, _source_dtype(cfg.params), cfg.params[0].device
        else:
            cfg = _config.check_arguments(base, curvature, k=10 if k is None else k, **args)
            dtype, device = curvature.dtype, curvature.device
        self.mode, self.scales = cfg.mode, cfg.scales
        self.project_target, self.on_fault = cfg.project, cfg.on_fault
        self.k, self.num_extra, self.adaptive_k = cfg.k, cfg.num_extra, cfg.adaptive_k
        #: everything the wrapper remembers between steps, one value
        self.subspace = ProjectionState(active_k=self.k)
        self.eigensolver, self.schedule = cfg.eigensolver, cfg.schedule
        self._vec = FlatParams(cfg.params, dtype)

        self.base = base
        self.curvature = None if self.source is not None else curvature
        self._ready = False
        super().__init__(base.param_groups, {})
        # share (not copy) the base's groups and state: schedulers and hooks act on the base
        self.param_groups = base.param_groups
        self.state = base.state
        self.defaults = base.defaults  # OneCycleLR & co. read momentum/betas support here
        self._ready = True
        self.generator = generator or torch.Generator(device=device).manual_seed(0)
        self.last_stats: StepStats | None = None
        self.grad_scaler = grad_scaler
        _checkpoint.register(self)
        # stepping the base (or any optimizer it steps through) other than through this
        # wrapper would bypass the projection: refused from now on, while the wrapper lives
        self._chain = inner_chain(base)
        _guard.guard(self, self._chain)

    # ------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (e.g. unfreezing layers while fine-tuning).

        With a :class:`~subspace_optim.Curvature` (such as
        :class:`~subspace_optim.HessianOperator` or its distributed form), the operator is
        replaced by ``curvature.extended(...)`` over the new parameters, every other
        setting kept, and the basis is recomputed at the next projected step (the
        parameter space changed). Other operators must already cover the parameters.

        Args:
            param_group: as for :meth:`torch.optim.Optimizer.add_param_group`: ``"params"``
                (a tensor or an iterable of them) and per-group options of the base
                optimizer (``lr``, ...).

        Raises:
            ValueError: new parameters and an operator that cannot be extended, or a
                tensor the operator refuses (not a parameter of its model, another dtype);
                nothing changes.
        """
        if not self._ready:  # from Optimizer.__init__: the base's own groups
            super().add_param_group(param_group)
            return
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if self.source is not None:
            self._add_source_group(param_group, params)
            return
        # built first: a bad parameter (not in the model, other dtype) raises before any change
        curvature = _config.covering_curvature(self.curvature, self._vec.params, params)
        self.base.add_param_group({**param_group, "params": params})
        if curvature is not self.curvature:
            self.curvature = curvature
            self._vec = FlatParams(curvature.params, curvature.dtype)
            self.subspace.basis = self.subspace.eigenvalues = None
            self.subspace.active_k = self.k

    def _add_source_group(self, param_group: dict[str, Any], params: list[Tensor]) -> None:
        """``add_param_group`` with a source: the base checks and takes the group, then the
        source learns the new blocks; a group that either of them refuses changes nothing."""
        group = {**param_group, "params": params}
        _config.group_scales([group], self.scales)
        new = [p for p in params if p.requires_grad]
        assert self.source is not None
        ks = [*self._group_ks(), *(group.get("subspace_k") for _ in new)]
        self.base.add_param_group(group)
        try:
            self.source.bind([*self._vec.params, *new], ks)
        except Exception:
            # torch.optim.Optimizer.add_param_group only appended the group: undone
            self.base.param_groups.pop()
            raise
        params = [*self._vec.params, *new]
        self._vec = FlatParams(params, _source_dtype(params))

    def _group_ks(self) -> list[int | None]:
        ids = {id(p) for p in self._vec.params}
        return [
            g.get("subspace_k") for g in self.base.param_groups for p in g["params"] if id(p) in ids
        ]

    # ------------------------------------------------------------- refresh
    @torch.no_grad()
    def refresh(self) -> EigenResult | None:
        """Recompute the basis at the current parameters now (warm-started), and return the
        solver's result; on a fault, apply the ``on_fault`` policy and return ``None``.

        Returns:
            The eigensolver's result (``k + num_extra`` eigenpairs, the new basis), or
            ``None`` when the refresh failed and ``on_fault`` kept the previous basis.

        Raises:
            FloatingPointError: the refresh failed and ``on_fault="raise"``.
            TypeError: the wrapper has a subspace source, which refreshes itself.
        """
        if self.source is not None:
            raise TypeError(
                "refresh() recomputes a curvature's eigenbasis; a subspace source refreshes "
                "itself every refresh_every steps"
            )
        return self._refresh(with_gradient=False).result

    def _refresh(self, *, with_gradient: bool) -> RefreshOutcome:
        outcome = refresh_basis(
            self.curvature,
            lambda init: self.eigensolver.solve(
                self.curvature, self.k + self.num_extra, init=init, generator=self.generator
            ),
            self.basis,
            on_fault=self.on_fault,
            counters=self.counters,
            generator=self.generator,
            with_gradient=with_gradient,
        )
        if outcome.result is not None:
            self.subspace.basis, self.subspace.eigenvalues = outcome.basis, outcome.eigenvalues
            self.subspace.last_result = outcome.result
        return outcome

    # ---------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one projected step.

        Args:
            closure: re-evaluates the model and returns the loss (passed to the base
                optimizer, as SAM and LBFGS need). Required with a SAM base, except right
                after ``sam.unperturb()`` (SAM's two-call API, e.g. with a GradScaler).

        Returns:
            The loss the base optimizer's step returned (the closure's, when one is
            given), or ``None``.

        Raises:
            ValueError: a SAM base without a closure (and no ``unperturb()`` before), SAM's
                two-call API with ``project="gradient"``, a closure while a GradScaler is
                attached, or parameters that already hold NaN/Inf.
            RuntimeError: SAM is between ``first_step()`` and ``unperturb()``, the
                attached GradScaler's bookkeeping shows the gradients still scaled or
                unscaled twice, or the base optimizer trains a parameter the projection does
                not act on (added with ``base.add_param_group`` behind the wrapper).
            FloatingPointError: with ``on_fault="raise"``, a failed refresh, a minibatch
                gradient holding NaN/Inf or an update that comes out non-finite (the
                parameters are left as they were).
        """
        # misuse is refused here, before anything (basis, counters, parameters) changes
        _guard.check_step_call(self, closure)
        with _guard.stepping(self._chain):
            facts = self._begin(closure)
            if facts.active:
                self._refresh_stage(facts)
            loss = self._base_stage(facts, closure)
            if facts.active and facts.skip is None:
                self._project_stage(facts)
            self.last_stats = self._record(facts)
            self.subspace.step += 1
            return loss

    def _begin(self, closure: Callable[[], Tensor] | None) -> StepFacts:
        """Stage 1: bad input and gradient faults are caught here, before any change."""
        facts = StepFacts(t=self.subspace.step, active=self.k > 0)
        if facts.active:
            by_id = _config.group_scales(self.base.param_groups, self.scales)
            if by_id is not None:
                facts.group_scales = [by_id.get(id(p), self.scales) for p in self._vec.params]
            # a group's "subspace_mode" overrides the mode: "bulk" under "none" projects
            pairs = facts.group_scales or [self.scales]
            facts.wants_projection = any(pair != (1.0, 1.0) for pair in pairs)
            facts.theta_old = self._vec.values()
            if not all_finite(facts.theta_old):
                _faults.check_finite_params(self._vec.params, when=f"before step {facts.t}")
            self._vec.check_dense_grads()  # with a closure: what .grad holds now
            if closure is None:
                facts.g_mini = self._vec.grads()
                facts.grad_finite = all_finite(facts.g_mini)
                if not facts.grad_finite and self.on_fault == "raise":
                    raise FloatingPointError(
                        f"step {facts.t}: the gradient holds NaN/Inf (on_fault='raise'); "
                        "parameters and optimizer state are unchanged. Check the loss of this "
                        "batch"
                    )
        return facts

    def _refresh_stage(self, facts: StepFacts) -> None:
        """Stage 2: a new basis when the schedule asks (or a projection needs a first one)."""
        if self.source is not None:
            self._source_stage(facts)
            return
        decision = self.schedule.decide(facts.t)
        facts.wants_projection = facts.wants_projection and decision.project
        if decision.refresh or (facts.wants_projection and self.basis is None):
            facts.refresh = self._refresh(with_gradient=True)
            self._check_stability(facts.t)
        facts.U = None if self.basis is None else self.basis[:, : self.active_k]
        if not facts.grad_finite:
            facts.skip = "the gradient holds NaN/Inf"
        elif facts.wants_projection and facts.U is None:
            facts.skip = "no usable basis for a projected step"

    def _source_stage(self, facts: StepFacts) -> None:
        """Stage 2 with a source: it refreshes itself when due; before its first basis the
        update passes unchanged (the step is not skipped)."""
        assert self.source is not None
        seconds = self.source.refresh(facts.t)
        if seconds is not None:
            facts.refresh = RefreshOutcome(seconds=seconds)
        facts.U = self.source.basis()
        if not facts.grad_finite:
            facts.skip = "the gradient holds NaN/Inf"

    def _base_stage(self, facts: StepFacts, closure: Callable[[], Tensor] | None) -> Any:
        """Stage 3: the base optimizer's step (gradients projected first if asked); a
        skipped step only evaluates the closure, so the base's state never sees a fault."""
        loss = None
        try:
            loss = self._run_base(facts, closure)
        except _faults.NonFiniteGradient:
            assert facts.theta_old is not None
            self._vec.write(facts.theta_old, add=False)  # e.g. SAM moved θ before the closure
            if self.on_fault == "raise":
                raise FloatingPointError(
                    f"step {facts.t}: the closure's loss or gradient holds NaN/Inf "
                    "(on_fault='raise'); the base optimizer was stopped before its update and "
                    "the parameters restored"
                ) from None
            facts.skip = "the closure's loss or gradient holds NaN/Inf"
        if facts.skip is not None:
            _faults.count_skip(self.counters, facts.t, facts.skip)
        return loss

    def _run_base(self, facts: StepFacts, closure: Callable[[], Tensor] | None) -> Any:
        if facts.skip is not None:  # skipped like torch.amp.GradScaler does
            if closure is None:
                return None
            with torch.enable_grad():
                return closure()
        if closure is not None and facts.active:
            closure = _faults.guarded(closure, self._vec)
        raw: list[Tensor] = []  # the first unprojected closure gradient, for the record
        if facts.project_now and self.project_target == "gradient":
            project = self._gradient_projection(facts)
            if closure is None:
                assert facts.g_mini is not None
                self._vec.set_grads(project(facts.g_mini))
            else:
                # the gradient already in .grad that the base will use (SAM's ascent
                # direction after the usual loss.backward()) is projected, and so is every
                # gradient the closure produces, however often the base evaluates it
                project_existing_grads(self._vec, self.base, project, raw)
                closure = projecting_closure(closure, self._vec, project, raw)
        if closure is None:
            return self.base.step()
        with torch.enable_grad():
            loss = self.base.step(closure)
        if raw and facts.g_mini is None:
            facts.g_mini = raw[0]
        return loss

    def _gradient_projection(self, facts: StepFacts) -> Callable[[Tensor], Tensor]:
        """``g ↦ a·P_k g + b·(g − P_k g)``, with each parameter's ``(a, b)`` when a group
        sets its own ``"subspace_mode"``."""
        U, pairs, sizes = facts.U, facts.group_scales, self._vec.sizes
        assert U is not None
        if pairs is None:
            return lambda g: project_gradient(g, U, self.scales)
        return lambda g: plan_blockwise(g, dominant_part(U, g), sizes, pairs).delta

    def _project_stage(self, facts: StepFacts) -> None:
        """Stage 4: the base update ``Δ`` becomes ``a·P_kΔ + b·(Δ − P_kΔ)``; a non-finite
        update is undone (NaN never reaches the parameters)."""
        assert facts.theta_old is not None
        if self.source is not None:
            self._scale_stage(facts)
            return
        theta = self._vec.values()
        facts.delta_base = facts.delta = theta - facts.theta_old
        plan = None
        if facts.project_now and self.project_target == "update":
            assert facts.U is not None
            dom = dominant_part(facts.U, facts.delta_base)
            frozen = self._vec.frozen()
            if any(frozen):
                dom = zero_frozen(dom, self._vec.sizes, frozen)
            if facts.group_scales is None:
                plan = plan_update(facts.theta_old, facts.delta_base, dom, self.scales)
            else:
                plan = plan_blockwise(facts.delta_base, dom, self._vec.sizes, facts.group_scales)
            facts.delta = plan.delta
        if not all_finite(facts.delta):
            # e.g. a closure whose loss was NaN: never write NaN into the parameters
            self._vec.write(facts.theta_old, add=False)
            facts.delta = torch.zeros_like(facts.delta_base)
            facts.undone = True
            _faults.count_skip(self.counters, facts.t, "the update was not finite")
        elif plan is not None:
            self._vec.write(plan.vector, add=plan.add)

    def _scale_stage(self, facts: StepFacts) -> None:
        """Stage 4 with a source: each projected parameter moves by
        ``a·P_bΔ_b + b·(Δ_b − P_bΔ_b)`` in place (the others keep ``Δ_b``); a non-finite
        update is undone; the source then observes ``Δ`` and the gradient."""
        assert facts.theta_old is not None and self.source is not None
        if facts.g_mini is None:  # closure path: the base refreshed .grad at θ_old
            facts.g_mini = self._vec.grads()
        facts.delta_base = delta = delta_of(self._vec.params, facts.theta_old)
        if not all_finite(delta):
            self._vec.write(facts.theta_old, add=False)
            facts.undone = True
            _faults.count_skip(self.counters, facts.t, "the update was not finite")
            return
        basis = cast(BlockBasis | None, facts.U)  # a source's bases (SubspaceSource.basis)
        if basis is not None:
            n = len(self._vec.params)
            scales = facts.group_scales or [self.scales] * n
            if not facts.project_now:  # mode="none": measure only
                scales = [(1.0, 1.0)] * n
            facts.coords = scale_blocks(self._vec.params, basis, delta, scales)
        self.source.observe(delta, facts.g_mini)

    def _record(self, facts: StepFacts) -> StepStats:
        """Stage 5: the step's record; a refresh also feeds the schedule the measured χ_k."""
        if facts.active and facts.g_mini is None:
            facts.g_mini = self._vec.grads()
        stats = step_record(facts, self.eigenvalues, int(self.counters["faults"]), self.scales)
        if facts.refresh is not None:
            full = stats.gradient_source == "full"
            self.schedule.observe(facts.t, stats.grad_alignment if full else None)
        return stats

    # ------------------------------------------------------------- helpers
    def _check_stability(self, t: int) -> None:
        """After a refresh: pick ``active_k`` (``adaptive_k``), then warn once per episode
        while the first eigenvalue the update still moves along exceeds the threshold."""
        threshold = stability_threshold(self.base)
        if self.eigenvalues is None or threshold is None:
            return
        if self.adaptive_k is not None:
            self.subspace.active_k = choose_k(self.eigenvalues, threshold, self.adaptive_k, self.k)
        moved = moved_eigenvalue(self.eigenvalues, self.active_k, threshold, self.scales)
        if moved is None:
            return
        index, lam, limit = moved
        if lam > limit:
            self.counters["unstable_refreshes"] = self.counters.get("unstable_refreshes", 0) + 1
            if not self.subspace.unstable:  # once per episode
                warn_unstable(t, index, lam, limit, dominant=index <= self.active_k, stacklevel=5)
        self.subspace.unstable = lam > limit

    @property
    def basis(self) -> Tensor | None:
        """``(n, k + num_extra)`` eigenvectors of the latest refresh, or ``None``."""
        return self.subspace.basis

    @property
    def eigenvalues(self) -> Tensor | None:
        """``(k + num_extra,)`` tracked eigenvalues, descending, or ``None``."""
        return self.subspace.eigenvalues

    @property
    def active_k(self) -> int:
        """Directions projected now (``k``, or fewer with ``adaptive_k``)."""
        return self.subspace.active_k

    @property
    def last_result(self) -> EigenResult | None:
        """The eigensolver's latest usable result, or ``None``."""
        return self.subspace.last_result

    @property
    def counters(self) -> dict[str, float]:
        """Refreshes, products, seconds and faults so far."""
        return self.subspace.counters

    def covered_params(self) -> list[Tensor] | None:
        """The parameters the projection acts on.

        Returns:
            The parameters in flat order (a source's ``bases`` follow it), or ``None`` for
            an operator that does not name its parameters (a plain
            :class:`~subspace_optim.LinearOperator`).
        """
        if self.source is None and not isinstance(self.curvature, Curvature):
            return None
        return list(self._vec.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the base optimizer's parameters.

        Args:
            set_to_none: set the gradients to ``None`` instead of zeroing them, as in
                :meth:`torch.optim.Optimizer.zero_grad`.
        """
        self.base.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return (
            f"SubspaceProjectedOptimizer(base={type(self.base).__name__}, k={self.k}, "
            f"mode={self.mode!r}, eigensolver={self.eigensolver!r}, refresh={self.schedule!r})"
        )


def _source_dtype(params: list[Tensor]) -> torch.dtype:
    """The flat vectors' dtype with a source: float64 for float64 parameters, else float32
    (half-precision parameters are scaled in float32)."""
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
