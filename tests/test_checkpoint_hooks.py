"""The wrapper's and SAM's checkpoints go through torch's own hook registration: no
override of ``state_dict``/``load_state_dict``, user hooks see and can change what torch
gives them, the base optimizer keeps owning the loaded state, and a bad checkpoint changes
nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim import Optimizer

import subspace_optim as so


def mse(out, y):
    return ((out - y) ** 2).mean()


def build(sam: bool = False):
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X = torch.randn(16, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if sam:
        base = so.SAM(base, rho=0.05)
    opt = so.SubspaceProjectedOptimizer(
        base, so.HessianOperator(model, mse, (X, Y)), k=2, eigensolver="eigh"
    )

    def closure():
        opt.zero_grad()
        loss = mse(model(X), Y)
        loss.backward()
        return loss

    return model, opt, closure


def steps(opt, closure, n, sam=False):
    for _ in range(n):
        if sam:
            opt.step(closure)
        else:
            closure()
            opt.step()


def test_no_class_overrides_torchs_checkpoint_methods():
    for cls in (so.SubspaceProjectedOptimizer, so.SAM):
        assert cls.state_dict is Optimizer.state_dict, cls
        assert cls.load_state_dict is Optimizer.load_state_dict, cls


@pytest.mark.parametrize("sam", [False, True])
def test_loaded_state_is_the_base_optimizers_and_stays_shared(sam):
    _model, opt, closure = build(sam)
    steps(opt, closure, 3, sam)
    sd = opt.state_dict()
    assert "subspace" in sd and set(sd) >= {"state", "param_groups"}
    _, fresh, fresh_closure = build(sam)
    fresh.load_state_dict(sd)
    inner = fresh.base.base if sam else fresh.base
    assert fresh.state is fresh.base.state and fresh.param_groups is fresh.base.param_groups
    assert inner.param_groups is fresh.param_groups
    buf = [inner.state[p]["momentum_buffer"] for p in inner.param_groups[0]["params"]]
    saved = [sd["state"][i]["momentum_buffer"] for i in range(len(buf))]
    assert all(torch.equal(a, b) for a, b in zip(buf, saved))
    assert fresh.subspace.step == 3 and torch.equal(fresh.basis, opt.basis)
    # an LR scheduler on the wrapper acts on the base after the load
    sched = torch.optim.lr_scheduler.StepLR(fresh, step_size=1, gamma=0.5)
    steps(fresh, fresh_closure, 1, sam)
    sched.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)


def test_user_hooks_see_the_subspace_and_may_change_the_groups():
    _model, opt, closure = build()
    steps(opt, closure, 2)
    seen = []
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(sorted(sd)))
    sd = opt.state_dict()
    assert seen == [["param_groups", "state", "subspace"]]

    def lower_lr(o, state_dict):
        state_dict = dict(state_dict)
        state_dict["param_groups"] = [{**g, "lr": 0.01} for g in state_dict["param_groups"]]
        return state_dict

    _, fresh, _ = build()
    fresh.register_load_state_dict_pre_hook(lower_lr)
    fresh.load_state_dict(sd)
    assert fresh.base.param_groups[0]["lr"] == 0.01  # the transformed groups reached the base


def test_a_bad_subspace_entry_changes_nothing():
    _model, opt, closure = build()
    steps(opt, closure, 2)
    sd = opt.state_dict()
    _, fresh, fresh_closure = build()
    steps(fresh, fresh_closure, 1)
    before = (fresh.subspace.step, fresh.basis.clone(), fresh.base.state_dict())
    bad = {**sd, "subspace": {**sd["subspace"], "basis": sd["subspace"]["basis"][:, :1]}}
    with pytest.raises(ValueError, match="saved basis has shape"):
        fresh.load_state_dict(bad)
    assert fresh.subspace.step == before[0] and torch.equal(fresh.basis, before[1])
    after = fresh.base.state_dict()
    assert after["param_groups"] == before[2]["param_groups"]
    for key, value in before[2]["state"].items():
        assert torch.equal(after["state"][key]["momentum_buffer"], value["momentum_buffer"])
    # the next load works (nothing stale was left behind by the refused one)
    fresh.load_state_dict(sd)
    assert fresh.subspace.step == 2


def test_sam_refuses_a_load_mid_step_before_any_change():
    _model, opt, closure = build(sam=True)
    sam = opt.base
    steps(opt, closure, 1, sam=True)
    sd = sam.state_dict()
    closure()
    sam.first_step()
    with pytest.raises(RuntimeError, match="between"):
        sam.load_state_dict(sd)
    sam.unperturb()
