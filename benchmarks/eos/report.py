"""The Edge-of-Stability page and figures, from the runs' records (``--from-json`` makes
them again from the saved JSON)."""

from __future__ import annotations

import math


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
    """``docs/eos_findings.md``: the set-up, the recipe, the sharpening and the variants."""
    lines = _intro(args, trace, runs, machine)
    lines += _variants(args, runs)
    lines += findings(runs, runs["GD"]["loss"][0], runs["GD"]["final_loss"], 2 / args.lr)
    return "\n".join(lines) + "\n"


def _intro(args, trace, runs, machine: str) -> list[str]:
    thr = 2 / args.lr
    first = trace["eig"][0][0]
    edge = next((s for s, e in zip(trace["step"], trace["eig"]) if e[0] >= thr), None)
    late = [e[0] for s, e in zip(trace["step"], trace["eig"]) if s >= args.switch - 50]
    lines = [
        "# Full-batch GD at the Edge of Stability: Dom-GD and Bulk-GD",
        "",
        f"Produced by `{' '.join(['python -m benchmarks.eos', *args.argv])}` on {machine}.",
        "Digits (1000 examples), MLP 64-64-64-10 (tanh), MSE (½‖f − y‖² averaged), full-batch GD,",
        f"η = {args.lr} (2/η = {thr:.3f}), seed {args.seed}. Variants start from the GD state at step",
        f"{args.switch} and run {args.post} steps with the basis refreshed every step (warm-started",
        f"block power iteration, {args.iters} iterations; the GD row only tracks, every 5 steps).",
        "",
        "## Recipe",
        "",
        "```python",
        "import torch, subspace_optim as so",
        "",
        "op = so.HessianOperator(model, loss_fn, (X, Y))  # full batch",
        "lr = so.pick_learning_rate(op, c=0.8).lr  # start below the edge: 0.8 · 2/λ_1",
        "opt = torch.optim.SGD(model.parameters(), lr=lr)",
        "tracker = so.SharpnessTracker(op, num_eigs=3, every=5)  # warm-started λ_1..λ_3",
        "for t in range(steps):",
        "    opt.zero_grad()",
        "    loss_fn(model(X), Y).backward()",
        "    rec = tracker.update(opt)  # threshold 2/η read off the optimizer",
        "    if rec is not None and rec.at_edge:",
        "        ...  # λ_1 >= 2/η: at the Edge of Stability",
        "    opt.step()",
        "# Dom-GD / Bulk-GD there: wrap the same optimizer; num_extra tracks λ_(k+1) against 2/η",
        'proj = so.SubspaceProjectedOptimizer(opt, op, k=10, mode="bulk", num_extra=3)',
        "# or let k follow the spectrum: every eigenvalue above 0.9 · 2/η, at most 30",
        'proj = so.SubspaceProjectedOptimizer(opt, op, k=30, mode="bulk", num_extra=3, adaptive_k=0.9)',
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
    ]
    return lines


def _variants(args, runs) -> list[str]:
    L_s = runs["GD"]["loss"][0]
    L_b = runs["GD"]["final_loss"]
    lines = [
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
    return lines


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
