"""Hypothesis fuzzing of projected training over model shapes, dtypes, k, modes, schedules,
eigensolvers and optimizer families.

Invariants: parameters stay finite; the basis is orthonormal with eigenvalues descending;
Dom + Bulk = the base update (from one state and one basis, any family); ``mode="none"``
is the base optimizer bit for bit; a ``state_dict`` survives ``torch.save`` /
``torch.load(weights_only=True)`` into a fresh optimizer and the two continue identically.

Every run draws fresh examples (a failure prints the falsifying setup and the
``@reproduce_failure`` blob that replays it), a few per check so the default run stays
within seconds; ``pytest -m slow tests/test_fuzz.py`` draws many more.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from scenarios import checkpoint_bytes, load_bytes, train

import subspace_optim as so
from subspace_optim.testing import StateSnapshot, all_finite, orthonormality_error
from subspace_optim.testing.strategies import FAMILIES, SOLVERS, build_optimizer, training_setups

FAST = settings(
    max_examples=8,
    deadline=None,
    database=None,  # nothing written into the checkout
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SLOW = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
STEPS = 3


def _tol(model):
    return 1e-9 if next(model.parameters()).dtype == torch.float64 else 1e-4


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _run(setup, **overrides):
    model, loss_fn, data, opt = setup.build(**overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # EoS / fault warnings on odd draws
        train(opt, model, loss_fn, data, STEPS, closure=setup.uses_closure)
    return model, loss_fn, data, opt


def check_training_invariants(setup):
    model, _, _, opt = _run(setup)
    assert all_finite(model.parameters())
    if opt.basis is not None:
        assert opt.basis.shape == (
            sum(p.numel() for p in model.parameters()),
            setup.k + setup.num_extra,
        )
        assert orthonormality_error(opt.basis) <= 10 * _tol(model)
        eig = opt.eigenvalues
        assert torch.isfinite(eig).all() and bool((eig[:-1] >= eig[1:]).all())
    stats = opt.last_stats
    assert stats.step == STEPS - 1
    assert opt.counters["skipped_steps"] == 0 or stats.faults > 0


def check_dom_plus_bulk_is_base(setup):
    """One step from the same parameters, base state and basis: Δ_dom + Δ_bulk = Δ_base,
    Δ_dom ∈ span(U) and Δ_bulk ⊥ span(U)."""
    model, loss_fn, data, opt = _run(setup, mode="none", refresh=so.AtSteps([0]))
    blob = checkpoint_bytes({"model": model.state_dict(), "opt": opt.state_dict()})
    U = opt.basis[:, : setup.k]
    deltas = {}
    for mode in ("none", "dominant", "bulk"):
        m, loss_fn, data, o = setup.build(mode=mode, refresh=so.AtSteps([0]))
        state = load_bytes(blob)
        m.load_state_dict(state["model"])
        o.load_state_dict(state["opt"])  # the same basis: AtSteps([0]) does not refresh again
        before = _flat(m)
        train(o, m, loss_fn, data, range(STEPS, STEPS + 1), closure=setup.uses_closure)
        assert torch.equal(o.basis[:, : setup.k], U)
        deltas[mode] = _flat(m) - before
    scale = deltas["none"].norm() + 1e-30
    tol = _tol(model) * 100
    assert (deltas["dominant"] + deltas["bulk"] - deltas["none"]).norm() <= tol * scale
    assert (deltas["dominant"] - U @ (U.T @ deltas["dominant"])).norm() <= tol * scale
    assert (U.T @ deltas["bulk"]).norm() <= tol * scale


def check_mode_none_is_the_base_optimizer(setup):
    model, loss_fn, data, _ = _run(setup, mode="none")
    twin, _, _ = setup.model.build()
    base = build_optimizer(setup.family, twin.parameters())
    train(base, twin, loss_fn, data, STEPS, closure=setup.uses_closure)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def check_state_dict_round_trip(setup):
    model, loss_fn, data, opt = _run(setup)
    blob = checkpoint_bytes({"model": model.state_dict(), "opt": opt.state_dict()})
    fresh_model, _, _, fresh = setup.build()
    state = load_bytes(blob)
    fresh_model.load_state_dict(state["model"])
    fresh.load_state_dict(state["opt"])
    assert not StateSnapshot.take([], [fresh]).differences(StateSnapshot.take([], [opt]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for m, o in ((model, opt), (fresh_model, fresh)):
            train(o, m, loss_fn, data, range(STEPS, STEPS + 2), closure=setup.uses_closure)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh_model.parameters()))


CHECKS = {
    "training_invariants": (check_training_invariants, {}),
    "dom_plus_bulk_is_base": (check_dom_plus_bulk_is_base, {"projects": ("update",)}),
    "mode_none_is_base": (check_mode_none_is_the_base_optimizer, {}),
    "state_dict_round_trip": (check_state_dict_round_trip, {}),
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_fuzz(name):
    check, kwargs = CHECKS[name]
    FAST(given(training_setups(**kwargs))(check))()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHECKS))
def test_fuzz_long(name):
    check, kwargs = CHECKS[name]
    SLOW(given(training_setups(**kwargs))(check))()


def test_every_family_solver_mode_and_schedule_is_drawn():
    """The strategy really draws every family, solver, mode, schedule kind and projection
    target, and the widened parts (float32, rank-deficient data, k up to 6, num_extra up
    to 3, switch schedules with their own parameters)."""
    seen: dict[str, set] = {
        key: set()
        for key in (
            "family",
            "solver",
            "mode",
            "schedule",
            "project",
            "dtype",
            "rank_deficient",
            "k",
            "num_extra",
        )
    }

    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(training_setups())
    def collect(setup):
        seen["family"].add(setup.family)
        seen["solver"].add(setup.solver)
        seen["mode"].add(setup.mode)
        seen["schedule"].add((setup.schedule[0], len(setup.schedule)))
        seen["project"].add(setup.project)
        seen["dtype"].add(setup.model.dtype)
        seen["rank_deficient"].add(setup.model.rank_deficient)
        seen["k"].add(setup.k)
        seen["num_extra"].add(setup.num_extra)

    collect()
    assert seen["family"] == set(FAMILIES) >= {"sgd", "momentum", "adam", "sam"}
    assert seen["solver"] == set(SOLVERS)
    assert seen["mode"] == {"bulk", "dominant", "none"}
    assert seen["schedule"] == {("every", 3), ("at", 2), ("switch", 6)}
    assert seen["project"] == {"update", "gradient"}
    assert seen["dtype"] == {"float32", "float64"} and seen["rank_deficient"] == {True, False}
    assert max(seen["k"]) >= 5 and max(seen["num_extra"]) >= 2


def test_a_broken_invariant_is_caught(monkeypatch):
    """The checks can fail: a wrapper whose 'bulk' step is the base step breaks Dom + Bulk = base."""
    from subspace_optim.testing.strategies import MLPSpec, TrainingSetup

    setup = TrainingSetup(
        model=MLPSpec(3, (4,), 2, "tanh", "float64", 12, 0),
        family="sgd",
        k=2,
        num_extra=0,
        mode="bulk",
        solver="eigh",
        schedule=("every", 1, 0),
        project="update",
        seed=0,
    )
    check_dom_plus_bulk_is_base(setup)  # the real thing holds
    original = so.SubspaceProjectedOptimizer.__init__

    def no_bulk(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.mode == "bulk":
            self.mode, self.scales = "none", (1.0, 1.0)

    monkeypatch.setattr(so.SubspaceProjectedOptimizer, "__init__", no_bulk)
    with pytest.raises(AssertionError):
        check_dom_plus_bulk_is_base(setup)
