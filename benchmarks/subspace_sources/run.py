"""Which subspace matters: Hessian, Gauss–Newton (GGN) and gradient-covariance bases (issue 17).

On scikit-learn's digits (the MLP 64-64-64-10, tanh, the first 1000 examples) and a small
CNN on the same digits as 1×8×8 images (two 3×3 convolutions of 8 channels, tanh, max-pool
2, a linear head: 994 parameters; the first 300 examples, ``--cnn-examples``: its products
cost far more on a CPU), with the paper's
loss ``0.5·Σ(f − onehot)²`` averaged over the batch, SGD lr 0.1, batch 50, k = 10:

1. **Trajectory.** Plain SGD from a fixed initialization; every ``every`` steps the top
   ``k + 1`` eigenpairs of the full-data Hessian ``H``, GGN ``G``, centred gradient
   covariance ``C`` and uncentred one (the empirical Fisher ``F``), each by a cold Lanczos
   solve (``tol=1e-4``), and the principal angles between ``H``'s top-k and each other's.
   As a yardstick, the angles between ``H``'s top-k at step ``t`` and one SGD step later.
2. **Cost.** At the switch: ms per product (a block of ``k + 6`` columns and a single
   vector) and one refresh with the wrapper's default solver (:class:`~subspace_optim.WarmRefresh`)
   cold, then warm along a few SGD steps; the curvatures take turns.
3. **Dom / Bulk with each basis.** From the SGD state at the switch and on the same
   mini-batches: Dom-SGD and Bulk-SGD with the basis of ``H``, ``G`` and ``C``.
4. **Interpolation sweep.** ``mode=(a, b)`` (``θ += a·P_kΔ + b·(Δ − P_kΔ)``) with the
   Hessian basis over a grid; each row reports ``max(a·λ_1, b·λ_(k+1))`` (the largest
   curvature the scaled update moves along) against ``2/η``, and whether the loss diverged.

Writes ``subspace_sources.json`` and ``subspace_sources.md`` to ``--out`` (default
``benchmarks/results``), PNG figures (default ``docs/_static/subspace_sources``) and, with
``--docs``, the page ``docs/subspace_sources.md``. ``--quick`` (tiny sizes, seconds) writes
everything, figures included, under ``--out`` or a fresh temporary directory, never over the
committed results. ``--render`` rewrites the markdown, figures and page from the JSON.

Fewer steps than the paper-style setup (150 Dom/Bulk steps on the MLP, 40 on the CNN; the
sweep 50 and 40) keep the run near 10 minutes; it took 12 on a 2-core CPU at load average 11.

Run (the committed results)::

    python -m benchmarks.subspace_sources --threads 1 --docs
    python -m benchmarks.subspace_sources --quick          # smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import subspace_optim as so
from benchmarks.harness import (
    DOCS,
    RESULTS,
    command_line,
    compact,
    load_average,
    machine_info,
    output_dir,
)
from benchmarks.projected_training.setups import batch_schedule
from subspace_optim.experiments import cnn, half_sum_mse, load_digits, mlp

from . import page as docs
from . import report
from .summary import summarize

STEM = "subspace_sources"
#: the curvatures compared; "fisher" (the uncentred covariance) only in the trajectory
CURVATURES = ("hessian", "ggn", "covariance")


@dataclass
class Config:
    """One setup's sizes; ``FULL`` and ``QUICK`` below hold the two sets used."""

    name: str
    examples: int
    k: int = 10
    lr: float = 0.1
    batch: int = 50
    switch: int = 100
    post: int = 200
    every: int = 50  # trajectory checkpoints
    refresh_every: int = 1  # Dom / Bulk runs
    sweep_steps: int = 100
    sweep_refresh_every: int = 5
    a_grid: tuple[float, ...] = (0.0, 0.5, 1.0)
    b_grid: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    warm_steps: int = 5  # warm refreshes timed in the cost section
    seed: int = 0
    width: int = 64  # hidden width of the MLP (64: the paper-style digits network)
    tol: float = 1e-4  # Lanczos tolerance of the trajectory's spectra


FULL = {
    "mlp": Config(
        "mlp", 1000, post=150, refresh_every=2, sweep_steps=50, warm_steps=3,
        a_grid=(0.0, 1.0, 3.0, 10.0), b_grid=(0.5, 1.0, 2.0, 3.0, 10.0, 20.0),
    ),
    "cnn": Config(
        "cnn", 300, post=40, every=50, refresh_every=2, sweep_steps=40, warm_steps=3,
        a_grid=(0.0, 1.0, 3.0), b_grid=(1.0, 3.0, 20.0),
    ),
}  # fmt: skip
QUICK = {
    "mlp": Config("mlp", 60, k=3, switch=4, post=4, every=4, sweep_steps=3, sweep_refresh_every=2,
                  a_grid=(0.0, 1.0), b_grid=(1.0, 2.0), warm_steps=2, width=16, tol=1e-3),
    "cnn": Config("cnn", 60, k=3, switch=4, post=4, every=4, sweep_steps=3, sweep_refresh_every=2,
                  a_grid=(0.0, 1.0), b_grid=(1.0, 2.0), warm_steps=2, tol=1e-3),
}  # fmt: skip


# ------------------------------------------------------------------------------ setup
def make_model(cfg: Config) -> nn.Module:
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.name == "mlp":
        return mlp((64, cfg.width, cfg.width, 10), generator=g)
    return cnn(1, 8, 10, channels=8, generator=g)


def make_data(cfg: Config) -> tuple[Tensor, Tensor]:
    X, Y, _ = load_digits(cfg.examples)
    return (X, Y) if cfg.name == "mlp" else (X.reshape(-1, 1, 8, 8), Y)


def make_operator(name: str, model: nn.Module, data: tuple[Tensor, Tensor]) -> Any:
    if name == "hessian":
        return so.HessianOperator(model, half_sum_mse, data)
    if name == "ggn":
        return so.GGNOperator(model, half_sum_mse, data)
    return so.GradientCovarianceOperator(model, half_sum_mse, data, centered=name == "covariance")


@torch.no_grad()
def full_loss(model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    return float(half_sum_mse(model(data[0]), data[1]))


def sgd_step(model: nn.Module, opt: torch.optim.Optimizer, data, idx: Tensor) -> None:
    opt.zero_grad()
    half_sum_mse(model(data[0][idx]), data[1][idx]).backward()
    opt.step()


def top_pairs(op: Any, k: int, seed: int, tol: float) -> so.EigenResult:
    solver = so.Lanczos(tol=tol, max_iter=400)
    return so.top_k_eigenpairs(op, k, solver=solver, generator=torch.Generator().manual_seed(seed))


def angle_record(U: Tensor, W: Tensor) -> dict[str, Any]:
    ang = so.principal_angles(U, W)
    return {
        "angles": ang.tolist(),
        "sin_max": float(ang.max().sin()),
        "sin_mean": float(ang.sin().mean()),
    }


# ------------------------------------------------------------------ 1. the trajectory
def trajectory(cfg: Config, data, batches: list[Tensor]) -> tuple[dict[str, Any], dict]:
    """SGD from init for ``switch + post`` steps; spectra and angles every ``cfg.every``."""
    model = make_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    names = (*CURVATURES, "fisher")
    ops = {c: make_operator(c, model, data) for c in names}
    out: dict[str, Any] = {"loss": [], "points": []}
    snapshot: dict = {}
    total = cfg.switch + cfg.post
    for t in range(total + 1):
        out["loss"].append(full_loss(model, data))
        if t == cfg.switch:
            snapshot = copy.deepcopy(model.state_dict())
        if t % cfg.every == 0 or t == total:
            res = {c: top_pairs(ops[c], cfg.k + 1, seed=t, tol=cfg.tol) for c in names}
            _, grad = ops["hessian"].loss_and_grad()
            U = res["hessian"].eigenvectors[:, : cfg.k]
            point: dict[str, Any] = {"step": t, "eigenvalues": {}, "grad_alignment": {}}
            for c in names:
                point["eigenvalues"][c] = res[c].eigenvalues.tolist()
                point["grad_alignment"][c] = float(
                    so.alignment(grad, res[c].eigenvectors[:, : cfg.k])
                )
                if c != "hessian":
                    point[f"hessian_vs_{c}"] = angle_record(U, res[c].eigenvectors[:, : cfg.k])
            if t < total:  # the yardstick: how far H's own top-k turns in one SGD step
                probe = copy.deepcopy(model)
                popt = torch.optim.SGD(probe.parameters(), lr=cfg.lr)
                sgd_step(probe, popt, data, batches[t])
                nxt = top_pairs(
                    make_operator("hessian", probe, data), cfg.k + 1, seed=t, tol=cfg.tol
                )
                point["hessian_one_step"] = angle_record(U, nxt.eigenvectors[:, : cfg.k])
            out["points"].append(point)
            print(f"  {cfg.name} step {t}: loss {out['loss'][-1]:.4f}", flush=True)
        if t < total:
            sgd_step(model, opt, data, batches[t])
    return out, snapshot


# ------------------------------------------------------------------------ 2. the cost
def costs(cfg: Config, data, snapshot: dict, batches: list[Tensor]) -> dict[str, Any]:
    """ms per product and one refresh (cold, then warm along ``warm_steps`` SGD steps)."""
    models = {c: make_model(cfg) for c in CURVATURES}
    for m in models.values():
        m.load_state_dict(snapshot)
    ops = {c: make_operator(c, models[c], data) for c in CURVATURES}
    opts = {c: torch.optim.SGD(models[c].parameters(), lr=cfg.lr) for c in CURVATURES}
    solvers = {c: so.WarmRefresh() for c in CURVATURES}
    n = ops["hessian"].shape[0]
    block = torch.randn(n, cfg.k + 6, generator=torch.Generator().manual_seed(cfg.seed))
    rec: dict[str, dict[str, Any]] = {
        c: {"block_ms": [], "single_ms": [], "warm_matvecs": [], "warm_ms": []} for c in CURVATURES
    }
    for c in CURVATURES:  # warm-up: first products build graphs and caches
        ops[c].matmat(block[:, :2])
    order = list(CURVATURES)
    basis: dict[str, Tensor] = {}
    gen = torch.Generator().manual_seed(cfg.seed)
    for rep in range(cfg.warm_steps + 1):
        order = order[1:] + order[:1]  # the curvatures take turns, so load hits each alike
        for c in order:
            if rep < 3:
                t0 = time.perf_counter()
                ops[c].matmat(block)
                t1 = time.perf_counter()
                ops[c].matvec(block[:, 0])
                t2 = time.perf_counter()
                rec[c]["block_ms"].append(1e3 * (t1 - t0) / block.shape[1])
                rec[c]["single_ms"].append(1e3 * (t2 - t1))
            t0 = time.perf_counter()
            res = solvers[c].solve(ops[c], cfg.k + 1, init=basis.get(c), generator=gen)
            ms = 1e3 * (time.perf_counter() - t0)
            basis[c] = res.eigenvectors
            if rep == 0:
                rec[c]["cold_matvecs"], rec[c]["cold_ms"] = res.num_matvecs, ms
            else:
                rec[c]["warm_matvecs"].append(res.num_matvecs)
                rec[c]["warm_ms"].append(ms)
            sgd_step(models[c], opts[c], data, batches[cfg.switch + rep])
    for r in rec.values():
        for key in ("block_ms", "single_ms", "warm_matvecs", "warm_ms"):
            r[f"{key}_median"] = statistics.median(r[key])
    return rec


# ----------------------------------------------------------- 3. and 4. projected runs
def projected_run(
    cfg: Config,
    data,
    snapshot: dict,
    batches: list[Tensor],
    curvature: str,
    mode: str | tuple[float, float],
    steps: int,
    refresh_every: int,
) -> dict[str, Any]:
    """SGD wrapped in :class:`SubspaceProjectedOptimizer` from the switch snapshot."""
    model = make_model(cfg)
    model.load_state_dict(snapshot)
    base = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    try:
        opt = so.SubspaceProjectedOptimizer(
            base,
            make_operator(curvature, model, data),
            k=cfg.k,
            mode=mode,
            num_extra=1,
            refresh=so.Every(refresh_every),
            generator=torch.Generator().manual_seed(cfg.seed),
        )
    except (TypeError, ValueError) as err:
        if isinstance(mode, str):
            raise
        raise RuntimeError(
            f"the (a, b) sweep needs SubspaceProjectedOptimizer(mode=(a, b)) (issue 17 item 3), "
            f"which refused {mode}: {err}"
        ) from err
    out: dict[str, Any] = {"loss": [full_loss(model, data)], "eigenvalues": []}
    t0 = time.perf_counter()
    for t in range(steps):
        opt.zero_grad()
        half_sum_mse(
            model(data[0][batches[cfg.switch + t]]), data[1][batches[cfg.switch + t]]
        ).backward()
        opt.step()
        if opt.last_stats.refreshed:
            out["eigenvalues"].append(list(opt.last_stats.eigenvalues))
        out["loss"].append(full_loss(model, data))
    out["seconds"] = time.perf_counter() - t0
    out["counters"] = {k: float(v) for k, v in opt.counters.items()}
    return out


def study(cfg: Config) -> dict[str, Any]:
    data = make_data(cfg)
    total = cfg.switch + cfg.post
    batches = batch_schedule(cfg.examples, cfg.batch, total, seed=cfg.seed)
    t0 = time.perf_counter()
    traj, snapshot = trajectory(cfg, data, batches)
    block: dict[str, Any] = {"config": asdict(cfg), "trajectory": traj}
    block["n_params"] = sum(p.numel() for p in make_model(cfg).parameters())
    block["seconds"] = {"trajectory": time.perf_counter() - t0}
    t0 = time.perf_counter()
    block["costs"] = costs(cfg, data, snapshot, batches)
    block["seconds"]["costs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs = {}
    for c in CURVATURES:
        for mode in ("dominant", "bulk"):
            runs[f"{c}/{mode}"] = projected_run(
                cfg, data, snapshot, batches, c, mode, cfg.post, cfg.refresh_every
            )
            print(f"  {cfg.name} {c}/{mode}: {runs[f'{c}/{mode}']['loss'][-1]:.4f}", flush=True)
    block["runs"] = runs
    block["seconds"]["dom_bulk"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sweep = []
    for a in cfg.a_grid:
        for b in cfg.b_grid:
            r = projected_run(
                cfg, data, snapshot, batches, "hessian", (a, b), cfg.sweep_steps,
                cfg.sweep_refresh_every,
            )  # fmt: skip
            r.update(a=a, b=b)
            sweep.append(r)
            print(f"  {cfg.name} sweep ({a}, {b}): {r['loss'][-1]:.4g}", flush=True)
    block["sweep"] = sweep
    block["seconds"]["sweep"] = time.perf_counter() - t0
    return block


# ------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the default paths resolved (``--quick``: all under ``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds), into a temp dir")
    p.add_argument("--setups", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument("--figures", type=Path, default=None, help="figure directory")
    p.add_argument(
        "--docs", nargs="?", type=Path, const=DOCS / f"{STEM}.md", default=None,
        help="also write the docs page (default path docs/subspace_sources.md)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--cnn-examples", type=int, default=None, help="examples for the CNN")
    p.add_argument("--render", action="store_true", help="rewrite outputs from the JSON only")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, RESULTS, STEM)
    if args.quick and args.docs == DOCS / f"{STEM}.md":
        args.docs = args.out / f"{STEM}_page.md"  # --quick never touches the committed page
    if args.figures is None:
        args.figures = args.out / "figures" if args.quick else DOCS / "_static" / STEM
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        results = json.loads((args.out / f"{STEM}.json").read_text())
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        configs = QUICK if args.quick else FULL
        command = command_line(STEM, argv)
        results = {"command": command, "quick": args.quick, "setups": {}}
        results["machine"] = machine_info(torch.device("cpu"))
        t_all = time.perf_counter()
        for name in args.setups:
            cfg = copy.deepcopy(configs[name])
            if name == "cnn" and args.cnn_examples is not None:
                cfg.examples = args.cnn_examples
            print(f"{name}: {asdict(cfg)}", flush=True)
            results["setups"][name] = study(cfg)
        results["machine"]["load_average_at_end"] = load_average()
        results["wall_seconds"] = time.perf_counter() - t_all
        torch.set_num_threads(threads)  # main may run inside a test process
        # the outputs are made from what the JSON keeps, so --render reproduces them exactly
        results = compact(results)
    results["summary"] = {n: summarize(b) for n, b in results["setups"].items()}
    if not args.render:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{STEM}.json").write_text(json.dumps(compact(results), default=str))
    figures = docs.plot(results, args.figures)
    (args.figures / "measured.inc").write_text(docs.guide_include(results))
    md = report.markdown(results)
    (args.out / f"{STEM}.md").write_text(md)
    print(md)
    if args.docs is not None:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(docs.page(results, md, figures, args.docs.parent))
    return results


if __name__ == "__main__":
    main()
