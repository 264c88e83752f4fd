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


# ------------------------------------------------- around step(), refresh(), solves
def dropout_problem(loader: bool):
    torch.manual_seed(0)  # module initialization only
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Dropout(0.2), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    )
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(40, 6, generator=g), torch.randn(40, 3, generator=g)
    data = (
        torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(X, Y), batch_size=10, shuffle=True
        )
        if loader
        else (X, Y)
    )
    return model, X, Y, data


def train(mode: str | None, loader: bool, steps: int = 4, autocast: bool = False):
    """Plain SGD (mode None) or the wrapper, with dropout active in the training loop."""
    model, X, Y, data = dropout_problem(loader)
    loss_fn = torch.nn.MSELoss()
    base = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = base
    if mode is not None:
        op = so.HessianOperator(model, loss_fn, data, train=False)
        opt = so.SubspaceProjectedOptimizer(base, op, k=2, mode=mode)
    torch.manual_seed(11)  # the training loop's own randomness (dropout masks)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(X), Y).backward()
        before = settings()
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                opt.step()
        else:
            opt.step()
        assert settings() == before
    return (
        torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
        torch.get_rng_state(),
        opt,
    )


@pytest.mark.parametrize("loader", [False, True], ids=["tensors", "shuffling_loader"])
def test_mode_none_is_bitwise_the_plain_run_with_dropout(loader):
    plain, plain_rng, _ = train(None, loader)
    tracked, tracked_rng, opt = train("none", loader)
    assert opt.counters["refreshes"] == 4
    assert torch.equal(tracked, plain)  # the wrapper drew nothing from the global stream
    assert torch.equal(tracked_rng, plain_rng)


def test_a_step_inside_autocast_computes_in_full_precision():
    reference, _, ref_opt = train("bulk", loader=False)
    inside, _, opt = train("bulk", loader=False, autocast=True)
    assert opt.basis.dtype == torch.float32
    assert torch.equal(inside, reference)
    assert opt.counters["matvecs"] == ref_opt.counters["matvecs"]
    assert opt.counters["unconverged"] == 0


@pytest.mark.parametrize("loader", [False, True], ids=["tensors", "shuffling_loader"])
def test_refresh_and_top_k_leave_the_callers_state(loader):
    model, _, _, data = dropout_problem(loader)
    op = so.HessianOperator(model, torch.nn.MSELoss(), data, train=True, check=False)
    opt = so.SubspaceProjectedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), op, k=2)
    state = torch.get_rng_state()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = settings()
        result = opt.refresh()
        pairs = so.top_k_eigenpairs(op, 2, solver="lanczos")
        assert settings() == before
    assert torch.equal(torch.get_rng_state(), state)
    assert result is not None and result.eigenvectors.dtype == torch.float32
    assert pairs.eigenvectors.dtype == torch.float32


def test_the_operators_randomness_comes_from_its_own_generator():
    model, _, _, data = dropout_problem(loader=True)
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))

    def product(op_seed: int, global_seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(op_seed)
        op = so.HessianOperator(
            model, torch.nn.MSELoss(), data, train=True, check=False, generator=g
        )
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        out = op @ v  # dropout masks and the loader's shuffle
        assert torch.equal(torch.get_rng_state(), state), "a product moved the global RNG"
        return out

    assert torch.equal(product(1, 100), product(1, 200))  # the global stream does not matter
    assert not torch.equal(product(1, 100), product(2, 100))  # the operator's stream does
