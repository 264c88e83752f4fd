"""SAM / ASAM: against a hand-written float64 reference, API equivalences, checkpoints, errors."""

from __future__ import annotations

import copy
import gc
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import subspace_optim as so


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    X = torch.randn(12, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(12, 2, generator=g, dtype=torch.float64)
    return model, X, Y


def loss_of(model, X, Y):
    return ((model(X) - Y) ** 2).mean()


def make_closure(opt, model, X, Y):
    def closure():
        opt.zero_grad()
        loss = loss_of(model, X, Y)
        loss.backward()
        return loss

    return closure


def reference_step(model, X, Y, lr, rho, adaptive, eta=0.01):
    """SAM by hand: ε = ρ T²g/‖Tg‖, then an SGD step with ∇L(θ + ε)."""
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_of(model, X, Y), params)
    T = [(p.detach().abs() + eta) if adaptive else torch.ones_like(p) for p in params]
    norm = torch.sqrt(sum(((t * g) ** 2).sum() for t, g in zip(T, grads)))
    eps = [rho * t * t * g / norm for t, g in zip(T, grads)]
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    grads2 = torch.autograd.grad(loss_of(model, X, Y), params)
    with torch.no_grad():
        for p, e, g2 in zip(params, eps, grads2):
            p.sub_(e)
            p.sub_(lr * g2)


@pytest.mark.parametrize("adaptive", [False, True])
def test_matches_float64_reference(adaptive):
    model, X, Y = problem()
    ref = copy.deepcopy(model)
    opt = so.SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.3, adaptive=adaptive)
    for _ in range(3):
        opt.step(make_closure(opt, model, X, Y))
        reference_step(ref, X, Y, lr=0.1, rho=0.3, adaptive=adaptive)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_two_call_api_equals_closure_api_bitwise():
    m1, X, Y = problem()
    m2 = copy.deepcopy(m1)
    o1 = so.SAM(torch.optim.Adam(m1.parameters(), lr=0.01), rho=0.1)
    o2 = so.SAM(torch.optim.Adam(m2.parameters(), lr=0.01), rho=0.1)
    for _ in range(4):
        o1.zero_grad()
        loss_of(m1, X, Y).backward()
        o1.step(make_closure(o1, m1, X, Y))
        o2.zero_grad()
        loss_of(m2, X, Y).backward()
        o2.first_step(zero_grad=True)
        loss_of(m2, X, Y).backward()
        o2.second_step(zero_grad=True)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_closure_evaluated_first_when_no_gradient():
    """``step(closure)`` alone (LBFGS style) equals ``backward(); step(closure)``."""
    m1, X, Y = problem()
    m2 = copy.deepcopy(m1)
    o1 = so.SAM(torch.optim.SGD(m1.parameters(), lr=0.1))
    o2 = so.SAM(torch.optim.SGD(m2.parameters(), lr=0.1))
    o1.zero_grad()
    o1.step(make_closure(o1, m1, X, Y))
    o2.zero_grad()
    loss_of(m2, X, Y).backward()
    o2.step(make_closure(o2, m2, X, Y))
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


@settings(max_examples=25, deadline=None)
@given(rho=st.floats(1e-3, 2.0), seed=st.integers(0, 10_000))
def test_perturbation_has_radius_rho(rho, seed):
    model, X, Y = problem(seed)
    before = [p.detach().clone() for p in model.parameters()]
    opt = so.SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=rho)
    loss_of(model, X, Y).backward()
    opt.first_step()
    dist = torch.sqrt(
        sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before))
    )
    assert abs(float(dist) - rho) <= 1e-9 * max(1.0, rho)
    opt.second_step()


def test_restore_is_exact_and_param_without_grad_untouched():
    model, X, Y = problem()
    frozen = model[2].bias
    frozen.requires_grad_(False)
    opt = so.SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5)  # lr 0: θ must come back
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(make_closure(opt, model, X, Y))
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    opt.zero_grad()
    loss_of(model, X, Y).backward()
    opt.first_step()
    assert torch.equal(frozen, before[-1])  # never perturbed
    opt.second_step()


def test_zero_and_nonfinite_gradient_do_not_perturb():
    model, _, _ = problem()
    opt = so.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.first_step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    opt.second_step()
    for p in model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    opt.first_step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    opt.second_step(zero_grad=True)


def test_exception_in_closure_restores_parameters():
    model, X, Y = problem()
    opt = so.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    loss_of(model, X, Y).backward()

    def bad():
        raise KeyError("data ran dry")

    with pytest.raises(KeyError):
        opt.step(bad)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    opt.step(make_closure(opt, model, X, Y))  # usable afterwards


def test_groups_and_state_are_the_base_ones_and_rho_per_group():
    model, X, Y = problem()
    base = torch.optim.SGD(
        [{"params": model[0].parameters(), "rho": 0.2}, {"params": model[2].parameters()}],
        lr=0.1,
        momentum=0.9,
    )
    opt = so.SAM(base, rho=0.05)
    assert opt.param_groups is base.param_groups and opt.state is base.state
    assert [g["rho"] for g in opt.param_groups] == [0.2, 0.05]
    extra = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    assert base.param_groups[-1]["rho"] == 0.05 and base.param_groups[-1]["lr"] == 0.5
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(make_closure(opt, model, X, Y))
    sched.step()
    assert base.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize(
    "make_base",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=1e-2),
    ],
)
def test_state_dict_holds_base_state_and_resumes_bitwise(make_base):
    model, X, Y = problem()
    opt = so.SAM(make_base(model.parameters()), rho=0.1, adaptive=True)
    for _ in range(3):
        opt.step(make_closure(opt, model, X, Y))
    sd = opt.state_dict()
    assert set(sd["state"][0]) & {"momentum_buffer", "exp_avg"}
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": sd}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    fresh, _, _ = problem(seed=99)
    fresh.load_state_dict(ckpt["model"])
    opt2 = so.SAM(make_base(fresh.parameters()), rho=0.1, adaptive=True)
    opt2.load_state_dict(ckpt["opt"])
    for _ in range(3):
        opt.step(make_closure(opt, model, X, Y))
        opt2.step(make_closure(opt2, fresh, X, Y))
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


def test_hooks_fire():
    model, X, Y = problem()
    opt = so.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.step(make_closure(opt, model, X, Y))
    assert calls == ["pre", "post"]


def test_bad_input_raises_before_any_change():
    model, X, Y = problem()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    for rho in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rho"):
            so.SAM(base, rho=rho)
    with pytest.raises(TypeError, match="adaptive"):
        so.SAM(base, adaptive="yes")
    with pytest.raises(ValueError, match="eta"):
        so.SAM(base, adaptive=True, eta=-1.0)
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        so.SAM(model, rho=0.1)
    assert "rho" not in base.param_groups[0]  # nothing was written into the base
    sam = so.SAM(base)
    with pytest.raises(TypeError, match="already a SAM"):
        so.SAM(sam)
    op = so.HessianOperator(model, nn.MSELoss(), (X, Y))
    wrapped = so.SubspaceProjectedOptimizer(sam, op, k=2, eigensolver="eigh")
    with pytest.raises(TypeError, match="put SAM inside"):
        so.SAM(wrapped)
    before = [p.detach().clone() for p in model.parameters()]
    # while wrapped, SAM (and its inner SGD) is stepped by the wrapper only
    with pytest.raises(RuntimeError, match="bypasses the projection"):
        sam.step(lambda: loss_of(model, X, Y))
    del wrapped
    gc.collect()  # the guard holds the wrapper weakly: gone with it
    with pytest.raises(ValueError, match="closure"):
        sam.step()
    with pytest.raises(RuntimeError, match="first_step"):
        sam.second_step()
    with pytest.raises(RuntimeError, match="backward"):
        sam.first_step()
    loss_of(model, X, Y).backward()
    sam.first_step()
    perturbed = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="already called"):
        sam.first_step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), perturbed))
    with pytest.raises(RuntimeError, match="between"):
        sam.load_state_dict(sam.state_dict())
    sam.second_step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_projected_sam_none_mode_equals_sam_and_bulk_removes_dominant_part():
    m1, X, Y = problem()
    m2 = copy.deepcopy(m1)
    plain = so.SAM(torch.optim.SGD(m1.parameters(), lr=0.05), rho=0.1)
    inner = so.SAM(torch.optim.SGD(m2.parameters(), lr=0.05), rho=0.1)
    op = so.HessianOperator(m2, lambda out, y: ((out - y) ** 2).mean(), (X, Y))
    wrapped = so.SubspaceProjectedOptimizer(inner, op, k=3, mode="none", eigensolver="eigh")
    for _ in range(3):
        plain.step(make_closure(plain, m1, X, Y))
        wrapped.step(make_closure(wrapped, m2, X, Y))
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    # Bulk-SAM: θ_new = θ + (I − UUᵀ) Δ_SAM, with Δ_SAM from an identical SAM copy
    m3 = copy.deepcopy(m2)
    twin = so.SAM(torch.optim.SGD(m3.parameters(), lr=0.05), rho=0.1)
    bulk = so.SubspaceProjectedOptimizer(
        so.SAM(torch.optim.SGD(m2.parameters(), lr=0.05), rho=0.1),
        op,
        k=3,
        mode="bulk",
        eigensolver="eigh",
    )
    theta = torch.cat([p.detach().reshape(-1) for p in m2.parameters()])
    twin.zero_grad()
    bulk.zero_grad()
    twin.step(make_closure(twin, m3, X, Y))
    bulk.step(make_closure(bulk, m2, X, Y))
    delta = torch.cat([p.detach().reshape(-1) for p in m3.parameters()]) - theta
    U = bulk.basis[:, :3]
    expected = theta + delta - U @ (U.T @ delta)
    got = torch.cat([p.detach().reshape(-1) for p in m2.parameters()])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("fresh_gradient", [True, False], ids=["backward-first", "closure-only"])
@pytest.mark.parametrize("mode", ["dominant", "bulk"])
def test_gradient_projection_keeps_the_sam_perturbation_and_step_in_the_subspace(
    mode, fresh_gradient
):
    """project='gradient' with step(closure): ε = ρ·Pg/‖Pg‖ and Δ = −lr·P∇L(θ + ε), P the Dom
    (UUᵀ) or Bulk (I − UUᵀ) projector, whether SAM takes g from a backward before the step
    or evaluates the closure for it."""
    model, X, Y = problem()
    lr, rho = 0.05, 0.1
    sam = so.SAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho)
    op = so.HessianOperator(model, lambda out, y: ((out - y) ** 2).mean(), (X, Y))
    opt = so.SubspaceProjectedOptimizer(
        sam, op, k=3, mode=mode, project="gradient", eigensolver="eigh"
    )
    points = []

    def closure():
        points.append(_flat(model))
        opt.zero_grad()
        loss = loss_of(model, X, Y)
        loss.backward()
        return loss

    for _ in range(3):
        theta = _flat(model)
        ref = copy.deepcopy(model)  # the hand-written projected SAM step, from the same θ
        points.clear()
        if fresh_gradient:
            opt.zero_grad()
            loss_of(model, X, Y).backward()
        opt.step(closure)
        U = opt.basis[:, :3]

        def P(v, U=U):
            return U @ (U.T @ v) if mode == "dominant" else v - U @ (U.T @ v)

        eps = points[-1] - theta  # the closure's last call is at θ + ε
        assert float(eps.norm()) == pytest.approx(rho, rel=1e-9)
        torch.testing.assert_close(P(eps), eps, rtol=0, atol=1e-12)  # ε in the subspace
        delta = _flat(model) - theta
        torch.testing.assert_close(P(delta), delta, rtol=0, atol=1e-12)  # so is the step
        params = list(ref.parameters())
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss_of(ref, X, Y), params)])
        e = rho * P(g) / P(g).norm()
        torch.testing.assert_close(eps, e, rtol=1e-10, atol=1e-12)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta + e, params)
        g2 = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss_of(ref, X, Y), params)])
        torch.testing.assert_close(delta, -lr * P(g2), rtol=1e-10, atol=1e-12)
    assert opt.last_stats.projected and opt.counters["faults"] == 0


def test_gradient_projection_refuses_the_two_call_api_before_any_change():
    """first_step() moves along the unprojected gradient, outside the wrapper: refused."""
    model, X, Y = problem()
    sam = so.SAM(torch.optim.SGD(model.parameters(), lr=0.05), rho=0.1)
    op = so.HessianOperator(model, lambda out, y: ((out - y) ** 2).mean(), (X, Y))
    opt = so.SubspaceProjectedOptimizer(sam, op, k=3, project="gradient", eigensolver="eigh")
    loss_of(model, X, Y).backward()
    sam.first_step(zero_grad=True)
    with pytest.raises(RuntimeError, match="unperturb"):
        opt.step()  # still at θ + ε
    loss_of(model, X, Y).backward()
    sam.unperturb()
    theta, grads = _flat(model), [p.grad.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="project='gradient' with SAM's two-call API"):
        opt.step()
    assert torch.equal(_flat(model), theta) and opt.basis is None and opt.subspace.step == 0
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert opt.counters["refreshes"] == 0


def test_wrapped_sam_without_closure_is_refused_before_any_change():
    model, X, Y = problem()
    sam = so.SAM(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), rho=0.1)
    op = so.HessianOperator(model, lambda out, y: ((out - y) ** 2).mean(), (X, Y))
    opt = so.SubspaceProjectedOptimizer(sam, op, k=3, eigensolver="eigh")
    loss_of(model, X, Y).backward()
    theta = _flat(model)
    with pytest.raises(ValueError, match=r"needs opt\.step\(closure\)"):
        opt.step()
    assert torch.equal(_flat(model), theta) and opt.basis is None and not sam.state
    # the same gradient, stepped the documented two-call way, is Bulk-SAM's step
    twin_model = copy.deepcopy(model)
    twin = so.SubspaceProjectedOptimizer(
        so.SAM(torch.optim.SGD(twin_model.parameters(), lr=0.05, momentum=0.9), rho=0.1),
        so.HessianOperator(twin_model, lambda out, y: ((out - y) ** 2).mean(), (X, Y)),
        k=3,
        eigensolver="eigh",
    )
    twin.step(make_closure(twin, twin_model, X, Y))
    sam.first_step(zero_grad=True)
    loss_of(model, X, Y).backward()
    with pytest.raises(RuntimeError, match="bypasses the projection"):
        sam.second_step()  # would step the inner SGD unprojected
    sam.unperturb()
    opt.step()
    torch.testing.assert_close(_flat(model), _flat(twin_model), rtol=0, atol=1e-12)
