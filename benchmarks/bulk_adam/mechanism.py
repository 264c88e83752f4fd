"""The mechanism: Adam's prefix rerun as ``run`` runs it, then Adam, Bulk-Adam (warm) and
Bulk-Adam (Lanczos) from that snapshot on the same minibatches, measured at every step."""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import Tensor, nn

import subspace_optim as so
from subspace_optim.experiments import FAMILIES, RunConfig, Setup
from subspace_optim.experiments.context import RunContext

from .points import Study


def trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).double()


def minibatch_step(ctx: RunContext, model: nn.Module, opt: Any, t: int) -> None:
    """Step ``t`` as the runner takes it (minibatch ``ctx.batches[t]``, no closure)."""
    idx = ctx.batches[t]
    opt.zero_grad()
    with torch.enable_grad():
        ctx.loss_fn(model(ctx.X[idx]), ctx.Y[idx]).backward()
    opt.step()


def adam_direction(adam: torch.optim.Adam, params: list[Tensor]):
    """``x ↦ −lr·(x/bc1)/(√v/√bc2 + ε)``: Adam's step as a linear map of its first moment,
    with ``v`` and the step count of the state *after* the step (torch's single-tensor
    and foreach Adam; no weight decay, no AMSGrad), in float64."""
    group = adam.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
        raise ValueError("the study's Adam has no weight decay, AMSGrad or maximize")
    lr, (beta1, beta2), eps = float(group["lr"]), group["betas"], float(group["eps"])
    step = float(adam.state[params[0]]["step"])
    bc1, bc2 = 1 - beta1**step, 1 - beta2**step
    denom = flat([adam.state[p]["exp_avg_sq"] for p in params]).sqrt() / math.sqrt(bc2) + eps
    first = flat([adam.state[p]["exp_avg"] for p in params])
    return (lambda x: -(lr / bc1) * x / denom), first


def instrumented(
    ctx: RunContext,
    model: nn.Module,
    opt: so.SubspaceProjectedOptimizer,
    start: int,
    end: int,
    study: Study,
) -> dict[str, Any]:
    """Steps ``start … end−1`` of one run after the switch, measured at every step."""
    params = trainable(model)
    bulk = opt.mode == "bulk"
    series: dict[str, list[float]] = {name: [] for name in SERIES}
    samples: list[dict[str, Any]] = []
    residuals: list[dict[str, Any]] = []
    loss_start = ctx.full_loss(model)
    t0 = time.perf_counter()
    for t in range(start, end):
        theta0 = flat(params)
        with torch.enable_grad():
            grads = torch.autograd.grad(ctx.loss_fn(model(ctx.X), ctx.Y), params)
        g = flat(list(grads))  # the full-batch gradient at θ_t
        probe = copy.deepcopy(model) if (t - start) % study.residual_every == 0 else None
        minibatch_step(ctx, model, opt, t)
        realized = flat(params) - theta0
        _measure(series, opt, params, (g, realized), bulk)
        if probe is not None:  # the warm basis against the Hessian at θ_t
            residuals.append({"step": t, "max_rel_residual": _residual(ctx, probe, opt)})
        if (t - start) % study.sample_every == 0:
            samples.append(_sample(t, opt, series))
    final = ctx.full_loss(model)
    return {
        "mode": opt.mode,
        "eigensolver": repr(opt.eigensolver),
        "loss_start": loss_start,
        "final_loss": final,
        "steps": end - start,
        "seconds": time.perf_counter() - t0,
        "counters": {key: float(v) for key, v in opt.counters.items()},
        "series": series,
        "samples": samples,
        "residuals": residuals,
    }


#: the per-step series of an instrumented run
SERIES = (
    "identity_rel_error",
    "update_alignment",
    "update_alignment_wrapper",
    "chi",
    "m_norm",
    "m_dom_norm",
    "lambda_1",
    "leak",
    "rest",
    "dom",
    "realized",
)


def _measure(
    series: dict[str, list[float]],
    opt: so.SubspaceProjectedOptimizer,
    params: list[Tensor],
    step: tuple[Tensor, Tensor],
    bulk: bool,
) -> None:
    """Append one step's numbers to ``series``: ``step`` is the full-batch gradient before
    the step and the realized step, with the basis of this step (refreshed at θ_t)."""
    g, realized = step
    assert opt.basis is not None and opt.eigenvalues is not None and opt.last_stats
    U = opt.basis[:, : opt.k].double()

    def P(x: Tensor, U: Tensor = U) -> Tensor:
        return U @ (U.T @ x)

    D, m = adam_direction(opt.base, params)
    own = D(m)  # the step Adam's own state gives
    expected = own - P(own) if bulk else own
    m_dom = P(m)
    series["identity_rel_error"].append(
        float((realized - expected).norm() / realized.norm().clamp_min(1e-30))
    )
    series["update_alignment"].append(float(P(own).norm() / own.norm()))
    series["update_alignment_wrapper"].append(float(opt.last_stats.update_alignment))
    series["chi"].append(float(P(g).norm() / g.norm()))
    series["m_norm"].append(float(m.norm()))
    series["m_dom_norm"].append(float(m_dom.norm()))
    series["lambda_1"].append(float(opt.eigenvalues[0]))
    leak_dir, rest_dir = D(m_dom), D(m - m_dom)
    series["leak"].append(float(g @ (leak_dir - P(leak_dir))))
    series["rest"].append(float(g @ (rest_dir - P(rest_dir))))
    series["dom"].append(float(g @ P(own)))
    series["realized"].append(float(g @ realized))


def _residual(ctx: RunContext, probe: nn.Module, opt: so.SubspaceProjectedOptimizer) -> float:
    """The largest ``‖Hu − λu‖/|λ|`` of the basis against the Hessian of ``probe``."""
    assert opt.basis is not None and opt.eigenvalues is not None
    k = opt.k
    HU = so.HessianOperator(probe, ctx.loss_fn, (ctx.X, ctx.Y)).matmat(opt.basis[:, :k])
    lam = opt.eigenvalues[:k]
    return float(((HU - opt.basis[:, :k] * lam).norm(dim=0) / lam.abs()).max())


def _sample(t: int, opt: so.SubspaceProjectedOptimizer, series: dict[str, list[float]]) -> dict:
    """One row of the table along the run: the latest values and the cumulative split."""
    assert opt.last_stats is not None
    return {
        "step": t,
        "loss": float(opt.last_stats.loss),
        "chi": series["chi"][-1],
        "update_alignment": series["update_alignment"][-1],
        "m_norm": series["m_norm"][-1],
        "m_dom_norm": series["m_dom_norm"][-1],
        "lambda_1": series["lambda_1"][-1],
        "leak_cumulative": sum(series["leak"]),
        "rest_cumulative": sum(series["rest"]),
    }


def _variant(
    ctx: RunContext,
    model: nn.Module,
    variant: tuple[str, str | None],
    switch: int,
    snapshot: tuple[dict, dict],
) -> so.SubspaceProjectedOptimizer:
    """The run of ``variant`` (mode, solver) on ``model`` from the prefix's ``snapshot`` (the
    wrapper's state, Adam's state): with no solver named, as ``run()`` builds its runs after
    the switch (base: refreshed every step); with one, Adam's state only and a cold solve of
    that solver at every step."""
    (mode, solver), config = variant, ctx.config
    adam = FAMILIES["adam"]
    base = adam.build(trainable(model), config.lr_for(adam))
    if solver is None:
        opt = so.SubspaceProjectedOptimizer(
            base,
            ctx.operator(model),
            config.k,
            mode,
            refresh=so.Every(1, start=switch),
            num_extra=config.num_extra,
            generator=ctx.generator(),
            **ctx.solver_kwargs(),
        )
        opt.load_state_dict(copy.deepcopy(snapshot[0]))
        return opt
    base.load_state_dict(copy.deepcopy(snapshot[1]))
    return so.SubspaceProjectedOptimizer(
        base,
        ctx.operator(model),
        config.k,
        mode,
        eigensolver=solver,
        refresh=so.Every(1),
        num_extra=config.num_extra,
        generator=ctx.generator(),
    )


def mechanism(setup: Setup, config: RunConfig, switch: int, study: Study) -> dict[str, Any]:
    """Adam's prefix to ``switch`` as ``run`` takes it, then base / Bulk (warm) / Bulk
    (Lanczos) from that snapshot on the same minibatches, instrumented."""
    X, Y = setup.train_data
    ctx = RunContext(setup.model, setup.loss_fn, X, Y, config, torch.device("cpu"), False, print)
    adam = FAMILIES["adam"]
    lr = config.lr_for(adam)
    assert lr is not None
    model = copy.deepcopy(ctx.model)
    # run()'s prefix: the unprojected optimizer, χ_k measured every check_every steps from
    # step 0 (AlignmentSwitch refreshes at the same steps), stopped before the switch step
    prefix = so.SubspaceProjectedOptimizer(
        adam.build(trainable(model), lr),
        ctx.operator(model),
        config.k,
        "none",
        refresh=so.Every(config.check_every, start=0),
        num_extra=config.num_extra,
        generator=ctx.generator(),
        **ctx.solver_kwargs(),
    )
    t0 = time.perf_counter()
    for t in range(switch):
        minibatch_step(ctx, model, prefix, t)
    prefix_seconds = time.perf_counter() - t0
    snapshot_state = copy.deepcopy(prefix.state_dict())
    adam_state = copy.deepcopy(prefix.base.state_dict())
    end = config.end_step(switch)
    out: dict[str, Any] = {
        "lr": lr,
        "switch_step": switch,
        "end_step": end,
        "loss_at_switch": ctx.full_loss(model),
        "prefix_seconds": prefix_seconds,
        "runs": {},
    }
    variants = (("base", "none", None), ("bulk", "bulk", None), ("bulk_lanczos", "bulk", "lanczos"))
    for name, mode, solver in variants:
        m = copy.deepcopy(model)
        opt = _variant(ctx, m, (mode, solver), switch, (snapshot_state, adam_state))
        out["runs"][name] = instrumented(ctx, m, opt, switch, end, study)
        r = out["runs"][name]
        print(
            f"  mechanism {name}: final loss {r['final_loss']:.5f}, identity error max "
            f"{max(r['series']['identity_rel_error']):.1e} ({r['seconds']:.0f} s)",
            flush=True,
        )
    return out
