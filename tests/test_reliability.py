"""Numerical faults during training and determinism.

Every injected fault (NaN/Inf in an HVP, the loss or the gradient; an eigensolver that does
not converge, returns NaN, raises, or loses orthonormality) leaves the parameters finite and
training going on, under the configured ``on_fault`` policy, with the fault counted. With a
fixed generator a projected run is bit-for-bit reproducible on CPU, and resuming from a
checkpoint taken at any step reproduces the uninterrupted run.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from scenarios import (
    DETERMINISM_CONFIGS,
    FAULT_COUNTERS,
    FAULTS,
    mse,
    resume_check,
    run_fault,
    setup_factory,
    tiny_problem,
    train,
)

import subspace_optim as so
from subspace_optim.testing import FaultyModule, FaultyOperator, StateSnapshot, orthonormality_error
from subspace_optim.testing.strategies import FAMILIES


# ------------------------------------------------------------------------------ faults
@pytest.mark.parametrize("case", FAULTS, ids=lambda c: c.name)
def test_injected_fault_never_corrupts_parameters(case):
    outcome = run_fault(case)
    assert outcome.params_finite
    if case.raises is not None:
        assert outcome.raised == case.raises.__name__
        assert outcome.state_unchanged, "the raising policy must leave parameters and state alone"
        return
    assert outcome.raised is None
    got = {name: outcome.counters[name] for name in FAULT_COUNTERS}
    assert got == {name: case.expect.get(name, 0) for name in FAULT_COUNTERS}, case.name
    if case.trains:
        assert outcome.loss_last < outcome.loss_first, "training must go on after the fault"
        assert outcome.basis_orthonormality < 1e-10
    else:
        assert outcome.loss_last == outcome.loss_first  # every step skipped, nothing moved


def _wrapped(net, family="adam", **kwargs):
    _, loss_fn, data = tiny_problem()
    return so.SubspaceProjectedOptimizer(
        FAMILIES[family](net.parameters()),
        so.HessianOperator(net, loss_fn, data),
        **{"k": 3, "generator": torch.Generator().manual_seed(0), **kwargs},
    )


def test_keep_policy_keeps_exactly_the_previous_basis_and_records_the_fault():
    model, loss_fn, data = tiny_problem()
    net = FaultyModule(model, fail_on=())
    opt = _wrapped(net)
    train(opt, net, loss_fn, data, 3)
    basis, eig = opt.basis.clone(), opt.eigenvalues.clone()
    net.zero_grad()
    mse(net(data[0]), data[1]).backward()
    now = net.calls
    net.fail_at(lambda c: c > now)  # every forward pass of the next refresh
    with pytest.warns(RuntimeWarning, match="subspace refresh failed.*keeping the previous basis"):
        opt.step()
    net.fail_at(())
    assert torch.equal(opt.basis, basis) and torch.equal(opt.eigenvalues, eig)
    stats = opt.last_stats
    assert stats.refreshed and not stats.refresh_converged and stats.projected
    assert stats.faults == opt.counters["faults"] == 1
    assert so.testing.all_finite(net.parameters())


def test_skipped_step_leaves_the_base_state_untouched():
    """A NaN gradient never reaches Adam's moments: the base optimizer is not stepped."""
    model, loss_fn, data = tiny_problem()
    opt = _wrapped(model)
    train(opt, model, loss_fn, data, 2)
    opt.zero_grad()
    mse(model(data[0]), data[1]).backward()
    model[2].weight.grad[0, 0] = math.nan
    before = StateSnapshot.take(model.parameters(), [opt.base])
    with pytest.warns(RuntimeWarning, match="gradient holds NaN/Inf; the step was skipped"):
        opt.step()
    assert not StateSnapshot.take(model.parameters(), [opt.base]).differences(before)
    assert opt.last_stats.skipped and not opt.last_stats.projected
    assert opt.counters["skipped_steps"] == 1
    train(opt, model, loss_fn, data, range(3, 6))  # and the run goes on
    assert not opt.last_stats.skipped


def test_sam_closure_fault_restores_the_unperturbed_parameters():
    """SAM moves θ to θ + ε before calling the closure; a NaN there is undone."""
    model, loss_fn, data = tiny_problem()
    opt = _wrapped(model, family="sam")
    train(opt, model, loss_fn, data, 2, closure=True)
    theta = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure():
        calls.append([p.detach().clone() for p in model.parameters()])
        opt.zero_grad()
        loss = mse(model(data[0]), data[1]) * math.nan
        loss.backward()
        return loss

    opt.zero_grad()
    mse(model(data[0]), data[1]).backward()
    base_state = StateSnapshot.take([], [opt.base])
    with pytest.warns(RuntimeWarning, match="closure's loss or gradient holds NaN/Inf"):
        opt.step(closure)
    assert len(calls) == 1 and not all(torch.equal(p, q) for p, q in zip(calls[0], theta))
    assert not StateSnapshot.take([], [opt.base]).differences(base_state)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), theta))
    train(opt, model, loss_fn, data, range(3, 6), closure=True)
    assert so.testing.all_finite(model.parameters()) and not opt.last_stats.skipped


def test_fault_in_a_custom_operator():
    """An operator without a gradient (a DenseOperator here) goes through the same policy."""
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(12, dtype=torch.float64, generator=g))
    A = torch.randn(12, 12, dtype=torch.float64, generator=g)
    op = FaultyOperator(so.DenseOperator(A + A.T), fail_on={12})
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD([w], lr=0.01), op, k=2, eigensolver=so.Lanczos(ncv=8), on_fault="cold"
    )
    for _ in range(4):
        w.grad = torch.randn(12, dtype=torch.float64, generator=g)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
    assert op.calls >= 12
    assert opt.counters["cold_restarts"] + opt.counters["faults"] >= 1
    assert torch.isfinite(w).all() and orthonormality_error(opt.basis) < 1e-10


# ------------------------------------------------------------------------- determinism
STEPS = 5


@pytest.mark.parametrize(
    "label,family,schedule,solver,closure",
    DETERMINISM_CONFIGS,
    ids=[c[1] for c in DETERMINISM_CONFIGS],
)
def test_bit_for_bit_repeat_and_resume_from_any_step(label, family, schedule, solver, closure):
    outcome = resume_check(setup_factory(family, schedule, solver), STEPS, closure=closure)
    assert outcome.refreshes >= 3  # the resume points fall before, at and after refreshes
    assert outcome.repeat_identical
    assert outcome.resume_identical == (True,) * STEPS


def test_resume_check_notices_a_difference():
    """The comparison can fail: a resumed run whose generator state is not restored."""
    make = setup_factory("adam", lambda: so.Every(1), lambda: so.PowerIteration(max_iter=1))
    outcome = resume_check(make, 2)
    assert outcome.ok
    calls = []

    def make_other_seed():
        model, loss_fn, data, opt = make()
        calls.append(1)
        if len(calls) > 2:  # every resumed job draws different start vectors
            opt.generator.manual_seed(len(calls))
            opt.load_state_dict = _without_generator(opt)
        return model, loss_fn, data, opt

    assert not resume_check(make_other_seed, 2).ok


def _without_generator(opt):
    load = opt.load_state_dict

    def patched(sd):
        state = opt.generator.get_state()
        load(sd)
        opt.generator.set_state(state)

    return patched
