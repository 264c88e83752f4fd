"""SubspaceProjectedOptimizer: the projection's math and the torch.optim contract."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import subspace_optim as so


def setup(seed: int = 0, n: int = 40, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    X = torch.randn(n, 5, generator=g, dtype=dtype)
    Y = torch.randn(n, 3, generator=g, dtype=dtype)
    return model, (X, Y)


def loss_fn(out, y):
    return 0.5 * ((out - y) ** 2).sum(1).mean()


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def train(opt, model, data, steps, batch=10, seed=1, closure=False):
    X, Y = data
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (batch,), generator=g)
        if closure:

            def c(idx=idx):
                opt.zero_grad()
                loss = loss_fn(model(X[idx]), Y[idx])
                loss.backward()
                return loss

            opt.step(c)
        else:
            opt.zero_grad()
            loss_fn(model(X[idx]), Y[idx]).backward()
            opt.step()


BASES = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def wrapped(name, k=3, mode="bulk", seed=0, **kw):
    model, data = setup(seed)
    base = BASES[name](model.parameters())
    op = so.HessianOperator(model, loss_fn, data)
    kw.setdefault("eigensolver", so.Lanczos(tol=1e-10))
    return model, data, so.SubspaceProjectedOptimizer(base, op, k=k, mode=mode, **kw)


# ------------------------------------------------------------------ the math
@pytest.mark.parametrize("name", list(BASES))
@pytest.mark.parametrize("how", ["k0", "none"])
def test_k0_and_mode_none_follow_the_base_bit_for_bit(name, how):
    model_ref, data = setup()
    base_ref = BASES[name](model_ref.parameters())
    train(base_ref, model_ref, data, 6)
    model, data, opt = wrapped(
        name, k=0 if how == "k0" else 3, mode="bulk" if how == "k0" else "none"
    )
    train(opt, model, data, 6)
    assert torch.equal(flat(model), flat(model_ref))
    if how == "none":
        assert opt.last_stats.refreshed and not opt.last_stats.projected


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_dom_plus_bulk_is_the_base_update(name):
    """From one state and one basis, Δ_dom + Δ_bulk = Δ_base; Δ_dom ∈ span(U), Δ_bulk ⊥ U."""
    runs = {}
    for mode in ("none", "dominant", "bulk"):
        model, data, opt = wrapped(name, mode=mode)
        train(opt, model, data, 3)  # same history: mode only changes the written update…
        runs[mode] = (model, opt)
    # …so bring all three to the same parameters and base state, then take one step
    ref_model, ref_opt = runs["none"]
    ref_params = [q.detach().clone() for q in ref_model.parameters()]
    ref_state = copy.deepcopy(ref_opt.base.state_dict())
    deltas = {}
    for mode, (model, opt) in runs.items():
        with torch.no_grad():
            for p, q in zip(model.parameters(), ref_params):
                p.copy_(q)
        opt.base.load_state_dict(copy.deepcopy(ref_state))  # load aliases tensors
        before = flat(model)
        X, Y = setup()[1]
        opt.zero_grad()
        loss_fn(model(X[:10]), Y[:10]).backward()
        opt.step()
        deltas[mode] = flat(model) - before
        U = opt.basis[:, : opt.k]
    assert torch.allclose(deltas["dominant"] + deltas["bulk"], deltas["none"], atol=1e-12)
    assert torch.allclose(so.project(deltas["dominant"], U), deltas["dominant"], atol=1e-12)
    assert float((U.T @ deltas["bulk"]).abs().max()) < 1e-12


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.sampled_from(["dominant", "bulk"]))
def test_projected_update_lies_where_it_should(seed, k, mode):
    model, data = setup(seed)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = so.SubspaceProjectedOptimizer(
        base, so.HessianOperator(model, loss_fn, data), k=k, mode=mode, eigensolver="eigh"
    )
    before = flat(model)
    X, Y = data
    opt.zero_grad()
    loss_fn(model(X), Y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    opt.step()
    delta = flat(model) - before
    U = opt.basis
    P_g = so.project(g, U)
    expected = -0.1 * (P_g if mode == "dominant" else g - P_g)
    assert torch.allclose(delta, expected, atol=1e-12)
    assert delta.norm() <= 0.1 * g.norm() + 1e-12  # projection never increases the norm
    # the eigenvalues are exactly the top-k of the full-batch Hessian at the pre-step point
    with torch.no_grad():
        for p, v in zip(
            model.parameters(), torch.split(before, [p.numel() for p in model.parameters()])
        ):
            p.copy_(v.view_as(p))
    H = so.HessianOperator(model, loss_fn, data).to_dense()
    lam = torch.linalg.eigvalsh(H).flip(0)[:k]
    assert torch.allclose(opt.eigenvalues, lam, atol=1e-9)
    # diagnostics: full-batch gradient = minibatch here; the kept component moves at rate lr
    stats = opt.last_stats
    assert stats.gradient_source == "full"
    if mode == "bulk" and stats.sq_bulk > 1e-16:
        assert stats.eta_bulk == pytest.approx(0.1, rel=1e-6)
    if mode == "dominant" and stats.sq_dom > 1e-16:
        assert stats.eta_dom == pytest.approx(0.1, rel=1e-6)


def test_gradient_projection_mode_feeds_projected_gradients_to_the_base():
    model, data, opt = wrapped("momentum", mode="bulk", project="gradient")
    X, Y = data
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(X[:10]), Y[:10]).backward()
        opt.step()
    U = opt.basis
    buf = torch.cat([opt.base.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters()])
    # the momentum buffer only ever saw bulk gradients of (slowly moving) bases: small dom part
    assert float(so.alignment(buf, U)) < 0.2


def test_effective_learning_rates_of_sgd_equal_the_learning_rate():
    model, data, opt = wrapped("sgd", mode="none")
    X, Y = data
    opt.zero_grad()
    loss_fn(model(X), Y).backward()  # full batch: p.grad equals the operator's gradient
    opt.step()
    s = opt.last_stats
    assert s.eta_dom == pytest.approx(0.1, rel=1e-9)
    assert s.eta_bulk == pytest.approx(0.1, rel=1e-9)
    assert 0 <= s.grad_alignment <= 1 and s.refresh_matvecs > 0
    summary = so.effective_lr_summary([s])
    assert summary["ratio"] == pytest.approx(1.0, rel=1e-9)


# -------------------------------------------------------- torch.optim contract
def test_is_a_real_optimizer_sharing_the_base_groups():
    _model, _data, opt = wrapped("sgd")
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.base.param_groups
    assert opt.state is opt.base.state
    opt.param_groups[0]["lr"] = 0.05
    assert opt.base.param_groups[0]["lr"] == 0.05


def test_lr_scheduler_drives_the_base_without_warnings():
    model, data, opt = wrapped("sgd")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            train(opt, model, data, 1)
            sched.step()
    assert opt.base.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)


def test_step_hooks_fire_and_zero_grad_works():
    model, data, opt = wrapped("sgd")
    calls = []
    opt.register_step_pre_hook(lambda o, a, kw: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, kw: calls.append("post"))
    train(opt, model, data, 2)
    assert calls == ["pre", "post", "pre", "post"]
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_closure_is_passed_through_and_returns_the_loss():
    model_a, data, opt_a = wrapped("momentum")
    model_b, _, opt_b = wrapped("momentum")
    train(opt_a, model_a, data, 4, closure=True)
    train(opt_b, model_b, data, 4, closure=False)
    assert torch.equal(flat(model_a), flat(model_b))
    X, Y = data

    def c():
        opt_a.zero_grad()
        loss = loss_fn(model_a(X), Y)
        loss.backward()
        return loss

    assert isinstance(opt_a.step(c), torch.Tensor)


def test_every_n_reuses_the_basis_between_refreshes():
    model, data, opt = wrapped("sgd", refresh=so.Every(3))
    refreshed = []
    for _ in range(7):
        train(opt, model, data, 1)
        refreshed.append(opt.last_stats.refreshed)
    assert refreshed == [True, False, False, True, False, False, True]
    assert opt.counters["refreshes"] == 3


def test_alignment_switch_projects_from_a_fresh_basis_after_the_switch():
    model, data, opt = wrapped("sgd", refresh=so.AlignmentSwitch(threshold=0.3, ema=0.0))
    rows = []
    for _ in range(6):
        train(opt, model, data, 1)
        rows.append(
            (opt.last_stats.refreshed, opt.last_stats.projected, opt.last_stats.grad_alignment)
        )
    switch = opt.schedule.switched_at
    assert switch is not None and switch >= 1
    assert rows[switch - 1][2] >= 0.3  # the step that triggered it saw χ >= threshold
    assert not any(p for _, p, _ in rows[:switch])
    assert all(r and p for r, p, _ in rows[switch:])


SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_projected_core import wrapped, train, flat
    model, data, opt = wrapped("adam", refresh=__import__("subspace_optim").Every(2))
    ckpt = torch.load({path!r}, weights_only=True)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    train(opt, model, data, 5, seed=7)
    torch.save(flat(model), {out!r})
    """
)


def test_weights_only_resume_in_a_fresh_process_is_bit_for_bit(tmp_path):
    import os

    # uninterrupted: 4 steps, then 5 more (the resumed part contains refreshes)
    model, data, opt = wrapped("adam", refresh=so.Every(2))
    train(opt, model, data, 3)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    train(opt, model, data, 5, seed=7)
    expected = flat(model)
    assert opt.counters["refreshes"] == 4
    out = tmp_path / "out.pt"
    code = SCRIPT.format(tests=os.path.dirname(__file__), path=str(path), out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same reductions
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)
    assert torch.equal(torch.load(out, weights_only=True), expected)


def test_state_dict_round_trip_in_process():
    model, data, opt = wrapped("momentum", refresh=so.AlignmentSwitch(threshold=0.2, ema=0.5))
    train(opt, model, data, 4)
    sd = copy.deepcopy(opt.state_dict())
    assert set(sd) == {"state", "param_groups", "subspace"}
    model2 = copy.deepcopy(model)
    base2 = BASES["momentum"](model2.parameters())
    opt2 = so.SubspaceProjectedOptimizer(
        base2,
        so.HessianOperator(model2, loss_fn, data),
        k=3,
        eigensolver=so.Lanczos(tol=1e-10),
        refresh=so.AlignmentSwitch(threshold=0.2, ema=0.5),
    )
    opt2.load_state_dict(sd)
    assert opt2.param_groups is opt2.base.param_groups
    assert opt2.schedule.switched_at == opt.schedule.switched_at
    train(opt, model, data, 3, seed=3)
    train(opt2, model2, data, 3, seed=3)
    assert torch.equal(flat(model), flat(model2))


# ------------------------------------------------------------------ bad input
def _state(model, opt):
    return flat(model).clone(), copy.deepcopy(opt.state_dict()) if opt is not None else None


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"k": -1}, ValueError, ">= 0"),
        ({"k": 1000}, ValueError, "smaller than the number of parameters"),
        ({"k": 2.5}, TypeError, "must be an int"),
        ({"mode": "sideways"}, ValueError, "'bulk', 'dominant', 'none'"),
        ({"eigensolver": "arpack"}, ValueError, "valid names"),
        ({"refresh": "sometimes"}, ValueError, "valid choices"),
        ({"project": "weights"}, ValueError, "valid choices"),
        ({"on_fault": "ignore"}, ValueError, "valid choices"),
        ({"generator": 3}, TypeError, "torch.Generator"),
    ],
)
def test_bad_arguments_are_refused_before_any_change(kwargs, exc, match):
    model, data = setup()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(base, model, data, 2)
    before = flat(model).clone()
    base_sd = copy.deepcopy(base.state_dict())
    with pytest.raises(exc, match=match):
        so.SubspaceProjectedOptimizer(base, so.HessianOperator(model, loss_fn, data), **kwargs)
    assert torch.equal(flat(model), before)
    assert str(base.state_dict()) == str(base_sd)


def test_base_must_be_an_optimizer_and_operator_must_cover_it():
    model, data = setup()
    op = so.HessianOperator(model, loss_fn, data)
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        so.SubspaceProjectedOptimizer(object(), op)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LinearOperator"):
        so.SubspaceProjectedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), object())  # type: ignore[arg-type]
    sub_op = so.HessianOperator(model, loss_fn, data, params=[model[0].weight])
    with pytest.raises(ValueError, match="does not cover"):
        so.SubspaceProjectedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), sub_op, k=2)
    with pytest.raises(ValueError, match="does not update"):
        so.SubspaceProjectedOptimizer(torch.optim.SGD([model[0].weight], lr=0.1), op, k=2)
    wrapped_once = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), op, k=2
    )
    with pytest.raises(TypeError, match="already a SubspaceProjectedOptimizer"):
        so.SubspaceProjectedOptimizer(wrapped_once, op, k=2)


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(10, 3, sparse=True)
    idx = torch.tensor([1, 2])
    data = (idx, torch.zeros(2, 3))
    base = torch.optim.SGD(emb.parameters(), lr=0.1)
    emb(idx).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        so.SubspaceProjectedOptimizer(base, so.HessianOperator(emb, loss_fn, data), k=2)


@pytest.mark.parametrize("base_kind", ["sgd", "sam"])
@pytest.mark.parametrize("grad_before", [False, True])
def test_sparse_gradients_through_a_closure_are_refused_before_any_change(base_kind, grad_before):
    """A source cannot see a sparse embedding before its first gradient: a closure that
    produces a sparse gradient (or a sparse gradient already in ``.grad``) gets the same
    ``TypeError`` as a step without a closure, and nothing moves."""
    torch.manual_seed(0)
    emb, head = nn.Embedding(20, 8, sparse=True), nn.Linear(8, 2)
    params = [*emb.parameters(), *head.parameters()]
    base = torch.optim.SGD(params, lr=0.1)
    if base_kind == "sam":
        base = so.SAM(base, rho=0.5)
    opt = so.SubspaceProjectedOptimizer(base, so.UpdateHistory(k=1, window=2), mode="bulk")
    idx, y = torch.randint(0, 20, (16,)), torch.randn(16, 2)

    def closure():
        opt.zero_grad()
        loss = (head(emb(idx)) - y).pow(2).mean()
        loss.backward()
        return loss

    if grad_before:
        closure()
    before = [p.detach().clone() for p in params]
    with pytest.raises(TypeError, match="sparse gradient"):
        opt.step(closure)
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    assert opt.subspace.step == 0


def test_loading_a_state_dict_of_another_shape_or_k_is_refused_untouched():
    model, data, opt = wrapped("sgd", k=3)
    train(opt, model, data, 2)
    _, _data2, opt_k2 = wrapped("sgd", k=2)
    with pytest.raises(ValueError, match="k=3"):
        opt_k2.load_state_dict(opt.state_dict())
    big = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 3)).double()
    opt_big = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(big.parameters(), lr=0.1), so.HessianOperator(big, loss_fn, data), k=3
    )
    with pytest.raises(ValueError, match="parameters"):
        opt_big.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="'subspace'"):
        opt_k2.load_state_dict(opt.base.state_dict())
    assert opt_k2.basis is None and opt_big.basis is None
