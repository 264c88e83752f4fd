"""One training run from the switch snapshot (SGD, the paper's protocol or the library),
advanced one step at a time, and the lever runs: the default with one choice changed."""

from __future__ import annotations

import copy
import inspect
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import subspace_optim as so
from benchmarks.harness import synchronize
from subspace_optim._utils import flatten

from .paper_protocol import PaperEigsh, exact_top_k
from .setups import Setup, full_loss, params_of, write_flat


# ------------------------------------------------------------------------- the runs
@dataclass
class RunSpec:
    """One training run from the switch snapshot."""

    label: str
    kind: str  # "sgd" | "reference" | "library"
    mode: str = "none"  # "dominant" | "bulk" | "none"
    optimizer_kwargs: dict[str, Any] | None = None
    operator_kwargs: dict[str, Any] | None = None
    dtype: torch.dtype | None = None  # None: the setup's dtype


class Run:
    """One training run from the switch snapshot, advanced one step at a time.

    All runs of a setup advance in lockstep (step ``t`` of every run, then step ``t + 1``,
    in an order that rotates every step), so a change of load on the machine during the
    benchmark hits every row alike.
    """

    def __init__(self, spec: RunSpec, snapshot: Setup, device: torch.device) -> None:
        s = copy.deepcopy(snapshot)
        if spec.dtype is not None:
            s.model = s.model.to(spec.dtype)
            s.X, s.Y = s.X.to(spec.dtype), s.Y.to(spec.dtype)
        self.spec, self.s, self.device = spec, s, device
        self.params = params_of(s.model)
        base = torch.optim.SGD(self.params, lr=s.lr)
        self.opt: torch.optim.Optimizer = base
        self.paper = PaperEigsh(s) if spec.kind == "reference" else None
        self.op: so.HessianOperator | None = None
        self.config = "SGD"
        if spec.kind == "library":
            op = so.HessianOperator(s.model, s.loss_fn, (s.X, s.Y), **(spec.operator_kwargs or {}))
            self.op = op
            self.opt = so.SubspaceProjectedOptimizer(
                base, op, k=s.k, mode=spec.mode, **(spec.optimizer_kwargs or {})
            )
            resolved = op.method if op.method != "auto" else f"auto→{op._resolved_method()}"
            dtype = str(self.params[0].dtype).replace("torch.", "")
            self.config = f"{self.opt!r}; HVP method={resolved}, {dtype}"
        elif spec.kind == "reference":
            ncv = max(2 * s.k + 1, 20)
            self.config = f"cold scipy eigsh (which='LM', tol=0, ncv={ncv}), double-backward HVP"
        self.step_seconds: list[float] = []
        self.step_matvecs: list[int] = []
        self.samples: list[tuple[int, Tensor, Tensor]] = []

    def _matvecs(self) -> int:
        if self.op is not None:
            return self.op.num_matvecs
        return self.paper.matvecs if self.paper is not None else 0

    def step(self, t: int, idx: Tensor, sampled: bool) -> None:
        s, params, paper = self.s, self.params, self.paper
        xb, yb = s.X[idx], s.Y[idx]
        sampled = sampled and self.spec.kind != "sgd"
        theta_t = flatten(p.detach() for p in params).clone() if sampled else None
        before = self._matvecs()
        synchronize(self.device)
        t0 = time.perf_counter()
        U = None
        if paper is not None:
            theta_old = flatten(p.detach() for p in params)
            _, U = paper.top_k(s.k)
        self.opt.zero_grad()
        loss = s.loss_fn(s.model(xb), yb)
        loss.backward()
        self.opt.step()
        if paper is not None:
            assert U is not None
            with torch.no_grad():
                delta = flatten(p.detach() for p in params) - theta_old
                dom = U @ (U.T @ delta)
                dominant = self.spec.mode == "dominant"
                write_flat(params, theta_old + (dom if dominant else delta - dom))
        synchronize(self.device)
        self.step_seconds.append(time.perf_counter() - t0)
        self.step_matvecs.append(self._matvecs() - before)
        if sampled:
            if isinstance(self.opt, so.SubspaceProjectedOptimizer):
                assert self.opt.basis is not None
                U = self.opt.basis[:, : s.k]
            assert U is not None and theta_t is not None
            self.samples.append((t, theta_t.cpu(), U.detach().to("cpu", torch.float64).clone()))

    def record(self) -> dict[str, Any]:
        spec, sec, mv = self.spec, self.step_seconds, self.step_matvecs
        return {
            "label": spec.label,
            "kind": spec.kind,
            "mode": spec.mode,
            "config": self.config,
            "dtype": str(self.params[0].dtype).replace("torch.", ""),
            "steps": len(sec),
            "ms_per_step_mean": 1e3 * statistics.fmean(sec),
            "ms_per_step_median": 1e3 * statistics.median(sec),
            "ms_first_step": 1e3 * sec[0],
            "matvecs_per_step": statistics.fmean(mv),
            "matvecs_total": int(sum(mv)),
            "final_loss": full_loss(self.s),
            "_samples": self.samples,
        }


#: the eigensolver levers: single-vector Krylov (Lanczos, the first default) against the
#: warm-started block refresh and plain block LOBPCG, each with its own default settings
LEVER_SOLVERS = ("lanczos", "warm", "lobpcg")


def lever_specs(quick: bool, default_method: str) -> list[RunSpec]:
    """Bulk runs with one choice changed from the default (each lever the library offers)."""
    specs: list[RunSpec] = []
    default = inspect.signature(so.SubspaceProjectedOptimizer).parameters["eigensolver"].default
    for name in LEVER_SOLVERS:
        if name not in so.available_eigensolvers():
            continue
        if repr(so.resolve_eigensolver(name)) != repr(so.resolve_eigensolver(default)):
            specs.append(
                RunSpec(f"Bulk, eigensolver={name!r}", "library", "bulk", {"eigensolver": name})
            )
    warm = getattr(so, "WarmRefresh", None)
    if warm is not None:  # the accuracy levers: the warm refresh's stopping rule and target
        for label, solver in (
            ("WarmRefresh(tol=3e-3) (residual target)", warm(tol=3e-3)),
            ("WarmRefresh(tol=1e-2)", warm(tol=1e-2)),
            ("WarmRefresh(sin_tol=0.06)", warm(sin_tol=0.06)),
        ):
            if repr(solver) != repr(so.resolve_eigensolver(default)):
                specs.append(RunSpec(f"Bulk, {label}", "library", "bulk", {"eigensolver": solver}))
    specs.append(
        RunSpec("Bulk, refresh every 2 steps", "library", "bulk", {"refresh": so.Every(2)})
    )
    if "cache_graph" in inspect.signature(so.HessianOperator).parameters:
        # the graph-cache lever: off for the default solver and for single-vector Lanczos,
        # whose products are one vector each (the cache saves a forward pass per product)
        specs.append(
            RunSpec("Bulk, cache_graph=False", "library", "bulk", None, {"cache_graph": False})
        )
        specs.append(
            RunSpec(
                "Bulk, eigensolver='lanczos', cache_graph=False",
                "library",
                "bulk",
                {"eigensolver": "lanczos"},
                {"cache_graph": False},
            )
        )
    for method in so.operators.hessian.HVP_METHODS:
        if method not in ("auto", default_method):
            specs.append(
                RunSpec(f"Bulk, HVP method={method!r}", "library", "bulk", None, {"method": method})
            )
    specs.append(RunSpec("Bulk, float64 model", "library", "bulk", dtype=torch.float64))
    return specs[:2] if quick else specs


def accuracy(name: str, record: dict[str, Any], k: int, examples: int) -> None:
    """Fill in the sin θ_max of the sampled bases against the exact subspace (offline)."""
    sins, gaps = [], []
    for _, theta, U in record.pop("_samples"):
        vals, W = exact_top_k(name, theta, k, examples)
        sins.append(float(so.subspace_distance(so.orthonormalize(U), W[:, :k])))
        gaps.append(float(vals[k - 1] / vals[k]))
    record["sin_max"] = max(sins) if sins else math.nan
    record["sin_median"] = statistics.median(sins) if sins else math.nan
    record["sampled_steps"] = len(sins)
    record["min_gap_ratio"] = min(gaps) if gaps else math.nan


#: per-setup defaults (examples, projected steps), sized so that the whole default run,
