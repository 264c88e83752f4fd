"""Invariants of the pure subspace math (hypothesis)."""

from __future__ import annotations

import math

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
