"""
Bring your own eigensolver: SciPy's ARPACK behind the library's interface
=========================================================================

An eigensolver is a configured object with one verb. Subclass
:class:`~subspace_optim.Eigensolver`, set the hyperparameters in ``__init__`` (validated
there), and implement ``_solve(op, k, init, generator)``, returning an
:class:`~subspace_optim.EigenResult` with eigenvalues in descending order, eigenvectors
as columns and its :class:`~subspace_optim.SolveStatus` outcome. The base class validates the arguments, counts the operator's matvecs and
applies ``raise_on_failure``. Register the class under a name and any place that accepts
``eigensolver="lanczos"`` accepts yours.

Run::

    python examples/custom_eigensolver.py          # digits MLP, 1000 examples
    python examples/custom_eigensolver.py --quick  # 64 examples, a narrower MLP (docs)

Threads: small products, so one torch thread (see :doc:`/guide/troubleshooting`).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from scipy.sparse.linalg import LinearOperator as ScipyOperator

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

# %%
# The solver
# ----------
#
# ``_solve`` receives the operator, ``k``, an optional warm start ``init`` of shape
# ``(n, m)`` and a random generator; the base class does the rest.


class ArpackEigsh(so.Eigensolver):
    """Top-k eigenpairs with :func:`scipy.sparse.linalg.eigsh` (implicitly restarted Lanczos).

    Args:
        tol: relative residual target passed to ARPACK and used for the converged flag.
        max_iter: ARPACK's ``maxiter`` (restarts).
    """

    def __init__(self, *, tol: float = 1e-3, max_iter: int = 1000) -> None:
        super().__init__(tol=tol, max_iter=max_iter, which="LA")

    def _solve(self, op, k, init, generator):
        n = op.shape[0]

        def matvec(x: np.ndarray) -> np.ndarray:
            v = torch.as_tensor(np.asarray(x).reshape(-1), dtype=op.dtype, device=op.device)
            return op.matvec(v).detach().cpu().double().numpy()

        scipy_op = ScipyOperator((n, n), matvec=matvec, dtype=np.float64)
        # a warm start folds the previous basis into ARPACK's single start vector
        if init is not None:
            v0 = init.sum(dim=1)
        else:
            v0 = torch.randn(n, dtype=torch.float64, generator=generator)
        v0 = v0.detach().cpu().double().numpy()
        try:
            values, vectors = eigsh(
                scipy_op, k=k, which="LA", v0=v0, tol=self.tol, maxiter=self.max_iter
            )
        except ArpackNoConvergence as err:  # keep ARPACK's best estimate
            values, vectors = err.eigenvalues, err.eigenvectors
        order = np.argsort(values)[::-1]
        theta = torch.as_tensor(values[order].copy(), dtype=op.dtype, device=op.device)
        X = torch.as_tensor(vectors[:, order].copy(), dtype=op.dtype, device=op.device)
        residuals = (op.matmat(X) - X * theta).norm(dim=0)  # checked, not trusted
        # the outcome is the one truth the optimizer reads (NON_FINITE: the refresh is a fault)
        if not bool(torch.isfinite(theta).all() and torch.isfinite(X).all()):
            outcome, message = so.SolveStatus.NON_FINITE, so.SolveStatus.NON_FINITE.message
        elif bool((residuals <= self.tol * theta.abs().max()).all()):
            outcome, message = so.SolveStatus.CONVERGED, "converged"
        else:
            outcome = so.SolveStatus.MAX_ITERATIONS
            message = f"not converged (raise max_iter, now {self.max_iter}, or loosen tol)"
        return so.EigenResult(
            eigenvalues=theta,
            eigenvectors=X,
            residual_norms=residuals,
            num_matvecs=0,  # the base class fills in the count it measured
            num_iterations=1,  # ARPACK does not report its restarts: one call
            outcome=outcome,
            message=f"ArpackEigsh: {message}",
        )


# %%
# Check it, register it, use it
# -----------------------------
#
# First on a matrix with a known spectrum against the exact dense solver, then by name
# inside Bulk-GD on digits.


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="A custom eigensolver (SciPy's eigsh).")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small products: one thread is fastest
    n, widths, steps = (64, (64, 16, 10), 3) if args.quick else (1000, (64, 64, 64, 10), 20)

    # 1. check it on a matrix with a known spectrum, against the exact dense solver
    Q, _ = torch.linalg.qr(
        torch.randn(300, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    spectrum = torch.cat([torch.tensor([9.0, 7.0, 5.0, 4.0]), torch.linspace(-2, 2, 296)])
    op = so.DenseOperator.from_spectrum(spectrum.double(), Q)
    ours = ArpackEigsh(tol=1e-10).solve(op, 4)
    exact = so.Eigh().solve(op, 4)
    print(
        "eigsh:",
        [round(v, 8) for v in ours.eigenvalues.tolist()],
        f"({ours.num_matvecs} matvecs; {ours.message})",
    )
    print("Eigh: ", [round(v, 8) for v in exact.eigenvalues.tolist()])

    # 2. register it, then use it by name inside the projected optimizer
    so.register_eigensolver("arpack-example", ArpackEigsh)
    X, Y, _ = load_digits(n)
    model = mlp(widths, generator=torch.Generator().manual_seed(0))
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = so.SubspaceProjectedOptimizer(
        base,
        so.HessianOperator(model, half_sum_mse, (X, Y)),
        k=10,
        mode="bulk",
        eigensolver="arpack-example",
    )
    for _ in range(steps):
        opt.zero_grad()
        half_sum_mse(model(X), Y).backward()
        opt.step()
    print(
        f"Bulk-GD with {opt.eigensolver!r}: {int(opt.counters['matvecs'])} HVPs over "
        f"{int(opt.counters['refreshes'])} refreshes; top eigenvalue now "
        f"{opt.last_stats.eigenvalues[0]:.4f}"
    )
    return {
        "eigenvalues": ours.eigenvalues.tolist(),
        "exact": exact.eigenvalues.tolist(),
        "converged": ours.converged,
        "refreshes": int(opt.counters["refreshes"]),
        "optimizer_eigenvalues": list(opt.last_stats.eigenvalues),
    }


# %%
# Run it (the docs run ``--quick``)
# ---------------------------------

if __name__ == "__main__":
    main()
