"""Online subspace sources (`UpdateHistory`, `GradientSketch`) and the per-block scaled update.

The math is checked against dense float64 references built two ways (an eigendecomposition
of the explicit ``n × n`` covariance and an SVD of the rows); the wrapper's step against the
update recomputed by hand from the bases it used; the rules (1-D parameters pass, per-group
k and mode, the history holds the base's own updates) on small models.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import subspace_optim as so
from subspace_optim.bases import BlockBasis
from subspace_optim.sources._pca import frequent_directions_shrink, gram_directions


def projector_distance(U: torch.Tensor, V: torch.Tensor) -> float:
    """‖UUᵀ − VVᵀ‖₂ (= sin of the largest principal angle for equal dimensions)."""
    U, V = U.double(), V.double()
    return float(torch.linalg.matrix_norm(U @ U.T - V @ V.T, ord=2))


# ---------------------------------------------------------------- pure math
@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(3, 12),
    n=st.integers(13, 40),
    k=st.integers(1, 2),
    center=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gram_directions_match_dense_references_built_two_ways(m, n, k, center, seed):
    g = torch.Generator().manual_seed(seed)
    # a planted spectrum: k strong directions well separated from the rest
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    coeff = torch.randn(m, n, generator=g, dtype=torch.float64) * 0.01
    coeff[:, :k] += torch.randn(m, k, generator=g, dtype=torch.float64) * torch.tensor(
        [10.0, 5.0][:k], dtype=torch.float64
    )
    rows = coeff @ Q.T
    found = gram_directions(rows, k, center=center)
    assert found is not None and found.basis.shape == (n, k)
    C = rows - rows.mean(0, keepdim=True) if center else rows
    # reference 1: eigenvectors of the explicit n×n second moment
    _, W = torch.linalg.eigh(C.T @ C)
    ref1 = W[:, -k:]
    # reference 2: right singular vectors of the rows
    _, S, Vh = torch.linalg.svd(C, full_matrices=False)
    ref2 = Vh[:k].T
    assert projector_distance(ref1, ref2) < 1e-8  # the two references agree
    assert projector_distance(found.basis, ref1) < 1e-8
    torch.testing.assert_close(found.basis.T @ found.basis, torch.eye(k, dtype=torch.float64))
    torch.testing.assert_close(found.singular_values, S[:k], rtol=1e-8, atol=1e-10)


def test_gram_directions_drop_directions_the_rows_do_not_span():
    rows = torch.zeros(5, 10)
    rows[:, 0] = torch.tensor([1.0, -2.0, 3.0, 0.5, 1.0])
    found = gram_directions(rows, 3, center=False)
    assert found is not None and found.basis.shape == (10, 1)
    assert gram_directions(torch.zeros(4, 10), 2, center=False) is None
    assert gram_directions(torch.full((4, 10), math.nan), 2, center=False) is None


def test_centring_removes_the_steady_drift():
    """Rows = a constant drift + an oscillation: centred PCA finds the oscillation."""
    drift, osc = torch.zeros(20), torch.zeros(20)
    drift[0], osc[1] = 5.0, 1.0
    rows = torch.stack([drift + (-1) ** i * osc for i in range(8)])
    centred = gram_directions(rows, 1, center=True)
    raw = gram_directions(rows, 1, center=False)
    assert centred is not None and raw is not None
    assert abs(float(centred.basis[1, 0])) > 0.999
    assert abs(float(raw.basis[0, 0])) > 0.99


@settings(max_examples=15, deadline=None)
@given(ell=st.integers(2, 8), steps=st.integers(5, 40), seed=st.integers(0, 2**16))
def test_frequent_directions_guarantee(ell, steps, seed):
    """0 ⪯ AᵀA − BᵀB ⪯ (2/ℓ)‖A‖_F² I for the fast variant (decay 1)."""
    g = torch.Generator().manual_seed(seed)
    n = 12
    A = torch.randn(steps, n, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, n)
    B = torch.zeros(ell, n, dtype=torch.float64)
    used = 0
    for row in A:
        if used == ell:
            B = frequent_directions_shrink(B)
            used = ell - ell // 2
        B[used] = row
        used += 1
    gap = torch.linalg.eigvalsh(A.T @ A - B.T @ B)
    bound = 2 * float((A * A).sum()) / ell
    assert float(gap.min()) > -1e-8
    assert float(gap.max()) <= bound + 1e-8


def test_block_basis_equals_the_dense_block_diagonal_projector():
    g = torch.Generator().manual_seed(0)
    U1, _ = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))
    U3, _ = torch.linalg.qr(torch.randn(5, 1, generator=g, dtype=torch.float64))
    basis = BlockBasis([0, 6, 9], [6, 3, 5], [U1, None, U3])
    dense = torch.zeros(14, 3, dtype=torch.float64)
    dense[0:6, 0:2], dense[9:14, 2:3] = U1, U3
    v = torch.randn(14, generator=g, dtype=torch.float64)
    torch.testing.assert_close(basis.dominant(v), dense @ (dense.T @ v))
    torch.testing.assert_close(basis.coords(v), dense.T @ v)
    assert basis.dim == 3 and basis.projected() == [True, False, True]


# ---------------------------------------------------------------- the wrapper
def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()


DATA_G = torch.Generator().manual_seed(3)
X = torch.randn(64, 6, generator=DATA_G, dtype=torch.float64)
Y = torch.randn(64, 3, generator=DATA_G, dtype=torch.float64)


def batch(t: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    i = (t * size) % 64
    return X[i : i + size], Y[i : i + size]


def loss_of(model, xb, yb):
    return 0.5 * (model(xb) - yb).square().sum(1).mean()


def train(model, opt, steps, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        loss_of(model, *batch(t)).backward()
        opt.step()


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("scales", [(0.5, 2.0), (0.0, 1.0), (1.0, 0.0), (0.25, 1.5)])
def test_each_step_is_the_scaled_update_computed_by_hand(scales):
    """SGD's update is −η g: recompute α·P_kΔ + γ·(Δ − P_kΔ) per block from the bases the
    source held at the step; 1-D parameters take Δ unchanged."""
    model, lr = mlp(), 0.05
    src = so.UpdateHistory(k=2, window=4, refresh_every=3)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr), src, mode=scales
    )
    train(model, opt, 4)  # the window fills
    a, b = scales
    for t in range(4, 12):
        theta = flat(model).clone()
        opt.zero_grad()
        loss_of(model, *batch(t)).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        opt.step()
        used = src.basis()
        assert used is not None and opt.last_stats.projected
        delta = -lr * g
        expected = delta.clone()
        for o, m, U in zip(used.offsets, used.sizes, used.bases):
            if U is not None:
                d = delta[o : o + m]
                dom = U @ (U.T @ d)
                expected[o : o + m] = a * dom + b * (d - dom)
        torch.testing.assert_close(flat(model) - theta, expected, rtol=1e-9, atol=1e-12)


def test_the_history_holds_the_base_updates_not_the_scaled_ones():
    model, lr = mlp(), 0.05
    src = so.UpdateHistory(k=1, window=3, refresh_every=1)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr), src, mode=(0.1, 3.0)
    )
    grads = []
    for t in range(5):
        opt.zero_grad()
        loss_of(model, *batch(t)).backward()
        grads.append(model[0].weight.grad.reshape(-1).clone())
        opt.step()
    history = src.state_dict()["stores"][0]
    expected = torch.stack([-lr * grads[t] for t in (3, 4, 2)])  # ring buffer: rows 0, 1, 2
    torch.testing.assert_close(history, expected)


def test_one_dimensional_parameters_pass_and_groups_set_k_and_mode():
    model = mlp()
    w0, b0, w2, b2 = model.parameters()
    base = torch.optim.SGD(
        [
            {"params": [w0, b0]},
            {"params": [w2], "subspace_k": 0},  # not projected
            {"params": [b2], "subspace_mode": "bulk"},  # 1-D: passes anyway
        ],
        lr=0.05,
    )
    src = so.UpdateHistory(k=2, window=4, refresh_every=2)
    opt = so.SubspaceProjectedOptimizer(base, src, mode=(0.5, 2.0))
    assert [b.k for b in src.blocks] == [2, 0, 0, 0]
    train(model, opt, 4)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss_of(model, *batch(4)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    params = list(model.parameters())
    for i in (1, 2, 3):  # unprojected blocks: exactly SGD's update
        torch.testing.assert_close(
            params[i].detach(), before[i] - 0.05 * grads[i], rtol=0, atol=1e-15
        )
    assert not torch.allclose(w0, before[0] - 0.05 * grads[0])


def test_a_group_mode_scales_its_parameters_and_is_checked_before_the_step():
    model = mlp()
    w0, b0, w2, b2 = model.parameters()
    base = torch.optim.SGD([{"params": [w0, b0]}, {"params": [w2, b2]}], lr=0.05)
    src = so.UpdateHistory(k=2, window=4, refresh_every=2)
    opt = so.SubspaceProjectedOptimizer(base, src, mode=(0.5, 2.0))
    train(model, opt, 5)
    base.param_groups[1]["subspace_mode"] = "none"  # like any hyperparameter, mid-run
    w2_before = w2.detach().clone()
    opt.zero_grad()
    loss_of(model, *batch(5)).backward()
    g2 = w2.grad.clone()
    opt.step()
    torch.testing.assert_close(w2.detach(), w2_before - 0.05 * g2, rtol=0, atol=1e-15)
    base.param_groups[1]["subspace_mode"] = (math.nan, 1.0)
    theta = flat(model).clone()
    opt.zero_grad()
    loss_of(model, *batch(6)).backward()
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['subspace_mode'\]"):
        opt.step()
    assert torch.equal(flat(model), theta)


def test_a_bulk_group_projects_under_a_wrapper_in_mode_none():
    """A group's ``"subspace_mode"`` overrides ``mode="none"`` too: its matrices move only in
    the bulk of their bases, the other group's by plain SGD."""
    model = mlp()
    w0, b0, w2, b2 = model.parameters()
    base = torch.optim.SGD(
        [{"params": [w0, b0], "subspace_mode": "bulk"}, {"params": [w2, b2]}], lr=0.05
    )
    src = so.UpdateHistory(k=2, window=4, refresh_every=2)
    opt = so.SubspaceProjectedOptimizer(base, src, mode="none")
    train(model, opt, 5)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss_of(model, *batch(5)).backward()
    g2 = w2.grad.clone()
    opt.step()
    assert opt.last_stats.projected
    U = src.bases[0]
    moved = (w0.detach() - before[0]).reshape(-1)
    assert float((U.T @ moved).norm()) <= 1e-6 * float(moved.norm())
    torch.testing.assert_close(w2.detach(), before[2] - 0.05 * g2, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "make",
    [
        lambda: so.UpdateHistory(k=2, window=4, refresh_every=2, dtype=torch.bfloat16),
        lambda: so.GradientSketch(k=2, sketch=4, refresh_every=3, decay=0.9),
    ],
)
def test_resume_is_bit_exact_under_weights_only(make):
    def build(seed):
        model = mlp(seed)
        opt = so.SubspaceProjectedOptimizer(
            torch.optim.AdamW(model.parameters(), lr=1e-2), make(), mode=(0.5, 2.0)
        )
        return model, opt

    model, opt = build(0)
    train(model, opt, 7)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, 9, start=7)
    other, other_opt = build(1)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    other.load_state_dict(saved["model"])
    other_opt.load_state_dict(saved["opt"])
    train(other, other_opt, 9, start=7)
    assert torch.equal(flat(model), flat(other))


def test_a_checkpoint_of_another_source_is_refused_before_any_change():
    model = mlp()
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), so.UpdateHistory(k=2, window=4), mode="bulk"
    )
    train(model, opt, 5)
    sd = opt.state_dict()
    other = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(mlp().parameters(), lr=0.05), so.UpdateHistory(k=2, window=6), mode="bulk"
    )
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="window"):
        other.load_state_dict(sd)
    assert (
        other.state_dict()["subspace"]["source"]["observed"]
        == before["subspace"]["source"]["observed"]
    )
    sketch = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(mlp().parameters(), lr=0.05), so.GradientSketch(k=2, sketch=4), mode="bulk"
    )
    with pytest.raises(ValueError, match="UpdateHistory"):
        sketch.load_state_dict(sd)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda ps: (ps, so.UpdateHistory(k=4, window=4)), "window of more than k"),
        (lambda ps: (ps, so.UpdateHistory(k=2, window=100)), "too few for k=2"),
        (lambda ps: (ps, so.UpdateHistory(k=80, window=100)), "too few"),
        (lambda ps: (ps, so.GradientSketch(k=3, sketch=3)), "smaller than sketch"),
        (lambda ps: (ps, so.GradientSketch(k=2, decay=0.0)), "decay"),
        (lambda ps: (ps, so.UpdateHistory(k=0)), ">= 1"),
    ],
)
def test_bad_settings_are_refused_with_what_to_do(build, match):
    model = mlp()
    before = flat(model).clone()
    with pytest.raises((ValueError, TypeError), match=match):
        params, src = build(list(model.parameters()))
        so.SubspaceProjectedOptimizer(torch.optim.SGD(params, lr=0.1), src, mode=(0.5, 2.0))
    assert torch.equal(flat(model), before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": (math.nan, 2.0)}, "finite"),
        ({"mode": (0.5, math.inf)}, "finite"),
        ({"k": 3}, "k= applies to a curvature"),
        ({"eigensolver": "lanczos"}, "eigensolver= applies"),
        ({"refresh": "switch"}, "refresh= applies"),
        ({"project": "gradient"}, "project='gradient'"),
    ],
)
def test_bad_wrapper_arguments_with_a_source(kwargs, match):
    src = so.UpdateHistory(k=2, window=4)
    with pytest.raises(ValueError, match=match):
        so.SubspaceProjectedOptimizer(torch.optim.SGD(mlp().parameters(), lr=0.1), src, **kwargs)
    assert src.blocks == []  # nothing bound: the source can still be used
    so.SubspaceProjectedOptimizer(torch.optim.SGD(mlp().parameters(), lr=0.1), src)


def test_a_source_serves_one_optimizer():
    src = so.UpdateHistory(k=2, window=4)
    so.SubspaceProjectedOptimizer(torch.optim.SGD(mlp().parameters(), lr=0.1), src)
    other = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="serves one optimizer"):
        so.SubspaceProjectedOptimizer(torch.optim.SGD(other.parameters(), lr=0.1), src)


def test_a_poisoned_history_skips_the_refresh_and_never_reaches_the_parameters():
    model = mlp()
    src = so.UpdateHistory(k=2, window=4, refresh_every=1)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), src, mode=(0.5, 2.0)
    )
    train(model, opt, 5)
    good = [None if U is None else U.clone() for U in src.bases]
    n = flat(model).numel()
    src.observe(
        torch.full((n,), math.nan, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    )
    train(model, opt, 1, start=5)
    assert src.counters["skipped_refreshes"] == 2  # both weight matrices
    assert all(torch.equal(a, b) for a, b in zip(good, src.bases) if a is not None)
    assert bool(torch.isfinite(flat(model)).all())
    train(model, opt, 6, start=6)  # the emptied history refills; training goes on
    assert bool(torch.isfinite(flat(model)).all()) and src.counters["refreshes"] >= 6


def test_a_nan_gradient_is_skipped_and_not_observed():
    model = mlp()
    src = so.GradientSketch(k=2, sketch=4, refresh_every=1)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), src, mode=(0.5, 2.0)
    )
    train(model, opt, 5)
    seen, theta = src.observed, flat(model).clone()
    opt.zero_grad()
    (loss_of(model, *batch(5)) * math.nan).backward()
    opt.step()
    assert src.observed == seen and torch.equal(flat(model), theta)
    assert opt.last_stats.skipped


def test_memory_is_the_window_times_the_projected_entries():
    model = mlp()
    src = so.UpdateHistory(k=2, window=5, dtype=torch.bfloat16)
    so.SubspaceProjectedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), src)
    projected = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    assert src.memory_bytes() == 5 * projected * 2  # bf16, no basis yet


def test_add_param_group_binds_the_new_blocks():
    model = mlp()
    extra = nn.Linear(4, 4).double()
    src = so.UpdateHistory(k=2, window=4, refresh_every=2)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), src, mode=(0.5, 2.0)
    )
    train(model, opt, 3)
    opt.add_param_group({"params": extra.parameters(), "subspace_k": 1})
    assert [b.k for b in src.blocks] == [2, 0, 2, 0, 1, 0]
    for t in range(3, 9):
        opt.zero_grad()
        (loss_of(model, *batch(t)) + extra(X[:8, :4]).square().mean()).backward()
        opt.step()
    assert src.bases[4] is not None and src.bases[4].shape == (16, 1)
    rogue = nn.Linear(2, 2).double()
    opt.base.add_param_group({"params": rogue.parameters()})
    with pytest.raises(RuntimeError, match="behind the"):
        opt.step()


def test_a_refused_group_changes_nothing_and_a_wider_dtype_is_recorded_exactly():
    """``add_param_group`` with a source is all or nothing: a group the base refuses (a
    parameter it already has) or the source refuses (a block smaller than the window)
    leaves the optimizer as it was, and a float64 group added to a float32 model is
    recorded at float64 (the flat vectors widen, as they would at construction)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    src = so.UpdateHistory(k=1, window=4, refresh_every=1)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model[0].parameters(), lr=0.1), src, mode=(0.5, 2.0)
    )
    x = torch.randn(16, 8)

    def step(extra=None):
        opt.zero_grad()
        loss = model(x).square().mean()
        if extra is not None:
            loss = loss + extra(x.double()).square().mean()
        loss.backward()
        opt.step()

    step()
    tiny = nn.Linear(1, 2, bias=False)  # 2 entries: fewer than the window of 4
    for refused in ([model[0].weight, model[1].weight], [tiny.weight]):
        with pytest.raises(ValueError):
            opt.add_param_group({"params": refused})
        assert len(src.blocks) == 2 and len(opt.param_groups) == 1
        step()
    extra = nn.Linear(8, 8, bias=False).double()
    opt.add_param_group({"params": extra.parameters(), "lr": 1e-6})
    before = extra.weight.detach().clone()
    step(extra)
    moved = (extra.weight.detach() - before).reshape(-1)
    rows = src.state_dict()["stores"][2]  # the new block's ring buffer: one row written
    (written,) = [r for r in rows if bool(r.any())]
    assert written.dtype == torch.float64 and torch.equal(written, moved)


def test_the_sketch_recovers_a_planted_gradient_covariance():
    """Gradients drawn from a covariance with a clear top-2 subspace: the sketch's basis
    is within a small angle of it."""
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(10, 4, bias=False).double()
    n = 40
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    scales = torch.ones(n, dtype=torch.float64) * 0.1
    scales[:2] = torch.tensor([5.0, 3.0])
    src = so.GradientSketch(k=2, sketch=6, refresh_every=10)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(layer.parameters(), lr=1e-6), src, mode="none"
    )
    for _ in range(200):
        layer.weight.grad = (Q @ (scales * torch.randn(n, generator=g, dtype=torch.float64))).view(
            4, 10
        )
        opt.step()
    assert projector_distance(src.bases[0], Q[:, :2]) < 0.2


def test_update_history_recovers_an_oscillation_under_gd():
    """GD on a quadratic with one sharp direction at lr just under 2/λ: the updates
    oscillate along it, and the history's top direction is that eigenvector."""
    g = torch.Generator().manual_seed(1)
    n = 30
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.linspace(1.0, 0.01, n, dtype=torch.float64)
    lam[0] = 19.0  # lr·λ_1 = 1.9: oscillates, decays slowly
    H = Q @ torch.diag(lam) @ Q.T
    w = nn.Parameter(torch.randn(5, 6, generator=g, dtype=torch.float64))
    src = so.UpdateHistory(k=1, window=8, refresh_every=8)
    opt = so.SubspaceProjectedOptimizer(torch.optim.SGD([w], lr=0.1), src, mode="none")
    for _ in range(40):
        opt.zero_grad()
        v = w.reshape(-1)
        (0.5 * v @ H @ v).backward()
        opt.step()
    assert abs(float(src.bases[0][:, 0] @ Q[:, 0])) > 0.99


# ---------------------------------------------- every optimizer family, accumulation
SOURCES = {
    "history": lambda: so.UpdateHistory(k=2, window=3, refresh_every=2),
    "sketch": lambda: so.GradientSketch(k=2, sketch=3, refresh_every=2),
}


def family_run(info, make_source, micro: int, steps: int = 6):
    """``steps`` steps of a family's base wrapped with a source on the matrix test's model;
    each batch of 8 as one backward (``micro=1``) or four accumulated ones (``micro=4``)."""
    from test_optimizer_matrix import BATCHES, make_model, mse

    model, X, Y = make_model(0)
    src = make_source()
    opt = so.SubspaceProjectedOptimizer(info.make(model.parameters()), src, mode=(0.5, 2.0))
    for t in range(steps):
        rows = torch.arange(16)[BATCHES[t % len(BATCHES)]]

        def closure(rows=rows):
            opt.zero_grad()
            total = torch.zeros((), dtype=torch.float64)
            for part in rows.chunk(micro):
                loss = mse(model(X[part]), Y[part]) * len(part) / len(rows)
                loss.backward()
                total += loss.detach()
            return total

        closure()
        opt.step(closure if info.closure else None)
    return flat(model), opt, src


def _families():
    from test_optimizer_matrix import rows

    return rows()


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("info", _families())
def test_every_family_trains_with_a_source_and_accumulates_like_the_whole_batch(info, source):
    whole, opt, src = family_run(info, SOURCES[source], micro=1)
    accumulated, _, src_acc = family_run(info, SOURCES[source], micro=4)
    assert opt.last_stats.projected and src.counters["refreshes"] >= 2
    assert src.observed == src_acc.observed == 6  # one observation per step(), not per backward
    assert bool(torch.isfinite(whole).all())
    torch.testing.assert_close(accumulated, whole, rtol=1e-11, atol=1e-12)


def test_block_statistics_equal_the_dense_statistics_of_the_realized_update():
    """The per-block step's statistics, from coordinates only, against step_statistics on the
    dense block-diagonal basis and the realized update built as a vector."""
    from subspace_optim.optim._blockwise import BlockCoords, block_statistics
    from subspace_optim.optim._update import step_statistics

    g = torch.Generator().manual_seed(5)
    U1, _ = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))
    U3, _ = torch.linalg.qr(torch.randn(5, 1, generator=g, dtype=torch.float64))
    basis = BlockBasis([0, 6, 9], [6, 3, 5], [U1, None, U3])
    dense = torch.zeros(14, 3, dtype=torch.float64)
    dense[0:6, 0:2], dense[9:14, 2:3] = U1, U3
    delta, grad = (
        torch.randn(14, generator=g, dtype=torch.float64),
        torch.randn(14, generator=g, dtype=torch.float64),
    )
    scales = [(0.5, 2.0), (1.0, 1.0), (0.0, 1.5)]
    realized = delta.clone()
    coords = []
    for (o, m, U), (a, b) in zip([(0, 6, U1), (6, 3, None), (9, 5, U3)], scales):
        if U is None:
            coords.append(None)
            continue
        c = U.T @ delta[o : o + m]
        coords.append(c)
        realized[o : o + m] = a * (U @ c) + b * (delta[o : o + m] - U @ c)
    got = block_statistics(basis, BlockCoords(coords, scales), delta, grad)
    want = step_statistics(dense, delta, realized, grad, None)
    for key, value in want.items():
        if key != "loss":
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-14), key


# ---------------------------------------------------------------- mutation kills (issue 26)
def test_block_basis_works_in_the_bases_dtype_and_hands_back_the_vectors():
    """Bases kept in float64 for a float32 vector: each piece is cast to the basis's dtype,
    the result to the vector's; a basis with no block projected has no coordinates."""
    g = torch.Generator().manual_seed(1)
    U1, _ = torch.linalg.qr(torch.randn(4, 2, generator=g, dtype=torch.float64))
    basis = BlockBasis([0, 4], [4, 3], [U1, None])
    v = torch.randn(7, generator=g)
    dom, coords = basis.dominant(v), basis.coords(v)
    assert dom.dtype == coords.dtype == torch.float32
    want = torch.zeros(7, dtype=torch.float64)
    want[:4] = U1 @ (U1.T @ v[:4].double())
    torch.testing.assert_close(dom, want.float())
    torch.testing.assert_close(coords, (U1.T @ v[:4].double()).float())
    empty = BlockBasis([0], [7], [None])
    assert empty.coords(v).shape == (0,) and empty.coords(v).dtype == torch.float32
    assert empty.dim == 0 and torch.equal(empty.dominant(v), torch.zeros(7))


def _fd_reference(B: torch.Tensor, decay: float) -> torch.Tensor:
    """BᵀB after one Frequent Directions shrink, in float64 from the SVD of the sketch."""
    B = B.double()
    _, S, Vh = torch.linalg.svd(B, full_matrices=False)
    lam = S**2
    delta = lam[B.shape[0] // 2]
    return Vh.T @ torch.diag((lam - delta).clamp_min(0) * decay) @ Vh


@pytest.mark.parametrize("ell", [2, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_frequent_directions_shrink_matches_the_svd_reference(ell, dtype):
    """Second moment of the shrunk sketch against the SVD formula (rotation-invariant), at
    a small scale (eigenvalues below 1), for every dtype path and a decay."""
    g = torch.Generator().manual_seed(ell)
    B = (0.05 * torch.randn(ell, 7, generator=g, dtype=torch.float64)).to(dtype)
    out = frequent_directions_shrink(B, decay=0.5)
    assert out.dtype == dtype and out.shape == B.shape
    assert torch.count_nonzero(out[ell - ell // 2 :]) == 0
    got = out.double().T @ out.double()
    tol = {torch.float64: 1e-14, torch.float32: 1e-8, torch.bfloat16: 3e-5}[dtype]
    torch.testing.assert_close(got, _fd_reference(B, 0.5), rtol=0, atol=tol)


def test_a_non_finite_sketch_comes_back_as_zeros_of_its_dtype():
    B = torch.ones(4, 3, dtype=torch.float32)
    B[1, 2] = float("nan")
    out = frequent_directions_shrink(B)
    assert out.dtype == torch.float32 and torch.equal(out, torch.zeros(4, 3))


def test_scale_blocks_per_block_in_place_with_its_coordinates_and_scales():
    """Each block with a basis becomes a·P_bΔ + b·(Δ − P_bΔ) in place (float32 parameters,
    float64 bases); a block with (1, 1) keeps Δ but still reports its coordinates; a block
    without a basis keeps Δ, reports (1, 1) and no coordinates. delta_of reads Δ back."""
    from subspace_optim.optim._blockwise import delta_of, scale_blocks

    g = torch.Generator().manual_seed(7)
    U1, _ = torch.linalg.qr(torch.randn(4, 2, generator=g, dtype=torch.float64))
    U2, _ = torch.linalg.qr(torch.randn(3, 1, generator=g, dtype=torch.float64))
    U4, _ = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64))
    basis = BlockBasis([0, 4, 7, 9], [4, 3, 2, 5], [U1, U2, None, U4])
    theta_old = torch.randn(14, generator=g)
    delta = torch.randn(14, generator=g)
    params = [
        (theta_old[o : o + m] + delta[o : o + m]).clone()
        for o, m in [(0, 4), (4, 3), (7, 2), (9, 5)]
    ]
    torch.testing.assert_close(
        delta_of(params, theta_old), torch.cat(params) - theta_old, rtol=0, atol=0
    )
    scales = [(2.0, 1.0), (1.0, 1.0), (0.5, 2.0), (1.0, 2.0)]
    c = scale_blocks(params, basis, delta, scales)
    assert c.scales == [(2.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.0, 2.0)]
    assert c.update[2] is None
    for i, (o, m, U) in enumerate([(0, 4, U1), (4, 3, U2), (9, 5, U4)]):
        j = [0, 1, 3][i]
        d = delta[o : o + m].double()
        torch.testing.assert_close(c.update[j], U.T @ d)
        a, b = scales[j]
        want = theta_old[o : o + m].double() + a * (U @ (U.T @ d)) + b * (d - U @ (U.T @ d))
        torch.testing.assert_close(params[j].double(), want, rtol=1e-6, atol=1e-6)
        assert params[j].dtype == torch.float32
    torch.testing.assert_close(params[2], theta_old[7:9] + delta[7:9], rtol=0, atol=0)


def test_block_statistics_at_small_and_zero_scales():
    """Norms below 1 still give ratios; a zero gradient or update gives NaN, not None."""
    from subspace_optim.optim._blockwise import BlockCoords, block_statistics
    from subspace_optim.optim._update import step_statistics

    U = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    basis = BlockBasis([0], [3], [U])
    g = torch.tensor([0.02, 0.01, 0.03], dtype=torch.float64)
    delta = -0.1 * g
    got = block_statistics(basis, BlockCoords([U.T @ delta], [(1.0, 1.0)]), delta, g)
    want = step_statistics(U, delta, delta, g, None)
    for key in ("grad_alignment", "update_alignment", "eta_dom", "eta_bulk", "sq_bulk"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    zero = torch.zeros(3, dtype=torch.float64)
    z = block_statistics(basis, BlockCoords([U.T @ zero], [(1.0, 1.0)]), zero, zero)
    assert math.isnan(z["grad_alignment"]) and math.isnan(z["update_alignment"])


def test_gram_directions_of_no_rows_and_in_the_rows_dtype():
    assert gram_directions(torch.zeros(0, 4), 1, center=False) is None
    rows = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    d = gram_directions(rows, 2, center=False)
    assert d.basis.dtype == d.singular_values.dtype == torch.float32


def test_delta_of_writes_each_slice_without_resizing():
    import warnings

    from subspace_optim.optim._blockwise import delta_of

    params = [torch.ones(2), torch.full((3,), 2.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = delta_of(params, torch.zeros(5))
    assert out.tolist() == [1.0, 1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_sketch_is_shrunk_in_float32(dtype):
    """The shrink of a half-precision sketch is the float32 shrink of the same numbers,
    rounded once at the end (no Gram matrix or eigenvectors in half precision)."""
    g = torch.Generator().manual_seed(2)
    B = (torch.randn(6, 40, generator=g) * torch.linspace(3, 0.1, 40)).to(dtype)
    got = frequent_directions_shrink(B, decay=0.9)
    want = frequent_directions_shrink(B.float(), decay=0.9).to(dtype)
    assert got.dtype == dtype and torch.equal(got, want)
