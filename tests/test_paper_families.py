"""The paper's effect for every optimizer family, on scikit-learn's digits (MLP 64-64-64-10).

Protocol (Song, Ahn & Yun, 2025, shortened to fit the test budget): train with the family's
optimizer (mini-batches of 50) for 100 steps, then continue for 100 steps three ways from
the same state and the same batches: unprojected, Dom (update projected onto the top-10
Hessian eigenspace of the full training loss) and Bulk (that component removed). Progress
after the switch is measured relative to the unprojected run,

    ratio = (L_switch − L_variant) / (L_switch − L_base),

and the paper's claim is Dom ≈ 0 (the loss stops decreasing) and Bulk ≈ 1 (trains as well).

Departures from the issue's protocol in the default (fast) test, to fit the test budget:
100 steps after the switch instead of 200, the basis refreshed every 10 steps (warm block
power iteration, 3 iterations) instead of every step, and for Dom/Bulk the top-10
eigenspace of the Hessian of the first 250 training examples rather than of all 1000 (the
losses are always measured on all 1000). The faithful protocol (200 steps, full-batch
Hessian, basis refreshed every step with the default warm solver) is the ``slow`` test
``test_dom_stalls_and_bulk_trains_faithful_protocol``, with the ratios it measured.

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
#: the issue's protocol: 200 steps after the switch, full-batch Hessian refreshed every step
FAITHFUL_AFTER = 200

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
    batches = [
        torch.randperm(X.shape[0], generator=g)[:BATCH] for _ in range(SWITCH + FAITHFUL_AFTER)
    ]
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


def _once_per_family(run, digits):
    """``get(name)``: ``run(name, digits)``, computed on first use and kept."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = run(name, digits)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def results(digits):
    """Each family is trained once per module, on first use."""
    return _once_per_family(run_family, digits)


@pytest.fixture(scope="module")
def faithful_results(digits):
    return _once_per_family(run_family_faithful, digits)


def run_family(name: str, digits) -> dict:
    X, Y, batches = digits
    sam = name == "sam"
    *state, loss_switch = switch_point(name, digits)
    out = {"switch": loss_switch}
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
        for idx in batches[SWITCH : SWITCH + AFTER]:
            train(opt, m, X, Y, [idx], closure_api=sam)
            if opt.last_stats.gradient_source == "full":
                records.append(opt.last_stats)
        assert all(torch.isfinite(p).all() for p in m.parameters())
        out[mode] = full_loss(m, X, Y)
        if mode == "none":
            out["eta"] = so.effective_lr_summary(records)
    return out


def switch_point(name: str, digits):
    """The family's optimizer after SWITCH unprojected steps: (model state, optimizer state,
    full-batch loss)."""
    X, Y, batches = digits
    model = mlp(generator=torch.Generator().manual_seed(0))
    base = FAMILIES[name](model.parameters())
    train(base, model, X, Y, batches[:SWITCH], closure_api=name == "sam")
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(base.state_dict()),
        full_loss(model, X, Y),
    )


def run_family_faithful(name: str, digits) -> dict:
    """The issue's protocol: from the switch, FAITHFUL_AFTER steps unprojected, Dom and Bulk,
    the top-10 eigenspace of the full-batch (1000-example) Hessian refreshed every step with
    the default warm-started solver."""
    X, Y, batches = digits
    sam = name == "sam"
    model_state, opt_state, loss_switch = switch_point(name, digits)
    out = {"switch": loss_switch}
    for mode in ("none", "dominant", "bulk"):
        m = mlp(generator=torch.Generator().manual_seed(0))
        m.load_state_dict(model_state)
        b = FAMILIES[name](m.parameters())
        b.load_state_dict(opt_state)
        opt = b
        if mode != "none":
            opt = so.SubspaceProjectedOptimizer(
                b, so.HessianOperator(m, half_sum_mse, (X, Y)), k=K, mode=mode, refresh=so.Every(1)
            )
        train(opt, m, X, Y, batches[SWITCH : SWITCH + FAITHFUL_AFTER], closure_api=sam)
        assert all(torch.isfinite(p).all() for p in m.parameters())
        if mode != "none":
            assert opt.counters["refreshes"] == FAITHFUL_AFTER and opt.counters["faults"] == 0
        out[mode] = full_loss(m, X, Y)
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


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_dom_stalls_and_bulk_trains_faithful_protocol(family, faithful_results):
    """The issue's protocol (switch at step 100, 200 more steps, full-batch Hessian basis
    refreshed every step); the fast test above is its shortened version for the default run.

    Measured by this test (torch 2.13 CPU, one thread; loss at switch → base / Dom / Bulk,
    then the Dom and Bulk progress ratios):

    * SGD (lr 0.1): 0.1639 → 0.1306 / 0.1647 / 0.1310; Dom −0.02, Bulk 0.99
    * momentum (lr 0.01, β 0.9): 0.1669 → 0.1321 / 0.1670 / 0.1320; Dom −0.00, Bulk 1.00
    * Adam (lr 1e-3): 0.1451 → 0.0909 / 0.1447 / 0.0881; Dom 0.01, Bulk 1.05
    * SAM (SGD lr 0.1, ρ 0.05): 0.1644 → 0.1330 / 0.1666 / 0.1355; Dom −0.07, Bulk 0.92

    It took 182 s of CPU time (10 min wall on a loaded 2-core machine), too long for the
    default run, hence ``slow``: ``pytest -m slow tests/test_paper_families.py``.
    """
    res = faithful_results(family)
    print(  # the measured losses and ratios, with pytest -s
        family, {k: round(v, 4) for k, v in res.items()}, ratio(res, "dominant"), ratio(res, "bulk")
    )
    assert res["none"] < res["switch"] - 0.01
    assert ratio(res, "dominant") <= 0.1, res
    assert ratio(res, "bulk") >= 0.8, res


def test_effective_learning_rates_table_1(results):
    """η_bulk/η_dom (ratio of sums, full-batch gradient): ≈ 1 for SGD, far above 1 with
    momentum and Adam (the paper's Table 1; the issue's prototype over steps 20-320 with an
    exact basis every step: 0.94, 8.98, 5.62)."""
    sgd, mom, adam = (results(name)["eta"] for name in ("sgd", "momentum", "adam"))
    assert sgd["steps"] == mom["steps"] == adam["steps"] == AFTER // 10
    assert 0.6 <= sgd["ratio"] <= 1.4, sgd
    # measured here (steps 100-200, 10 full-gradient samples): SGD 0.81, momentum 2.74, Adam
    # 2.13 (4.97 and 2.52 with the looser basis PowerIteration gave before its lower-end
    # estimate stopped doubling the Lanczos off-diagonals: 3 iterations now leave a residual
    # of 0.21 instead of 0.68 on the digits MLP)
    assert mom["ratio"] >= 2.0 and mom["ratio"] >= 2.5 * sgd["ratio"], mom
    assert adam["ratio"] >= 2.0 and adam["ratio"] >= 2.5 * sgd["ratio"], adam
    # plain SGD's effective learning rates are its learning rate (in expectation)
    assert 0.05 <= sgd["eta_bulk"] <= 0.15, sgd
