"""The Hessians every eigensolver row solves (the digits MLP and a small CNN after SGD) and
the float64 check that every row's answer goes through."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from subspace_optim import HessianOperator, Lanczos, subspace_distance
from subspace_optim.experiments import half_sum_mse

K, TOL = 10, 1e-3

#: pyhessian settings: its defaults, and a tight eigenvalue-change tolerance that reaches the
#: residual target (its stopping rule is the relative change of the eigenvalue, not a residual)
PYHESSIAN_SETTINGS = [(1e-3, 100), (1e-7, 1000)]


@dataclass
class Problem:
    """One workload: a named model and its data, the SGD steps taken before the solves, and
    the pyhessian ``(tol, maxIter)`` settings run on it."""

    name: str
    model: nn.Module
    X: Tensor
    Y: Tensor
    pre_steps: int = 100
    pyhessian_settings: list[tuple[float, int]] = field(default_factory=lambda: PYHESSIAN_SETTINGS)


def small_cnn(generator: torch.Generator) -> nn.Module:
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * 0.3)
    return model


def sgd(model: nn.Module, X, Y, steps: int, g: torch.Generator) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (50,), generator=g)
        opt.zero_grad()
        half_sum_mse(model(X[idx]), Y[idx]).backward()
        opt.step()


class HalfSumMSE(nn.Module):
    """``half_sum_mse`` as a loss module with ``reduction="mean"`` (over examples), as curvlinops
    needs: ``nn.MSELoss()`` would average over the 10 outputs too (0.2× this Hessian)."""

    reduction = "mean"

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return half_sum_mse(outputs, targets)


# --------------------------------------------------------------------------- the checker
class Checker:
    """A float64 copy of the model: the one operator every row's answer is checked by."""

    def __init__(self, model: nn.Module, X: Tensor, Y: Tensor) -> None:
        self.source = model
        self.model = copy.deepcopy(model).double()
        self.op = HessianOperator(self.model, half_sum_mse, (X.double(), Y.double()))
        self.sync()

    def sync(self) -> None:
        """Copy the current parameters and compute the exact top-k (float64 Lanczos, tol 1e-8)."""
        with torch.no_grad():
            for p64, p in zip(self.model.parameters(), self.source.parameters()):
                p64.copy_(p)
        ref = Lanczos(tol=1e-8, ncv=60).solve(
            self.op, K, generator=torch.Generator().manual_seed(7)
        )
        if not ref.converged:
            raise RuntimeError(f"the float64 reference did not converge: {ref.status}")
        self.exact_values = ref.eigenvalues
        self.exact_vectors = ref.eigenvectors
        self.scale = float(ref.eigenvalues.abs().max())

    def drift(self, before: Tensor) -> dict[str, float]:
        """How far the exact top-k moved since ``before`` (an exact top-k at earlier parameters).

        ``drift_sin_theta``: largest principal angle between the two exact subspaces;
        ``start_residual_min``/``_max``: relative residuals ``‖Hv − (vᵀHv)v‖ / |λ_1|`` of the
        earlier exact eigenvectors at the current parameters, where a warm start begins.
        """
        HV = self.op.matmat(before)
        rel = (HV - before * (before * HV).sum(0)).norm(dim=0) / self.scale
        return {
            "drift_sin_theta": round(float(subspace_distance(before, self.exact_vectors)), 4),
            "start_residual_min": float(f"{float(rel.min()):.3g}"),
            "start_residual_max": float(f"{float(rel.max()):.3g}"),
        }

    def check(self, values: Tensor, vectors: Tensor) -> dict[str, Any]:
        """Sort the returned pairs (largest first), normalize, and measure them in float64."""
        values = values.detach().to(torch.float64).reshape(-1)
        V = vectors.detach().to(torch.float64)
        order = torch.argsort(values, descending=True)
        values, V = values[order], V[:, order]
        V = V / V.norm(dim=0).clamp_min(1e-300)
        R = self.op.matmat(V) - V * values
        rel = R.norm(dim=0) / self.scale
        m = min(values.shape[0], K)
        eig_err = (values[:m] - self.exact_values[:m]).abs().max() / self.scale
        Q = torch.linalg.qr(V).Q  # returned vectors need not be orthonormal (pyhessian)
        return {
            "returned": int(values.shape[0]),
            "max_rel_residual": float(f"{float(rel.max()):.3g}"),
            "max_eig_error": float(f"{float(eig_err):.3g}"),
            "sin_theta": round(float(subspace_distance(Q, self.exact_vectors)), 4),
            "meets_tol": bool(rel.max() <= TOL and values.shape[0] >= K),
        }
