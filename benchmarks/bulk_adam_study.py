"""Why Bulk-Adam stalls on digits: the switch step, Adam's learning rate, and the mechanism.

``subspace-optim reproduce`` (scikit-learn digits, MLP 64-64-64-10, the paper's switch rule
with threshold 0.8) shows Bulk-Adam (lr 1e-3) making no progress after its switch, where
the paper's Bulk-Adam trains like Adam. This script measures why, with the objects the CLI
uses (:func:`subspace_optim.experiments.load_setup`, :class:`~subspace_optim.experiments.RunConfig`
built from the setup's defaults as ``reproduce --optimizers adam ...`` builds it,
:func:`subspace_optim.experiments.run`, and for the instrumented runs the same
:class:`~subspace_optim.experiments.context.RunContext` and
:class:`~subspace_optim.SubspaceProjectedOptimizer` that ``run`` builds):

1. **Learning-rate sweep** (``--optimizers adam --lr adam=η``, η from 3e-4 to 1e-2): how
   the switch happened (rule / forced), its step, χ_k there and its EMA, and the progress
   of Bulk and Dom relative to Adam over the 200 steps after it.
2. **Fixed switch step** (``--optimizers adam --switch N``, N = 100, 300, 500) next to the
   rule's step (the sweep's run at the default lr): Bulk-Adam's progress, χ_k at the switch.
3. **Mechanism**, at the default lr from the rule's switch step: Adam's prefix is rerun
   exactly as ``run`` runs it, then base Adam, Bulk-Adam (the default warm refresh) and
   Bulk-Adam with a cold Lanczos basis every step (``--solver lanczos``) take the same 200
   minibatch steps, instrumented at every step:

   * the realized Bulk step against ``(I − P_k)`` applied to the step Adam's own state
     gives (``−lr·m̂/(√v̂ + ε)`` from the moments after the step), as a relative error;
   * ``‖P_kΔ‖/‖Δ‖`` of Adam's own update ``Δ`` (the share Bulk removes), ``‖m‖`` and
     ``‖P_k m‖`` of the first moment, χ_k(∇L) of the full-batch gradient, λ_1;
   * the first-order loss change of each step, ``∇L·Δ_realized``, split along Adam's first
     moment: ``∇L·(I − P_k)D(P_k m)`` (the dominant part of ``m`` that Adam's
     per-coordinate scaling ``D`` carries out of the dominant subspace: the "leak") and
     ``∇L·(I − P_k)D((I − P_k) m)`` (the rest), summed over the run;
   * the relative eigen-residual ``‖Hu_i − λ_i u_i‖/λ_i`` of the warm basis, sampled.

   The instrumented base and Bulk runs must land on ``run``'s final losses (recorded).

Writes ``bulk_adam_study.json`` to ``--out`` (default ``benchmarks/results``) and, with
``--docs``, the page ``docs/bulk_adam.md``. ``--quick`` (a 150-example, 16-wide MLP, k = 3,
a few dozen steps; under 10 s of CPU, well within a minute) writes under ``--out`` or a fresh temporary folder,
never over the committed results or page. ``--render`` rewrites the page (and the JSON's
summary, which is derived from its measurements) from the JSON.

Run (the committed results: 445 s of wall and 431 s of CPU time on one thread of a shared
2-core CPU, the page says at what load)::

    OMP_NUM_THREADS=1 python benchmarks/bulk_adam_study.py --threads 1 --docs
    OMP_NUM_THREADS=1 python benchmarks/bulk_adam_study.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bulk_adam_study_report as report
from projected_training import compact, machine_info

import subspace_optim as so
from subspace_optim.experiments import (
    FAMILIES,
    RunConfig,
    Setup,
    half_sum_mse,
    load_digits,
    load_setup,
    mlp,
    run,
)
from subspace_optim.experiments.context import RunContext

ROOT = Path(__file__).resolve().parents[1]
STEM = "bulk_adam_study"
PAGE = ROOT / "docs" / "bulk_adam.md"


@dataclass(frozen=True)
class Study:
    """The sizes of one study; :data:`FULL` and :data:`QUICK` below."""

    setup: str  # "digits" (the CLI's default setup) or "quick"
    lr: float  # Adam's default learning rate (the mechanism runs at it)
    lrs: tuple[float, ...]  # the sweep
    fixed: tuple[int, ...]  # fixed switch steps
    sample_every: int  # the mechanism's trajectory table
    residual_every: int  # eigen-residual checks of the warm basis
    head: int  # "early" / "late" windows of the mechanism's per-step series
    seed: int = 0


FULL = Study(
    "digits", 1e-3, (3e-4, 5e-4, 7e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 1e-2), (100, 300, 500), 20, 20, 20
)
QUICK = Study("quick", 1e-3, (1e-3, 3e-3), (10, 20), 5, 5, 5)

#: the quick setup: digits at a size that runs the whole study in about a minute
QUICK_EXAMPLES = 150
QUICK_WIDTHS = (64, 16, 16, 10)
QUICK_DEFAULTS: dict[str, Any] = {
    "steps": 60,
    "switch": 0.35,
    "switch_by": 30,
    "switch_after": 10,
    "after_switch": 15,
    "check_every": 5,
    "k": 3,
    "batch_size": 25,
    "solver": "warm",
}


def make_setup(study: Study) -> Setup:
    """The CLI's ``digits`` setup, or the quick one (same data, loss and network family)."""
    if study.setup == "digits":
        return load_setup("digits", seed=study.seed)
    X, Y, _ = load_digits(QUICK_EXAMPLES)
    model = mlp(QUICK_WIDTHS, generator=torch.Generator().manual_seed(study.seed))
    return Setup(
        "digits-bulk-adam-quick",
        model,
        half_sum_mse,
        (X, Y),
        defaults=dict(QUICK_DEFAULTS),
        description=f"scikit-learn digits, {QUICK_EXAMPLES} examples, MLP "
        f"{'-'.join(map(str, QUICK_WIDTHS))} (tanh), MSE, k={QUICK_DEFAULTS['k']}",
    )


def config_for(setup: Setup, lr: float, switch: int | None, seed: int) -> RunConfig:
    """The settings ``subspace-optim reproduce --optimizers adam --lr adam=LR [--switch N]``
    gives: the setup's defaults; a fixed switch step drops the rule's minimum and fallback
    steps (as the CLI does), and keeps ``after_switch``."""
    s = dict(setup.defaults)
    s.update(optimizers="adam", lr={"adam": lr}, seed=seed)
    if switch is not None:
        s["switch"] = switch
        s.pop("switch_by", None)
        s.pop("switch_after", None)
    return RunConfig(**s)


# ------------------------------------------------------------ 1 and 2: run() points
def run_point(setup: Setup, config: RunConfig) -> dict[str, Any]:
    """One ``run`` of the Adam family; what the study reports of it."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = run(
            setup.model, setup.loss_fn, setup.train_data, config, setup=setup.name, progress=False
        )
    except FloatingPointError as exc:  # Adam diverged before the switch: reported as such
        return {"lr": config.lr_for(FAMILIES["adam"]), "error": str(exc)}
    (fam,) = result.families
    first = next(r for r in fam.rows if r["variant"] == "base" and r["phase"] == "after switch")
    out: dict[str, Any] = {
        "lr": fam.lr,
        "switch_step": fam.switch_step,
        "switch_reason": fam.switch_reason,
        "chi_at_switch": fam.chi_at_switch,
        "chi_ema": fam.alignment_ema,
        "lambda_1_at_switch": first.get("eig_0", math.nan),
        "initial_loss": fam.initial_loss,
        "loss_at_switch": fam.loss_at_switch,
        "runs": {
            v: {
                "final_loss": r.final_loss,
                "progress": r.progress,
                "status": r.status,
                "removed_fraction": r.removed_fraction,
                "steps_run": r.steps_run,
            }
            for v, r in fam.runs.items()
        },
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
    return out


def _say_point(p: dict[str, Any]) -> str:
    if "error" in p:
        return f"lr {p['lr']:g}: {p['error']}"
    return (
        f"lr {p['lr']:g}: switch {p['switch_reason']} at {p['switch_step']} "
        f"(χ_k {p['chi_at_switch']:.2f}, EMA {p['chi_ema']:.2f}), Bulk progress "
        f"{p['runs']['bulk']['progress']:.2f}, Dom {p['runs']['dom']['progress']:.2f} "
        f"({p['seconds']:.0f} s)"
    )


# ------------------------------------------------------------------ 3: the mechanism
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
    k = opt.k
    bulk = opt.mode == "bulk"
    series: dict[str, list[float]] = {
        name: []
        for name in (
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
    }
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
        assert opt.basis is not None and opt.eigenvalues is not None and opt.last_stats
        U = opt.basis[:, :k].double()  # the basis of this step (refreshed at θ_t)

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
        if probe is not None:  # the warm basis against the Hessian at θ_t
            HU = so.HessianOperator(probe, ctx.loss_fn, (ctx.X, ctx.Y)).matmat(opt.basis[:, :k])
            lam = opt.eigenvalues[:k]
            res = (HU - opt.basis[:, :k] * lam).norm(dim=0) / lam.abs()
            residuals.append({"step": t, "max_rel_residual": float(res.max())})
        if (t - start) % study.sample_every == 0:
            samples.append(
                {
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
            )
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
        base = adam.build(trainable(m), lr)
        if solver is None:  # as run() builds its runs after the switch (base: every step)
            opt = so.SubspaceProjectedOptimizer(
                base,
                ctx.operator(m),
                config.k,
                mode,
                refresh=so.Every(1, start=switch),
                num_extra=config.num_extra,
                generator=ctx.generator(),
                **ctx.solver_kwargs(),
            )
            opt.load_state_dict(copy.deepcopy(snapshot_state))
        else:  # Adam's state only; a cold solve of the named solver at every step
            base.load_state_dict(copy.deepcopy(adam_state))
            opt = so.SubspaceProjectedOptimizer(
                base,
                ctx.operator(m),
                config.k,
                mode,
                eigensolver=solver,
                refresh=so.Every(1),
                num_extra=config.num_extra,
                generator=ctx.generator(),
            )
        out["runs"][name] = instrumented(ctx, m, opt, switch, end, study)
        r = out["runs"][name]
        print(
            f"  mechanism {name}: final loss {r['final_loss']:.5f}, identity error max "
            f"{max(r['series']['identity_rel_error']):.1e} ({r['seconds']:.0f} s)",
            flush=True,
        )
    return out


# ------------------------------------------------------------------------------ CLI
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the default paths resolved (``--quick``: all under ``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (about a minute), temp dir")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument(
        "--docs",
        nargs="?",
        type=Path,
        const=PAGE,
        default=None,
        help="also write the docs page (default path docs/bulk_adam.md)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--render",
        action="store_true",
        help="rewrite the page and the summary from the JSON's measurements",
    )
    args = p.parse_args(argv)
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix=f"{STEM}_quick_"))
            if args.quick
            else ROOT / "benchmarks" / "results"
        )
    if args.quick and args.docs == PAGE:
        args.docs = args.out / "bulk_adam_page.md"  # --quick never touches the committed page
    return args


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    study = QUICK if args.quick else FULL
    command = "python benchmarks/bulk_adam_study.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    machine = machine_info(torch.device("cpu"))
    machine.update(
        arch=platform.machine(),
        gpu_available=torch.cuda.is_available(),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
    )
    results: dict[str, Any] = {
        "command": command.strip(),
        "quick": args.quick,
        "study": asdict(study),
        "machine": machine,
    }
    t_all, c_all = time.perf_counter(), time.process_time()
    setup = make_setup(study)
    results["setup"] = {
        "name": setup.name,
        "description": setup.description,
        "defaults": dict(setup.defaults),
        "num_params": sum(p.numel() for p in trainable(setup.model)),
        "num_examples": int(setup.train_data[0].shape[0]),
    }
    print(f"setup: {setup.description}", flush=True)

    # 1. the learning-rate sweep, by the rule (its default-lr run is the rule's point below)
    sweep = []
    for lr in study.lrs:
        sweep.append(run_point(setup, config_for(setup, lr, None, study.seed)))
        print("  sweep " + _say_point(sweep[-1]), flush=True)
    results["lr_sweep"] = sweep
    default = next(p for p in sweep if p["lr"] == study.lr)
    if "error" in default:
        raise RuntimeError(f"Adam at its default lr diverged before the switch: {default}")

    # 2. fixed switch steps at the default lr
    fixed = []
    for step in study.fixed:
        fixed.append(run_point(setup, config_for(setup, study.lr, step, study.seed)))
        print(f"  switch {step}: " + _say_point(fixed[-1]), flush=True)
    results["fixed_switch"] = fixed

    # 3. the mechanism at the default lr, from the rule's switch step
    config = config_for(setup, study.lr, None, study.seed)
    results["mechanism"] = mechanism(setup, config, default["switch_step"], study)
    results["machine"]["load_average_at_end"] = load_average()
    results["wall_seconds"] = time.perf_counter() - t_all
    results["cpu_seconds"] = time.process_time() - c_all
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    path = args.out / f"{STEM}.json"
    if args.render:  # the measurements as saved; the summary derived from them again
        results = json.loads(path.read_text())
        results["summary"] = compact(report.summarize(results))
        path.write_text(json.dumps(results) + "\n")
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            results = measure(args, argv)
        finally:
            torch.set_num_threads(threads)  # main may run inside a test process
        results = compact(results)  # the page is made from the numbers as saved
        results["summary"] = compact(report.summarize(results))
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results) + "\n")
    results["summary"] = report.summarize(results)
    page = report.page(results)
    print(page)
    if args.docs is not None:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(page)
    results["out"] = str(args.out)
    return results


if __name__ == "__main__":
    main()
