"""Edge of Stability: thresholds checked on quadratics, tracking, λ_{k+1} warnings, adaptive k."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

# ----------------------------------------------------------------- a quadratic model


class Quadratic(nn.Module):
    """L(θ) = ½ θᵀ A θ; the Hessian is exactly A."""

    def __init__(self, theta0: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0], -1)


def quadratic(spectrum, seed=0):
    g = torch.Generator().manual_seed(seed)
    lam = torch.tensor(spectrum, dtype=torch.float64)
    n = lam.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(lam) @ Q.T
    model = Quadratic(torch.randn(n, generator=g, dtype=torch.float64))

    def loss_fn(out, _y):
        return 0.5 * ((out @ A) * out).sum(dim=1).mean()

    data = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    return model, loss_fn, data, A, Q


def gd_loop(opt, model, loss_fn, data, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(data[0]), data[1])
        loss.backward()
        losses.append(float(loss.detach()))
        opt.step()
    return losses


# ------------------------------------------------------------- stability thresholds

CONFIGS = [
    {"lr": 0.3},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.5, "dampening": 0.5},
    {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    {"lr": 0.2, "weight_decay": 0.5},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_threshold_is_the_stability_edge_of_sgd_on_a_quadratic(cfg):
    """torch's own SGD on a diagonal quadratic: curvatures just below the returned threshold
    decay, curvatures just above it blow up."""
    thr = so.stability_threshold(torch.optim.SGD([torch.zeros(1, requires_grad=True)], **cfg))
    factors = torch.tensor([0.5, 0.9, 0.95, 1.05, 1.1, 1.5], dtype=torch.float64)
    lam = factors * thr
    w = torch.ones(6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], **cfg)
    for _ in range(300):
        w.grad = lam * w.detach()  # ∇ ½ Σ λ_i w_i²
        opt.step()
    final = w.detach().abs()
    assert bool((final[:3] < 1e-2).all()), final
    assert bool((final[3:] > 1e2).all()) and bool(torch.isfinite(final).all()), final


def test_threshold_of_wrappers_groups_and_adaptive_methods():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    sgd = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert so.stability_threshold(sgd) == pytest.approx(4.0)  # the larger lr decides
    assert so.stability_threshold(so.SAM(torch.optim.SGD([a], lr=0.5))) == pytest.approx(4.0)
    # a projection wrapper, around SGD or around SAM around SGD: its base's chain decides
    op = so.DenseOperator(torch.eye(2))
    for inner in (torch.optim.SGD([a], lr=0.25), so.SAM(torch.optim.SGD([a], lr=0.25))):
        wrapped = so.SubspaceProjectedOptimizer(inner, op, k=1, eigensolver="eigh")
        assert so.stability_threshold(wrapped) == pytest.approx(8.0)
        del wrapped
    for opt in (torch.optim.Adam([a]), torch.optim.RMSprop([a]), torch.optim.Adagrad([a])):
        assert so.stability_threshold(opt) is None
        assert so.stability_threshold(so.SAM(opt)) is None
    sched_opt = torch.optim.SGD([a], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(sched_opt, step_size=1, gamma=0.5)
    sched_opt.step()
    sched.step()
    assert so.stability_threshold(sched_opt) == pytest.approx(4.0)  # follows the scheduler


@settings(max_examples=60, deadline=None)
@given(
    eig=st.lists(st.floats(-5, 10, allow_nan=False), min_size=1, max_size=12),
    thr=st.floats(0.1, 10),
    frac=st.floats(0.05, 1.0),
    cap=st.integers(0, 15),
)
def test_choose_k_counts_leading_eigenvalues_above_the_cut(eig, thr, frac, cap):
    lam = torch.tensor(sorted(eig, reverse=True), dtype=torch.float64)
    k = so.choose_k(lam, thr, frac, cap)
    expected = min(cap, sum(x >= frac * thr for x in lam.tolist()))
    assert k == expected
    assert so.choose_k(lam, thr, min(1.0, frac * 1.5), cap) <= k  # monotone in the fraction


# ------------------------------------------------------- learning rate and tracker


def test_pick_learning_rate_matches_dense_eigenvalue():
    model, loss_fn, data, A, _ = quadratic([6.0, 3.0, 1.0, 0.5, -2.0, 0.1, 0.2, 0.3])
    op = so.HessianOperator(model, loss_fn, data)
    pick = so.pick_learning_rate(op, c=0.8)
    lam1 = float(torch.linalg.eigvalsh(A)[-1])
    assert pick.sharpness == pytest.approx(lam1, rel=1e-6)
    assert pick.lr == pytest.approx(0.8 * 2 / lam1, rel=1e-6) and pick.converged
    with pytest.raises(ValueError, match="c must be"):
        so.pick_learning_rate(op, c=0)
    neg, loss_fn, data, _, _ = quadratic([-1.0, -2.0, -3.0, -4.0])
    with pytest.raises(ValueError, match="no positive curvature"):
        so.pick_learning_rate(so.HessianOperator(neg, loss_fn, data))


def test_tracker_matches_dense_reference_and_reads_the_threshold():
    model, loss_fn, data, A, _ = quadratic([5.0, 4.0, *torch.linspace(2.0, 0.0, 40).tolist()])
    op = so.HessianOperator(model, loss_fn, data)
    tracker = so.SharpnessTracker(
        op, num_eigs=2, eigensolver=so.PowerIteration(tol=1e-9, max_iter=500), every=2
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    first = tracker.update(opt)
    assert tracker.update(0.25) is None  # not due
    third = tracker.update(0.25)
    assert [r.step for r in tracker.history] == [0, 2]
    ref = torch.linalg.eigvalsh(A).flip(0)[:2].tolist()
    for rec in (first, third):
        assert list(rec.eigenvalues) == pytest.approx(ref, rel=1e-6)
    assert first.threshold == pytest.approx(30.0) and not first.at_edge
    assert third.threshold == pytest.approx(8.0) and third.ratio == pytest.approx(5 / 8, rel=1e-6)
    # warm start: the operator did not change, so the second solve is cheaper
    assert third.num_matvecs < first.num_matvecs
    assert tracker.num_matvecs == first.num_matvecs + third.num_matvecs
    assert tracker.update() is None
    assert math.isnan(tracker.update().threshold)  # no lr, no optimizer: no threshold
    with pytest.raises(ValueError, match="num_eigs"):
        so.SharpnessTracker(op, num_eigs=0)
    with pytest.raises(TypeError, match="LinearOperator"):
        so.SharpnessTracker(A)


# ------------------------------------------- projected GD: λ_{k+1} and adaptive k

SPECTRUM = [10.0, 9.0, 8.0, 3.0, 2.5, 1.0, 0.5, 0.2, 0.1, 0.05]  # 2/η = 4 with η = 0.5


def projected(mode, k, *, adaptive_k=None, num_extra=1, lr=0.5):
    model, loss_fn, data, _A, _ = quadratic(SPECTRUM)
    op = so.HessianOperator(model, loss_fn, data)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr),
        op,
        k=k,
        mode=mode,
        num_extra=num_extra,
        eigensolver="eigh",
        adaptive_k=adaptive_k,
    )
    return model, loss_fn, data, opt


def test_bulk_with_lambda_k_plus_1_below_threshold_is_stable_and_silent():
    model, loss_fn, data, opt = projected("bulk", k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", so.EdgeOfStabilityWarning)
        losses = gd_loop(opt, model, loss_fn, data, 60)
    assert losses[-1] < losses[0]
    assert opt.counters["unstable_refreshes"] == 0


def test_bulk_with_lambda_k_plus_1_above_threshold_warns_once_and_diverges_finitely():
    model, loss_fn, data, opt = projected("bulk", k=2)
    with pytest.warns(so.EdgeOfStabilityWarning, match="λ_3 = 8") as caught:
        losses = gd_loop(opt, model, loss_fn, data, 25)
    eos = [w for w in caught if issubclass(w.category, so.EdgeOfStabilityWarning)]
    assert len(eos) == 1  # once per episode, not every step
    assert opt.counters["unstable_refreshes"] == 25
    # the kept direction with curvature 8 > 2/η grows like |1 − 0.5·8| = 3 per step
    assert losses[-1] > 1e6 * losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_resume_inside_an_unstable_episode_does_not_warn_again():
    """The once-per-episode flag is part of the checkpoint: a run resumed inside the
    episode stays silent, as the uninterrupted run does."""
    model, loss_fn, data, opt = projected("bulk", k=2)
    with pytest.warns(so.EdgeOfStabilityWarning):
        gd_loop(opt, model, loss_fn, data, 2)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2, loss_fn2, data2, opt2 = projected("bulk", k=2)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", so.EdgeOfStabilityWarning)
        gd_loop(opt2, model2, loss_fn2, data2, 2)
    assert opt2.counters["unstable_refreshes"] == 4


def test_dominant_and_none_modes_do_not_warn():
    for mode in ("dominant", "none"):
        model, loss_fn, data, opt = projected(mode, k=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error", so.EdgeOfStabilityWarning)
            gd_loop(opt, model, loss_fn, data, 3)


def test_adaptive_k_removes_every_direction_above_the_fraction():
    model, loss_fn, data, opt = projected("bulk", k=6, adaptive_k=0.9)  # cut 3.6: three of them
    with warnings.catch_warnings():
        warnings.simplefilter("error", so.EdgeOfStabilityWarning)
        losses = gd_loop(opt, model, loss_fn, data, 60)
    assert opt.active_k == 3
    assert losses[-1] < losses[0]
    model, loss_fn, data, opt = projected("bulk", k=6, adaptive_k=0.5)  # cut 2: five
    gd_loop(opt, model, loss_fn, data, 2)
    assert opt.active_k == 5
    model, loss_fn, data, opt = projected("bulk", k=2, adaptive_k=0.5)  # capped at k
    with pytest.warns(so.EdgeOfStabilityWarning):
        gd_loop(opt, model, loss_fn, data, 2)
    assert opt.active_k == 2
    # active_k survives a checkpoint
    sd = opt.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    _model2, _, _, opt2 = projected("bulk", k=2, adaptive_k=0.5)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.active_k == 2


def test_adaptive_k_bad_input():
    model, loss_fn, data, _, _ = quadratic(SPECTRUM)
    op = so.HessianOperator(model, loss_fn, data)
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    for bad in (0.0, 1.5, -0.2, True, "0.5"):
        with pytest.raises(ValueError, match="adaptive_k"):
            so.SubspaceProjectedOptimizer(sgd, op, k=3, adaptive_k=bad)
    with pytest.raises(ValueError, match="stability threshold"):
        so.SubspaceProjectedOptimizer(torch.optim.Adam(model.parameters()), op, k=3, adaptive_k=0.5)


# ------------------------------------------------------------------ digits at EoS


@pytest.fixture(scope="module")
def digits():
    X, Y, _ = load_digits()
    return X, Y


def test_progressive_sharpening_reaches_the_edge_on_digits(digits):
    """Full-batch GD, η = 0.7: λ_1 starts below 2/η ≈ 2.86 and climbs to it (EoS)."""
    X, Y = digits
    model = mlp(generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.7)
    tracker = so.SharpnessTracker(so.HessianOperator(model, half_sum_mse, (X, Y)), every=10)
    for _ in range(80):
        opt.zero_grad()
        half_sum_mse(model(X), Y).backward()
        tracker.update(opt)
        opt.step()
    ratios = [r.ratio for r in tracker.history]
    assert ratios[0] < 0.9  # λ_1 ≈ 2.3 at initialization
    assert max(ratios) >= 1.0  # the edge is reached within 80 steps


def test_bulk_gd_at_the_edge_warns_and_never_writes_nan(digits):
    """At step 200 of GD with η = 0.7, λ_11 sits near 2/η: Bulk-GD (k = 10) is flagged.

    GD at the edge is chaotic (the step at which λ_11 crosses depends on rounding, hence on
    the thread count), so the check allows up to 60 projected steps."""
    X, Y = digits
    model = mlp(generator=torch.Generator().manual_seed(0))
    base = torch.optim.SGD(model.parameters(), lr=0.7)
    for _ in range(200):
        base.zero_grad()
        half_sum_mse(model(X), Y).backward()
        base.step()
    op = so.HessianOperator(model, half_sum_mse, (X, Y))
    opt = so.SubspaceProjectedOptimizer(
        base,
        op,
        k=10,
        mode="bulk",
        num_extra=3,
        eigensolver=so.PowerIteration(tol=1e-3, max_iter=3, block_size=17),
    )
    with pytest.warns(so.EdgeOfStabilityWarning, match="λ_11"):
        for _ in range(60):
            opt.zero_grad()
            half_sum_mse(model(X), Y).backward()
            opt.step()
            if opt.counters["unstable_refreshes"]:
                break
    assert opt.counters["unstable_refreshes"] >= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
