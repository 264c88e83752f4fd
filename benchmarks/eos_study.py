"""Full-batch GD at the Edge of Stability, and Dom-GD / Bulk-GD there (issue 4).

Digits (1000 examples), MLP 64-64-64-10 (tanh), the paper's MSE, full-batch GD. Runs:

1. GD from initialization, tracking the top eigenvalues against ``2/η`` with
   :class:`subspace_optim.SharpnessTracker` (progressive sharpening, then EoS).
2. From the same state at ``--switch``: GD, Dom-GD (k=10), Bulk-GD (k=10, tracking λ_11..λ_13
   against 2/η) and Bulk-GD with ``adaptive_k`` (every eigenvalue above a fraction of 2/η,
   capped), each for ``--post`` steps with a warm-started basis refreshed every step.

Writes ``docs/_static/eos_sharpening.png``, ``docs/_static/eos_variants.png``,
``docs/_static/eos_study.json`` and ``docs/eos_findings.md``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/eos_study.py            # ~15-25 min on a loaded 2-core CPU
    OMP_NUM_THREADS=1 python benchmarks/eos_study.py --quick    # smoke run, minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "docs" / "_static"


def full_loss(model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(half_sum_mse(model(X), Y))


def gd_phase(args, X, Y):
    """GD from init to the switch (and beyond, for the sharpness trace)."""
    model = mlp(generator=torch.Generator().manual_seed(args.seed))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    op = so.HessianOperator(model, half_sum_mse, (X, Y))
    tracker = so.SharpnessTracker(op, num_eigs=3, every=args.track_every)
    trace = {"step": [], "loss": [], "eig": []}
    snapshot = None
    for t in range(args.switch + args.post):
        if t == args.switch:
            snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        opt.zero_grad()
        loss = half_sum_mse(model(X), Y)
        loss.backward()
        rec = tracker.update(opt)
        if rec is not None:
            trace["step"].append(t)
            trace["loss"].append(float(loss.detach()))
            trace["eig"].append(list(rec.eigenvalues))
        opt.step()
    return trace, snapshot, tracker.num_matvecs


def variant(args, X, Y, snapshot, mode: str, adaptive: float | None):
    model = mlp(generator=torch.Generator().manual_seed(args.seed))
    model.load_state_dict(snapshot[0])
    base = torch.optim.SGD(model.parameters(), lr=args.lr)
    base.load_state_dict(snapshot[1])
    op = so.HessianOperator(model, half_sum_mse, (X, Y))
    k = args.k if adaptive is None else args.k_cap
    extra = 3
    solver = so.PowerIteration(tol=1e-3, max_iter=args.iters, block_size=k + extra + 4)
    opt = so.SubspaceProjectedOptimizer(
        base,
        op,
        k=k,
        mode=mode,
        num_extra=extra,
        eigensolver=solver,
        refresh=so.Every(5 if mode == "none" else 1),
        adaptive_k=adaptive,
    )
    out = {"loss": [], "eig": [], "active_k": [], "warned_at": None, "nonfinite_params": False}
    t0 = time.perf_counter()
    for t in range(args.post):
        opt.zero_grad()
        loss = half_sum_mse(model(X), Y)
        loss.backward()
        out["loss"].append(float(loss.detach()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step()
        if out["warned_at"] is None and any(
            issubclass(w.category, so.EdgeOfStabilityWarning) for w in caught
        ):
            out["warned_at"] = t
        out["eig"].append(list(opt.last_stats.eigenvalues))
        out["active_k"].append(opt.active_k)
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            out["nonfinite_params"] = True
    out["final_loss"] = full_loss(model, X, Y)
    out["seconds"] = time.perf_counter() - t0
    out["counters"] = dict(opt.counters)
    return out


def plot(args, trace, runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thr = 2 / args.lr
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    eig = list(zip(*trace["eig"]))
    for i, e in enumerate(eig):
        ax[0].plot(trace["step"], e, label=f"λ_{i + 1}", lw=1)
    ax[0].axhline(thr, color="k", ls="--", lw=1, label="2/η")
    ax[0].axvline(args.switch, color="gray", ls=":", lw=1)
    ax[0].set_xlabel("GD step")
    ax[0].set_title(f"Sharpness, full-batch GD, η = {args.lr}")
    ax[0].legend(fontsize=8)
    ax[1].semilogy(trace["step"], trace["loss"], color="k", lw=1)
    ax[1].set_xlabel("GD step")
    ax[1].set_title("Training loss")
    fig.tight_layout()
    fig.savefig(args.static / "eos_sharpening.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    steps = [args.switch + t for t in range(args.post)]
    for name, r in runs.items():
        ax[0].semilogy(steps, r["loss"], label=name, lw=1)
    ax[0].set_ylim(1e-2, 1e2)
    ax[0].set_title("Loss after the switch (clipped at 100)")
    ax[0].set_xlabel("step")
    ax[0].legend(fontsize=8)
    for name in ("Bulk-GD (k=10)", "Bulk-GD (adaptive k)"):
        r = runs[name]
        lam_top = [e[0] for e in r["eig"]]
        lam_next = [e[k] if k < len(e) else math.nan for e, k in zip(r["eig"], r["active_k"])]
        ax[1].semilogy(steps, lam_top, lw=1, label=f"{name}: λ_1")
        ax[1].semilogy(steps, lam_next, lw=1, ls="--", label=f"{name}: λ_(k+1)")
    ax[1].axhline(2 / args.lr, color="k", ls=":", lw=1, label="2/η")
    ax[1].set_ylim(1, 1e3)
    ax[1].set_title("Removed (λ_1) vs kept (λ_(k+1)) curvature")
    ax[1].set_xlabel("step")
    ax[1].legend(fontsize=7)
    ax[2].plot(steps, runs["Bulk-GD (adaptive k)"]["active_k"], lw=1)
    ax[2].set_title(f"adaptive k (λ ≥ {args.fraction}·2/η, cap {args.k_cap})")
    ax[2].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(args.static / "eos_variants.png", dpi=110)
    plt.close(fig)


def report(args, trace, runs, machine: str) -> str:
    thr = 2 / args.lr
    first = trace["eig"][0][0]
    edge = next((s for s, e in zip(trace["step"], trace["eig"]) if e[0] >= thr), None)
    late = [e[0] for s, e in zip(trace["step"], trace["eig"]) if s >= args.switch - 50]
    L_s = runs["GD"]["loss"][0]
    L_b = runs["GD"]["final_loss"]
    lines = [
        "# Full-batch GD at the Edge of Stability: Dom-GD and Bulk-GD",
        "",
        f"Produced by `benchmarks/eos_study.py {' '.join(args.argv)}` on {machine}.",
        "Digits (1000 examples), MLP 64-64-64-10 (tanh), MSE (½‖f − y‖² averaged), full-batch GD,",
        f"η = {args.lr} (2/η = {thr:.3f}), seed {args.seed}. Variants start from the GD state at step",
        f"{args.switch} and run {args.post} steps with the basis refreshed every step (warm-started",
        f"block power iteration, {args.iters} iterations; the GD row only tracks, every 5 steps).",
        "",
        "## Recipe",
        "",
        "```python",
        "import torch, subspace_optim as so",
        "op = so.HessianOperator(model, loss_fn, (X, Y))        # full batch",
        "lr = so.pick_learning_rate(op, c=0.8).lr               # start below the edge: 0.8 · 2/λ_1",
        "opt = torch.optim.SGD(model.parameters(), lr=lr)",
        "tracker = so.SharpnessTracker(op, num_eigs=3, every=5) # warm-started λ_1..λ_3",
        "for t in range(steps):",
        "    opt.zero_grad(); loss_fn(model(X), Y).backward()",
        "    rec = tracker.update(opt)                          # threshold 2/η read off the optimizer",
        "    if rec is not None and rec.at_edge: ...            # λ_1 >= 2/η: at the Edge of Stability",
        "    opt.step()",
        "# Dom-GD / Bulk-GD there: wrap the same optimizer; num_extra tracks λ_(k+1) against 2/η",
        "proj = so.SubspaceProjectedOptimizer(opt, op, k=10, mode='bulk', num_extra=3)",
        "# or let k follow the spectrum: every eigenvalue above 0.9 · 2/η, at most 30",
        "proj = so.SubspaceProjectedOptimizer(opt, op, k=30, mode='bulk', num_extra=3, adaptive_k=0.9)",
        "```",
        "",
        "In Bulk mode the wrapper warns (`so.EdgeOfStabilityWarning`) when λ_(k+1) exceeds the",
        "optimizer's stability threshold (`so.stability_threshold(opt)`: 2/η for GD, (2 + 2β)/η",
        "with heavy-ball momentum), and counts such refreshes in `proj.counters['unstable_refreshes']`.",
        "",
        "## Progressive sharpening, then the edge",
        "",
        f"λ_1 starts at {first:.2f} and first reaches 2/η = {thr:.2f} at step {edge}; over the 50",
        f"steps before the switch it stays in [{min(late):.2f}, {max(late):.2f}] (hovering above 2/η), while the",
        "loss keeps decreasing non-monotonically.",
        "",
        "![sharpening](_static/eos_sharpening.png)",
        "",
        "## Dom-GD and Bulk-GD at the edge",
        "",
        "| run | loss at switch | +50 | +100 | +150 | final | progress ratio | max λ_1 | max λ_(k+1) | first EoS warning | NaN in params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        ratio = (L_s - r["final_loss"]) / (L_s - L_b) if L_s != L_b else math.nan
        lam1 = max(e[0] for e in r["eig"]) if r["eig"] and r["eig"][0] else math.nan
        nxt = (
            [e[k] for e, k in zip(r["eig"], r["active_k"]) if k < len(e)]
            if r["eig"] and r["eig"][0]
            else []
        )
        at = [r["loss"][j] if j < len(r["loss"]) else math.nan for j in (50, 100, 150)]
        lines.append(
            f"| {name} | {L_s:.4f} | {at[0]:.3g} | {at[1]:.3g} | {at[2]:.3g} | "
            f"{r['final_loss']:.3g} | {ratio:.3g} | {lam1:.3g} | "
            f"{max(nxt) if nxt else math.nan:.3g} | {r['warned_at'] if r['warned_at'] is not None else '-'} | "
            f"{'yes' if r['nonfinite_params'] else 'no'} |"
        )
    ad = runs["Bulk-GD (adaptive k)"]["active_k"]
    lines += [
        "",
        "Progress ratio = (L_switch − L_variant) / (L_switch − L_GD). λ_1 is the top eigenvalue",
        "(for Bulk: of the directions the projection removes); λ_(k+1) is the top eigenvalue the",
        "projected update still moves along. Eigenvalues are the tracked ones",
        f"(k + 3 of them). Adaptive k: between {min(ad)} and {max(ad)} (median {sorted(ad)[len(ad) // 2]}).",
        "",
        "![variants](_static/eos_variants.png)",
        "",
        "## What this shows",
        "",
    ]
    lines += args.findings(runs, L_s, L_b, thr)
    return "\n".join(lines) + "\n"


def findings(runs, L_s, L_b, thr):
    gd = runs["GD"]["loss"]
    out = []
    for name, r in runs.items():
        if name == "GD":
            continue
        loss = r["loss"]
        best = min(range(len(loss)), key=lambda j: loss[j])
        ahead = [j for j in range(len(loss)) if loss[j] <= gd[j]]
        blow = next((j for j in range(len(loss)) if loss[j] > 2 * L_s), None)
        ratio = (L_s - r["final_loss"]) / (L_s - L_b)
        text = (
            f"* **{name}**: lowest loss {loss[best]:.4f} at +{best}; "
            f"at or below GD's loss on {len(ahead)} of {len(loss)} steps"
        )
        if blow is None:
            text += f"; ends with {ratio:.0%} of GD's progress."
        else:
            text += (
                f"; the loss first exceeds twice its value at the switch at +{blow} and the run "
                f"diverges (final loss {r['final_loss']:.3g}). λ_(k+1) was above 2/η after "
                f"{int(r['counters'].get('unstable_refreshes', 0))} of {len(loss)} refreshes."
            )
        out.append(text)
    out += [
        "",
        "Reading (this run; see the figures): Dom-GD stalls, close to the paper's plateau.",
        "Bulk-GD with the paper's fixed k = 10 does *not* train at the edge on this problem: the",
        "removed top directions are no longer held at 2/η by the edge's self-stabilization (their",
        "eigenvalues grow far above it), λ_(k+1) passes 2/η within a few steps, and the loss",
        "rises and finally diverges. With k chosen adaptively (every eigenvalue above 0.9 · 2/η,",
        "at most 30) k reaches its cap almost at once; Bulk-GD then trains faster than GD for",
        "about 100 steps (the paper's Figures 9–10 report Bulk-GD training well at the edge),",
        "even after λ_31 passed 2/η and the wrapper warned, and then destabilizes as well.",
        "The warning comes tens of steps before the loss rises: early enough to act on (stop,",
        "raise the cap, lower η).",
        "",
        "Caveats: one seed, one architecture, one η; the basis comes from 3 warm block-power",
        "iterations per step (not fully converged at the edge, where the top of the spectrum is",
        "clustered). The parameters never held NaN (the wrapper undoes non-finite updates), but",
        "the wrapper does not stop a finite divergence: that is the user's call after the warning.",
    ]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=0.7)
    p.add_argument("--switch", type=int, default=200)
    p.add_argument("--post", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--k-cap", type=int, default=30)
    p.add_argument("--fraction", type=float, default=0.9)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--track-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="switch 60, 30 steps: a smoke run")
    p.add_argument(
        "--from-json", action="store_true", help="rewrite figures and report from eos_study.json"
    )
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    if args.quick:
        args.switch, args.post, args.track_every = 60, 30, 10
    args.findings = findings
    torch.set_num_threads(1)
    # a quick run writes its figures and JSON to a temporary folder, never over docs/_static
    args.static = Path(tempfile.mkdtemp(prefix="eos_quick_")) if args.quick else STATIC
    args.static.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        saved = json.loads((STATIC / "eos_study.json").read_text())
        for key, value in saved["args"].items():
            if key not in ("argv", "from_json", "static"):
                setattr(args, key, value)
        args.argv = saved["args"]["argv"]
        if isinstance(args.argv, str):
            args.argv = []
        plot(args, saved["gd_trace"], saved["runs"])
        (ROOT / "docs" / "eos_findings.md").write_text(
            report(args, saved["gd_trace"], saved["runs"], saved.get("machine", "see header"))
        )
        return
    X, Y, _ = load_digits()
    t0 = time.perf_counter()
    trace, snapshot, mv = gd_phase(args, X, Y)
    print(f"GD phase: {time.perf_counter() - t0:.0f}s, {mv} HVPs", flush=True)
    runs = {}
    for name, mode, adaptive in [
        ("GD", "none", None),
        ("Dom-GD (k=10)", "dominant", None),
        ("Bulk-GD (k=10)", "bulk", None),
        ("Bulk-GD (adaptive k)", "bulk", args.fraction),
    ]:
        runs[name] = variant(args, X, Y, snapshot, mode, adaptive)
        r = runs[name]
        print(
            f"{name}: final {r['final_loss']:.4f} in {r['seconds']:.0f}s, warned at {r['warned_at']}",
            flush=True,
        )
    machine = (
        f"{platform.machine()} CPU ({torch.get_num_threads()} thread), Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    plot(args, trace, runs)
    (args.static / "eos_study.json").write_text(
        json.dumps(
            {
                "args": {k: v for k, v in vars(args).items() if k not in ("findings", "static")},
                "gd_trace": trace,
                "runs": runs,
                "machine": machine,
            },
            default=str,
        )
    )
    if not args.quick:
        (ROOT / "docs" / "eos_findings.md").write_text(report(args, trace, runs, machine))
    else:
        print(report(args, trace, runs, machine))


if __name__ == "__main__":
    main()
