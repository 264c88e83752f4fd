"""The pure functions of one wrapper step (``optim._update``) against hand computations,
and ``resolve_mode``'s validation of mode names and ``(a, b)`` scale pairs."""

from __future__ import annotations

import math

import pytest
import torch

from subspace_optim.optim._config import resolve_mode
from subspace_optim.optim._update import (
    MODE_SCALES,
    dominant_part,
    effective_rates,
    moved_eigenvalue,
    plan_update,
    project_gradient,
    step_statistics,
    zero_frozen,
)


def _basis(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return Q


def _vec(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_dominant_part_is_the_orthogonal_projection():
    U, d = _basis(7, 2), _vec(7, 1)
    dom = dominant_part(U, d)
    torch.testing.assert_close(dom, U @ U.T @ d)
    torch.testing.assert_close(U.T @ (d - dom), torch.zeros(2, dtype=torch.float64))  # rest ⟂ U
    torch.testing.assert_close(dominant_part(U, dom), dom)  # idempotent


def test_zero_frozen_zeroes_exactly_the_frozen_slices():
    v = torch.arange(1.0, 7.0)
    out = zero_frozen(v, [2, 1, 3], [False, True, False])
    assert out is v and out.tolist() == [1.0, 2.0, 0.0, 4.0, 5.0, 6.0]
    assert zero_frozen(torch.ones(3), [3], [False]).tolist() == [1.0, 1.0, 1.0]


def test_named_modes_write_exactly_what_the_wrapper_always_wrote():
    """Dom copies θ_old + P_kΔ; Bulk adds −P_kΔ to where the base left θ (bit for bit)."""
    U, theta_old, delta = _basis(6, 2), _vec(6, 2), _vec(6, 3)
    dom = dominant_part(U, delta)
    plan = plan_update(theta_old, delta, dom, MODE_SCALES["dominant"])
    assert not plan.add and torch.equal(plan.vector, theta_old + dom)
    assert torch.equal(plan.delta, dom)
    plan = plan_update(theta_old, delta, dom, MODE_SCALES["bulk"])
    assert plan.add and torch.equal(plan.vector, -dom) and torch.equal(plan.delta, delta - dom)


@pytest.mark.parametrize("scales", [(0.5, 1.5), (2.0, 0.0), (1.0, 1.0), (-1.0, 1.0), (0.0, 0.3)])
def test_scaled_update_is_a_dom_plus_b_bulk(scales):
    a, b = scales
    U, theta_old, delta = _basis(6, 2), _vec(6, 4), _vec(6, 5)
    dom = dominant_part(U, delta)
    plan = plan_update(theta_old, delta, dom, scales)
    torch.testing.assert_close(plan.delta, a * U @ U.T @ delta + b * (delta - U @ U.T @ delta))
    theta_after = theta_old + delta  # where the base step left the parameters
    new = theta_after + plan.vector if plan.add else plan.vector
    torch.testing.assert_close(new - theta_old, plan.delta, rtol=0, atol=1e-14)


def test_project_gradient_matches_the_update_projection():
    U, g = _basis(5, 2), _vec(5, 6)
    assert torch.equal(project_gradient(g, U, (1.0, 0.0)), U @ (U.T @ g))
    assert torch.equal(project_gradient(g, U, (0.0, 1.0)), g - U @ (U.T @ g))
    torch.testing.assert_close(
        project_gradient(g, U, (0.5, 2.0)), 0.5 * U @ U.T @ g + 2.0 * (g - U @ U.T @ g)
    )


def test_step_statistics_by_hand():
    """U = e1; g = (2, 1, 0); an update with η_dom = 0.3 and η_bulk = 0.1."""
    U = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    g = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    delta = torch.tensor([-0.6, -0.1, 0.0], dtype=torch.float64)
    base = torch.tensor([-0.2, -0.1, 0.0], dtype=torch.float64)
    s = step_statistics(U, base, delta, g, torch.tensor(0.25, dtype=torch.float64))
    assert s["loss"] == 0.25
    assert math.isclose(s["eta_dom"], 0.3) and math.isclose(s["eta_bulk"], 0.1)
    assert math.isclose(s["grad_alignment"], 2 / math.sqrt(5))
    assert math.isclose(s["update_alignment"], 0.2 / math.sqrt(0.05))
    assert math.isclose(s["sq_dom"], 4.0) and math.isclose(s["sq_bulk"], 1.0)
    assert math.isclose(s["dot_dom"], 1.2) and math.isclose(s["dot_bulk"], 0.1)
    zero = torch.zeros(3, dtype=torch.float64)
    s = step_statistics(U, zero, zero, zero, None)
    assert all(math.isnan(s[key]) for key in ("loss", "grad_alignment", "eta_dom", "eta_bulk"))


def test_moved_eigenvalue_checks_damped_dominant_and_amplified_dominant_parts():
    eig = torch.tensor([9.0, 5.0, 1.0])
    assert moved_eigenvalue(eig, 1, 4.0, (0.0, 1.0)) == (2, 5.0, 4.0)
    assert moved_eigenvalue(eig, 1, 4.0, (0.5, 2.0)) == (2, 5.0, 2.0)  # b·η: threshold / b
    assert moved_eigenvalue(eig, 1, 4.0, (1.0, 1.0)) is None  # "none"
    assert moved_eigenvalue(eig, 1, 4.0, (1.0, 0.0)) is None  # Dom
    assert moved_eigenvalue(eig, 3, 4.0, (0.0, 1.0)) is None  # λ_4 not tracked
    # an amplified dominant part: λ_1 against threshold / a
    assert moved_eigenvalue(eig, 1, 40.0, (10.0, 1.0)) == (1, 9.0, 4.0)
    assert moved_eigenvalue(eig, 3, 40.0, (10.0, 0.0)) == (1, 9.0, 4.0)  # Dom scaled by 10
    # both parts checked: the one nearer (or further past) its limit wins
    assert moved_eigenvalue(eig, 1, 40.0, (2.0, 8.0)) == (2, 5.0, 5.0)  # 5/5 > 9/20
    assert moved_eigenvalue(eig, 1, 40.0, (4.0, 5.0)) == (1, 9.0, 10.0)  # 9/10 > 5/8


def test_resolve_mode_names_and_pairs():
    assert resolve_mode("bulk") == ("bulk", (0.0, 1.0))
    assert resolve_mode("dominant") == ("dominant", (1.0, 0.0))
    assert resolve_mode("none") == ("none", (1.0, 1.0))
    assert resolve_mode((0, 1)) == ("bulk", (0.0, 1.0))  # a named pair is that mode
    assert resolve_mode([1.0, 1]) == ("none", (1.0, 1.0))
    assert resolve_mode((0.5, 1.5)) == ((0.5, 1.5), (0.5, 1.5))


@pytest.mark.parametrize(
    ("mode", "exc", "match"),
    [
        ((0, 0), ValueError, r"mode=\(0, 0\)"),
        ((0.0, -0.0), ValueError, r"mode=\(0, 0\)"),
        ((math.nan, 1.0), ValueError, "finite"),
        ((1.0, math.inf), ValueError, "finite"),
        ((1.0,), TypeError, "pair"),
        ((1.0, 2.0, 3.0), TypeError, "pair"),
        (("a", 1.0), TypeError, "pair"),
        ((True, 1.0), TypeError, "pair"),
        ("sideways", ValueError, "unknown mode"),
        (3, ValueError, "unknown mode"),
    ],
)
def test_resolve_mode_refuses_bad_scales(mode, exc, match):
    with pytest.raises(exc, match=match):
        resolve_mode(mode)


# ---------------------------------------------------------------- mutation kills (issue 26)
# Each test below kills mutants that mutmut's run (python -m benchmarks.mutation) found alive.


def test_zero_frozen_walks_the_offsets_past_every_slice():
    """The offset is a running sum: a frozen slice after two others sits at 2 + 1."""
    v = torch.arange(1.0, 7.0)
    assert zero_frozen(v, [2, 1, 3], [False, False, True]).tolist() == [
        1.0,
        2.0,
        3.0,
        0.0,
        0.0,
        0.0,
    ]


def test_the_dominant_plan_copies_and_says_so_with_a_bool():
    U, theta_old, delta = _basis(6, 2), _vec(6, 2), _vec(6, 3)
    dom = dominant_part(U, delta)
    assert plan_update(theta_old, delta, dom, (1.0, 0.0)).add is False
    assert plan_update(theta_old, delta, dom, (0.0, 1.0)).add is True
    assert plan_update(theta_old, delta, dom, (0.5, 2.0)).add is True


def test_moved_eigenvalue_amplified_dominant_part_edges():
    eig = torch.tensor([9.0, 5.0, 1.0])
    # any a > 1 amplifies λ_1, not only large ones
    assert moved_eigenvalue(eig, 3, 40.0, (1.5, 0.0)) == (1, 9.0, 40.0 / 1.5)
    # one tracked eigenvalue is enough for the dominant check
    assert moved_eigenvalue(torch.tensor([9.0]), 1, 40.0, (2.0, 0.0)) == (1, 9.0, 20.0)
    # none tracked: nothing to check, no index error
    assert moved_eigenvalue(torch.tensor([]), 0, 40.0, (2.0, 0.0)) is None


@pytest.mark.parametrize(
    "scales", [[(0.5, 2.0), (1.0, 1.0), (0.0, 1.0)], [(1.0, 1.0), (2.0, 0.5), (1.0, 0.0)]]
)
def test_plan_blockwise_scales_each_slice_by_its_own_pair(scales):
    """Slice i of the plan is a_i·P_kΔ + b_i·(Δ − P_kΔ) on exactly its own entries."""
    from subspace_optim.optim._update import plan_blockwise

    sizes = [2, 3, 4]
    U, delta = _basis(9, 2), _vec(9, 4)
    dom = dominant_part(U, delta)
    plan = plan_blockwise(delta, dom, sizes, scales)
    expected, offset = [], 0
    for m, (a, b) in zip(sizes, scales):
        sl = slice(offset, offset + m)
        expected.append(a * dom[sl] + b * (delta[sl] - dom[sl]))
        offset += m
    expected = torch.cat(expected)
    torch.testing.assert_close(plan.delta, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(plan.vector, expected - delta, rtol=1e-12, atol=1e-14)
    assert plan.add is True
    assert not torch.equal(plan.delta, delta)  # the base update is left untouched ...
    torch.testing.assert_close(delta, _vec(9, 4), rtol=0, atol=0)  # ... and not written in place


@pytest.mark.parametrize(
    "scales", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (2.0, 0.0), (0.0, 2.0), (0.5, 1.5)]
)
def test_project_gradient_is_a_dom_plus_b_bulk_for_every_pair(scales):
    """The Dom and Bulk shortcuts are taken for exactly their own pair."""
    U, g = _basis(7, 2), _vec(7, 5)
    a, b = scales
    dom = U @ (U.T @ g)
    torch.testing.assert_close(
        project_gradient(g, U, scales), a * dom + b * (g - dom), rtol=1e-12, atol=1e-14
    )


def test_step_statistics_of_a_small_gradient_are_ratios_not_nan():
    """A gradient of norm below 1 still has an alignment (only a zero one has none)."""
    U = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    g = torch.tensor([0.02, 0.01], dtype=torch.float64)
    s = step_statistics(U, -0.1 * g, -0.1 * g, g, None)
    assert s["grad_alignment"] == pytest.approx(0.02 / math.hypot(0.02, 0.01), rel=1e-12)
    assert math.isnan(step_statistics(U, -0.1 * g, -0.1 * g, 0 * g, None)["grad_alignment"])


def test_effective_rates_of_a_small_gradient():
    """Squared norms below 1 still give rates (only zero ones give NaN)."""
    r = effective_rates(0.02, 0.03, 0.5, 0.25)
    assert (r["eta_dom"], r["eta_bulk"]) == (0.02 / 0.5, 0.03 / 0.25)


@pytest.mark.parametrize("scales", [[(2.0, 1.0), (1.0, 2.0), (1.0, 1.0)]])
def test_plan_blockwise_pairs_next_to_the_identity(scales):
    from subspace_optim.optim._update import plan_blockwise

    U, delta = _basis(9, 2), _vec(9, 4)
    dom = dominant_part(U, delta)
    plan = plan_blockwise(delta, dom, [2, 3, 4], scales)
    want = torch.cat(
        [
            a * dom[s] + b * (delta[s] - dom[s])
            for s, (a, b) in zip([slice(0, 2), slice(2, 5), slice(5, 9)], scales)
        ]
    )
    torch.testing.assert_close(plan.delta, want, rtol=1e-12, atol=1e-14)
