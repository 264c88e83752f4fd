"""The paper's experiment on any model: train, switch to Dom / Bulk, compare.

For each optimizer family the runner

1. trains the unmodified optimizer from the model's initial weights, measuring χ_k of the
   full-batch gradient every ``check_every`` steps, until the switch (the paper's protocol:
   the EMA of χ_k passes a threshold, or a fixed step);
2. snapshots the model and the optimizer state (momentum, Adam moments, the basis) there;
3. runs the base optimizer, its Dom variant and its Bulk variant from that same snapshot
   with the same minibatch sequence, refreshing the top-k basis of the full training-set
   Hessian every ``refresh`` steps (the paper: every step).

A switch by the rule starts the three runs at the measurement that triggered it: the
switch step is the step ``t`` whose χ_k brought the EMA to the threshold, the snapshot is
the parameters and optimizer state *before* step ``t`` (kept before every measurement
step), and the first projected update is step ``t``'s, taken at the parameters where that
χ_k was measured, with the basis of that measurement (the public code of the paper
measures the basis and the full-batch gradient at ``θ_t`` and projects step ``t``'s
update). The prefix's own unprojected step ``t`` is discarded; the base run takes it
again, identically, so "χ_k at the switch" is the triggering measurement.

The unprojected prefix is shared by the three runs, so a family costs one prefix plus three
runs after the switch. With ``mode_scales=(a, b)`` a fourth run, ``"scaled"``
(``θ += a·P_kΔ + b·(Δ − P_kΔ)``), starts from the same snapshot with the same minibatches.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..diagnostics import effective_lr_summary
from ..optim.eos import pick_learning_rate, stability_threshold
from ..optim.projected import SubspaceProjectedOptimizer
from ..schedules import AlignmentSwitch, Every
from ._loop import BeforeMeasurement, Stretch, progress_bar
from .config import RunConfig
from .context import RunContext, check_data, machine_info, resolve_device
from .families import EOS_FRACTION, Family
from .results import VARIANTS, ExperimentResult, FamilyResult, RunSummary, VariantOutcome

__all__ = ["run"]

_MODES = {"base": "none", "dom": "dominant", "bulk": "bulk"}
#: a run whose full-batch loss exceeds this multiple of the initial loss is stopped
_BLOWUP = 10.0


def _trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class _Start:
    """A family's settings before its first step."""

    lr: float
    sharpness: float  # λ_1 at θ_0 when the lr was derived from it, else nan
    limit: float  # the stability threshold (nan: none)
    initial_loss: float

    @property
    def blowup(self) -> float:
        """The full-batch loss above which a run is stopped as diverged."""
        return _BLOWUP * self.initial_loss if self.initial_loss > 0 else math.inf


@dataclass
class _Switch:
    """Where the shared prefix handed over to the runs after the switch."""

    step: int
    reason: str  # "threshold", "forced" or "fixed"
    model: nn.Module  # the parameters the runs after the switch start from
    opt_state: dict[str, Any]  # and the optimizer state (base state, basis, step count)
    rows: list[dict[str, Any]]  # the prefix's rows
    messages: dict[str, None]  # the prefix's warnings
    alignment_ema: float
    loss: float  # the full-batch loss at the switch
    seconds: float


def _start(ctx: RunContext, family: Family, model: nn.Module) -> _Start:
    """The family's learning rate (an Edge-of-Stability one when none is given), its
    stability threshold and the initial loss."""
    initial_loss = ctx.full_loss(model)
    sharpness = math.nan
    lr = ctx.config.lr_for(family)
    if lr is None:
        try:
            pick = pick_learning_rate(
                ctx.operator(model),
                EOS_FRACTION,
                eigensolver=ctx.config.solver,
                generator=ctx.generator(),
            )
        except ValueError as exc:
            raise ValueError(
                f"{family.name}: cannot derive an Edge-of-Stability learning rate ({exc}); "
                f"pass one with --lr {family.name}=VALUE"
            ) from None
        lr, sharpness = pick.lr, pick.sharpness
        ctx.log(f"{family.name}: λ_1(θ_0) = {sharpness:.4g}, lr = {EOS_FRACTION}·2/λ_1 = {lr:.4g}")
    threshold = stability_threshold(family.build([torch.zeros(1, requires_grad=True)], lr))
    limit = math.nan if threshold is None else float(threshold)
    return _Start(lr, sharpness, limit, initial_loss)


def _switch_schedule(cfg: RunConfig) -> AlignmentSwitch | Every:
    """The prefix's refresh schedule: χ_k measured every ``check_every`` steps."""
    if cfg.switch_step is not None:
        return Every(cfg.check_every, start=0)
    # the runner forces the switch itself (at cfg.fallback_step) and reports it in the
    # table, so the schedule's own "checks keep failing" warning is off. The schedule
    # projects from the step after the triggering measurement t (in a live training loop
    # step t is already taken); the runner rewinds to t, so min_steps is switch_after + 1:
    # the measurement, and so the switch, is at step >= switch_after
    return AlignmentSwitch(
        threshold=float(cfg.switch),
        ema=0.9**cfg.check_every,
        check_every=cfg.check_every,
        min_steps=cfg.switch_after + 1,
        warn_after=None,
    )


def _run_prefix(
    ctx: RunContext, family: Family, model: nn.Module, start: _Start, bar: Any
) -> _Switch:
    """The shared unprojected run of ``model`` from initialization until the switch."""
    cfg = ctx.config
    schedule = _switch_schedule(cfg)
    opt = SubspaceProjectedOptimizer(
        family.build(_trainable(model), start.lr),
        ctx.operator(model),
        cfg.k,
        "none",
        refresh=schedule,
        num_extra=cfg.num_extra,
        generator=ctx.generator(),
        **ctx.solver_kwargs(),
    )
    prefix = Stretch(ctx, family, "base", "prefix", model, opt, bar)
    fixed, reason = cfg.switch_step, "fixed"

    def stop(t: int) -> bool:
        nonlocal reason
        if fixed is not None:
            return t >= fixed
        if schedule.switched_at is not None and t >= schedule.switched_at:
            reason = "threshold"
            return True
        if t >= cfg.fallback_step:
            reason = "forced"
            return True
        return False

    # a rule switch may rewind to its triggering measurement
    keeper = None if fixed is not None else BeforeMeasurement(prefix, cfg.check_every)
    t0 = time.perf_counter()
    switch, diverged_at = prefix.train_until(0, stop, start.blowup, before_step=keeper)
    seconds = time.perf_counter() - t0
    if diverged_at is not None:
        bar.close()
        raise FloatingPointError(
            f"{family.name}: the unprojected run diverged at step {diverged_at} before the switch "
            f"(lr {start.lr:.4g}); lower the learning rate with --lr {family.name}=VALUE"
        )
    rows = prefix.rows
    if reason == "threshold":
        # rewind to the triggering measurement: the runs after the switch start from the
        # parameters and optimizer state before that step, so that their first update is
        # that step's and χ_k at the switch is the measurement that crossed the threshold
        switch = schedule.trigger_step
        if keeper is None or keeper.step != switch or keeper.model is None:
            raise RuntimeError(  # an invariant of BeforeMeasurement and AlignmentSwitch
                f"{family.name}: no snapshot before the triggering measurement at step {switch}"
            )
        snapshot_model, snapshot_opt = keeper.model, keeper.state
        del rows[keeper.num_rows :]  # the prefix's own step `switch`: the base run retakes it
        bar.n = switch
    else:
        snapshot_model = copy.deepcopy(model)
        snapshot_opt = copy.deepcopy(opt.state_dict())
    chi_ema = _alignment_ema(rows, cfg.check_every)
    if fixed is None and schedule.value is not None:
        chi_ema = float(schedule.value)
    loss = ctx.full_loss(snapshot_model)
    return _Switch(
        switch, reason, snapshot_model, snapshot_opt, rows, prefix.messages, chi_ema, loss, seconds
    )


def _alignment_ema(rows: list[dict[str, Any]], check_every: int) -> float:
    """The EMA of the full-batch χ_k measured in ``rows`` (``nan``: none measured)."""
    chi_ema = math.nan
    for r in rows:
        chi = r["grad_alignment"] if r.get("gradient_source") == "full" else math.nan
        if math.isfinite(chi):
            beta = 0.9**check_every
            chi_ema = chi if not math.isfinite(chi_ema) else beta * chi_ema + (1 - beta) * chi
    return chi_ema


def _run_variant(
    ctx: RunContext, family: Family, variant: str, start: _Start, switch: _Switch, bar: Any
) -> VariantOutcome:
    """One run after the switch, from the switch's snapshot with the shared minibatches."""
    cfg = ctx.config
    end_step = cfg.end_step(switch.step)
    bar.set_description(f"{family.name}: {variant}")
    model = copy.deepcopy(switch.model)
    opt = SubspaceProjectedOptimizer(
        family.build(_trainable(model), start.lr),
        ctx.operator(model),
        cfg.k,
        cfg.mode_scales if variant == "scaled" else _MODES[variant],
        refresh=Every(cfg.track_every if variant == "base" else cfg.refresh, start=switch.step),
        num_extra=cfg.num_extra,
        generator=ctx.generator(),
        **ctx.solver_kwargs(),
    )
    opt.load_state_dict(copy.deepcopy(switch.opt_state))  # base state, warm basis, step count
    opt.counters.update(faults=0, skipped_steps=0)  # this run's own (the prefix's stay in its rows)
    stretch = Stretch(ctx, family, variant, "after switch", model, opt, bar)
    t1 = time.perf_counter()
    end, diverged_at = stretch.train_until(switch.step, lambda t: t >= end_step, start.blowup)
    if diverged_at is None:
        final = ctx.full_loss(model)
        stretch.rows.append(stretch.row(end, final, math.nan, stats=False))
        if not math.isfinite(final):
            diverged_at = end
    else:
        final = math.nan
        bar.update(end_step - end)
    messages = dict(stretch.messages)
    if variant == "base":  # the base run also reports the shared prefix's warnings
        messages.update(dict.fromkeys(switch.messages))
    return VariantOutcome(
        variant,
        stretch.rows,
        final_loss=final,
        diverged_at=diverged_at,
        steps_run=end - switch.step,
        seconds=time.perf_counter() - t1,
        warnings=tuple(messages),
    )


def _run_family(ctx: RunContext, family: Family) -> FamilyResult:
    """One family: the shared prefix until the switch, then each variant's run from it."""
    cfg = ctx.config
    model = copy.deepcopy(ctx.model).to(ctx.device)
    start = _start(ctx, family, model)
    bar = progress_bar(ctx, cfg.steps, f"{family.name}: to switch")
    switch = _run_prefix(ctx, family, model, start, bar)
    del model
    # base / Dom / Bulk (and scaled) from the same snapshot and minibatch sequence
    variants = VARIANTS + (("scaled",) if cfg.mode_scales is not None else ())
    bar.total = switch.step + len(variants) * (cfg.end_step(switch.step) - switch.step)
    bar.refresh()
    outcomes = {v: _run_variant(ctx, family, v, start, switch, bar) for v in variants}
    bar.close()
    base = outcomes["base"]
    first = base.rows[0] if base.rows else {}
    runs = {
        v: RunSummary.from_outcome(
            outcome,
            k=cfg.k,
            limit=start.limit,
            loss_at_switch=switch.loss,
            base_final=base.final_loss,
            earlier=switch.rows if v == "base" else (),
        )
        for v, outcome in outcomes.items()
    }
    measured = [r for r in [*switch.rows, *base.rows] if r.get("gradient_source") == "full"]
    return FamilyResult(
        family=family.name,
        label=family.label,
        lr=start.lr,
        batch_size=None if family.full_batch else min(cfg.batch_size, ctx.X.shape[0]),
        stability_limit=start.limit,
        initial_sharpness=start.sharpness,
        switch_step=switch.step,
        switch_reason=switch.reason,
        alignment_ema=switch.alignment_ema,
        chi_at_switch=float(first.get("grad_alignment", math.nan))
        if first.get("refreshed")
        else math.nan,
        initial_loss=start.initial_loss,
        loss_at_switch=switch.loss,
        eta=effective_lr_summary(measured),
        runs=runs,
        prefix_seconds=switch.seconds,
        rows=switch.rows + [r for o in outcomes.values() for r in o.rows],
    )


def run(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor], Tensor],
    train_data: tuple[Tensor, Tensor],
    config: RunConfig | None = None,
    *,
    device: str | torch.device | None = None,
    setup: str = "custom",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> ExperimentResult:
    """Run the paper's Dom / Bulk experiment on your own model and data.

    For every optimizer family, trains ``model`` (a private copy; your model is not
    modified) from its current weights with the unmodified optimizer until the switch,
    then runs the base optimizer, its Dom variant and its Bulk variant from that same point
    with the same minibatches, the top-k basis of the full training-set Hessian refreshed
    every ``refresh`` steps. With ``mode_scales=(a, b)`` it also runs ``"scaled"``
    (``θ += a·P_kΔ + b·(Δ − P_kΔ)``) from there.

    A switch by the rule (``switch`` a threshold) is at the measurement step ``t`` whose
    χ_k brought the EMA to the threshold (``t >= switch_after``): the runs start from the
    parameters and optimizer state before step ``t``, their first update is step ``t``'s,
    and the reported χ_k at the switch is that measurement. A forced switch (at
    ``switch_by``) and a fixed one (``switch`` a step) start at that step.

    Args:
        model: the network at initialization.
        loss_fn: ``loss_fn(model(inputs), targets)`` returning the mean loss of a batch
            (the paper: :func:`~subspace_optim.experiments.half_sum_mse` on one-hot targets).
        train_data: ``(inputs, targets)``, the whole training set as two tensors; Hessians,
            χ_k and the reported losses are full-batch over it.
        config: a :class:`~subspace_optim.experiments.RunConfig`; or pass its fields as
            keyword arguments (``steps=300, switch=100, optimizers="sgd,adam", ...``).
        device: where to train (default: the model's device).
        setup: a name recorded in the result.
        progress: show tqdm progress bars (on stderr).
        log: receives one-line messages (default: printed to stderr when ``progress``).

    Returns:
        An :class:`~subspace_optim.experiments.ExperimentResult`; write it with
        :func:`~subspace_optim.experiments.write_report`.

    .. note::
        The run uses torch's current intra-op thread count; it never changes global state.
        For small models (the digits MLP) one thread (``torch.set_num_threads(1)``) is the
        fast choice, and the CLI uses it for its digits setups (OpenMP's idle threads
        compete with other processes on a busy machine).

    Raises:
        TypeError, ValueError: bad settings or data, before any training.
        FloatingPointError: an unprojected run diverged before the switch (lower the
            learning rate). Instabilities *after* the switch are reported, not raised.

    Example:
        >>> import torch
        >>> from subspace_optim.experiments import run, mlp, half_sum_mse
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(64, 4, generator=g)
        >>> Y = torch.nn.functional.one_hot(torch.arange(64) % 3, 3).float()
        >>> result = run(mlp((4, 8, 3), generator=g), half_sum_mse, (X, Y), optimizers="sgd",
        ...              steps=12, switch=4, k=2, batch_size=16, progress=False)
        >>> fam = result.families[0]
        >>> fam.switch_step, sorted(fam.runs), fam.runs["base"].steps_run
        (4, ['base', 'bulk', 'dom'], 8)
    """
    if config is None:
        config = RunConfig(**settings)
    elif settings:
        raise TypeError(
            f"pass either config or keyword settings, not both (got {sorted(settings)})"
        )
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig; got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
    if not _trainable(model):
        raise ValueError("the model has no trainable parameters")
    X, Y = check_data(train_data)
    dev = resolve_device(device, model)
    n_params = sum(p.numel() for p in _trainable(model))
    if config.k + config.num_extra >= n_params:
        raise ValueError(
            f"k + num_extra = {config.k + config.num_extra} must be smaller than the number of "
            f"trainable parameters ({n_params})"
        )
    if log is None:

        def log(msg: str) -> None:
            if progress:
                print(msg, file=sys.stderr)

    dtype = next(iter(_trainable(model))).dtype
    X = X.to(device=dev, dtype=dtype if X.is_floating_point() else X.dtype)
    Y = Y.to(device=dev, dtype=dtype if Y.is_floating_point() else Y.dtype)
    ctx = RunContext(model, loss_fn, X, Y, config, dev, progress, log)
    start, cpu_start = time.perf_counter(), time.process_time()
    families = [_run_family(ctx, f) for f in config.families]
    return ExperimentResult(
        setup=setup,
        config={**config.as_dict(), "num_examples": int(X.shape[0]), "num_params": n_params},
        machine=machine_info(dev),
        families=families,
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
    )
