"""The paper's refresh, as its code did it, and the exact subspace every row is checked
against (offline, float64)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

import subspace_optim as so
from subspace_optim._utils import flatten, unflatten

from .setups import Setup, make_setup, params_of, write_flat


class PaperEigsh:
    """The paper's refresh: cold scipy ``eigsh`` (default settings) on double-backward HVPs.

    Every HVP builds a fresh forward and gradient graph over the full batch, as the paper's
    code did; vectors go through NumPy (ARPACK) on every product.
    """

    def __init__(self, s: Setup) -> None:
        self.s = s
        self.params = params_of(s.model)
        self.n = sum(p.numel() for p in self.params)
        self.matvecs = 0

    def hvp(self, v: np.ndarray) -> np.ndarray:
        self.matvecs += 1
        p0 = self.params[0]
        vt = torch.from_numpy(np.ascontiguousarray(v).reshape(-1)).to(p0.device, p0.dtype)
        # the fused attention kernels have no double backward: the math kernel, as anyone
        # running this protocol on a Transformer must choose
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            loss = self.s.loss_fn(self.s.model(self.s.X), self.s.Y)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            hv = torch.autograd.grad(grads, self.params, grad_outputs=unflatten(vt, self.params))
        return flatten(hv).detach().cpu().numpy()

    def top_k(self, k: int) -> tuple[Tensor, Tensor]:
        from scipy.sparse.linalg import LinearOperator, eigsh

        np_dtype = np.float32 if self.params[0].dtype == torch.float32 else np.float64
        op = LinearOperator((self.n, self.n), matvec=self.hvp, dtype=np_dtype)
        vals, vecs = eigsh(op, k=k)  # the defaults: which="LM", tol=0, ncv=max(2k+1, 20)
        order = np.argsort(vals)[::-1].copy()
        p0 = self.params[0]
        U = torch.from_numpy(np.ascontiguousarray(vecs[:, order])).to(p0.device, p0.dtype)
        return torch.from_numpy(vals[order].copy()), U


def exact_top_k(name: str, theta: Tensor, k: int, examples: int) -> tuple[Tensor, Tensor]:
    """Top ``k + 1`` eigenpairs of the float64 Hessian at ``theta`` (scipy, ``tol=1e-10``)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    s = make_setup(name, dtype=torch.float64, device="cpu", examples=examples)
    params = params_of(s.model)
    write_flat(params, theta.detach().to("cpu", torch.float64))
    op = so.HessianOperator(s.model, s.loss_fn, (s.X, s.Y))
    n = op.shape[0]

    def mv(v: np.ndarray) -> np.ndarray:
        return op.matvec(torch.from_numpy(np.ascontiguousarray(v).reshape(-1))).numpy()

    g = np.random.default_rng(0)
    vals, vecs = eigsh(
        LinearOperator((n, n), matvec=mv, dtype=np.float64),
        k=k + 1,
        which="LA",
        tol=1e-10,
        v0=g.standard_normal(n),
    )
    order = np.argsort(vals)[::-1].copy()
    return torch.from_numpy(vals[order].copy()), torch.from_numpy(vecs[:, order].copy())
