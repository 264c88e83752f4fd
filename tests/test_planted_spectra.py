"""Eigensolver trouble that users of low-rank optimizers meet, planted in the curvature.

GaLore's users report SVDs that fail to converge on ill-conditioned gradients. Here the
wrapper's curvature is a :class:`~subspace_optim.DenseOperator` ``Q diag(λ) Qᵀ`` over a tiny
model's parameters, with a spectrum chosen to be hard: eigenvalues repeated across the cut
(``λ_k = λ_{k+1}``, the top-``k`` subspace is not unique), fewer than ``k`` nonzero
eigenvalues (a zero block), the zero matrix, a tiny ``λ_k = 1e-12`` and a condition number
of 1e16. For every eigensolver the wrapper accepts, a few steps must

* never raise and never leave a parameter, the basis or an eigenvalue non-finite;
* record how each refresh ended: ``counters["refreshes"]`` counts every refresh, each one
  that did not converge is counted once, in ``"unconverged"`` (eigenpairs used) or
  ``"faults"`` (the previous basis kept), ``last_stats.refresh_converged`` says which for
  the step and ``last_result`` is the result the basis came from;
* go on: every step updates the parameters, except a step with no usable basis at all (the
  first refresh failed), which is skipped and counted in ``"skipped_steps"`` (and
  ``"faults"``), as the fault policy documents; the next step refreshes again.

The checks are properties of the outcome, not of the basis: inside a repeated eigenvalue
or a zero block any orthonormal basis of the eigenspace is right.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import subspace_optim as so

F64 = torch.float64
K = 4
STEPS = 3
SOLVERS = so.available_eigensolvers()

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def problem():
    """A float64 MLP (34 parameters) and its data; the curvature is planted, not its own."""
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.5)
    X = torch.randn(12, 5, generator=g, dtype=F64)
    Y = torch.randn(12, 2, generator=g, dtype=F64)
    return model, X, Y


N = sum(p.numel() for p in problem()[0].parameters())


def rotation(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]


def padded(top: list[float], rest: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``top`` followed by ``rest`` (a value, or values) up to ``N`` eigenvalues."""
    head = torch.tensor(top, dtype=F64)
    tail = torch.full((N - len(top),), float(rest), dtype=F64) if isinstance(rest, float) else rest
    return torch.cat([head, tail[: N - len(top)]])


#: planted spectra, each with its trouble at or around the cut k = 4
SPECTRA = {
    # λ_4 = λ_5 = λ_6: the top-4 subspace is not unique
    "repeated_at_cut": padded([8.0, 6.0, 4.0, 3.0, 3.0, 3.0], torch.linspace(1.0, -1.0, N)),
    # rank 2 < k: two of the tracked pairs live in the null space
    "zero_block": padded([5.0, 2.0]),
    # the zero matrix: every basis is an eigenbasis, every residual is 0
    "zero_matrix": torch.zeros(N, dtype=F64),
    # λ_4 = 1e-12 above a zero block: the cut's gap is at rounding level
    "tiny_lambda_k": padded([3.0, 2.0, 1.0, 1e-12]),
    # positive definite with condition number 1e16
    "ill_conditioned": torch.logspace(8, -8, N, dtype=F64),
}


def check_planted_run(lam: torch.Tensor, eigensolver, seed: int, **options) -> None:
    """``STEPS`` Bulk-SGD steps with the curvature ``Q diag(lam) Qᵀ``: the properties in the
    module docstring."""
    model, X, Y = problem()
    curvature = so.DenseOperator.from_spectrum(lam, rotation(N, seed))
    base = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = so.SubspaceProjectedOptimizer(
        base, curvature, k=K, mode="bulk", eigensolver=eigensolver, **options
    )
    not_converged = 0
    for t in range(STEPS):
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        faults, skipped = opt.counters["faults"], opt.counters["skipped_steps"]
        opt.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a kept basis warns; counted below
            opt.step()
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert bool(torch.isfinite(after).all()), f"step {t}: non-finite parameters"
        if opt.counters["skipped_steps"] == skipped:
            assert not torch.equal(after, before), f"step {t}: the run did not go on"
        else:  # skipped: only when no refresh ever succeeded, and nothing moved
            assert opt.basis is None and torch.equal(after, before), f"step {t}"
        stats = opt.last_stats
        assert stats.step == t and stats.refreshed
        assert opt.counters["refreshes"] == t + 1
        not_converged += not stats.refresh_converged
        failed = opt.counters["faults"] - opt.counters["skipped_steps"]  # failed refreshes
        assert opt.counters["unconverged"] + failed == not_converged
        assert stats.faults == opt.counters["faults"]
        if failed == faults - skipped:  # this refresh's result is the basis in use
            assert opt.last_result is not None
            assert opt.last_result.converged == stats.refresh_converged
            torch.testing.assert_close(opt.eigenvalues, opt.last_result.eigenvalues)
        if opt.basis is not None:
            U, theta = opt.basis, opt.eigenvalues
            assert bool(torch.isfinite(U).all()) and bool(torch.isfinite(theta).all())
            eye = torch.eye(U.shape[1], dtype=F64)
            assert float((U.T @ U - eye).abs().max()) < 1e-6, f"step {t}: basis not orthonormal"
            # the Ritz values lie inside the planted spectrum (up to the residuals' size)
            slack = 1e-6 * float(lam.abs().max()) + 1e-12
            assert float(theta.max()) <= float(lam.max()) + slack
            assert float(theta.min()) >= float(lam.min()) - slack


#: on the zero matrix ARPACK stops with "ARPACK error -9: Starting vector is zero"; ScipyEigsh
#: turns it into an EigensolverError, which the fault policy handles like any failed solve


def starved(name: str, budget: str = "starved") -> so.Eigensolver | None:
    """The solver ``name`` with one iteration and a tolerance it cannot meet, so that refreshes
    end unconverged and the recording is exercised; ``"starved-raising"``: it raises
    EigensolverError instead, which the fault policy must catch (``None`` if the solver takes
    no such options)."""
    options = {"raise_on_failure": True} if budget == "starved-raising" else {}
    try:
        return so.resolve_eigensolver(name, max_iter=1, tol=1e-14, **options)
    except TypeError:
        return None


CASES = [
    pytest.param(
        spectrum,
        solver,
        budget,
        id=f"{spectrum}-{solver}-{budget}",
        marks=(),
    )
    for spectrum in SPECTRA
    for solver in SOLVERS
    for budget in ("default", "starved", "starved-raising")
    if budget == "default" or starved(solver, budget) is not None
]


@pytest.mark.parametrize(("spectrum", "eigensolver", "budget"), CASES)
def test_planted_trouble_never_fails_and_is_recorded(spectrum, eigensolver, budget):
    solver = eigensolver if budget == "default" else starved(eigensolver, budget)
    check_planted_run(SPECTRA[spectrum], solver, seed=1)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    multiplicity=st.integers(1, 4),
    rank=st.integers(0, K + 3),
    exponent=st.integers(-12, 8),
    seed=st.integers(0, 2**16),
    eigensolver=st.sampled_from(SOLVERS),
    on_fault=st.sampled_from(["keep", "cold"]),
)
def test_drawn_degenerate_spectra_never_fail(
    multiplicity, rank, exponent, seed, eigensolver, on_fault
):
    """A spectrum from chosen parts: ``rank`` nonzero eigenvalues of scale ``10**exponent``
    whose value at the cut (``λ_k``) repeats ``multiplicity`` times from position ``k``
    on, and a zero block for the rest; any rotation, any solver and fault policy."""
    scale = 10.0**exponent
    top = [scale * (rank - i) for i in range(rank)]  # distinct, descending, positive
    if rank >= K:
        top[K - 1 : K - 1 + multiplicity] = [top[K - 1]] * len(top[K - 1 : K - 1 + multiplicity])
    lam = padded(top)
    check_planted_run(lam, eigensolver, seed, on_fault=on_fault)
