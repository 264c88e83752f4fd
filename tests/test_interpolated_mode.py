"""``mode=(a, b)``: the update ``a·P_kΔ + b·(Δ − P_kΔ)``. The named modes are these pairs bit
for bit, a general pair does what the formula says (for the update and for the gradient),
the scales are checkpointed and resumed exactly, and bad scales are refused before anything
is built or changed."""

from __future__ import annotations

import dataclasses
import io
import math
import warnings

import pytest
import torch
from torch import Tensor, nn

import subspace_optim as so

NAMED = [("bulk", (0, 1)), ("dominant", (1.0, 0.0)), ("none", [1, 1])]


def mse(out, y):
    return ((out - y) ** 2).mean()


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(30, 3, generator=g, dtype=torch.float64)
    return model, X, Y


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def build(mode, *, momentum=0.9, project="update", seed=0):
    model, X, Y = problem(seed)
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    op = so.HessianOperator(model, mse, (X, Y))
    opt = so.SubspaceProjectedOptimizer(
        base, op, k=2, mode=mode, project=project, eigensolver="eigh", num_extra=1
    )
    return model, X, Y, opt


def train(model, X, Y, opt, steps, start=0):
    for t in range(start, start + steps):
        idx = torch.arange(10) + (3 * t) % 20
        opt.zero_grad()
        mse(model(X[idx]), Y[idx]).backward()
        opt.step()


def step_on_first_batch(model, X, Y, opt):
    """One step on the first 10 examples: ``(the parameters' change, the gradient)``."""
    before = flat(model)
    opt.zero_grad()
    mse(model(X[:10]), Y[:10]).backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    opt.step()
    return flat(model) - before, g


@pytest.mark.parametrize(("name", "pair"), NAMED)
@pytest.mark.parametrize("project", ["update", "gradient"])
def test_named_modes_are_their_pairs_bit_for_bit(name, pair, project):
    m1, X, Y, by_name = build(name, project=project)
    m2, _, _, by_pair = build(pair, project=project)
    assert by_pair.mode == name and by_pair.scales == by_name.scales
    train(m1, X, Y, by_name, 5)
    train(m2, X, Y, by_pair, 5)
    assert torch.equal(flat(m1), flat(m2))
    assert torch.equal(by_name.basis, by_pair.basis)
    first = dataclasses.asdict(by_name.last_stats)
    second = dataclasses.asdict(by_pair.last_stats)
    first.pop("refresh_seconds"), second.pop("refresh_seconds")
    assert str(first) == str(second)  # nan-safe: the same values, printed alike


@pytest.mark.parametrize("scales", [(0.5, 1.5), (2.0, 0.0), (-0.5, 1.0)])
def test_a_pair_scales_the_dominant_and_bulk_parts_of_the_update(scales):
    a, b = scales
    model, X, Y, opt = build(scales, momentum=0.0)
    train(model, X, Y, opt, 2)
    moved, g = step_on_first_batch(model, X, Y, opt)
    U = opt.basis[:, :2]  # refreshed at this step, before the update
    delta = -0.05 * g  # plain SGD's update
    dom = U @ (U.T @ delta)
    expected = a * dom + b * (delta - dom)
    torch.testing.assert_close(moved, expected, rtol=1e-10, atol=1e-12)
    assert opt.last_stats.projected
    assert opt.mode == scales and opt.scales == scales
    assert repr(scales) in repr(opt)


def test_a_pair_scales_the_gradient_with_project_gradient():
    scales = (0.25, 2.0)
    model, X, Y, opt = build(scales, momentum=0.0, project="gradient")
    train(model, X, Y, opt, 1)
    moved, g = step_on_first_batch(model, X, Y, opt)
    U = opt.basis[:, :2]
    dom = U @ (U.T @ g)
    torch.testing.assert_close(
        moved, -0.05 * (0.25 * dom + 2.0 * (g - dom)), rtol=1e-10, atol=1e-12
    )


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_scales_are_checkpointed_and_resume_bit_for_bit():
    scales = (0.5, 1.5)
    model, X, Y, opt = build(scales)
    train(model, X, Y, opt, 6)
    m1, _, _, o1 = build(scales)
    train(m1, X, Y, o1, 3)
    ckpt = _roundtrip({"model": m1.state_dict(), "opt": o1.state_dict()})
    assert ckpt["opt"]["subspace"]["scales"] == [0.5, 1.5]
    assert tuple(ckpt["opt"]["subspace"]["mode"]) == (0.5, 1.5)
    m2, _, _, o2 = build(scales)
    with torch.no_grad():  # other weights: the checkpoint must bring them back
        for p in m2.parameters():
            p.mul_(0.5)
    m2.load_state_dict(ckpt["model"])
    o2.load_state_dict(ckpt["opt"])
    train(m2, X, Y, o2, 3, start=3)
    assert torch.equal(flat(m2), flat(model)) and torch.equal(o2.basis, opt.basis)


@pytest.mark.parametrize(
    ("mode", "exc", "match"),
    [
        ((0, 0), ValueError, r"mode=\(0, 0\) removes the whole update"),
        ((math.nan, 1), ValueError, "finite"),
        ((1, -math.inf), ValueError, "finite"),
        ((1, 2, 3), TypeError, "pair"),
        ([0.5], TypeError, "pair"),
        (("0.5", 1), TypeError, "pair"),
        ("interpolated", ValueError, "unknown mode"),
    ],
)
def test_bad_scales_are_refused_before_anything_changes(mode, exc, match):
    model, X, Y = problem()
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    op = so.HessianOperator(model, mse, (X, Y))
    theta = flat(model)
    with pytest.raises(exc, match=match):
        so.SubspaceProjectedOptimizer(base, op, k=2, mode=mode)
    # nothing was registered on the base: it still steps on its own, unguarded
    mse(model(X), Y).backward()
    base.step()
    assert not torch.equal(flat(model), theta) and op.num_matvecs == 0


def _eigenvalues() -> Tensor:
    model, X, Y = problem()
    return so.Eigh().solve(so.HessianOperator(model, mse, (X, Y)), 4).eigenvalues


def _unstable_refreshes(scales: tuple[float, float], lr: float, warns: str | None) -> int:
    """One SGD step wrapped with ``mode=scales`` (k = 2, exact basis); ``warns``: the
    pattern the step's EdgeOfStabilityWarning must match, ``None``: no warning."""
    m, X, Y = problem()
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(m.parameters(), lr=lr),
        so.HessianOperator(m, mse, (X, Y)),
        k=2,
        mode=scales,
        eigensolver="eigh",
        num_extra=1,
    )
    opt.zero_grad()
    mse(m(X), Y).backward()
    if warns is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", so.EdgeOfStabilityWarning)
            opt.step()
    else:
        with pytest.warns(so.EdgeOfStabilityWarning, match=warns):
            opt.step()
    return int(opt.counters["unstable_refreshes"])


def test_the_stability_check_uses_the_bulk_scale():
    """λ_{k+1} is compared with the threshold over ``b`` when ``a < b``: a pair that
    amplifies the bulk part warns where Bulk itself would not."""
    lr = 1.0 / float(_eigenvalues()[2])  # λ_3 = 1/η < 2/η: Bulk (k = 2) is stable
    assert _unstable_refreshes((0.0, 1.0), lr, None) == 0
    for scales in ((0.0, 4.0), (1.0, 4.0)):
        assert _unstable_refreshes(scales, lr, "λ_3 = .*Bulk dynamics") == 1, scales


def test_the_stability_check_flags_an_amplified_dominant_part():
    """A pair with ``a > 1`` steps along λ_1 with ``a·η``: past ``2/(aη)`` it warns, naming
    λ_1 and the dominant part; ``a = 1`` (the base optimizer's own dominant step) does not."""
    lr = 1.0 / float(_eigenvalues()[0])  # λ_1 = 1/η: the base step is stable everywhere
    for scales in ((1.0, 0.0), (1.0, 1.0)):
        assert _unstable_refreshes(scales, lr, None) == 0, scales
    assert _unstable_refreshes((4.0, 0.0), lr, "λ_1 = .*dominant part") == 1


def _grouped(mode, group_modes, *, project="update", momentum=0.0):
    """The problem with one parameter group per layer, each with its own mode (``None``:
    none set), and a wrapper in ``mode``."""
    model, X, Y = problem()
    layers = [model[0], model[2]]
    groups = []
    for layer, gm in zip(layers, group_modes):
        group = {"params": list(layer.parameters())}
        if gm is not None:
            group["subspace_mode"] = gm
        groups.append(group)
    base = torch.optim.SGD(groups, lr=0.05, momentum=momentum)
    op = so.HessianOperator(model, mse, (X, Y))
    opt = so.SubspaceProjectedOptimizer(
        base, op, k=2, mode=mode, project=project, eigensolver="eigh"
    )
    return model, X, Y, opt


@pytest.mark.parametrize("project", ["update", "gradient"])
def test_a_group_mode_overrides_the_wrapper_mode_in_both_directions(project):
    """A group's ``"subspace_mode"`` overrides the wrapper's ``mode`` for its parameters,
    with the update or the gradient projected: a ``"bulk"`` group under ``mode="none"``
    moves only in the bulk, a ``"none"`` group under ``mode="bulk"`` moves by plain SGD."""
    sizes = [4 * 6 + 6, 6 * 3 + 3]
    for mode, group_modes, bulk_layer in [("none", ["bulk", None], 0), ("bulk", [None, "none"], 0)]:
        model, X, Y, opt = _grouped(mode, group_modes, project=project)
        train(model, X, Y, opt, 1)
        moved, g = step_on_first_batch(model, X, Y, opt)
        assert opt.last_stats.projected
        U = opt.basis[:, :2]
        g_dom = U @ (U.T @ g)
        delta = moved.split(sizes)
        # plain SGD: the update's bulk part is the step along the gradient's bulk part
        expected_bulk = (-0.05 * (g - g_dom)).split(sizes)[bulk_layer]
        torch.testing.assert_close(delta[bulk_layer], expected_bulk, rtol=1e-10, atol=1e-12)
        plain = 1 - bulk_layer
        torch.testing.assert_close(
            delta[plain], (-0.05 * g).split(sizes)[plain], rtol=1e-10, atol=1e-12
        )


def test_the_closure_gradient_is_recorded_not_the_previous_steps():
    """``project="gradient"`` with a closure and plain SGD: the step's record reads the
    closure's gradient (what lay in ``.grad`` before is the previous step's, projected)."""
    model, X, Y = problem()
    base = torch.optim.SGD(model.parameters(), lr=0.05)
    op = so.HessianOperator(model, mse, (X, Y))
    opt = so.SubspaceProjectedOptimizer(
        base,
        op,
        k=2,
        mode="bulk",
        project="gradient",
        eigensolver="eigh",
        refresh=so.Every(3),
    )
    for t in range(4):
        idx = torch.arange(10) + 3 * t

        def closure(idx=idx):
            opt.zero_grad()
            loss = mse(model(X[idx]), Y[idx])
            loss.backward()
            return loss

        # the closure's gradient, computed aside: .grad keeps what the last step left
        grads = torch.autograd.grad(mse(model(X[idx]), Y[idx]), list(model.parameters()))
        g = torch.cat([x.flatten() for x in grads])
        opt.step(closure)
        if t % 3:  # no refresh: the record measures the minibatch gradient against U
            U = opt.basis[:, :2]
            expected = float((U.T @ g).norm() / g.norm())
            assert opt.last_stats.gradient_source == "minibatch"
            assert opt.last_stats.grad_alignment == pytest.approx(expected, rel=1e-9)
