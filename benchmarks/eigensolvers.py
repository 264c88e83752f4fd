"""Eigensolvers side by side on the same Hessians, in one process.

Workloads: the full-batch Hessian (1000 digits examples, 0.5·Σ(f−y)² loss) of the digits MLP
(64-64-64-10, tanh, 8,970 parameters) and of a small CNN (conv 3×3 ×8, tanh, linear; 2,970
parameters), each after 100 SGD steps (lr 0.1, batch 50), top-10, relative residual 1e-3.

Rows: our Lanczos, LOBPCG, PowerIteration, scipy ``eigsh`` on our operator (the adapter), and
the warm refresh (``WarmRefresh``): its cold start, then one refresh after 1 and after 10
more SGD steps from the basis and guard columns of that start. Then a training run (Bulk-SGD, refresh every step after step 100)
reports the warm refresh's matvecs per step and ``sin θ`` against an exact top-10.

Anchor libraries (pyhessian, hessian-eigenthings, curvlinops) are not run by this script.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/eigensolvers.py [--train-steps 60]

Writes ``benchmarks/results/eigensolvers.{md,json}`` and ``docs/eigensolvers_benchmark.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from subspace_optim import (
    LOBPCG,
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

ROOT = Path(__file__).resolve().parents[1]
K, TOL = 10, 1e-3


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


def timed(solver, op, init=None):
    before = op.num_matvecs
    t0 = time.perf_counter()
    res = solver.solve(op, K, init=init, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t0
    assert res.num_matvecs == op.num_matvecs - before
    return res, seconds


def row(name, res, seconds, exact=None):
    rel = float(res.relative_residuals().max())
    out = {
        "solver": name,
        "matvecs": res.num_matvecs,
        "seconds": round(seconds, 3),
        "max_rel_residual": float(f"{rel:.3g}"),
        "converged": res.converged,
    }
    if exact is not None:
        out["sin_theta"] = round(float(subspace_distance(res.eigenvectors, exact)), 4)
    return out


def workload(name: str, model: nn.Module, X, Y) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    sgd(model, X, Y, 100, g)
    op = HessianOperator(model, half_sum_mse, (X, Y))
    exact = Lanczos(tol=1e-6, ncv=60).solve(op, K).eigenvectors
    rows = []
    cold = {}
    for label, solver in [
        ("Lanczos", Lanczos(tol=TOL)),
        ("LOBPCG", LOBPCG(tol=TOL)),
        ("PowerIteration (block)", PowerIteration(tol=TOL, max_iter=1000)),
        ("scipy eigsh (adapter)", ScipyEigsh(tol=TOL)),
    ]:
        res, s = timed(solver, op)
        r = row(label, res, s, exact)
        if label.startswith("scipy"):
            r["note"] = f"includes {K} matvecs of the residual check"
        rows.append(r)
        cold[label] = res
    # warm refreshes from the Lanczos basis after 1 and 10 SGD steps, at the same residual
    # the strategy's own cold start at step 0 (its guard columns are part of its state), then
    # one warm refresh after 1 and after 10 SGD steps
    state = {n: p.detach().clone() for n, p in model.state_dict().items()}
    starts = {}
    for tol in (TOL, 3e-3):
        warm = WarmRefresh(tol=tol)
        res, s = timed(warm, op)
        rows.append(row(f"WarmRefresh tol={tol:g}, its cold start", res, s, exact))
        starts[tol] = (res.eigenvectors, warm.state_dict())
    for steps in (1, 10):
        model.load_state_dict(state)
        sgd(model, X, Y, steps, torch.Generator().manual_seed(2))
        ex = Lanczos(tol=1e-6, ncv=60).solve(op, K).eigenvectors
        for tol in (TOL, 3e-3):
            warm = WarmRefresh(tol=tol)
            basis, kept = starts[tol]
            warm.load_state_dict(kept)
            res, s = timed(warm, op, init=basis)
            rows.append(row(f"WarmRefresh tol={tol:g}, after {steps} SGD step(s)", res, s, ex))
        res, s = timed(Lanczos(tol=TOL), op)
        rows.append(row(f"Lanczos cold, after {steps} SGD step(s)", res, s, ex))
    for r in rows:
        r["workload"] = name
    return rows


def training(steps: int, every: int = 10) -> dict:
    """Bulk-SGD on the digits MLP, refresh every step after step 100 (default solver)."""
    X, Y, _ = load_digits()
    model = mlp(generator=torch.Generator().manual_seed(0))
    op = HessianOperator(model, half_sum_mse, (X, Y))
    g = torch.Generator().manual_seed(1)
    out = {}
    for solver in ("warm", "lanczos"):
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


def markdown(rows: list[dict], train: dict | None, machine: str, steps: int) -> str:
    lines = [
        "# Eigensolver benchmark",
        "",
        f"Generated by `benchmarks/eigensolvers.py` on {machine}.",
        "",
        f"Top-{K} eigenpairs of full-batch Hessians (1000 digits examples) after 100 SGD steps, "
        f"relative residual target {TOL:g} (`‖Hv − θv‖ <= tol·|θ_1|`). `sin θ` is the sine of "
        "the largest principal angle to an exact top-10 (Lanczos, tol 1e-6). Wall times are "
        "single runs on a shared machine: compare them within a table only.",
        "",
    ]
    for wl in dict.fromkeys(r["workload"] for r in rows):
        lines += [
            f"## {wl}",
            "",
            "| solver | matvecs | seconds | max rel. residual | converged | sin θ |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for r in rows:
            if r["workload"] == wl:
                note = f" ({r['note']})" if "note" in r else ""
                lines.append(
                    f"| {r['solver']}{note} | {r['matvecs']} | {r['seconds']} | "
                    f"{r['max_rel_residual']:.2e} | {r['converged']} | {r.get('sin_theta', '')} |"
                )
        lines.append("")
    if train:
        lines += [
            "## Refresh every step during Bulk-SGD (digits MLP)",
            "",
            f"SGD lr 0.1, batch 50, `Every(1, start=100)`, {steps} projected steps; the "
            "strategy's first (cold) refresh is excluded from the means. `sin θ` is measured "
            "every 10 steps against an exact top-10 at the same parameters.",
            "",
            "| eigensolver | mean matvecs/refresh | max | mean s/refresh | max sin θ | mean sin θ | unconverged |",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = (
        f"a {os.cpu_count()}-core {platform.machine()} CPU shared with other jobs, no GPU, "
        f"Python {platform.python_version()}, torch {torch.__version__}, 1 thread"
    )
    X, Y, _ = load_digits()
    rows = workload(
        "digits MLP (8,970 parameters)", mlp(generator=torch.Generator().manual_seed(0)), X, Y
    )
    cnn = small_cnn(torch.Generator().manual_seed(0))
    size = sum(p.numel() for p in cnn.parameters())
    rows += workload(f"small CNN ({size:,} parameters)", cnn, X, Y)
    train = training(args.train_steps) if args.train_steps > 0 else None
    md = markdown(rows, train, machine, args.train_steps)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "eigensolvers.json").write_text(
        json.dumps({"machine": machine, "rows": rows, "training": train}, indent=2)
    )
    (results / "eigensolvers.md").write_text(md)
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "eigensolvers_benchmark.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
