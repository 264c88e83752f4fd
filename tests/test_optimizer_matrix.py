"""Every optimizer family under `SubspaceProjectedOptimizer`: one table, capability flags.

The way torch tests its optimizers: a table of :class:`OptimizerInfo` entries, each test runs
over the rows whose flags say the feature applies (never a skip by name). The model is a
tiny float64 MLP with an exact (``eigh``) basis, so results can be compared bit for bit.
"""

from __future__ import annotations

import copy
import gc
import io
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import subspace_optim as so


@dataclass(frozen=True)
class OptimizerInfo:
    """One row of the compatibility matrix.

    Attributes:
        name: test id.
        make: ``make(params) -> Optimizer`` (the base handed to the wrapper).
        closure: ``step`` needs a closure (SAM).
        cycle_momentum: OneCycleLR may cycle its momentum / betas.
        threshold: ``stability_threshold`` is defined (SGD-like).
    """

    name: str
    make: Callable
    closure: bool = False
    cycle_momentum: bool = False
    threshold: bool = False


INFOS = [
    OptimizerInfo("sgd", lambda ps: torch.optim.SGD(ps, lr=0.05), threshold=True),
    OptimizerInfo(
        "momentum",
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        cycle_momentum=True,
        threshold=True,
    ),
    OptimizerInfo(
        "nesterov",
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
        cycle_momentum=True,
        threshold=True,
    ),
    OptimizerInfo("adam", lambda ps: torch.optim.Adam(ps, lr=1e-2), cycle_momentum=True),
    OptimizerInfo(
        "adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1), cycle_momentum=True
    ),
    OptimizerInfo("rmsprop", lambda ps: torch.optim.RMSprop(ps, lr=1e-3)),
    OptimizerInfo("adagrad", lambda ps: torch.optim.Adagrad(ps, lr=0.05)),
    OptimizerInfo(
        "sam_sgd",
        lambda ps: so.SAM(torch.optim.SGD(ps, lr=0.05, momentum=0.9), rho=0.05),
        closure=True,
        cycle_momentum=True,
        threshold=True,
    ),
    OptimizerInfo(
        "sam_adam",
        lambda ps: so.SAM(torch.optim.Adam(ps, lr=1e-2), rho=0.05),
        closure=True,
        cycle_momentum=True,
    ),
]
IDS = [i.name for i in INFOS]
MODES = ["bulk", "dominant", "none"]


def rows(**flags):
    return [
        pytest.param(i, id=i.name)
        for i in INFOS
        if all(getattr(i, f) == v for f, v in flags.items())
    ]


# ----------------------------------------------------------------------- helpers


def make_model(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    g = torch.Generator().manual_seed(100)  # the same data for every seed
    X = torch.randn(16, 4, generator=g, dtype=torch.float64).to(dtype)
    Y = torch.randn(16, 3, generator=g, dtype=torch.float64).to(dtype)
    return model, X, Y


def mse(out, y):
    return ((out - y) ** 2).mean()


def build(info, mode="bulk", *, seed=0, k=3, refresh=None, dtype=torch.float64, eigensolver="eigh"):
    model, X, Y = make_model(seed, dtype)
    base = info.make(model.parameters())
    op = so.HessianOperator(model, mse, (X, Y))
    opt = so.SubspaceProjectedOptimizer(
        base, op, k=k, mode=mode, eigensolver=eigensolver, refresh=refresh or so.Every(1)
    )
    return model, X, Y, opt


def step(opt, model, X, Y, info, batch=slice(None)):
    def closure():
        opt.zero_grad()
        loss = mse(model(X[batch]), Y[batch])
        loss.backward()
        return loss

    closure()
    return opt.step(closure if info.closure else None)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


BATCHES = [slice(0, 8), slice(8, 16), slice(4, 12), slice(0, 16), slice(2, 10), slice(6, 14)]


# -------------------------------------------------------------- the projection itself


#: the model has 51 parameters: k = 3 as in training, and k = n - 1, the largest the wrapper
#: allows, where the bulk is a single direction
KS = [3, 50]


@pytest.mark.parametrize("k", KS, ids=[f"k{k}" for k in KS])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("info", rows())
def test_update_is_the_projected_base_update(info, mode, k):
    """θ_{t+1} = θ_t + P(Δ_base), with Δ_base from an identical unwrapped optimizer."""
    model, X, Y, opt = build(info, mode, k=k)
    twin_model = copy.deepcopy(model)
    twin = info.make(twin_model.parameters())
    for batch in BATCHES[:2]:
        with torch.no_grad():  # synchronise the twin: same θ, same optimizer state
            for p, q in zip(twin_model.parameters(), model.parameters()):
                p.copy_(q)
        twin.load_state_dict(copy.deepcopy(opt.base.state_dict()))
        theta = flat(model)
        step(twin, twin_model, X, Y, info, batch)
        step(opt, model, X, Y, info, batch)
        delta = flat(twin_model) - theta
        U = opt.basis[:, : opt.k]
        expected = {
            "none": delta,
            "dominant": U @ (U.T @ delta),
            "bulk": delta - U @ (U.T @ delta),
        }[mode]
        torch.testing.assert_close(flat(model) - theta, expected, rtol=0, atol=1e-12)
        # the base state accumulated the unprojected gradients: it matches the twin's
        for s1, s2 in zip(
            opt.base.state_dict()["state"].values(), twin.state_dict()["state"].values()
        ):
            for key in s1:
                torch.testing.assert_close(s1[key], s2[key], rtol=0, atol=0)


# ------------------------------------------------------------------ LR schedulers

SCHEDULERS = {
    "step": lambda o, info: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7),
    "onecycle": lambda o, info: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.05, total_steps=10, cycle_momentum=info.cycle_momentum
    ),
    "plateau": lambda o, info: torch.optim.lr_scheduler.ReduceLROnPlateau(
        o, patience=0, factor=0.5
    ),
    "chained": lambda o, info: torch.optim.lr_scheduler.ChainedScheduler(
        [
            torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
            torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
        ]
    ),
}


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("info", rows())
def test_lr_schedulers_drive_the_base_without_warnings(info, sched):
    model, X, Y, opt = build(info, "bulk")
    twin_model, tX, tY = make_model()
    twin = info.make(twin_model.parameters())
    s1, s2 = SCHEDULERS[sched](opt, info), SCHEDULERS[sched](twin, info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for batch in BATCHES[:3]:
            loss = step(opt, model, X, Y, info, batch)
            step(twin, twin_model, tX, tY, info, batch)
            if sched == "plateau":
                s1.step(1.0)  # never improves: the LR is cut every step
                s2.step(1.0)
            else:
                s1.step()
                s2.step()
    assert loss is None or torch.isfinite(loss)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in twin.param_groups]
    assert (
        opt.param_groups[0]["lr"]
        != info.make([torch.zeros(1, requires_grad=True)]).param_groups[0]["lr"]
    )


# ------------------------------------------------ param groups, frozen and unused params


@pytest.mark.parametrize("info", rows())
def test_param_groups_frozen_and_gradless_parameters(info):
    model, X, Y = make_model()
    frozen = model[0].bias
    frozen.requires_grad_(False)  # frozen before the wrapper exists: not in the operator
    unused = nn.Parameter(torch.ones(5, dtype=torch.float64))  # in the optimizer, never in the loss
    model.register_parameter("unused", unused)
    base = info.make(
        [
            {"params": [model[0].weight, frozen], "lr": 0.003},
            {"params": [*model[2].parameters(), unused]},
        ]
    )
    op = so.HessianOperator(model, mse, (X, Y))
    opt = so.SubspaceProjectedOptimizer(base, op, k=3, mode="bulk", eigensolver="eigh")
    frozen_before, unused_before = frozen.detach().clone(), unused.detach().clone()
    # freeze a layer *after* construction: it has no gradient, so it must not move either
    model[2].bias.requires_grad_(False)
    late_before = model[2].bias.detach().clone()
    for batch in BATCHES[:3]:
        step(opt, model, X, Y, info, batch)
    assert torch.equal(frozen, frozen_before)
    assert torch.equal(unused, unused_before)
    assert torch.equal(model[2].bias, late_before)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.param_groups[0]["lr"] != opt.param_groups[1]["lr"]


@pytest.mark.parametrize("info", rows())
def test_add_param_group_extends_the_projection_space(info):
    model, X, Y = make_model()
    for p in model[2].parameters():
        p.requires_grad_(False)
    base = info.make(model[0].parameters())
    op = so.HessianOperator(model, mse, (X, Y))
    opt = so.SubspaceProjectedOptimizer(base, op, k=3, mode="bulk", eigensolver="eigh")
    step(opt, model, X, Y, info)
    n_before = opt.curvature.shape[0]
    for p in model[2].parameters():  # unfreeze the head, as in fine-tuning
        p.requires_grad_(True)
    head_before = model[2].weight.detach().clone()
    opt.add_param_group({"params": list(model[2].parameters()), "lr": 0.02})
    assert opt.curvature.shape[0] == n_before + sum(p.numel() for p in model[2].parameters())
    assert opt.param_groups[-1]["lr"] == 0.02 and opt.basis is None
    step(opt, model, X, Y, info)
    assert opt.basis.shape == (opt.curvature.shape[0], 3)
    assert not torch.equal(model[2].weight, head_before)
    stranger = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    groups = len(opt.param_groups)
    with pytest.raises(ValueError, match="not a parameter of the model"):
        opt.add_param_group({"params": [stranger]})
    assert len(opt.param_groups) == groups


@pytest.mark.parametrize("eigensolver", so.available_eigensolvers())
def test_the_largest_k_each_eigensolver_allows_trains_and_one_more_is_refused(eigensolver):
    """k + num_extra = n - min_gap_to_n (with k <= n - 1): accepted at construction, and a
    few steps keep an orthonormal basis with descending, accurate eigenvalues; one more
    column is refused before training starts."""
    info = INFOS[0]
    n = 51
    largest = n - so.resolve_eigensolver(eigensolver).min_gap_to_n
    k = min(largest, n - 1)
    model, X, Y = make_model()
    op = so.HessianOperator(model, mse, (X, Y))
    lam = torch.linalg.eigvalsh(op.to_dense()).flip(0)

    def wrapper(num_extra):
        base = info.make(model.parameters())
        return so.SubspaceProjectedOptimizer(
            base, op, k=k, num_extra=num_extra, eigensolver=eigensolver, mode="bulk"
        )

    with pytest.raises(ValueError, match=r"too large|smaller than the number"):
        wrapper(largest - k + 1)
    opt = wrapper(largest - k)
    step(opt, model, X, Y, info)  # the first refresh is at the point lam was computed at
    assert opt.basis.shape == (n, largest)
    eye = torch.eye(largest, dtype=torch.float64)
    assert float((opt.basis.T @ opt.basis - eye).abs().max()) < 1e-10
    eig = opt.eigenvalues
    assert bool((eig[:-1] >= eig[1:]).all())
    # every solver's default tolerance is relative to |λ_1|; the Ritz values of a subspace
    # with small residuals are at least that close to the true ones
    torch.testing.assert_close(eig[:k], lam[:k], rtol=0, atol=1e-2 * float(lam.abs().max()))
    for _ in range(2):
        step(opt, model, X, Y, info)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.counters["refreshes"] == 3 and opt.last_stats.projected


@pytest.mark.parametrize("when", ["before the first step", "after a step"])
@pytest.mark.parametrize("info", rows())
def test_a_group_added_behind_the_wrapper_is_refused_before_any_change(info, when):
    """A group added to the base (or, under SAM, to SAM's own base) would get the plain,
    unprojected update: the step is refused and nothing changes, for every family."""
    model, X, Y = make_model()
    head = list(model[2].parameters())
    for p in head:
        p.requires_grad_(False)
    base = info.make(model[0].parameters())
    op = so.HessianOperator(model, mse, (X, Y), params=list(model[0].parameters()))
    opt = so.SubspaceProjectedOptimizer(base, op, k=3, eigensolver="eigh")
    if when == "after a step":
        step(opt, model, X, Y, info)
    for p in head:
        p.requires_grad_(True)
    chain = [opt.base]
    while hasattr(chain[-1], "base"):  # SAM's base, behind the wrapper's base
        chain.append(chain[-1].base)
    for i, behind in enumerate(chain):
        behind.add_param_group({"params": head})
        opt.zero_grad()
        mse(model(X), Y).backward()
        snap = _snapshot(model, opt)
        counters = dict(opt.counters)
        with pytest.raises(RuntimeError, match=r"base\.add_param_group.*opt\.add_param_group"):
            step(opt, model, X, Y, info)
        assert _unchanged(model, opt, snap), f"optimizer {i} of the chain"
        assert opt.counters == counters
        lists = {id(o.param_groups): o.param_groups for o in (opt, *chain)}  # shared lists
        for groups in lists.values():
            groups.pop()  # undo the stray group for the next link of the chain
    step(opt, model, X, Y, info)  # without the stray group the run goes on
    assert opt.last_stats.projected


# ------------------------------------------------------------------------ AMP


@pytest.mark.parametrize("info", rows(closure=False))
def test_grad_scaler_matches_unscaled_run_and_skips_inf_steps(info):
    model, X, Y, opt = build(info, "bulk", dtype=torch.float32)
    ref_model, _, _, ref = build(info, "bulk", dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for batch in BATCHES[:3]:
        opt.zero_grad()
        scaler.scale(mse(model(X[batch]), Y[batch])).backward()
        scaler.step(opt)
        scaler.update()
        step(ref, ref_model, X, Y, info, batch)
    assert torch.equal(flat(model), flat(ref_model))  # power-of-two scale: unscaling is exact
    # an overflowing step is skipped by the scaler: parameters, base state, step count unchanged
    theta, state, t = flat(model), copy.deepcopy(opt.base.state_dict()), opt.subspace.step
    opt.zero_grad()
    scaler.scale(mse(model(X), Y) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(flat(model), theta) and opt.subspace.step == t
    assert scaler.get_scale() == 2.0**11
    for s1, s2 in zip(opt.base.state_dict()["state"].values(), state["state"].values()):
        for key in s1:
            assert torch.equal(s1[key], s2[key])
    # unscale_ then step: the gradients are unscaled once, exactly as for a plain optimizer
    opt.zero_grad()
    scaler.scale(mse(model(X), Y)).backward()
    scaler.unscale_(opt)
    g = [p.grad.clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    ref.zero_grad()
    mse(ref_model(X), Y).backward()
    assert all(torch.equal(a, b.grad) for a, b in zip(g, ref_model.parameters()))


def _snapshot(model, opt):
    return flat(model), copy.deepcopy(opt.base.state_dict()), opt.subspace.step, opt.basis


def _unchanged(model, opt, snap):
    theta, state, t, basis = snap
    same_state = all(
        torch.equal(a, b)
        for s1, s2 in zip(opt.base.state_dict()["state"].values(), state["state"].values())
        for a, b in zip(s1.values(), s2.values())
    )
    return (
        torch.equal(flat(model), theta)
        and same_state
        and opt.subspace.step == t
        and (opt.basis is basis)
    )


@pytest.mark.parametrize("info", rows())
def test_stepping_the_wrapped_base_is_refused_before_any_change(info):
    """scaler.step(opt.base) (or opt.base.step()) would bypass the projection: refused by a
    step pre-hook before the base changes anything; once the wrapper is gone it steps again."""
    model, X, Y, opt = build(info, "bulk", dtype=torch.float32)
    step(opt, model, X, Y, info)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    opt.zero_grad()
    scaler.scale(mse(model(X), Y)).backward()
    snap = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="bypasses the projection"):
        scaler.step(opt.base)
    with pytest.raises(RuntimeError, match="bypasses the projection"):
        opt.base.step(lambda: mse(model(X), Y))
    assert _unchanged(model, opt, snap)
    base = opt.base
    del opt
    gc.collect()
    theta = flat(model)

    def closure():
        base.zero_grad()
        loss = mse(model(X), Y)
        loss.backward()
        return loss

    base.step(closure if info.closure else None)
    assert not torch.equal(flat(model), theta)


def test_unscaling_twice_is_refused_by_torch_and_keeps_the_gradients():
    model, X, Y, opt = build(INFOS[1], "bulk", dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale(mse(model(X), Y)).backward()
    scaler.unscale_(opt)
    grads = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    scaler.step(opt)  # the iteration goes on: one unscale, one step
    scaler.update()
    assert opt.subspace.step == 1 and opt.last_stats.projected


def test_attached_grad_scaler_refuses_scaled_double_unscaled_and_closure_steps():
    """With grad_scaler=scaler the wrapper reads the scaler's per-optimizer stages and refuses,
    before any change, the misuses a plain optimizer cannot see."""
    model, X, Y = make_model(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt = so.SubspaceProjectedOptimizer(
        base, so.HessianOperator(model, mse, (X, Y)), k=3, eigensolver="eigh", grad_scaler=scaler
    )
    # 1. opt.step() straight after a scaled backward: gradients 4096 times too large
    scaler.scale(mse(model(X), Y)).backward()
    snap = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="still multiplied by the GradScaler's loss scale"):
        opt.step()
    assert _unchanged(model, opt, snap) and opt.counters["refreshes"] == 0
    # 2. a closure through scaler.step (positional, so torch's own check misses it)
    with pytest.raises(ValueError, match="cannot unscale or inf-check"):
        scaler.step(opt, lambda: mse(model(X), Y))
    assert _unchanged(model, opt, snap)
    scaler.update()
    # 3. unscale_ on the base and again (by scaler.step) on the wrapper: same gradients
    opt.zero_grad()
    scaler.scale(mse(model(X), Y)).backward()
    scaler.unscale_(opt.base)
    with pytest.raises(RuntimeError, match="unscaled twice"):
        scaler.step(opt)
    assert _unchanged(model, opt, snap)
    opt.zero_grad()
    scaler.update()  # the message's recovery: skip the iteration
    # 4. the correct loop works, and stepping again before update() is refused
    scaler.scale(mse(model(X), Y)).backward()
    scaler.step(opt)
    assert opt.subspace.step == 1 and opt.last_stats.projected
    snap = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="already stepped"):
        opt.step()
    assert _unchanged(model, opt, snap)
    scaler.update()
    # 5. unscale_ on the wrapper, clip, step: allowed (one unscale)
    opt.zero_grad()
    scaler.scale(mse(model(X), Y)).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    assert opt.subspace.step == 2
    with pytest.raises(TypeError, match="grad_scaler must be"):
        so.SubspaceProjectedOptimizer(base, opt.curvature, k=3, grad_scaler=object())


def _sam_amp_step(opt, sam, model, X, Y, scaler, factor=1.0):
    """The documented AMP recipe for (projected) SAM: the two-call API, unperturb, and the
    scaler steps the wrapper."""
    opt.zero_grad()
    scaler.scale(mse(model(X), Y) * factor).backward()
    sam.first_step(zero_grad=True)  # ε is invariant to the loss scale: no unscale needed
    scaler.scale(mse(model(X), Y) * factor).backward()
    sam.unperturb()
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("mode", ["bulk", "dominant"])
@pytest.mark.parametrize("info", rows(closure=True))
def test_sam_with_grad_scaler_two_call_recipe_matches_the_closure_step(info, mode):
    model, X, Y, opt = build(info, mode, dtype=torch.float32)
    ref_model, _, _, ref = build(info, mode, dtype=torch.float32)
    opt.grad_scaler = scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    sam = opt.base
    for batch in BATCHES[:3]:
        _sam_amp_step(opt, sam, model, X[batch], Y[batch], scaler)
        step(ref, ref_model, X, Y, info, batch)
        torch.testing.assert_close(flat(model), flat(ref_model), rtol=1e-5, atol=1e-6)
    assert opt.subspace.step == 3 and opt.last_stats.projected
    # an overflowing step: skipped by the scaler, θ back at θ (not θ + ε), state unchanged
    snap = _snapshot(model, opt)
    _sam_amp_step(opt, sam, model, X, Y, scaler, factor=float("inf"))
    assert _unchanged(model, opt, snap) and scaler.get_scale() == 2.0**11
    assert not sam._perturbed
    _sam_amp_step(opt, sam, model, X, Y, scaler)  # and training goes on
    assert opt.subspace.step == 4 and all(torch.isfinite(p).all() for p in model.parameters())
    # GradScaler.step refuses closures; without unperturb() the wrapper asks for the recipe
    opt.zero_grad()
    scaler.scale(mse(model(X), Y)).backward()
    snap = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(opt, closure=lambda: mse(model(X), Y))
    with pytest.raises(ValueError, match=r"sam\.unperturb\(\); opt\.step\(\)"):
        scaler.step(opt)
    assert _unchanged(model, opt, snap)


def test_hvps_run_in_float32_outside_bfloat16_autocast():
    info = INFOS[0]
    model, X, Y, opt = build(info, "bulk", dtype=torch.float32)
    _, _, _, ref = build(info, "bulk", dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mse(model(X), Y)
    assert loss.dtype == torch.float32  # mse upcasts; the forward ran in bfloat16
    opt.zero_grad()
    loss.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        opt.step()  # the refresh inside runs in float32 regardless
    ref.refresh()
    assert opt.basis.dtype == torch.float32
    torch.testing.assert_close(opt.eigenvalues, ref.eigenvalues, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- torch.compile


def _compiled_case(backend):
    model, X, Y = make_model(dtype=torch.float32)
    compiled = torch.compile(model, backend=backend)
    op_c = so.HessianOperator(compiled, mse, (X, Y))
    op_e = so.HessianOperator(model, mse, (X, Y))
    V = torch.randn(op_e.shape[0], 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op_c.matmat(V), op_e.matmat(V), rtol=1e-6, atol=1e-6)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(compiled.parameters(), lr=0.05), op_c, k=3, eigensolver="eigh"
    )
    for _ in range(2):
        opt.zero_grad()
        mse(compiled(X), Y).backward()
        opt.step()
    assert opt.last_stats.projected and all(torch.isfinite(p).all() for p in model.parameters())


def test_compiled_model_hvps_agree_with_eager():
    _compiled_case("eager")


@pytest.mark.slow
def test_compiled_model_hvps_agree_with_eager_aot():
    """aot_autograd has no double backward: the operator must run on the eager module."""
    _compiled_case("aot_eager")


# ---------------------------------------------------------------------------- hooks


@pytest.mark.parametrize("info", rows())
def test_step_and_state_dict_hooks_fire(info):
    model, X, Y, opt = build(info, "bulk")
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd_post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    step(opt, model, X, Y, info)
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "sd_pre", "sd_post", "load_pre", "load_post"]


# ------------------------------------------------------------------- checkpoints


def _resume_bitwise(info, mode, save, eigensolver="eigh"):
    """Run 6 steps; separately run 3, checkpoint, load into fresh objects, run 3 more."""
    refresh = so.Every(2)  # the resumed part contains refreshes (steps 4) and reuses (3, 5)
    kw = {"refresh": refresh, "eigensolver": eigensolver}
    model, X, Y, opt = build(info, mode, **kw)
    for batch in BATCHES:
        step(opt, model, X, Y, info, batch)
    m1, _, _, o1 = build(info, mode, **{**kw, "refresh": so.Every(2)})
    for batch in BATCHES[:3]:
        step(o1, m1, X, Y, info, batch)
    ckpt = save({"model": m1.state_dict(), "opt": o1.state_dict()})
    # different weights, and a fresh eigensolver and generator
    m2, _, _, o2 = build(info, mode, seed=7, **{**kw, "refresh": so.Every(2)})
    m2.load_state_dict(ckpt["model"])
    o2.load_state_dict(ckpt["opt"])
    for batch in BATCHES[3:]:
        step(o2, m2, X, Y, info, batch)
    assert torch.equal(flat(m2), flat(model))
    assert torch.equal(o2.basis, opt.basis)
    counts = {key: v for key, v in opt.counters.items() if not key.endswith("seconds")}
    assert {key: o2.counters[key] for key in counts} == counts
    return ckpt


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


#: eigensolvers whose resume differs: a dense solve (no state), a Krylov solve started from
#: the restored basis, and the warm refresh, which carries its own state (guard columns,
#: last Ritz values, check back-off) in the checkpoint's "eigensolver" entry
RESUME_SOLVERS = ["eigh", "lanczos", "warm"]


@pytest.mark.parametrize("eigensolver", RESUME_SOLVERS)
@pytest.mark.parametrize("mode", ["bulk", "dominant"])
@pytest.mark.parametrize("info", rows())
def test_checkpoint_resume_is_bitwise(info, mode, eigensolver):
    ckpt = _resume_bitwise(info, mode, _roundtrip, eigensolver)
    if eigensolver == "warm":  # the checkpoint carries what the next warm refresh starts from
        state = ckpt["opt"]["subspace"]["eigensolver"]
        assert state["guards"] is not None and state["kept"] is not None


CHILD = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    import test_optimizer_matrix as M
    out = {}
    for info in M.INFOS:
        ckpt = torch.load(f"{sys.argv[2]}/{info.name}.pt", weights_only=True)
        model, X, Y, opt = M.build(info, "bulk", seed=7, refresh=M.so.Every(2))
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        for batch in M.BATCHES[3:]:
            M.step(opt, model, X, Y, info, batch)
        out[info.name] = M.flat(model)
    torch.save(out, f"{sys.argv[2]}/resumed.pt")
    """
)


def test_checkpoint_resume_in_a_fresh_process_is_bitwise(tmp_path):
    expected = {}
    for info in INFOS:
        model, X, Y, opt = build(info, "bulk", refresh=so.Every(2))
        for i, batch in enumerate(BATCHES):
            step(opt, model, X, Y, info, batch)
            if i == 2:
                torch.save(
                    {"model": model.state_dict(), "opt": opt.state_dict()},
                    tmp_path / f"{info.name}.pt",
                )
        expected[info.name] = flat(model)
    subprocess.run(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), str(tmp_path)],
        check=True,
        timeout=300,
        # same thread count as this process: reductions then sum in the same order
        env={**__import__("os").environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for name, theta in expected.items():
        assert torch.equal(resumed[name], theta), name


def test_distributed_checkpoint_single_process(tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    info = INFOS[1]
    model, X, Y, opt = build(info, "bulk", refresh=so.Every(2))
    for batch in BATCHES[:3]:
        step(opt, model, X, Y, info, batch)
    dcp.save({"opt": opt.state_dict()}, checkpoint_id=str(tmp_path / "dcp"))
    # load in place into a state dict of the same structure from a fresh run
    m2, _, _, o2 = build(info, "bulk", seed=7, refresh=so.Every(2))
    for batch in BATCHES[:3]:
        step(o2, m2, X, Y, info, batch)
    target = {"opt": o2.state_dict()}
    dcp.load(target, checkpoint_id=str(tmp_path / "dcp"))
    o2.load_state_dict(target["opt"])
    assert torch.equal(o2.basis, opt.basis)
    assert o2.subspace.step == opt.subspace.step
    for s1, s2 in zip(
        o2.base.state_dict()["state"].values(), opt.base.state_dict()["state"].values()
    ):
        assert torch.equal(s1["momentum_buffer"], s2["momentum_buffer"])


# ------------------------------------------------------------------------- bad input


def test_wrapping_twice_and_wrong_order_are_refused():
    opt = build(INFOS[0])[-1]
    with pytest.raises(TypeError, match="already a SubspaceProjectedOptimizer"):
        so.SubspaceProjectedOptimizer(opt, opt.curvature, k=2)
    with pytest.raises(TypeError, match="put SAM inside"):
        so.SAM(opt)
