"""Contracts of the wrapper that a broken implementation could otherwise pass quietly:
the warm start reaches the solver, χ_k is the alignment of the full gradient with the basis
in use, and the η summary is a ratio of sums."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import subspace_optim as so


def half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - target) ** 2).sum(dim=1).mean()


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X[:300], dtype=torch.float32)
    X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
    Y = nn.functional.one_hot(torch.tensor(y[:300]), 10).float()
    return X, Y


def make_run(digits, **options):
    torch.manual_seed(0)  # module initialization only
    X, Y = digits
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    op = so.HessianOperator(model, half_mse, (X, Y))
    options = {"mode": "bulk", **options}
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), op, k=5, **options
    )
    batches = torch.Generator().manual_seed(1)

    def step() -> None:
        idx = torch.randperm(X.shape[0], generator=batches)[:50]
        opt.zero_grad()
        half_mse(model(X[idx]), Y[idx]).backward()
        opt.step()

    return model, op, opt, step


def test_each_refresh_starts_from_the_basis_in_use(digits):
    _, _, opt, step = make_run(digits)
    inits, bases = [], []
    solve = opt.eigensolver.solve

    def spy(op, k, *, init=None, generator=None):
        inits.append(None if init is None else init.clone())
        bases.append(None if opt.basis is None else opt.basis.clone())
        return solve(op, k, init=init, generator=generator)

    opt.eigensolver.solve = spy
    for _ in range(4):
        step()
    assert len(inits) == 4 and inits[0] is None  # the first refresh is cold
    for init, basis in zip(inits[1:], bases[1:]):
        assert init is not None, "a refresh after the first started cold"
        k = basis.shape[1]
        assert init.shape[1] >= k
        Q = torch.linalg.qr(init)[0]
        assert float(so.subspace_distance(Q, basis)) < 1e-5, "init does not contain the basis"


def test_steady_state_refreshes_cost_fewer_products_than_a_cold_solve(digits):
    _, op, opt, step = make_run(digits)
    warm = []
    for _ in range(8):
        step()
        warm.append(opt.last_stats.refresh_matvecs)
    before = op.num_matvecs
    cold = opt.eigensolver.solve(op, opt.k, init=None, generator=torch.Generator().manual_seed(0))
    cold_cost = op.num_matvecs - before
    assert cold.num_matvecs == cold_cost
    steady = sum(warm[3:]) / len(warm[3:])
    assert steady < 0.8 * cold_cost, (warm, cold_cost)


def test_grad_alignment_is_chi_k_of_the_full_gradient_in_the_refreshed_basis(digits):
    _, op, opt, step = make_run(digits, mode="none")
    for _ in range(3):
        _, grad = op.loss_and_grad()  # at θ before the step: where the refresh happens
        step()
        stats = opt.last_stats
        assert stats.refreshed and stats.gradient_source == "full"
        expected = float(so.alignment(grad, opt.basis[:, : opt.k]))
        assert stats.grad_alignment == pytest.approx(expected, rel=1e-5, abs=1e-7)
        assert 0.05 < expected < 1  # a value that can tell a wrong basis or gradient apart


def test_effective_lr_summary_is_a_ratio_of_sums_not_a_mean_of_ratios():
    records = [
        so.StepStats(
            step=0,
            projected=False,
            refreshed=True,
            gradient_source="full",
            dot_dom=1.0,
            sq_dom=1.0,
            dot_bulk=2.0,
            sq_bulk=1.0,
        ),
        so.StepStats(
            step=1,
            projected=False,
            refreshed=True,
            gradient_source="full",
            dot_dom=1.0,
            sq_dom=9.0,
            dot_bulk=1.0,
            sq_bulk=4.0,
        ),
        so.StepStats(  # a record with a missing term is left out, not counted as zero
            step=2,
            projected=False,
            refreshed=False,
            gradient_source="none",
            dot_dom=math.nan,
            sq_dom=1.0,
            dot_bulk=1.0,
            sq_bulk=1.0,
        ),
    ]
    summary = so.effective_lr_summary(records)
    assert summary["eta_dom"] == pytest.approx(2.0 / 10.0)  # mean of ratios: 0.556
    assert summary["eta_bulk"] == pytest.approx(3.0 / 5.0)  # mean of ratios: 1.125
    assert summary["ratio"] == pytest.approx(3.0)
    assert summary["steps"] == 2
