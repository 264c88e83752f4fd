"""Invariants of the pure subspace math (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from subspace_optim import (
    alignment,
    orthonormalize,
    principal_angles,
    project,
    project_out,
    subspace_distance,
)

dims = st.tuples(st.integers(2, 30), st.integers(1, 8)).filter(lambda t: t[1] <= t[0])


def basis(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return orthonormalize(torch.randn(n, k, generator=g, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(dims, st.integers(0, 2**31 - 1))
def test_projector_identities(nk, seed):
    n, k = nk
    U = basis(n, k, seed)
    g = torch.Generator().manual_seed(seed + 1)
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    Pv = project(v, U)
    assert torch.allclose(project(Pv, U), Pv, atol=1e-12)  # P² = P
    assert torch.allclose(Pv + project_out(v, U), v, atol=1e-12)  # P + P⊥ = I
    assert (Pv.norm(dim=0) <= v.norm(dim=0) + 1e-12).all()  # never increases the norm
    assert (project_out(v, U).norm(dim=0) <= v.norm(dim=0) + 1e-12).all()
    assert torch.allclose(
        (Pv * project_out(v, U)).sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-10
    )
    chi = alignment(v, U)
    assert ((chi >= 0) & (chi <= 1 + 1e-12)).all()
    assert torch.allclose(chi, Pv.norm(dim=0) / v.norm(dim=0))


@settings(max_examples=40, deadline=None)
@given(dims, st.integers(0, 2**31 - 1))
def test_rotation_inside_the_subspace_changes_nothing(nk, seed):
    n, k = nk
    U = basis(n, k, seed)
    R = basis(k, k, seed + 2)  # orthogonal k×k
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed + 3), dtype=torch.float64)
    assert torch.allclose(project(v, U), project(v, U @ R), atol=1e-12)
    assert torch.allclose(project_out(v, U), project_out(v, U @ R), atol=1e-12)
    assert float(subspace_distance(U, U @ R)) < 1e-6


@settings(max_examples=30, deadline=None)
@given(dims, st.integers(0, 2**31 - 1))
def test_orthonormalize_spans_and_is_orthonormal(nk, seed):
    n, k = nk
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(n, k, generator=g, dtype=torch.float64)
    Q = orthonormalize(V)
    assert torch.allclose(Q.T @ Q, torch.eye(k, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(project(V, Q), V, atol=1e-10)


def test_orthonormalize_rank_deficient_input_still_gives_k_columns():
    V = torch.ones(6, 3, dtype=torch.float64)
    Q = orthonormalize(V, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(Q.T @ Q, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert float(alignment(torch.ones(6, dtype=torch.float64), Q)) > 1 - 1e-12


def test_principal_angles_known_values():
    e = torch.eye(4, dtype=torch.float64)
    theta = math.pi / 6
    W = torch.stack([e[0], math.cos(theta) * e[1] + math.sin(theta) * e[2]], dim=1)
    angles = principal_angles(e[:, :2], W)
    assert torch.allclose(angles, torch.tensor([0.0, theta], dtype=torch.float64), atol=1e-10)
    assert abs(float(subspace_distance(e[:, :2], W)) - 0.5) < 1e-10
    # tiny angles are resolved (the sine formula), not rounded to 0 by arccos
    eps = 1e-9
    W2 = torch.stack([e[0], math.cos(eps) * e[1] + math.sin(eps) * e[2]], dim=1)
    assert abs(float(subspace_distance(e[:, :2], W2)) - eps) < 1e-15


# ---------------------------------------------------------------- mutation kills (issue 26)


def test_refusals_say_what_was_wrong():
    with pytest.raises(ValueError, match=r"expects a block \(n, m\); got shape \(3,\)"):
        orthonormalize(torch.ones(3))
    with pytest.raises(ValueError, match="cannot orthonormalize 3 columns in dimension 2"):
        orthonormalize(torch.ones(2, 3))
    with pytest.raises(ValueError, match="different dimensions: 4 and 5"):
        principal_angles(torch.ones(4, 2), torch.ones(5, 3))


@pytest.mark.parametrize("size", [1.0, 1e-3])
def test_a_column_just_above_the_rank_tolerance_is_kept(size):
    """The tolerance is 1e3·eps times the largest column norm (not the Frobenius or a row
    norm): a column 2.5e-13 (relative) off its neighbour keeps its own direction."""
    n, m = 200, 100
    V = torch.eye(n, dtype=torch.float64)[:, :m].clone()
    V[0, 1], V[1, 1] = 1.0, 2.5e-13  # column 1 = e0 + δ·e1; row 0 has norm √2
    V[:, 1] /= V[:, 1].norm()
    Q = orthonormalize(V * size, generator=torch.Generator().manual_seed(0))
    assert abs(float(Q[1, 1])) > 0.99


@pytest.mark.parametrize(("factor", "weak"), [(1000.0, True), (1000.5, False)])
def test_the_rank_tolerance_is_1000_eps_inclusive(factor: float, weak: bool) -> None:
    """Axis-aligned columns, whose QR is exact: a column of norm exactly 1000·eps (the largest
    column has norm 1) is dependent and replaced; one of 1000.5·eps is kept as ±e1."""
    eps = torch.finfo(torch.float64).eps
    V = torch.zeros(5, 2, dtype=torch.float64)
    V[0, 0], V[1, 1] = 1.0, factor * eps
    Q = orthonormalize(V, generator=torch.Generator().manual_seed(0))
    kept = abs(float(Q[1, 1])) == 1.0
    assert kept is not weak
    assert torch.allclose(Q.T @ Q, torch.eye(2, dtype=torch.float64), atol=1e-12)


def test_dependent_columns_are_filled_from_the_generator():
    V = torch.ones(6, 3, dtype=torch.float64)
    a = orthonormalize(V, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)  # the global generator must not matter when one is given
    b = orthonormalize(V, generator=torch.Generator().manual_seed(0))
    c = orthonormalize(V, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a[:, 1:].abs(), c[:, 1:].abs())
    Q = orthonormalize(V)  # no generator: the global one
    assert torch.allclose(Q.T @ Q, torch.eye(3, dtype=torch.float64), atol=1e-12)


def test_principal_angles_take_the_smaller_basis_either_way_round():
    U, W = basis(9, 3, 1), basis(9, 2, 2)
    a, b = principal_angles(U, W), principal_angles(W, U)
    assert a.shape == (2,)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_an_angle_near_a_right_angle_comes_from_the_cosine():
    """Near π/2 the sine formula loses half the digits: the cosine one must be used."""
    e = torch.eye(3, dtype=torch.float64)
    gap = 1e-6
    w = math.sin(gap) * e[0] + math.cos(gap) * e[1]  # angle π/2 − gap from e0
    angle = principal_angles(e[:, :1], w.unsqueeze(1))
    assert abs((math.pi / 2 - float(angle[0])) - gap) < 1e-15


@pytest.mark.parametrize("dependent", [0, 1, 2])
def test_the_independent_columns_stay_in_the_span_whatever_comes_before_them(dependent):
    """A dependent column (a multiple of column 0, or zero) does not take a direction out
    of the independent columns after it: each of them lies in the span of the result's
    columns at the independent positions, and the result is orthonormal."""
    g = torch.Generator().manual_seed(0)
    V = torch.randn(30, 5, generator=g, dtype=torch.float64)
    if dependent == 0:
        V[:, 0] = 0.0
    else:
        V[:, dependent] = 2.0 * V[:, dependent - 1]
    Q = orthonormalize(V, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(Q.T @ Q, torch.eye(5, dtype=torch.float64), atol=1e-13, rtol=0)
    keep = [j for j in range(5) if j != dependent]
    Qk = Q[:, keep]
    for j in keep:
        outside = V[:, j] - Qk @ (Qk.T @ V[:, j])
        assert float(outside.norm()) <= 1e-12 * float(V[:, j].norm()), j


def test_a_kept_column_keeps_its_direction_when_a_weak_one_comes_first():
    V = torch.zeros(4, 2, dtype=torch.float64)
    V[2, 1] = 3.0  # column 0 is zero (weak), column 1 is e2
    Q = orthonormalize(V, generator=torch.Generator().manual_seed(0))
    assert abs(abs(float(Q[2, 1])) - 1.0) < 1e-12
