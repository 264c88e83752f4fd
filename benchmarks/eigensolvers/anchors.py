"""The anchor libraries (pyhessian, hessian-eigenthings, curvlinops) on the same model and
data in the same process, with their products counted."""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.metadata
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from subspace_optim.experiments import half_sum_mse

from .problems import TOL, Checker, HalfSumMSE, K, Problem
from .solves import Progress, best_of

#: anchor name -> (import name, distribution name)
ANCHORS = {
    "pyhessian": ("pyhessian", "pyhessian"),
    "hessian-eigenthings": ("hessian_eigenthings", "hessian-eigenthings"),
    "curvlinops": ("curvlinops", "curvlinops-for-pytorch"),
}

#: hessian-eigenthings: Lanczos steps of the first attempt, doubled until all k converge
EIGENTHINGS_FIRST_STEPS = 20


def anchor_status() -> dict[str, dict[str, Any]]:
    """Which anchors import here, with their versions, or the reason they do not."""
    out: dict[str, dict[str, Any]] = {}
    for name, (module, dist) in ANCHORS.items():
        try:
            importlib.import_module(module)
            out[name] = {"available": True, "version": importlib.metadata.version(dist)}
        except Exception as exc:  # an anchor that fails to import is reported, not fatal
            out[name] = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    return out


@contextlib.contextmanager
def counting(obj: Any, attr: str, counter: list[int], per_call: Callable[..., int]) -> Iterator:
    """Replace ``obj.attr`` by a wrapper that adds ``per_call(*args)`` to ``counter[0]``."""
    original = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        counter[0] += per_call(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(obj, attr, wrapper)
    try:
        yield
    finally:
        setattr(obj, attr, original)


def run_pyhessian(model, X, Y, tol: float, max_iter: int) -> dict[str, Any]:
    """pyhessian 0.1 ``hessian.eigenvalues``: power iteration with deflation.

    HVPs counted as calls of ``pyhessian.hessian.hessian_vector_product`` (one vector each).
    It switches the model to eval mode and leaves a graph on ``.grad``: it gets a copy. Its
    start vectors come from the global generator: seeded inside a forked RNG state.
    """
    module = importlib.import_module("pyhessian.hessian")  # the module, not the class
    count, per_value = [0], []

    def which(w, v_list):  # orthnormal(v, eigenvectors) runs once per iteration
        per_value.append(len(v_list))
        return 0

    with (
        counting(module, "hessian_vector_product", count, lambda *a, **k: 1),
        counting(module, "orthnormal", [0], which),
        torch.random.fork_rng(devices=[]),
    ):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        h = module.hessian(copy.deepcopy(model), half_sum_mse, data=(X, Y), cuda=False)
        values, vectors = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=K)
        seconds = time.perf_counter() - t0
    V = torch.stack([torch.cat([t.detach().reshape(-1) for t in v]) for v in vectors], dim=1)
    # it reports no flag: "converged" means no eigenvalue ran into maxIter
    iterations = [per_value.count(i) for i in range(K)]
    return {
        "values": torch.tensor(values),
        "vectors": V,
        "matvecs": count[0],
        "seconds": seconds,
        "converged": max(iterations) < max_iter,
        "settings": f"top_n={K}, tol={tol:g} (relative eigenvalue change), maxIter={max_iter}",
    }


def run_eigenthings(model, X, Y) -> dict[str, Any]:
    """hessian-eigenthings 1.0.0a5 ``lanczos`` (one run, no restart).

    ``max_iter`` starts at 20 (its default) and doubles until every one of the k pairs reports
    converged; ``reorthogonalize=True`` (it is switched off above 50 steps otherwise) and
    ``which="LA"``. HVPs counted as calls of the operator's ``matvec``, over all attempts.
    """
    he = importlib.import_module("hessian_eigenthings")
    op = he.HessianOperator(model, [(X, Y)], he.supervised_loss(half_sum_mse))
    count = [0]
    steps, attempts = EIGENTHINGS_FIRST_STEPS, []
    n = op.size
    t0 = time.perf_counter()
    with counting(op, "matvec", count, lambda *a, **k: 1):
        while True:
            res = he.lanczos(
                op, k=K, max_iter=steps, tol=TOL, reorthogonalize=True, which="LA", seed=0
            )
            attempts.append(steps)
            if bool(res.converged.all()) or steps >= n - 1 or steps >= 640:
                break
            steps = min(2 * steps, n - 1)
    seconds = time.perf_counter() - t0
    return {
        "values": res.eigenvalues,
        "vectors": res.eigenvectors.T,
        "matvecs": count[0],
        "seconds": seconds,
        "converged": bool(res.converged.all()),
        "settings": f"k={K}, tol={TOL:g}, which=LA, reorthogonalize=True, seed=0, "
        f"max_iter {' → '.join(map(str, attempts))} (all attempts counted)",
    }


def run_curvlinops(model, X, Y) -> dict[str, Any]:
    """curvlinops 3.0.1 ``HessianLinearOperator(...).to_scipy()`` into scipy ``eigsh``.

    HVPs counted as the columns the scipy operator is applied to. ``check_deterministic=False``
    and ``num_data`` given (the check would cost two gradient passes and extra products; our
    data and model are deterministic). Construction is inside the wall time.
    """
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    cl = importlib.import_module("curvlinops")
    count = [0]
    t0 = time.perf_counter()
    H = cl.HessianLinearOperator(
        model,
        HalfSumMSE(),
        [p for p in model.parameters() if p.requires_grad],
        [(X, Y)],
        check_deterministic=False,
        num_data=X.shape[0],
    ).to_scipy()

    def matvec(v):
        count[0] += 1
        return H.matvec(v)

    def matmat(M):
        count[0] += M.shape[1]
        return H.matmat(M)

    counted = LinearOperator(H.shape, matvec=matvec, matmat=matmat, dtype=H.dtype)
    v0 = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    converged = True
    try:
        vals, vecs = eigsh(counted, k=K, which="LA", tol=TOL, v0=v0.numpy())
    except Exception as exc:  # ArpackNoConvergence carries the converged pairs
        vals, vecs = getattr(exc, "eigenvalues", None), getattr(exc, "eigenvectors", None)
        if vals is None:
            raise
        converged = False
    seconds = time.perf_counter() - t0
    return {
        "values": torch.as_tensor(np.ascontiguousarray(vals)),
        "vectors": torch.as_tensor(np.ascontiguousarray(vecs)),
        "matvecs": count[0],
        "seconds": seconds,
        "converged": converged,
        "settings": f"eigsh(k={K}, which=LA, tol={TOL:g}, ncv default, seeded v0); "
        "check_deterministic=False",
    }


def _anchor_count(out: dict) -> tuple[dict, float, int]:
    return out, out["seconds"], out["matvecs"]


def anchor_rows(
    problem: Problem, checker: Checker, status: dict, say: Progress, repeats: int = 1
) -> list[dict]:
    """One row per anchor setting on ``problem`` (a row saying why, for one not run)."""
    model, X, Y = problem.model, problem.X, problem.Y
    runs: list[tuple[str, str, Callable[[], dict]]] = []
    for tol, cap in problem.pyhessian_settings:
        runs.append(
            (
                f"pyhessian power iteration (tol={tol:g}, maxIter={cap})",
                "pyhessian",
                lambda tol=tol, cap=cap: run_pyhessian(model, X, Y, tol, cap),
            )
        )
    runs.append(
        ("hessian-eigenthings lanczos", "hessian-eigenthings", lambda: run_eigenthings(model, X, Y))
    )
    runs.append(("curvlinops + scipy eigsh", "curvlinops", lambda: run_curvlinops(model, X, Y)))
    rows = []
    for label, anchor, fn in runs:
        st = status[anchor]
        if not st["available"]:
            say(f"  {label}: not run ({st['reason']})")
            rows.append({"solver": label, "kind": "anchor", "run": False, "reason": st["reason"]})
            continue
        say(f"  {label} ...")
        try:
            out, seconds = best_of(repeats, lambda fn=fn: _anchor_count(fn()))
            out["seconds"] = seconds
        except Exception as exc:  # an anchor that fails on this torch is reported, not fatal
            reason = f"failed on torch {torch.__version__}: {type(exc).__name__}: {exc}"
            say(f"  {label}: {reason}")
            rows.append({"solver": label, "kind": "anchor", "run": False, "reason": reason})
            continue
        rows.append(
            {
                "solver": label,
                "kind": "anchor",
                "run": True,
                "matvecs": out["matvecs"],
                "seconds": round(out["seconds"], 3),
                "converged": bool(out["converged"]),
                **checker.check(out["values"], out["vectors"]),
                "settings": out["settings"],
            }
        )
    return rows
