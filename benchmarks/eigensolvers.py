"""Eigensolvers side by side on the same Hessians, in one process, anchors included.

Workloads: the full-batch Hessian (1000 digits examples, 0.5·Σ(f−y)² loss) of the digits MLP
(64-64-64-10, tanh, 8,970 parameters) and of a small CNN (conv 3×3 ×8, tanh, linear; 2,970
parameters), each after 100 SGD steps (lr 0.1, batch 50), top-10, relative residual 1e-3
(``‖Hv − θv‖ <= tol·|λ_1|``).

Rows: our Lanczos, BlockLanczos (block 10 and 5), LOBPCG, PowerIteration, scipy ``eigsh`` on our operator (the adapter), the
warm refresh (``WarmRefresh``): its cold start, then one refresh after 1 and after 10 more SGD
steps from the basis and guard columns of that start; and the anchor libraries, when they are
importable, on the same model and data in the same process: pyhessian (power iteration with
deflation), hessian-eigenthings (``lanczos``) and curvlinops (``HessianLinearOperator`` +
scipy ``eigsh``). Every row's returned pairs are checked by one float64 Hessian operator (a
float64 copy of the model): residual, eigenvalue error and ``sin θ`` to an exact top-10.
Then a training run (Bulk-SGD, refresh every step after step 100) reports the warm refresh's
matvecs per step and ``sin θ`` against an exact top-10.

Usage (see the generated page for setting up the environment with the anchors)::

    OMP_NUM_THREADS=2 python benchmarks/eigensolvers.py [--train-steps 60] [--quick]

Writes ``benchmarks/results/eigensolvers.{md,json}`` and ``docs/eigensolvers_benchmark.md``
(``--quick``: a tiny MLP on 100 examples, seconds, results in ``eigensolvers.quick.*`` in a temporary folder unless ``--out`` is given, and
no docs page unless ``--docs`` is given).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from subspace_optim import (
    LOBPCG,
    BlockLanczos,
    Every,
    HessianOperator,
    Lanczos,
    PowerIteration,
    SubspaceProjectedOptimizer,
    WarmRefresh,
    subspace_distance,
)
from subspace_optim.eigensolvers import ScipyEigsh
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from projected_training import limit_blas_threads, output_dir, restore_blas_threads

ROOT = Path(__file__).resolve().parents[1]
K, TOL = 10, 1e-3

#: how the anchors' environment is built (printed at the top of the generated page)
VENV_SETUP = [
    "python -m venv --system-site-packages /work/venv-anchors",
    "/work/venv-anchors/bin/pip install --no-deps pyhessian==0.1 hessian-eigenthings==1.0.0a5 "
    "curvlinops-for-pytorch==3.0.1",
    "/work/venv-anchors/bin/pip install --no-deps einops einconv linear_operator",
    "/work/venv-anchors/bin/pip install --no-deps -e .",
]

#: anchor name -> (import name, distribution name)
ANCHORS = {
    "pyhessian": ("pyhessian", "pyhessian"),
    "hessian-eigenthings": ("hessian_eigenthings", "hessian-eigenthings"),
    "curvlinops": ("curvlinops", "curvlinops-for-pytorch"),
}

#: hessian-eigenthings: Lanczos steps of the first attempt, doubled until all k converge
EIGENTHINGS_FIRST_STEPS = 20
#: pyhessian settings: its defaults, and a tight eigenvalue-change tolerance that reaches the
#: residual target (its stopping rule is the relative change of the eigenvalue, not a residual)
PYHESSIAN_SETTINGS = [(1e-3, 100), (1e-7, 1000)]

Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- workloads
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


# --------------------------------------------------------------------------- our solvers
def timed(solver, op, init=None):
    before = op.num_matvecs
    t0 = time.perf_counter()
    res = solver.solve(op, K, init=init, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t0
    assert res.num_matvecs == op.num_matvecs - before
    return res, seconds


def _with_count(pair: tuple[Any, float]) -> tuple[Any, float, int]:
    return pair[0], pair[1], pair[0].num_matvecs


def best_of(repeats: int, run: Callable[[], tuple[Any, float, int]]) -> tuple[Any, float]:
    """Run a seeded (deterministic) solve ``repeats`` times: the last result, the fastest time.

    ``run`` returns ``(result, seconds, matvecs)``; every repeat must spend the same matvecs.
    """
    times, counts = [], set()
    for _ in range(repeats):
        out, seconds, matvecs = run()
        times.append(seconds)
        counts.add(matvecs)
    if len(counts) != 1:
        raise RuntimeError(f"repeats of a seeded solve spent different matvecs: {sorted(counts)}")
    return out, min(times)


def row(name: str, kind: str, res, seconds: float, checker: Checker, **extra) -> dict[str, Any]:
    out = {
        "solver": name,
        "kind": kind,
        "matvecs": res.num_matvecs,
        "seconds": round(seconds, 3),
        "converged": bool(res.converged),
        **checker.check(res.eigenvalues, res.eigenvectors),
    }
    out.update(extra)
    return out


# --------------------------------------------------------------------------- anchors
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
    model,
    X,
    Y,
    checker: Checker,
    status: dict,
    say: Progress,
    pyhessian_settings,
    repeats: int = 1,
) -> list[dict]:
    runs: list[tuple[str, str, Callable[[], dict]]] = []
    for tol, cap in pyhessian_settings:
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


# --------------------------------------------------------------------------- one workload
def workload(
    name: str,
    model: nn.Module,
    X,
    Y,
    status: dict,
    say: Progress,
    *,
    pre_steps: int = 100,
    pyhessian_settings=PYHESSIAN_SETTINGS,
    repeats: int = 1,
) -> list[dict]:
    say(f"{name}: {pre_steps} SGD steps, float64 reference top-{K}")
    g = torch.Generator().manual_seed(1)
    sgd(model, X, Y, pre_steps, g)
    op = HessianOperator(model, half_sum_mse, (X, Y))
    checker = Checker(model, X, Y)
    rows = []
    for label, kind, solver in [
        ("Lanczos", "cold", Lanczos(tol=TOL)),
        ("BlockLanczos (block 10)", "cold", BlockLanczos(tol=TOL)),
        ("BlockLanczos (block 5)", "cold", BlockLanczos(tol=TOL, block_size=5)),
        ("LOBPCG", "cold", LOBPCG(tol=TOL)),
        ("PowerIteration (block)", "cold", PowerIteration(tol=TOL, max_iter=1000)),
        ("scipy eigsh (adapter)", "scipy", ScipyEigsh(tol=TOL)),
    ]:
        say(f"  {label} ...")
        res, s = best_of(repeats, lambda solver=solver: _with_count(timed(solver, op)))
        extra = {"note": f"includes {K} matvecs of its residual check"} if kind == "scipy" else {}
        rows.append(row(label, kind, res, s, checker, **extra))
    rows += anchor_rows(model, X, Y, checker, status, say, pyhessian_settings, repeats)
    # the strategy's own cold start at these parameters (its guard columns are part of its
    # state), then one warm refresh after 1 and after 10 more SGD steps
    state = {n: p.detach().clone() for n, p in model.state_dict().items()}
    exact_before = checker.exact_vectors
    starts = {}
    for tol in (TOL, 3e-3):
        say(f"  WarmRefresh tol={tol:g} cold start ...")
        warm = WarmRefresh(tol=tol)
        res, s = timed(warm, op)
        rows.append(row(f"WarmRefresh tol={tol:g}, its cold start", "warm", res, s, checker))
        starts[tol] = (res.eigenvectors, warm.state_dict())
    for steps in (1, 10):
        model.load_state_dict(state)
        sgd(model, X, Y, steps, torch.Generator().manual_seed(2))
        say(f"  after {steps} SGD step(s): float64 reference, warm refreshes, cold Lanczos ...")
        checker.sync()
        drift = checker.drift(exact_before)
        for tol in (TOL, 3e-3):
            warm = WarmRefresh(tol=tol)
            basis, kept = starts[tol]
            warm.load_state_dict(kept)
            res, s = timed(warm, op, init=basis)
            label = f"WarmRefresh tol={tol:g}, after {steps} SGD step(s)"
            rows.append(
                row(label, "warm", res, s, checker, after_steps=steps, warm_tol=tol, **drift)
            )
        # single-vector Lanczos started from the previous basis (its columns summed)
        res, s = timed(Lanczos(tol=TOL), op, init=starts[TOL][0])
        label = f"Lanczos warm (previous basis), after {steps} SGD step(s)"
        rows.append(row(label, "warm", res, s, checker, after_steps=steps, warm_tol=TOL, **drift))
        res, s = timed(Lanczos(tol=TOL), op)
        label = f"Lanczos cold, after {steps} SGD step(s)"
        rows.append(row(label, "cold-after", res, s, checker, after_steps=steps))
    for r in rows:
        r["workload"] = name
        r.setdefault("run", True)
    return rows


def summarize(rows: list[dict]) -> dict[str, Any]:
    """The issue's three targets, computed from the rows of one workload."""

    def ok(r: dict) -> bool:
        return r["run"] and r["meets_tol"]

    ours = [r for r in rows if r["kind"] == "cold" and ok(r)]
    anchors = [r for r in rows if r["kind"] == "anchor" and ok(r)]
    out: dict[str, Any] = {
        "workload": rows[0]["workload"],
        "anchors_meeting_tol": [r["solver"] for r in anchors],
    }
    if not ours:
        out["note"] = f"none of our cold solvers met {TOL:g}: no targets evaluated"
        return out
    best = min(ours, key=lambda r: r["matvecs"])
    fastest = min(ours, key=lambda r: r["seconds"])
    out["best_cold"] = {k: best[k] for k in ("solver", "matvecs", "seconds")}
    out["fastest_cold"] = {k: fastest[k] for k in ("solver", "matvecs", "seconds")}
    # (a) matvecs against scipy eigsh at the same residual target
    eigsh = [r for r in rows if r["kind"] == "scipy" and ok(r)]
    curv = [r for r in anchors if r["solver"].startswith("curvlinops")]
    refs = []
    if eigsh:
        refs.append(("scipy eigsh on our operator", eigsh[0]["matvecs"] - K))
    if curv:
        refs.append(("curvlinops + scipy eigsh", curv[0]["matvecs"]))
    if refs:
        ref_name, ref_mv = min(refs, key=lambda t: t[1])
        ratio = best["matvecs"] / ref_mv
        out["a"] = {
            "ours": best["matvecs"],
            "eigsh": ref_mv,
            "eigsh_row": ref_name,
            "ratio": round(ratio, 3),
            "met": ratio <= 1.0,
        }
    # (b) wall time against the fastest anchor that met the residual target
    if anchors:
        fa = min(anchors, key=lambda r: r["seconds"])
        ratio = fastest["seconds"] / fa["seconds"]
        out["b"] = {
            "ours": fastest["seconds"],
            "ours_solver": fastest["solver"],
            "anchor": fa["seconds"],
            "anchor_solver": fa["solver"],
            "ratio": round(ratio, 3),
            "met": ratio <= 0.5,
        }
    # (c) our cheapest warm start after one SGD step against the best cold solve
    warm = [r for r in rows if r.get("warm_tol") == TOL and r.get("after_steps") == 1]
    if warm:
        meeting = [r for r in warm if r["meets_tol"]]
        w = min(meeting or warm, key=lambda r: r["matvecs"])
        ratio = w["matvecs"] / best["matvecs"]
        out["c"] = {
            "warm": w["matvecs"],
            "warm_solver": w["solver"].split(", after")[0],
            "cold": best["matvecs"],
            "ratio": round(ratio, 3),
            "warm_meets_tol": w["meets_tol"],
            "met": ratio <= 1 / 3 and w["meets_tol"],
            **{k: w[k] for k in ("drift_sin_theta", "start_residual_min", "start_residual_max")},
        }
    return out


# --------------------------------------------------------------------------- training
def training(X, Y, steps: int, say: Progress, every: int = 10) -> dict:
    """Bulk-SGD on the digits MLP, refresh every step after step 100 (default solver)."""
    model = mlp(generator=torch.Generator().manual_seed(0))
    op = HessianOperator(model, half_sum_mse, (X, Y))
    g = torch.Generator().manual_seed(1)
    out = {}
    for solver in ("warm", "lanczos"):
        say(f"training: Bulk-SGD, {steps} projected steps, eigensolver={solver!r} ...")
        model.load_state_dict(mlp(generator=torch.Generator().manual_seed(0)).state_dict())
        g.manual_seed(1)
        base = torch.optim.SGD(model.parameters(), lr=0.1)
        opt = SubspaceProjectedOptimizer(
            base, op, k=K, mode="bulk", eigensolver=solver, refresh=Every(1, start=100)
        )
        matvecs, seconds, sins = [], [], []
        for t in range(100 + steps):
            idx = torch.randint(0, X.shape[0], (50,), generator=g)
            ex = None
            if t >= 100 and (t - 100) % every == 0:
                ex = Lanczos(tol=1e-6, ncv=60).solve(op, K).eigenvectors
            opt.zero_grad()
            half_sum_mse(model(X[idx]), Y[idx]).backward()
            opt.step()
            st = opt.last_stats
            if st.refreshed and t > 100:  # t = 100 is the strategy's cold start
                matvecs.append(st.refresh_matvecs)
                seconds.append(st.refresh_seconds)
            if ex is not None:
                sins.append(float(subspace_distance(opt.basis[:, :K], ex)))
        out[solver] = {
            "refreshes": len(matvecs),
            "mean_matvecs_per_refresh": round(sum(matvecs) / len(matvecs), 1),
            "max_matvecs_per_refresh": max(matvecs),
            "mean_seconds_per_refresh": round(sum(seconds) / len(seconds), 4),
            "max_sin_theta": round(max(sins), 4),
            "mean_sin_theta": round(sum(sins) / len(sins), 4),
            "unconverged": int(opt.counters["unconverged"]),
        }
    return out


# --------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": "none used (CPU run)",
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def library_state() -> dict[str, Any]:
    """The commit the library was imported from, and its uncommitted changes (the numbers
    belong to the working tree as it was)."""
    import subprocess

    def git(*cmd: str) -> str:
        try:
            done = subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.rstrip()

    dirty = git("status", "--porcelain", "--", "subspace_optim").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": [d[3:] for d in dirty]}


def _fmt_load(load) -> str:
    return "n/a" if load is None else " / ".join(f"{x:.1f}" for x in load)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _target_lines(s: dict) -> list[str]:
    out = [f"### Targets: {s['workload']}", ""]
    if "note" in s:
        return [*out, s["note"], ""]
    b, f = s["best_cold"], s["fastest_cold"]
    out.append(
        f"Our best cold solver (fewest matvecs among the Lanczos, BlockLanczos, LOBPCG and "
        f"PowerIteration rows that "
        f"meet {TOL:g} in the float64 check): **{b['solver']}**, {b['matvecs']} matvecs; our "
        f"fastest: **{f['solver']}**, {f['seconds']} s."
    )
    out.append("")
    if "a" in s:
        a = s["a"]
        out.append(
            f"* (a) matvecs vs scipy `eigsh` at the same residual: {a['ours']} vs {a['eigsh']} "
            f"({a['eigsh_row']}, ARPACK's own products) = **{a['ratio']}** "
            f"(target: fewer, <= 1): **{'met' if a['met'] else 'missed'}**."
        )
    else:
        out.append("* (a) not evaluated: no scipy eigsh row met the residual target.")
    if "b" in s:
        b2 = s["b"]
        out.append(
            f"* (b) wall time, our fastest cold solver / fastest anchor that met {TOL:g} "
            f"({b2['anchor_solver']}, {b2['anchor']} s): {b2['ours']} / {b2['anchor']} = "
            f"**{b2['ratio']}** (target <= 0.5): **{'met' if b2['met'] else 'missed'}**."
        )
    else:
        out.append(f"* (b) not evaluated: no anchor ran and met {TOL:g} here.")
    if "c" in s:
        c = s["c"]
        tail = "" if c["warm_meets_tol"] else f" (the warm result did not meet {TOL:g})"
        out.append(
            f"* (c) our cheapest warm start after 1 SGD step ({c['warm_solver']}, tol {TOL:g}) "
            f"/ best cold: {c['warm']} / {c['cold']} = **{c['ratio']}** (target <= 1/3): "
            f"**{'met' if c['met'] else 'missed'}**{tail}. The step moved the exact top-{K} "
            f"by sin θ = {c['drift_sin_theta']}; the previous exact eigenvectors have relative "
            f"residuals {c['start_residual_min']:.1e} to {c['start_residual_max']:.1e} at the "
            f"new parameters, so every pair's residual must shrink "
            f"{c['start_residual_min'] / TOL:.0f}–{c['start_residual_max'] / TOL:.0f}× from "
            f"its warm start."
        )
    out.append("")
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    st = results["anchors"]
    lib = results["library"]
    lines = [
        "# Eigensolver benchmark",
        "",
        f"Generated by `benchmarks/eigensolvers.py` in {results['total_minutes']} minutes. "
        "To regenerate, build the environment with the anchor libraries (torch stays the one "
        "already installed: `--no-deps`), then run the command, from the repository root:",
        "",
        "```sh",
        *VENV_SETUP,
        results["command"],
        "```",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, no GPU, Python {m['python']}, "
        f"torch {m['torch']} with {m['torch_threads']} thread(s) "
        f"(`OMP_NUM_THREADS={m['omp_num_threads']}`), {m.get('blas', 'BLAS threads not set')}; "
        f"load average (1/5/15 min) "
        f"{_fmt_load(m['load_average_at_start'])} at the start and "
        f"{_fmt_load(m.get('load_average_at_end'))} at the end. Wall times of the cold solvers, the scipy "
        f"adapter and the anchors are the fastest of {results['repeats']} identical seeded runs "
        "(same matvecs each time); the warm rows are single runs. On a loaded machine compare "
        "matvecs, and wall times only within one table.",
        "",
        f"Library: `subspace_optim` at commit {lib['commit'] or 'unknown'}"
        + (
            f", with uncommitted changes in {', '.join(lib['dirty'])}"
            if lib["dirty"]
            else " (no uncommitted changes)"
        )
        + ".",
        "",
        "Anchors (same process, same torch, same model and data): "
        + "; ".join(
            f"{name} {s['version']}" if s["available"] else f"{name} **not run** ({s['reason']})"
            for name, s in st.items()
        )
        + ".",
        "",
        f"Top-{K} eigenpairs of full-batch Hessians ({results['examples']} digits examples, "
        f"loss 0.5·Σ(f−y)² averaged over examples) after {results['pre_steps']} SGD steps, "
        f"residual target {TOL:g}. Every row's returned pairs are sorted (largest first) and "
        "checked by one float64 Hessian operator (a float64 copy of the model): *max rel. "
        "residual* is `max_i ‖Hv_i − θ_i v_i‖ / |λ_1|` with the returned `θ_i` and normalized "
        "`v_i`; *max eig. error* is `max_i |θ_i − λ_i| / |λ_1|`; `sin θ` is the sine of the "
        f"largest principal angle between the span of the returned vectors and an exact top-{K} "
        "(float64 Lanczos, tol 1e-8, at the same parameters); *converged* is the solver's own "
        f"claim; *meets* is the float64 check (residual <= {TOL:g} and {K} pairs returned).",
        "",
    ]
    for wl in dict.fromkeys(r["workload"] for r in results["rows"]):
        lines += [
            f"## {wl}",
            "",
            "| solver | matvecs | seconds | max rel. residual | max eig. error | sin θ | "
            "returned | converged | meets |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        settings = []
        for r in results["rows"]:
            if r["workload"] != wl:
                continue
            if not r["run"]:
                lines.append(f"| {r['solver']} | not run: {r['reason']} | | | | | | | |")
                continue
            note = f" ({r['note']})" if "note" in r else ""
            lines.append(
                f"| {r['solver']}{note} | {r['matvecs']} | {r['seconds']} | "
                f"{r['max_rel_residual']:.2e} | {r['max_eig_error']:.2e} | {r['sin_theta']} | "
                f"{r['returned']} | {_yes(r['converged'])} | {_yes(r['meets_tol'])} |"
            )
            if "settings" in r:
                settings.append(f"* {r['solver']}: {r['settings']}")
        lines += ["", "Anchor settings:" if settings else "", *settings, ""]
        summary = next(s for s in results["summary"] if s["workload"] == wl)
        lines += _target_lines(summary)
    lines += [
        "## How the anchors' products are counted",
        "",
        "* pyhessian: calls of `pyhessian.hessian.hessian_vector_product` (one vector each), "
        "wrapped for the run; the gradient graph built at construction is in the wall time. "
        "It stops each eigenvalue on the relative change of the eigenvalue (no residual), finds "
        "the largest *magnitude* and draws its start vectors from the global generator (seeded "
        "in a forked RNG state); it runs on a copy of the model (it switches it to eval mode "
        "and leaves a graph on `.grad`). Its default `tol=1e-3` row shows what that stopping "
        "rule gives; the tight row is the setting offered to reach the residual target. "
        "*converged* for pyhessian: no eigenvalue ran into `maxIter`.",
        "* hessian-eigenthings: calls of its `HessianOperator.matvec` (one full-batch HVP each), "
        f"over every attempt: `lanczos` is one run without restart, so `max_iter` starts at "
        f"{EIGENTHINGS_FIRST_STEPS} (its default) and doubles until all {K} pairs report "
        "converged (its criterion `|β s_i| < tol·|θ_i|`), with `reorthogonalize=True`.",
        "* curvlinops: columns passed to its scipy operator (`to_scipy()`), counted by a "
        "wrapping `LinearOperator`; the loss is a module computing exactly 0.5·Σ(f−y)² averaged "
        "over examples with `reduction='mean'`; operator construction is in the wall time.",
        "* Ours: the operator's own counter (`num_matvecs`); the scipy adapter's count includes "
        f"the {K} products of its explicit residual check, which (a) subtracts.",
        "",
    ]
    train = results.get("training")
    if train:
        steps = results["train_steps"]
        lines += [
            "## Refresh every step during Bulk-SGD (digits MLP)",
            "",
            f"SGD lr 0.1, batch 50, `Every(1, start=100)`, {steps} projected steps; the "
            "strategy's first (cold) refresh is excluded from the means. `sin θ` is measured "
            "every 10 steps against an exact top-10 at the same parameters.",
            "",
            "| eigensolver | mean matvecs/refresh | max | mean s/refresh | max sin θ | "
            "mean sin θ | unconverged |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, t in train.items():
            lines.append(
                f"| `{name}` | {t['mean_matvecs_per_refresh']} | {t['max_matvecs_per_refresh']} | "
                f"{t['mean_seconds_per_refresh']} | {t['max_sin_theta']} | {t['mean_sin_theta']} | "
                f"{t['unconverged']} |"
            )
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--quick", action="store_true", help="tiny MLP, 100 examples: seconds")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="cold solves and anchors are run this many times and the fastest time is "
        "reported (default 3; 1 with --quick)",
    )
    p.add_argument("--no-anchors", dest="anchors", action="store_false")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="cap NumPy/SciPy BLAS threads, which ARPACK (scipy eigsh, curvlinops) uses "
        "(default 1: their idle threads would take the cores from the next row; 0: leave them)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/results; with --quick a new temporary folder",
    )
    p.add_argument(
        "--docs", type=Path, default=None, help="default: docs/eigensolvers_benchmark.md"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None, say: Progress = _say) -> dict[str, Any]:
    try:
        return _main(argv, say)
    finally:
        restore_blas_threads()  # the cap set in _main (main may run inside a test process)


def _main(argv: list[str] | None, say: Progress) -> dict[str, Any]:
    args = parse(argv)
    args.out = output_dir(args.out, args.quick, ROOT / "benchmarks" / "results", "eigensolvers")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    t_start = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    omp = os.environ.get("OMP_NUM_THREADS")
    command = (f"OMP_NUM_THREADS={omp} " if omp else "") + " ".join(
        [sys.executable, "benchmarks/eigensolvers.py", *argv]
    )
    machine = machine_info()
    machine["blas"] = limit_blas_threads(args.blas_threads or None)
    library = library_state()
    say(
        f"{machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, load {_fmt_load(machine['load_average_at_start'])}"
    )
    status = anchor_status()
    if not args.anchors:
        status = {n: {"available": False, "reason": "--no-anchors"} for n in ANCHORS}
    for name, s in status.items():
        say(f"anchor {name}: " + (s["version"] if s["available"] else f"not run ({s['reason']})"))
    if args.quick:
        examples, pre_steps = 100, 20
        X, Y, _ = load_digits(examples)
        model = mlp((64, 8, 10), generator=torch.Generator().manual_seed(0))
        size = sum(p.numel() for p in model.parameters())
        rows = workload(
            f"tiny MLP ({size:,} parameters)",
            model,
            X,
            Y,
            status,
            say,
            pre_steps=pre_steps,
            pyhessian_settings=[(1e-3, 100), (1e-7, 100)],
            repeats=args.repeats,
        )
        train, train_steps = None, 0
    else:
        examples, pre_steps, train_steps = 1000, 100, args.train_steps
        X, Y, _ = load_digits(examples)
        model = mlp(generator=torch.Generator().manual_seed(0))
        rows = workload(
            "digits MLP (8,970 parameters)", model, X, Y, status, say, repeats=args.repeats
        )
        cnn = small_cnn(torch.Generator().manual_seed(0))
        size = sum(p.numel() for p in cnn.parameters())
        rows += workload(
            f"small CNN ({size:,} parameters)", cnn, X, Y, status, say, repeats=args.repeats
        )
        train = training(X, Y, train_steps, say) if train_steps > 0 else None
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    summary = [summarize([r for r in rows if r["workload"] == w]) for w in workloads]
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results = {
        "command": command,
        "machine": machine,
        "library": library,
        "anchors": status,
        "examples": examples,
        "pre_steps": pre_steps,
        "train_steps": train_steps,
        "rows": rows,
        "summary": summary,
        "training": train,
        "repeats": args.repeats,
        "total_minutes": round((time.perf_counter() - t_start) / 60, 1),
    }
    md = markdown(results)
    stem = "eigensolvers.quick" if args.quick else "eigensolvers"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{stem}.md").write_text(md)
    docs = args.docs
    if docs is None and not args.quick:
        docs = ROOT / "docs" / "eigensolvers_benchmark.md"
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(md)
    print(md)
    return results


if __name__ == "__main__":
    main()
