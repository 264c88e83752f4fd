"""GGNOperator against dense float64 Gauss–Newton matrices built two independent ways."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import CASES, make_case
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

import subspace_optim as so
from subspace_optim import GGNOperator, HessianOperator
from subspace_optim.testing.strategies import FAMILIES, build_optimizer

F64 = torch.float64


def _outputs_of(model, x, params):
    """z(θ) for a flat θ: the model's outputs on ``x`` (buffers cloned)."""
    names = {id(p): n for n, p in model.named_parameters()}
    pnames = [names[id(p)] for p in params]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

    def f(flat):
        state = {n: t.view(s) for n, t, s in zip(pnames, torch.split(flat, sizes), shapes)}
        for bn, b in model.named_buffers():
            state[bn] = b.clone()
        return functional_call(model, state, (x,))

    return f


def ggn_by_output_hessian(model, loss_fn, micro_batches, params):
    """Σ_c m_c J_cᵀ ∇²_z L_c J_c / N, J_c from torch.autograd.functional.jacobian and ∇²_z L_c
    from torch.autograd.functional.hessian of the micro-batch's mean loss in its outputs."""
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    total = sum(y.shape[0] for _, y in micro_batches)
    G = torch.zeros(theta.numel(), theta.numel(), dtype=F64)
    for x, y in micro_batches:
        f = _outputs_of(model, x, params)
        z = f(theta).detach()
        J = torch.autograd.functional.jacobian(f, theta).reshape(z.numel(), -1)
        M = torch.autograd.functional.hessian(
            lambda zz, shape=z.shape, y=y: loss_fn(zz.view(shape), y), z.reshape(-1)
        )
        G += y.shape[0] * J.T @ M @ J
    return G / total


def ggn_by_examples(model, loss_fn, micro_batches, params, kind):
    """Σ_i J_iᵀ H_i J_i / N, one example at a time, with the closed-form output Hessian of
    ``kind`` ("mse": the mean over entries of the squared error; "ce": softmax)."""
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    total = sum(y.shape[0] for _, y in micro_batches)
    G = torch.zeros(theta.numel(), theta.numel(), dtype=F64)
    for x, _ in micro_batches:
        for i in range(x.shape[0]):
            f = _outputs_of(model, x[i : i + 1], params)
            z = f(theta).detach().reshape(-1)
            J = torch.autograd.functional.jacobian(f, theta).reshape(z.numel(), -1)
            if kind == "mse":
                Hi = 2 * torch.eye(z.numel(), dtype=F64) / z.numel()
            else:
                p = torch.softmax(z, 0)
                Hi = torch.diag(p) - torch.outer(p, p)
            G += J.T @ Hi @ J
    return G / total


def rel(a, b):
    return float((a - b).norm() / b.norm())


def unequal(X, Y):
    """Three batches of unequal sizes; with chunk_size=5 the micro-batches are unequal too."""
    cuts = [0, 7, 9, X.shape[0]]
    return [(X[a:b], Y[a:b]) for a, b in itertools.pairwise(cuts)]


def micro(batches, size):
    return [
        (xs, ys) for x, y in batches for xs, ys in zip(torch.split(x, size), torch.split(y, size))
    ]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ["autograd", "func"])
def test_matches_dense_references_under_mse_with_unequal_micro_batches(case, method, generator):
    if method == "func" and case == "batchnorm_train":
        pytest.skip("torch.func cannot transform BatchNorm's in-place update in train mode")
    model, loss_fn, (X, Y) = make_case(case, generator)
    batches = unequal(X, Y)
    params = [p for p in model.parameters() if p.requires_grad]
    G1 = ggn_by_output_hessian(model, loss_fn, micro(batches, 5), params)
    for cache in [None, False, True] if method == "autograd" else [None]:
        op = GGNOperator(model, loss_fn, batches, chunk_size=5, method=method, cache_graph=cache)
        dense = op.to_dense()
        assert rel(dense, G1) < 1e-10, (case, cache)
        assert float((dense - dense.T).abs().max()) < 1e-12
    if case != "batchnorm_train":  # batch statistics: no one-example reference
        G2 = ggn_by_examples(model, loss_fn, batches, params, "mse")
        assert rel(G1, G2) < 1e-10


@pytest.mark.parametrize("method", ["autograd", "func"])
def test_matches_dense_references_under_cross_entropy(method, generator):
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X = torch.randn(23, 4, generator=generator, dtype=F64)
    y = torch.randint(0, 3, (23,), generator=generator)
    batches = unequal(X, y)
    params = list(model.parameters())
    ce = nn.CrossEntropyLoss()
    op = GGNOperator(model, ce, batches, chunk_size=5, method=method)
    G1 = ggn_by_output_hessian(model, ce, micro(batches, 5), params)
    G2 = ggn_by_examples(model, ce, batches, params, "ce")
    assert rel(G1, G2) < 1e-10
    assert rel(op.to_dense(), G1) < 1e-10


def test_equals_the_hessian_for_a_linear_model_under_squared_error(generator):
    model = nn.Linear(5, 3).double()
    X = torch.randn(30, 5, generator=generator, dtype=F64)
    Y = torch.randn(30, 3, generator=generator, dtype=F64)
    for loss_fn in (nn.MSELoss(), lambda out, y: 0.5 * ((out - y) ** 2).sum(1).mean()):
        G = GGNOperator(model, loss_fn, unequal(X, Y), chunk_size=4).to_dense()
        H = HessianOperator(model, loss_fn, (X, Y)).to_dense()
        assert rel(G, H) < 1e-12
    # and differs from it where the model is not linear and the residuals are not zero
    mlp = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    G = GGNOperator(mlp, nn.MSELoss(), (X, Y)).to_dense()
    assert rel(G, HessianOperator(mlp, nn.MSELoss(), (X, Y)).to_dense()) > 1e-3


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    width=st.integers(1, 6),
    n=st.integers(1, 12),
    loss=st.sampled_from(["mse", "ce", "bce"]),
)
def test_is_positive_semi_definite(seed, width, n, loss):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 2)
    X = torch.randn(n, 3, generator=g, dtype=F64)
    if loss == "mse":
        loss_fn, Y = nn.MSELoss(), torch.randn(n, 2, generator=g, dtype=F64)
    elif loss == "ce":
        loss_fn, Y = nn.CrossEntropyLoss(), torch.randint(0, 2, (n,), generator=g)
    else:
        loss_fn, Y = nn.BCEWithLogitsLoss(), torch.rand(n, 2, generator=g, dtype=F64)
    G = GGNOperator(model, loss_fn, (X, Y)).to_dense()
    assert float((G - G.T).abs().max()) <= 1e-12 * max(1.0, float(G.abs().max()))
    lam = torch.linalg.eigvalsh((G + G.T) / 2)
    assert float(lam.min()) >= -1e-10 * max(1.0, float(lam.abs().max()))
    # while the Hessian at the same point may well be indefinite: nothing is assumed of it
    v = torch.randn(G.shape[0], generator=g, dtype=F64)
    assert float(v @ GGNOperator(model, loss_fn, (X, Y)).matvec(v)) >= -1e-10


def test_is_a_curvature_whose_gradient_is_the_training_gradient(generator):
    model, loss_fn, data = make_case("mlp", generator)
    op = GGNOperator(model, loss_fn, data)
    assert isinstance(op, so.Curvature)
    loss, grad = op.loss_and_grad()
    ref_loss, ref_grad = HessianOperator(model, loss_fn, data, cache_graph=False).loss_and_grad()
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
    first = list(model.parameters())[:2]
    narrow = GGNOperator(model, loss_fn, data, params=first, max_block_size=2, memory_budget=2**22)
    wide = narrow.extended(list(model.parameters()))
    assert type(wide) is GGNOperator and wide.max_block_size == 2
    assert wide.memory_budget == 2**22 and wide.caches_graph == narrow.caches_graph
    V = torch.randn(op.shape[0], 3, generator=generator, dtype=F64)
    assert torch.allclose(wide @ V, op @ V, rtol=1e-12, atol=1e-12)


def test_the_cache_saves_forward_passes_and_never_goes_stale(generator):
    model, loss_fn, data = make_case("mlp", generator)
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    op = GGNOperator(model, loss_fn, data)
    fresh = GGNOperator(model, loss_fn, data, cache_graph=False)
    assert op.caches_graph and not fresh.caches_graph
    V = torch.randn(op.shape[0], 3, generator=generator, dtype=F64)
    calls[0] = 0
    with op.solve_scope():
        first = op @ V
        assert torch.equal(op @ V, first)
    assert calls[0] == 1 and op._graph is None
    assert torch.equal(first, fresh @ V)
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    assert not torch.equal(op @ V, first)
    assert torch.equal(op @ V, fresh @ V)


@pytest.mark.parametrize("name", so.available_eigensolvers())
def test_every_eigensolver_finds_its_top_eigenpairs(name, generator):
    model, loss_fn, data = make_case("mlp", generator)
    op = GGNOperator(model, loss_fn, data)
    lam = torch.linalg.eigvalsh(op.to_dense()).flip(0)
    try:
        solver = so.resolve_eigensolver(name, tol=1e-8)
    except TypeError:  # a direct solver has no tolerance
        solver = so.resolve_eigensolver(name)
    res = solver.solve(op, 2, generator=torch.Generator().manual_seed(0))
    assert res.converged, res.message
    assert torch.allclose(res.eigenvalues, lam[:2], rtol=1e-6, atol=1e-9)
    assert float(res.relative_residuals().max()) <= 1e-6


def test_losses_without_an_output_hessian_are_refused_before_any_state_changes(generator):
    model, _, (X, Y) = make_case("mlp", generator)
    before = [t.detach().clone() for t in model.state_dict().values()]
    with pytest.raises(ValueError, match=r"output-space Hessian is zero.*CrossEntropyLoss"):
        GGNOperator(model, nn.L1Loss(), (X, Y))
    with pytest.raises(ValueError, match="cannot be formed"):
        GGNOperator(model, lambda out, y: (out.detach() - y).pow(2).mean() + 0 * out.sum(), (X, Y))
    with pytest.raises(ValueError, match="not convex in the model's outputs"):
        GGNOperator(model, lambda out, y: -((out - y) ** 2).mean(), (X, Y))

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward(self, x):
            z = self.body(x)
            return z, z

    with pytest.raises(TypeError, match="returns one Tensor"):
        GGNOperator(TwoHeads(), lambda out, y: ((out[0] - y) ** 2).mean(), (X, Y))
    after = list(model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_an_operator_over_other_parameters_than_the_optimizer_is_refused(generator):
    model, loss_fn, data = make_case("mlp", generator)
    other, _, _ = make_case("mlp", generator)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    state = [t.clone() for t in model.parameters()]
    with pytest.raises((ValueError, TypeError), match="param"):
        so.SubspaceProjectedOptimizer(base, GGNOperator(other, loss_fn, data), k=2)
    assert all(torch.equal(a, b) for a, b in zip(state, model.parameters()))
    assert base.state == {} or all(not s for s in base.state.values())


@pytest.mark.parametrize("curvature", ["ggn", "covariance"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bulk_steps_with_either_basis_remove_their_component(curvature, family, generator):
    """Every optimizer family the library supports, with either curvature: the wrapper reads
    the operator through the Curvature protocol only."""
    model, loss_fn, (X, Y) = make_case("mlp", generator)
    Op = GGNOperator if curvature == "ggn" else so.GradientCovarianceOperator
    base = build_optimizer(family, model.parameters())
    opt = so.SubspaceProjectedOptimizer(base, Op(model, loss_fn, (X, Y)), k=2, mode="bulk")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(X), Y)
        loss.backward()
        return loss

    for _ in range(3):
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        closure()
        opt.step(closure if family == "sam" else None)
        delta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before
        assert float(delta.norm()) > 0
        assert float((opt.basis.T @ delta).norm()) <= 1e-10 * float(delta.norm())
    assert opt.counters["refreshes"] == 3 and opt.counters["faults"] == 0
