"""Eigensolvers on real Hessians (an MLP and a CNN) through HessianOperator, against the dense
float64 Hessian from torch.func, and the warm refresh along a short SGD run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subspace_optim import (
    LOBPCG,
    BlockLanczos,
    HessianOperator,
    Lanczos,
    PowerIteration,
    SubspaceProjectedOptimizer,
    WarmRefresh,
    subspace_distance,
    top_k_eigenpairs,
)
from subspace_optim.eigensolvers import ScipyEigsh

F64 = torch.float64


def mlp_problem() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).double()
    X = torch.randn(40, 6, generator=g, dtype=F64)
    Y = torch.randn(40, 4, generator=g, dtype=F64)
    return model, (X, Y)


def cnn_problem() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
    ).double()
    X = torch.randn(20, 1, 6, 6, generator=g, dtype=F64)
    Y = torch.randn(20, 3, generator=g, dtype=F64)
    return model, (X, Y)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - y).pow(2).sum(-1).mean()


def dense_hessian(model: nn.Module, data) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    X, Y = data

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = shape.numel()
            params[name] = theta[offset : offset + size].view(shape)
            offset += size
        return mse(torch.func.functional_call(model, params, (X,)), Y)

    H = torch.func.hessian(loss)(flat)
    return (H + H.T) / 2


@pytest.mark.parametrize("problem", [mlp_problem, cnn_problem], ids=["mlp", "cnn"])
@pytest.mark.parametrize(
    "solver",
    [
        Lanczos(tol=1e-8),
        BlockLanczos(tol=1e-8),
        BlockLanczos(block_size=2, tol=1e-8),
        LOBPCG(tol=1e-8),
        WarmRefresh(tol=1e-8),
        ScipyEigsh(tol=1e-10),
        PowerIteration(tol=1e-8, max_iter=3000),
    ],
    ids=["lanczos", "block_lanczos", "block_lanczos_b2", "lobpcg", "warm", "scipy_eigsh", "power"],
)
def test_real_hessian_top_k(problem, solver) -> None:
    model, data = problem()
    op = HessianOperator(model, mse, data)
    H = dense_hessian(model, data)
    lam, V = torch.linalg.eigh(H)
    lam, V = lam.flip(0), V.flip(1)
    k = 3
    res = solver.solve(op, k, generator=torch.Generator().manual_seed(0))
    assert res.converged, res.message
    torch.testing.assert_close(res.eigenvalues, lam[:k], atol=1e-6 * float(lam[0]), rtol=0)
    true_res = (H @ res.eigenvectors - res.eigenvectors * res.eigenvalues).norm(dim=0)
    assert float(true_res.max()) <= 2e-8 * float(lam[0])
    gap = float(lam[k - 1] - lam[k])
    assert float(subspace_distance(res.eigenvectors, V[:, :k])) <= 1e-6 / (gap / float(lam[0]))


def test_warm_refresh_along_sgd_matches_cold_at_fraction_of_cost() -> None:
    """Refresh every SGD step: the warm strategy tracks the exact top-k subspace and spends
    fewer matvecs than cold solves at the same residual target (counts, not time)."""
    model, data = mlp_problem()
    op = HessianOperator(model, mse, data)
    X, Y = data
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    warm, k, tol = WarmRefresh(tol=1e-4), 4, 1e-4
    basis = None
    warm_cost = cold_cost = 0
    for step in range(6):
        res = warm.solve(op, k, init=basis, generator=torch.Generator().manual_seed(step))
        cold = LOBPCG(tol=tol).solve(op, k, generator=torch.Generator().manual_seed(step))
        assert res.converged and cold.converged
        if step > 0:  # step 0 is the cold start of the strategy
            warm_cost += res.num_matvecs
            cold_cost += cold.num_matvecs
            assert "warm" in res.message
        H = dense_hessian(model, data)
        lam, V = torch.linalg.eigh(H)
        exact = V[:, -k:]
        gap = float(lam[-k] - lam[-k - 1])
        assert float(subspace_distance(res.eigenvectors, exact)) <= 4 * tol * float(lam[-1]) / gap
        basis = res.eigenvectors
        opt.zero_grad()
        mse(model(X), Y).backward()
        opt.step()
    assert warm_cost < 0.5 * cold_cost, (warm_cost, cold_cost)


@pytest.mark.parametrize("problem", [mlp_problem, cnn_problem], ids=["mlp", "cnn"])
def test_block_lanczos_feeds_blocks_to_the_hessian(problem) -> None:
    """On a real Hessian, block Lanczos spends one batched HVP call per iteration (b columns
    each), matches the dense float64 top-k (k = 5 here, block 5), and its reported residuals
    are the true ones."""
    model, data = problem()
    op = HessianOperator(model, mse, data)
    H = dense_hessian(model, data)
    lam = torch.linalg.eigvalsh(H).flip(0)
    widths: list[int] = []
    matmat = op._matmat

    def recording(V: torch.Tensor) -> torch.Tensor:
        widths.append(V.shape[1])
        return matmat(V)

    op._matmat = recording  # type: ignore[method-assign]
    k = 5
    res = BlockLanczos(tol=1e-8).solve(op, k, generator=torch.Generator().manual_seed(1))
    assert res.converged, res.message
    assert widths == [k] * res.num_iterations and res.num_matvecs == k * res.num_iterations
    torch.testing.assert_close(res.eigenvalues, lam[:k], atol=1e-6 * float(lam[0]), rtol=0)
    true_res = (H @ res.eigenvectors - res.eigenvectors * res.eigenvalues).norm(dim=0)
    torch.testing.assert_close(res.residual_norms, true_res, atol=1e-9 * float(lam[0]), rtol=0)


def test_block_lanczos_by_name_in_the_wrapper_and_top_k() -> None:
    """``eigensolver="block_lanczos"`` and ``solver="block_lanczos"`` resolve through the
    registry; the wrapper's warm refreshes feed the previous basis to the block solver."""
    model, data = mlp_problem()
    op = HessianOperator(model, mse, data)
    res = top_k_eigenpairs(op, 3, solver="block_lanczos", tol=1e-6)
    lam = torch.linalg.eigvalsh(dense_hessian(model, data)).flip(0)
    assert res.converged and res.eigenvalues.tolist() == pytest.approx(lam[:3].tolist(), rel=1e-5)
    base = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = SubspaceProjectedOptimizer(base, op, k=3, eigensolver="block_lanczos")
    assert isinstance(opt.eigensolver, BlockLanczos)
    X, Y = data
    costs = []
    for _ in range(3):
        opt.zero_grad()
        mse(model(X), Y).backward()
        opt.step()
        result = opt.refresh()
        assert result is not None and result.converged, result and result.message
        costs.append(result.num_matvecs)
    assert opt.basis is not None and opt.basis.shape == (op.shape[0], 3)
    # warm refreshes from the last basis cost less than the cold solve above
    assert max(costs) < res.num_matvecs, (costs, res.num_matvecs)
