"""The paper's effect for every optimizer family, on scikit-learn's digits (MLP 64-64-64-10).

Protocol (Song, Ahn & Yun, 2025, shortened to fit the test budget): train with the family's
optimizer (mini-batches of 50) for 100 steps, then continue for 100 steps three ways from
the same state and the same batches: unprojected, Dom (update projected onto the top-10
Hessian eigenspace of the full training loss) and Bulk (that component removed). Progress
after the switch is measured relative to the unprojected run,

    ratio = (L_switch − L_variant) / (L_switch − L_base),

and the paper's claim is Dom ≈ 0 (the loss stops decreasing) and Bulk ≈ 1 (trains as well).

Departures from the paper, to fit the test budget: the basis is refreshed every 10 steps
(warm block power iteration, 3 iterations) instead of every step with an exact solver, and
for Dom/Bulk it is the top-10 eigenspace of the Hessian of the first 250 training examples
rather than of all 1000 (the losses are always measured on all 1000).

The unprojected continuation also records the effective learning rates on the full-batch
gradient every 10 steps (mode ``"none"``), to check the paper's Table 1 finding that momentum
and Adam move much faster along the bulk than along the dominant subspace, unlike SGD.
"""

from __future__ import annotations

import copy

import pytest
import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

SWITCH, AFTER, BATCH, K = 100, 100, 50, 10
HESSIAN_N, EVERY = 250, 10

FAMILIES = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "sam": lambda ps: so.SAM(torch.optim.SGD(ps, lr=0.1), rho=0.05),
}


@pytest.fixture(scope="module")
def digits():
    X, Y, _ = load_digits()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randperm(X.shape[0], generator=g)[:BATCH] for _ in range(SWITCH + AFTER)]
    return X, Y, batches


def train(opt, model, X, Y, batches, *, closure_api: bool):
    for idx in batches:
        xb, yb = X[idx], Y[idx]

        def closure(xb=xb, yb=yb):
            opt.zero_grad()
            loss = half_sum_mse(model(xb), yb)
            loss.backward()
            return loss

        closure()
        opt.step(closure if closure_api else None)


def full_loss(model, X, Y) -> float:
    with torch.no_grad():
        return float(half_sum_mse(model(X), Y))


@pytest.fixture(scope="module")
def results(digits):
    """Each family is trained once per module, on first use."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = run_family(name, digits)
        return cache[name]

    return get


def run_family(name: str, digits) -> dict:
    X, Y, batches = digits
    sam = name == "sam"
    model = mlp(generator=torch.Generator().manual_seed(0))
    base = FAMILIES[name](model.parameters())
    train(base, model, X, Y, batches[:SWITCH], closure_api=sam)
    state = (copy.deepcopy(model.state_dict()), copy.deepcopy(base.state_dict()))
    out = {"switch": full_loss(model, X, Y)}
    for mode in ("none", "dominant", "bulk"):
        m = mlp(generator=torch.Generator().manual_seed(0))
        m.load_state_dict(state[0])
        b = FAMILIES[name](m.parameters())
        b.load_state_dict(state[1])
        # the unprojected run measures effective learning rates on the full-batch gradient
        # (full data); Dom/Bulk take their basis from a 250-example Hessian (see module doc)
        data = (X, Y) if mode == "none" else (X[:HESSIAN_N], Y[:HESSIAN_N])
        opt = so.SubspaceProjectedOptimizer(
            b,
            so.HessianOperator(m, half_sum_mse, data),
            k=K if (mode != "none" or not sam) else 0,
            mode=mode,
            eigensolver=so.PowerIteration(tol=1e-2, max_iter=3, block_size=K + 4),
            refresh=so.Every(EVERY),
        )
        records = []
        for idx in batches[SWITCH:]:
            train(opt, m, X, Y, [idx], closure_api=sam)
            if opt.last_stats.gradient_source == "full":
                records.append(opt.last_stats)
        assert all(torch.isfinite(p).all() for p in m.parameters())
        out[mode] = full_loss(m, X, Y)
        if mode == "none":
            out["eta"] = so.effective_lr_summary(records)
    return out


def ratio(res: dict, variant: str) -> float:
    return (res["switch"] - res[variant]) / (res["switch"] - res["none"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_dom_stalls_and_bulk_trains(family, results):
    res = results(family)
    assert res["none"] < res["switch"] - 0.01  # the unprojected run makes real progress
    dom, bulk = ratio(res, "dominant"), ratio(res, "bulk")
    assert dom <= 0.1, res
    assert bulk >= 0.8, res


def test_effective_learning_rates_table_1(results):
    """η_bulk/η_dom (ratio of sums, full-batch gradient): ≈ 1 for SGD, far above 1 with
    momentum and Adam (the paper's Table 1; the issue's prototype over steps 20-320 with an
    exact basis every step: 0.94, 8.98, 5.62)."""
    sgd, mom, adam = (results(name)["eta"] for name in ("sgd", "momentum", "adam"))
    assert sgd["steps"] == mom["steps"] == adam["steps"] == AFTER // 10
    assert 0.6 <= sgd["ratio"] <= 1.4, sgd
    # measured here (steps 100-200, 10 full-gradient samples): SGD 0.81, momentum 4.97, Adam 2.52
    assert mom["ratio"] >= 3.0 and mom["ratio"] >= 2.5 * sgd["ratio"], mom
    assert adam["ratio"] >= 2.0 and adam["ratio"] >= 2.5 * sgd["ratio"], adam
    # plain SGD's effective learning rates are its learning rate (in expectation)
    assert 0.05 <= sgd["eta_bulk"] <= 0.15, sgd
