"""GradientCovarianceOperator against stacked per-example gradients (float64), built two ways."""

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
from subspace_optim import GradientCovarianceOperator, HessianOperator

F64 = torch.float64


def grads_by_loop(model, loss_fn, batches, params):
    """``(N, n)`` per-example gradients: one backward pass per example (``loss_fn`` on the
    batch of that one example)."""
    rows = []
    for x, y in batches:
        for i in range(x.shape[0]):
            loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def grads_by_jacobian(model, per_example, batches, params):
    """``(N, n)`` per-example gradients: torch.autograd.functional.jacobian of the vector of
    per-example losses of each batch, as a function of the flat parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    pnames = [names[id(p)] for p in params]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    rows = []
    for x, y in batches:

        def losses(flat, x=x, y=y):
            state = {n: t.view(s) for n, t, s in zip(pnames, torch.split(flat, sizes), shapes)}
            return per_example(functional_call(model, state, (x,)), y)

        rows.append(torch.autograd.functional.jacobian(losses, theta))
    return torch.cat(rows)


def covariance(Gi, centered=True):
    D = Gi - Gi.mean(0) if centered else Gi
    return D.T @ D / Gi.shape[0]


def rel(a, b):
    return float((a - b).norm() / b.norm())


def unequal(X, Y):
    cuts = [0, 7, 9, X.shape[0]]
    return [(X[a:b], Y[a:b]) for a, b in itertools.pairwise(cuts)]


def squared_error(out, y):
    return ((out - y) ** 2).mean(1)


@pytest.mark.parametrize("case", [c for c in CASES if c != "batchnorm_train"])
@pytest.mark.parametrize("method", ["autograd", "func"])
def test_matches_stacked_per_example_gradients(case, method, generator):
    model, loss_fn, (X, Y) = make_case(case, generator)
    batches = unequal(X, Y)
    params = [p for p in model.parameters() if p.requires_grad]
    G1 = grads_by_loop(model, loss_fn, batches, params)
    G2 = grads_by_jacobian(model, squared_error, batches, params)
    assert rel(G1, G2) < 1e-12
    for centered in (True, False):
        ref = covariance(G1, centered)
        for cache in [None, False, True] if method == "autograd" else [None]:
            op = GradientCovarianceOperator(
                model,
                loss_fn,
                batches,
                chunk_size=5,
                method=method,
                centered=centered,
                cache_graph=cache,
            )
            assert rel(op.to_dense(), ref) < 1e-10, (centered, cache)


def test_cross_entropy_and_an_explicit_per_example_loss(generator):
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X = torch.randn(23, 4, generator=generator, dtype=F64)
    y = torch.randint(0, 3, (23,), generator=generator)
    batches = unequal(X, y)
    params = list(model.parameters())
    ce = nn.CrossEntropyLoss()
    G1 = grads_by_loop(model, ce, batches, params)
    G2 = grads_by_jacobian(model, nn.CrossEntropyLoss(reduction="none"), batches, params)
    assert rel(G1, G2) < 1e-12
    derived = GradientCovarianceOperator(model, ce, batches, chunk_size=4)
    explicit = GradientCovarianceOperator(
        model, ce, batches, per_example_loss=nn.CrossEntropyLoss(reduction="none")
    )
    for op in (derived, explicit):
        assert rel(op.to_dense(), covariance(G1)) < 1e-10
    # a class-weighted loss is not the plain mean of per-example terms: refused, with the way out
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    with pytest.raises(ValueError, match="per_example_loss"):
        GradientCovarianceOperator(model, weighted, batches)
    with pytest.raises(ValueError, match=r"\(7,\) vector"):
        GradientCovarianceOperator(model, ce, batches, per_example_loss=lambda out, t: out)
    with pytest.raises(TypeError, match="centered"):
        GradientCovarianceOperator(model, ce, batches, centered=1)


def test_is_a_curvature_over_the_training_loss(generator):
    model, loss_fn, data = make_case("mlp", generator)
    for cache in (True, False):
        op = GradientCovarianceOperator(model, loss_fn, data, cache_graph=cache)
        assert isinstance(op, so.Curvature)
        loss, grad = op.loss_and_grad()
        ref_loss, ref_grad = HessianOperator(model, loss_fn, data).loss_and_grad()
        assert torch.allclose(loss, ref_loss, rtol=1e-13) and torch.allclose(grad, ref_grad)
    first = list(model.parameters())[:2]
    narrow = GradientCovarianceOperator(
        model, loss_fn, data, params=first, centered=False, max_block_size=2
    )
    wide = narrow.extended(list(model.parameters()))
    assert type(wide) is GradientCovarianceOperator
    assert wide.centered is False and wide.max_block_size == 2
    V = torch.randn(wide.shape[0], 3, generator=generator, dtype=F64)
    full = GradientCovarianceOperator(model, loss_fn, data, centered=False)
    assert torch.allclose(wide @ V, full @ V, rtol=1e-12, atol=1e-14)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), centered=st.booleans())
def test_is_positive_semi_definite_with_rank_at_most_the_examples(seed, n, centered):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    X = torch.randn(n, 3, generator=g, dtype=F64)
    Y = torch.randn(n, 2, generator=g, dtype=F64)
    C = GradientCovarianceOperator(model, nn.MSELoss(), (X, Y), centered=centered).to_dense()
    lam = torch.linalg.eigvalsh((C + C.T) / 2)
    scale = max(1.0, float(lam.abs().max()))  # gradients are O(1) here: an absolute floor
    assert float(lam.min()) >= -1e-10 * scale
    rank = int((lam > 1e-9 * scale).sum())
    assert rank <= (n - 1 if centered else n)


@pytest.mark.parametrize("name", so.available_eigensolvers())
def test_every_eigensolver_finds_its_top_eigenpairs(name, generator):
    model, loss_fn, data = make_case("mlp", generator)
    op = GradientCovarianceOperator(model, loss_fn, data)
    lam = torch.linalg.eigvalsh(op.to_dense()).flip(0)
    try:
        solver = so.resolve_eigensolver(name, tol=1e-8)
    except TypeError:  # a direct solver has no tolerance
        solver = so.resolve_eigensolver(name)
    res = solver.solve(op, 2, generator=torch.Generator().manual_seed(0))
    assert res.converged, res.message
    assert torch.allclose(res.eigenvalues, lam[:2], rtol=1e-6, atol=1e-9)


def test_an_operator_over_other_parameters_than_the_optimizer_is_refused(generator):
    model, loss_fn, data = make_case("mlp", generator)
    base = torch.optim.SGD(list(model.parameters())[:2], lr=0.1)
    state = [t.clone() for t in model.parameters()]
    with pytest.raises((ValueError, TypeError), match="param"):
        so.SubspaceProjectedOptimizer(base, GradientCovarianceOperator(model, loss_fn, data), k=2)
    assert all(torch.equal(a, b) for a, b in zip(state, model.parameters()))
