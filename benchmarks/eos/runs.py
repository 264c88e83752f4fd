"""The runs of the Edge-of-Stability study: full-batch GD from initialization with its
sharpness traced, and each variant from the GD state at the switch."""

from __future__ import annotations

import copy
import time
import warnings

import torch

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, mlp


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
