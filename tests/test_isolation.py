"""A refresh must not change the user's training run: global RNG, autocast, grad mode,
deterministic algorithms (the library's own isolation, and the pure subspace functions)."""

from __future__ import annotations

import pytest
import torch

import subspace_optim as so
from subspace_optim._isolation import isolated


def settings() -> tuple:
    return (
        torch.is_grad_enabled(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.is_autocast_enabled("cpu"),
    )


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
def test_isolated_hands_every_setting_back(fails):
    state = torch.get_rng_state()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = settings()
        try:
            with isolated("cpu"):
                torch.set_grad_enabled(True)
                torch.use_deterministic_algorithms(True, warn_only=True)
                assert not torch.is_autocast_enabled("cpu")
                x = torch.randn(4, 4)
                assert (x @ x).dtype == torch.float32
                if fails:
                    raise ArithmeticError("inside")
        except ArithmeticError:
            assert fails
        assert settings() == before
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("fn", [so.project, so.project_out, so.alignment])
def test_subspace_functions_ignore_the_callers_autocast(fn):
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(40, 3, generator=g))[0]
    v = torch.randn(40, generator=g)
    expected = fn(v, U)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(v, U)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_principal_angles_ignore_the_callers_autocast():
    g = torch.Generator().manual_seed(1)
    U = torch.linalg.qr(torch.randn(30, 4, generator=g))[0]
    W = torch.linalg.qr(U + 1e-3 * torch.randn(30, 4, generator=g))[0]
    expected = so.principal_angles(U, W)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = so.principal_angles(U, W)
        ortho = so.orthonormalize(torch.randn(30, 4, generator=g))
    assert torch.equal(got, expected)
    assert ortho.dtype == torch.float32
    assert torch.allclose(ortho.T @ ortho, torch.eye(4), atol=1e-5)
