"""What a per-step refresh must spend to keep the basis within sin θ of the exact top-k.

On the digits MLP (8,970 parameters, 1000 examples, k = 10) SGD (lr 0.1, batch 50) runs to
step 100; then ``--steps`` Bulk-SGD steps follow, each projected with the exact top-10 basis,
which is computed at every step in float64 (:class:`~subspace_optim.Lanczos`, ``tol=1e-7``,
16 pairs). Along that fixed trajectory:

* the *drift*: ``sin θ`` between the exact top-10 subspaces ``j`` steps apart (how stale a
  basis may be, i.e. whether refreshing less often than every step can work);
* each *strategy* (a warm-started eigensolver, refreshed every step or every other step)
  replays the trajectory on the float32 Hessian from its own cold start at the first step;
  per later step it reports the HVP columns spent (a block of ``b`` counts ``b``) and the
  ``sin θ`` of its top-10 basis to the exact one at the same parameters (every step, not a
  sample). A strategy that skips a step keeps its previous basis there.

Counts, not times: ``cpu_s`` is the process CPU time of the whole replay, for orientation
only. Run (about 5 minutes on one core)::

    python -m benchmarks.refresh_analysis            # writes benchmarks/results/refresh_analysis.json
    python -m benchmarks.refresh_analysis --steps 30 --out /tmp/ra
    python -m benchmarks.refresh_analysis --quick    # 4 steps, a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import subspace_optim as so
from benchmarks.harness import RESULTS, output_dir
from benchmarks.projected_training.setups import (
    batch_schedule,
    make_setup,
    params_of,
    write_flat,
)
from subspace_optim._utils import flatten

K = 10


def strategies() -> list[tuple[str, Any, int]]:
    """``(label, solver factory, refresh every)`` for each strategy replayed."""
    return [
        ("WarmRefresh() (the default)", lambda: so.WarmRefresh(), 1),
        (
            "WarmRefresh(tol=3e-3) (residual target, the former default)",
            lambda: so.WarmRefresh(tol=3e-3),
            1,
        ),
        ("WarmRefresh(tol=5e-3)", lambda: so.WarmRefresh(tol=5e-3), 1),
        ("WarmRefresh(tol=1e-2)", lambda: so.WarmRefresh(tol=1e-2), 1),
        ("WarmRefresh(sin_tol=0.045)", lambda: so.WarmRefresh(sin_tol=0.045), 1),
        ("WarmRefresh(sin_tol=0.06)", lambda: so.WarmRefresh(sin_tol=0.06), 1),
        ("WarmRefresh(sin_tol=0.04, extra=3)", lambda: so.WarmRefresh(sin_tol=0.04, extra=3), 1),
        ("WarmRefresh(extra=2, tol=3e-3)", lambda: so.WarmRefresh(extra=2, tol=3e-3), 1),
        ("WarmRefresh() every 2 steps", lambda: so.WarmRefresh(), 2),
    ]


def trajectory(steps: int) -> dict[str, list[torch.Tensor]]:
    """Parameters and exact top-16 eigenpairs (float64) at each of ``steps`` Bulk-SGD steps."""
    s = make_setup("mlp")
    params = params_of(s.model)
    batches = batch_schedule(s.X.shape[0], s.batch, 100 + steps)
    base = torch.optim.SGD(params, lr=s.lr)
    for idx in batches[:100]:
        base.zero_grad()
        s.loss_fn(s.model(s.X[idx]), s.Y[idx]).backward()
        base.step()
    s64 = make_setup("mlp", dtype=torch.float64)
    p64 = params_of(s64.model)
    op64 = so.HessianOperator(s64.model, s64.loss_fn, (s64.X, s64.Y))
    out: dict[str, list[torch.Tensor]] = {"thetas": [], "vals": [], "vecs": []}
    prev = None
    for idx in batches[100:]:
        theta = flatten(p.detach() for p in params).clone()
        write_flat(p64, theta.double())
        init = None if prev is None else prev[:, :1]
        exact = so.Lanczos(tol=1e-7, ncv=60).solve(op64, K + 6, init=init)
        prev = exact.eigenvectors
        out["thetas"].append(theta)
        out["vals"].append(exact.eigenvalues.clone())
        out["vecs"].append(exact.eigenvectors[:, :K].clone())
        U = exact.eigenvectors[:, :K].float()
        base.zero_grad()
        s.loss_fn(s.model(s.X[idx]), s.Y[idx]).backward()
        base.step()
        with torch.no_grad():
            delta = flatten(p.detach() for p in params) - theta
            write_flat(params, theta + delta - U @ (U.T @ delta))
    return out


def sin(U: torch.Tensor, V: torch.Tensor) -> float:
    return float(so.subspace_distance(so.orthonormalize(U.double()), V.double()))


def replay(traj: dict[str, list[torch.Tensor]], make: Any, every: int) -> dict[str, Any]:
    s = make_setup("mlp")
    params = params_of(s.model)
    op = so.HessianOperator(s.model, s.loss_fn, (s.X, s.Y))
    solver = make()
    write_flat(params, traj["thetas"][0])
    U = solver.solve(op, K).eigenvectors
    matvecs, sins, unconverged = [], [], 0
    c0 = time.process_time()
    for t in range(1, len(traj["thetas"])):
        write_flat(params, traj["thetas"][t])
        if t % every == 0:
            res = solver.solve(op, K, init=U)
            U = res.eigenvectors
            matvecs.append(res.num_matvecs)
            unconverged += not res.converged
        else:
            matvecs.append(0)
        sins.append(sin(U, traj["vecs"][t]))
    return {
        "config": repr(solver),
        "every": every,
        "steps": len(sins),
        "matvecs_per_step": statistics.fmean(matvecs),
        "matvecs_max": max(matvecs),
        "sin_max": max(sins),
        "sin_median": statistics.median(sins),
        "unconverged": unconverged,
        "cpu_s": time.process_time() - c0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--quick", action="store_true", help="4 steps, into a temporary folder")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/results; with --quick a new temporary folder",
    )
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, RESULTS, "refresh_analysis")
    if args.quick:
        args.steps = 4
    torch.set_num_threads(1)
    traj = trajectory(args.steps)
    V, lam = traj["vecs"], torch.stack(traj["vals"])
    drift = {}
    for j in (1, 2, 5):
        d = [sin(V[t], V[t + j]) for t in range(len(V) - j)]
        if not d:
            continue
        drift[str(j)] = {"max": max(d), "median": statistics.median(d)}
        print(
            f"exact top-{K} drift over {j} step(s): sin θ max {max(d):.3f}, median {statistics.median(d):.3f}"
        )
    ratio = float((lam[:, K - 1] / lam[:, K]).min())
    print(f"smallest λ_{K}/λ_{K + 1}: {ratio:.4f}")
    rows = []
    for label, make, every in strategies():
        r = {"label": label, **replay(traj, make, every)}
        rows.append(r)
        print(
            f"{label}: {r['matvecs_per_step']:.1f} HVP/step (max {r['matvecs_max']}), "
            f"sin θ max {r['sin_max']:.3f}, median {r['sin_median']:.3f}, "
            f"unconverged {r['unconverged']}",
            flush=True,
        )
    results = {"steps": args.steps, "k": K, "min_gap_ratio": ratio, "drift": drift, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refresh_analysis.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
