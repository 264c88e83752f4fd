"""Dom/Bulk training side by side: the paper's protocol against this library's default.

On the digits setup (1000 examples, the 8,970-parameter MLP, the paper's ``0.5·Σ(f−y)²``
loss, SGD lr 0.1 batch 50, k = 10, switch at step 100, 150 projected steps) and on a small
CNN over digits as 1×8×8 images (500 examples, 40 projected steps: its HVPs are far dearer
on a CPU), plain SGD runs to the switch step; from that one snapshot, with the same mini-batches, run:

* ``sgd``: plain SGD;
* ``reference``: the paper's protocol: before every step a *cold* scipy ``eigsh`` with
  default settings (``which="LM"``, ``tol=0``, ``ncv=max(2k+1, 20)``) on double-backward
  full-batch HVPs written here as the paper's code did; the SGD update is then projected
  onto (Dom) or out of (Bulk) the k eigenvectors;
* ``default``: :class:`~subspace_optim.SubspaceProjectedOptimizer` around the same SGD with
  :class:`~subspace_optim.HessianOperator` over the training set, *every other argument left
  at its default*: whatever the library's default solver, refresh schedule and HVP back end
  are when the script runs (the table prints them);
* lever rows (Bulk only): the default with one choice changed (eigensolver: Lanczos, the
  warm block refresh, LOBPCG; the warm refresh's stopping rule: a residual target
  ``tol=3e-3`` (the former default) or ``1e-2`` instead of the angle target, or a looser
  angle ``sin_tol=0.06``; refreshing every other step; the operator's graph cache off, for
  the default solver and for Lanczos; each HVP back end; float64), to show what each lever
  is worth.

All runs of a setup advance in lockstep (step ``t`` of every run, then ``t + 1``, in an order
that rotates every step), so a change of load on the machine hits every row alike. NumPy's
and SciPy's BLAS run on one thread (``--blas-threads``; see :func:`limit_blas_threads`), so
that ARPACK's idle BLAS threads do not take the cores from the next row. Each row reports the wall time of a whole projected step (mini-batch gradient, refresh,
projection and the library's per-step diagnostics), the Hessian-vector products per step,
the accuracy of the basis actually used (``sin θ_max`` against the exact top-k at the same
parameters, computed offline in float64 with scipy ``eigsh(which="LA", tol=1e-10)`` on a
sample of steps, excluded from the timings) and the final full-batch loss.

Run (about 8 minutes on a quiet 2-core CPU)::

    OMP_NUM_THREADS=2 python benchmarks/projected_training.py --docs docs/performance.md
    python benchmarks/projected_training.py --device cuda     # adds *_cuda results
    python benchmarks/projected_training.py --quick   # smoke test, into a temporary folder
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import subspace_optim as so
from subspace_optim._utils import flatten, unflatten
from subspace_optim.experiments import half_sum_mse, load_digits, mlp

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "performance.md"

TARGET_SPEEDUP = 10.0
TARGET_SIN = 0.05
TARGET_LOSS = 0.02


# --------------------------------------------------------------------------- setups
def digits_cnn(*, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Two tanh conv layers (8 and 16 channels, 3×3) with average pooling on 1×8×8 digits.

    Input: the flat ``(N, 64)`` digits features; output ``(N, 10)``. 1,898 parameters,
    initialised like PyTorch's default (uniform ±1/√fan_in) from ``generator``.
    """
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).to(dtype)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                for p in (layer.weight, layer.bias):
                    u = torch.rand(p.shape, generator=generator, dtype=torch.float64)
                    p.copy_((2 * u - 1) / math.sqrt(fan_in))
    return model


@dataclass
class Setup:
    """One training problem: model, loss, full training set and the SGD protocol."""

    name: str
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    X: Tensor
    Y: Tensor
    lr: float = 0.1
    batch: int = 50
    k: int = 10


def make_setup(
    name: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    examples: int = 1000,
) -> Setup:
    """``"mlp"`` (the digits MLP, 8,970 parameters) or ``"cnn"`` (:func:`digits_cnn`)."""
    X, Y, _ = load_digits(examples, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        model = mlp(generator=g, dtype=dtype)
    elif name == "cnn":
        model = digits_cnn(generator=g, dtype=dtype)
    else:
        raise ValueError(f"unknown setup {name!r}; valid: 'mlp', 'cnn'")
    return Setup(name, model.to(device), half_sum_mse, X, Y)


# --------------------------------------------------------------------------- helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_BLAS_LIMITS: list[Any] = []  # the active threadpoolctl limiter (kept alive for the run)


def limit_blas_threads(threads: int | None) -> str:
    """Cap the threads of NumPy's and SciPy's BLAS (OpenBLAS) at ``threads``; say what was done.

    Why: after each call, OpenBLAS worker threads keep spinning for a while. On a 2-core CPU
    they then take the cores from torch's own threads in whatever runs next: with ARPACK's
    BLAS at its default 2 threads, the library-default rows of this benchmark ran 1.3–1.6×
    slower when the paper protocol's ``eigsh`` ran between them, and the paper protocol
    itself 1.2–1.3× slower (measured on the MLP setup, 20 lockstep steps). ARPACK's BLAS
    work here is level-1/2 on vectors of ~10⁴ numbers, which a second thread does not
    speed up. ``None`` leaves the BLAS as it is.
    """
    if threads is None:
        return "BLAS threads left at their default"
    import scipy.sparse.linalg  # noqa: F401  (loads SciPy's own OpenBLAS, so it is capped too)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings threadpoolctl; without it, say so
        return "BLAS threads left at their default (threadpoolctl not installed)"
    _BLAS_LIMITS.append(threadpool_limits(limits=threads, user_api="blas"))
    return f"NumPy/SciPy BLAS capped at {threads} thread{'s' if threads > 1 else ''}"


def restore_blas_threads() -> None:
    """Undo :func:`limit_blas_threads` (a benchmark's ``main`` may run inside a test process)."""
    while _BLAS_LIMITS:
        _BLAS_LIMITS.pop().restore_original_limits()


def machine_info(device: torch.device, blas: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on, including the load (other processes) at the time."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    desc = f"{cpu}, {info['cpu_count']} cores, torch {torch.__version__} with {info['torch_threads']} threads"
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        desc = f"{info['gpu']} (host: {desc})"
    if blas is not None:
        info["blas"] = blas
        desc += f", {blas}"
    load = info["load_average_at_start"]
    if load is not None:
        desc += f", load average {load[0]:.1f} at start"
    info["description"] = desc
    return info


def output_dir(out: Path | None, quick: bool, default: Path, prefix: str) -> Path:
    """Where a benchmark writes: ``out`` when given; else, for ``--quick``, a new temporary
    folder (a smoke run never overwrites the committed results); else ``default``."""
    if out is not None:
        return out
    if quick:
        return Path(tempfile.mkdtemp(prefix=f"{prefix}_quick_"))
    return default


def machine_line(m: dict[str, Any], command: str) -> str:
    """``Machine: … Command: …`` with the load at the end of the run when it was recorded."""
    end = m.get("load_average_at_end")
    tail = f" and {end[0]:.1f} at the end" if end else ""
    return f"Machine: {m['description']}{tail}. Command: `{command}`."


def compact(obj: Any) -> Any:
    """``obj`` with finite floats rounded to 7 significant digits and tuples as lists (what a
    results JSON keeps; a page made from it renders the same again from the file)."""
    if isinstance(obj, float):
        return obj if not math.isfinite(obj) else float(f"{obj:.7g}")
    if isinstance(obj, dict):
        return {k: compact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [compact(v) for v in obj]
    return obj


def load_clause(m: dict[str, Any], loaded: str) -> str:
    """``"; load average (1 min) X at the start and Y at the end"`` from a machine record,
    followed by ``loaded`` when either exceeds 0.75 per core; ``""`` when no load was
    recorded."""
    start, end = m.get("load_average_at_start"), m.get("load_average_at_end")
    if not start:
        return ""
    text = f"; load average (1 min) {start[0]:.1f} at the start"
    text += f" and {end[0]:.1f} at the end" if end else ""
    if max(start[0], (end or start)[0]) > 0.75 * m["cpu_count"]:
        text += loaded
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def batch_schedule(n: int, batch: int, steps: int, seed: int = 0) -> list[Tensor]:
    """Index sets of ``steps`` mini-batches: reshuffled epochs, drawn from a private generator
    (a batch larger than the data is the whole data)."""
    if n < 1 or batch < 1 or steps < 0:
        raise ValueError(f"need n >= 1, batch >= 1 and steps >= 0; got {n}, {batch}, {steps}")
    batch = min(batch, n)
    g = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g)
        out += [perm[i : i + batch] for i in range(0, n - batch + 1, batch)]
    return out[:steps]


def params_of(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def write_flat(params: list[Tensor], vec: Tensor) -> None:
    with torch.no_grad():
        for p, piece in zip(params, unflatten(vec, params)):
            p.copy_(piece)


@torch.no_grad()
def full_loss(s: Setup) -> float:
    return float(s.loss_fn(s.model(s.X), s.Y))


# ------------------------------------------------------------------ reference protocol
class PaperEigsh:
    """The paper's refresh: cold scipy ``eigsh`` (default settings) on double-backward HVPs.

    Every HVP builds a fresh forward and gradient graph over the full batch, as the paper's
    code did; vectors go through NumPy (ARPACK) on every product.
    """

    def __init__(self, s: Setup) -> None:
        self.s = s
        self.params = params_of(s.model)
        self.n = sum(p.numel() for p in self.params)
        self.matvecs = 0

    def hvp(self, v: np.ndarray) -> np.ndarray:
        self.matvecs += 1
        p0 = self.params[0]
        vt = torch.from_numpy(np.ascontiguousarray(v).reshape(-1)).to(p0.device, p0.dtype)
        # the fused attention kernels have no double backward: the math kernel, as anyone
        # running this protocol on a Transformer must choose
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            loss = self.s.loss_fn(self.s.model(self.s.X), self.s.Y)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            hv = torch.autograd.grad(grads, self.params, grad_outputs=unflatten(vt, self.params))
        return flatten(hv).detach().cpu().numpy()

    def top_k(self, k: int) -> tuple[Tensor, Tensor]:
        from scipy.sparse.linalg import LinearOperator, eigsh

        np_dtype = np.float32 if self.params[0].dtype == torch.float32 else np.float64
        op = LinearOperator((self.n, self.n), matvec=self.hvp, dtype=np_dtype)
        vals, vecs = eigsh(op, k=k)  # the defaults: which="LM", tol=0, ncv=max(2k+1, 20)
        order = np.argsort(vals)[::-1].copy()
        p0 = self.params[0]
        U = torch.from_numpy(np.ascontiguousarray(vecs[:, order])).to(p0.device, p0.dtype)
        return torch.from_numpy(vals[order].copy()), U


def exact_top_k(name: str, theta: Tensor, k: int, examples: int) -> tuple[Tensor, Tensor]:
    """Top ``k + 1`` eigenpairs of the float64 Hessian at ``theta`` (scipy, ``tol=1e-10``)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    s = make_setup(name, dtype=torch.float64, device="cpu", examples=examples)
    params = params_of(s.model)
    write_flat(params, theta.detach().to("cpu", torch.float64))
    op = so.HessianOperator(s.model, s.loss_fn, (s.X, s.Y))
    n = op.shape[0]

    def mv(v: np.ndarray) -> np.ndarray:
        return op.matvec(torch.from_numpy(np.ascontiguousarray(v).reshape(-1))).numpy()

    g = np.random.default_rng(0)
    vals, vecs = eigsh(
        LinearOperator((n, n), matvec=mv, dtype=np.float64),
        k=k + 1,
        which="LA",
        tol=1e-10,
        v0=g.standard_normal(n),
    )
    order = np.argsort(vals)[::-1].copy()
    return torch.from_numpy(vals[order].copy()), torch.from_numpy(vecs[:, order].copy())


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
#: dominated by the paper protocol's cold eigsh, stays under ~10 minutes on a quiet 2-core CPU
SETUP_DEFAULTS = {"mlp": (1000, 150), "cnn": (500, 40)}


def run_setup(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    examples = args.examples or SETUP_DEFAULTS[name][0]
    steps = args.steps or SETUP_DEFAULTS[name][1]
    s = make_setup(name, device=device, examples=examples)
    n = sum(p.numel() for p in params_of(s.model))
    batches = batch_schedule(s.X.shape[0], s.batch, args.switch + steps)
    base = torch.optim.SGD(params_of(s.model), lr=s.lr)
    for idx in batches[: args.switch]:
        base.zero_grad()
        s.loss_fn(s.model(s.X[idx]), s.Y[idx]).backward()
        base.step()
    loss_at_switch = full_loss(s)
    after = batches[args.switch :]
    sample_at = {int(i) for i in np.linspace(0, steps - 1, args.samples).round()}
    specs = [RunSpec("SGD", "sgd")]
    for mode in ("dominant", "bulk"):
        specs.append(
            RunSpec(
                f"{'Dom' if mode == 'dominant' else 'Bulk'}-SGD, paper protocol", "reference", mode
            )
        )
        specs.append(
            RunSpec(
                f"{'Dom' if mode == 'dominant' else 'Bulk'}-SGD, library default", "library", mode
            )
        )
    if args.levers:
        default_method = so.HessianOperator(s.model, s.loss_fn, (s.X, s.Y))._resolved_method()
        specs += lever_specs(args.quick, default_method)
    runs = [Run(spec, s, device) for spec in specs]
    for t, idx in enumerate(after):
        # rotate the order every step, so that no row always runs right after the same one
        shift = t % len(runs)
        for run in runs[shift:] + runs[:shift]:
            run.step(t, idx, t in sample_at)
    records = []
    for run in runs:
        rec = run.record()
        accuracy(name, rec, s.k, examples)
        records.append(rec)
        spec = run.spec
        print(
            f"[{name}] {spec.label}: {rec['ms_per_step_mean']:.1f} ms/step, "
            f"{rec['matvecs_per_step']:.1f} HVP/step, sin {rec['sin_max']:.2e}, loss {rec['final_loss']:.4f}",
            flush=True,
        )
    ref = {r["mode"]: r for r in records if r["kind"] == "reference"}
    for r in records:
        if r["mode"] in ref:
            r["speedup_vs_reference"] = ref[r["mode"]]["ms_per_step_mean"] / r["ms_per_step_mean"]
            r["loss_vs_reference"] = (r["final_loss"] - ref[r["mode"]]["final_loss"]) / ref[
                r["mode"]
            ]["final_loss"]
    return {
        "setup": name,
        "n": n,
        "examples": int(s.X.shape[0]),
        "k": s.k,
        "lr": s.lr,
        "batch": s.batch,
        "switch": args.switch,
        "steps": steps,
        "loss_at_switch": loss_at_switch,
        "runs": records,
        "verdict": verdict(records),
    }


def verdict(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, checked for the library default in each mode."""
    out: dict[str, Any] = {}
    for r in records:
        if r["kind"] == "library" and r["label"].endswith("library default"):
            out[r["mode"]] = {
                "speedup": r["speedup_vs_reference"],
                "sin_max": r["sin_max"],
                "loss_vs_reference": r["loss_vs_reference"],
                "speedup_met": r["speedup_vs_reference"] >= TARGET_SPEEDUP,
                "sin_met": r["sin_max"] <= TARGET_SIN,
                "loss_met": abs(r["loss_vs_reference"]) <= TARGET_LOSS,
            }
    accurate = [
        r
        for r in records
        if r["kind"] == "library"
        and r["sin_max"] <= TARGET_SIN
        and abs(r["loss_vs_reference"]) <= TARGET_LOSS
    ]
    if accurate:
        best = max(accurate, key=lambda r: r["speedup_vs_reference"])
        out["fastest_accurate"] = {"label": best["label"], "speedup": best["speedup_vs_reference"]}
    return out


# -------------------------------------------------------------------------- output
def _fmt(x: float, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def to_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "## Projected training: the paper's protocol against the library default",
        "",
        machine_line(m, results["command"]),
        "",
        "All runs of a setup advance in lockstep (step t of every run, then step t + 1, in an "
        "order that rotates every step), so changes of load during the benchmark hit every "
        "row alike. BLAS threads (ARPACK's, in the paper protocol): "
        f"{m.get('blas', 'left at their default')}; *Why the benchmark caps BLAS threads* "
        "below measures what uncapped BLAS threads did to the rows that follow them, and "
        "how far two identical rows differ. "
        "Per projected step: wall time of the whole step (mini-batch gradient, refresh, "
        "projection, diagnostics), mean and median; `speedup` is the paper protocol's mean "
        "over this row's mean, in the same mode; `HVP/step` counts Hessian-vector products "
        "(a block of b counts b); `sin θ` is the largest and median sine of the largest "
        "principal angle between the basis used at a sampled step and the exact top-k there "
        "(float64, offline); `gap` is the smallest λ_k/λ_{k+1} over the samples; "
        "`Δloss` is the final full-batch loss relative to the paper-protocol run in the same mode.",
        "",
    ]
    for block in results["setups"]:
        lines += [
            f"### {block['setup']}: {block['n']:,} parameters, {block['examples']} examples, "
            f"k = {block['k']}, SGD lr {block['lr']} batch {block['batch']}, switch at step "
            f"{block['switch']}, {block['steps']} projected steps (loss at switch "
            f"{block['loss_at_switch']:.4f})",
            "",
        ]
        header = [
            "run",
            "ms/step mean",
            "median",
            "speedup",
            "HVP/step",
            "sin θ max",
            "sin θ median",
            "gap",
            "final loss",
            "Δloss",
        ]
        rows = []
        for r in block["runs"]:
            rows.append(
                [
                    r["label"],
                    _fmt(r["ms_per_step_mean"], ".1f"),
                    _fmt(r["ms_per_step_median"], ".1f"),
                    _fmt(r.get("speedup_vs_reference", math.nan), ".1f")
                    + ("×" if "speedup_vs_reference" in r else ""),
                    _fmt(r["matvecs_per_step"], ".1f"),
                    _fmt(r["sin_max"], ".1e"),
                    _fmt(r["sin_median"], ".1e"),
                    _fmt(r["min_gap_ratio"], ".4f"),
                    _fmt(r["final_loss"], ".4f"),
                    _fmt(100 * r.get("loss_vs_reference", math.nan), "+.2f")
                    + ("%" if "loss_vs_reference" in r else ""),
                ]
            )
        lines.append(markdown_table(header, rows))
        lines += ["", "Configurations:", ""]
        for r in block["runs"]:
            lines.append(f"* {r['label']}: `{r['config']}`")
        lines += [
            "",
            "Targets for the library default (speedup ≥ 10×, sin θ ≤ 0.05, |Δloss| ≤ 2%):",
            "",
        ]
        for mode, v in block["verdict"].items():
            if mode == "fastest_accurate":
                continue
            lines.append(
                f"* {mode}: speedup {v['speedup']:.1f}× ({'met' if v['speedup_met'] else 'missed'}), "
                f"sin θ max {v['sin_max']:.1e} ({'met' if v['sin_met'] else 'missed'}), "
                f"Δloss {100 * v['loss_vs_reference']:+.2f}% ({'met' if v['loss_met'] else 'missed'})"
            )
        best = block["verdict"].get("fastest_accurate")
        if best is not None:
            lines.append(
                f"* fastest library row within sin θ ≤ {TARGET_SIN} and |Δloss| ≤ "
                f"{100 * TARGET_LOSS:.0f}%: {best['label']}, {best['speedup']:.1f}×"
            )
        else:
            lines.append(f"* no library row stayed within sin θ ≤ {TARGET_SIN} on every sample")
        lines.append("")
    return "\n".join(lines)


def hvp_lever_notes(path: Path) -> list[str]:
    """What the HVP table says about each back-end lever, with numbers read from its JSON."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = {(r["setup"], r["dtype"], r["backend"], r["b"]): r for r in data["rows"]}
    b = data["block"]
    lines = ["## HVP levers: what the table above implies", ""]
    for setup in dict.fromkeys(r["setup"] for r in data["rows"]):
        for dtype in ("float32", "float64"):

            def ms(backend: str, width: int, setup: str = setup, dtype: str = dtype) -> float:
                row = rows.get((setup, dtype, backend, width))
                return row["ms_per_column"] if row else math.nan

            single, block = ms("autograd", 1), ms("autograd", b)
            parts = [
                f"* {setup}, {dtype}: a block of {b} through the shared graph costs "
                f"{block / ms('paper', 1):.2f}× the paper's HVP per column "
                f"({single / block:.2f}× faster than one column at a time); "
                f"`is_grads_batched` {ms('autograd-batched', b) / block:.2f}× and torch.func "
                f"vmap {ms('func', b) / block:.2f}× the shared-graph loop's time; with the "
                f"graph cached between calls, one column costs "
                f"{ms('autograd-cached', 1) / single:.2f}× and a block of {b} "
                f"{ms('autograd-cached', b) / block:.2f}× the uncached call"
            ]
            compiled = ms("func-compiled", b)
            if not math.isnan(compiled):
                secs = data.get("compile", {}).get(f"{setup}/torch.{dtype}/compile_seconds_b{b}")
                parts.append(
                    f"; torch.compile of jvp∘grad {compiled / block:.2f}× (after "
                    f"{secs:.0f} s of compilation per block width)"
                )
            if dtype == "float64":
                parts.append(
                    f"; float64 costs {block / ms('autograd', b, setup, 'float32'):.2f}× float32"
                )
            lines.append("".join(parts) + ".")
    lines += [
        "",
        'The library keeps the shared-graph double-backward loop (`method="auto"`), feeds '
        "it blocks through the warm refresh and, for one in-memory batch, keeps the graph "
        "between the products of a solve (`cache_graph`: single-vector Lanczos pays the "
        "forward pass once per solve). torch.compile is measured here but not "
        "used in training: compiled once for one block width (narrower blocks padded with "
        "zero columns), it wins only near that width, while the warm refresh's LOBPCG steps "
        "change the width from one iteration to the next; its compile time is in the row.",
        "",
    ]
    return lines


def refresh_analysis_notes(path: Path) -> list[str]:
    """The refresh-cost study of ``benchmarks/refresh_analysis.py`` as a table, from its JSON."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    k, steps = data["k"], data["steps"]
    lines = [
        "## What a refresh must spend: cost against accuracy along one trajectory",
        "",
        f"Command: `python benchmarks/refresh_analysis.py --steps {steps}`. The digits MLP "
        f"(k = {k}) after 100 SGD steps; {steps} Bulk-SGD steps (lr 0.1, batch 50) projected "
        f"with the exact top-{k} (float64 Lanczos, tol 1e-7) computed at every step. Each "
        "strategy replays that trajectory on the float32 Hessian from its own cold start and "
        f"is compared with the exact top-{k} at *every* step (not a sample); `HVP/step` "
        "counts columns (a block of b counts b), the cold start excluded.",
        "",
    ]
    for j, d in data["drift"].items():
        lines.append(
            f"* the exact top-{k} subspace itself moves by sin θ {d['median']:.3f} (median) "
            f"and up to {d['max']:.3f} over {j} step(s)"
        )
    lines += [
        f"* smallest λ_{k}/λ_{k + 1} along the trajectory: {data['min_gap_ratio']:.4f}",
        "",
    ]
    rows = [
        [
            r["label"],
            f"{r['matvecs_per_step']:.1f}",
            str(r["matvecs_max"]),
            f"{r['sin_max']:.3f}",
            f"{r['sin_median']:.3f}",
            str(r["unconverged"]),
        ]
        for r in data["rows"]
    ]
    header = ["strategy", "HVP/step", "max", "sin θ max", "sin θ median", "unconverged"]
    lines += [markdown_table(header, rows), ""]
    return lines


def save_results(out: Path, stem: str, results: dict[str, Any], md: str, docs: Path | None) -> None:
    """Write ``<stem>.json`` (when ``results`` is given) and ``<stem>.md`` under ``out``, print
    the markdown and, with ``docs``, rewrite the performance page from ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if results:
        (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"{stem}.md").write_text(md)
    print(md)
    if docs is not None:
        write_performance_doc(out, docs)


def write_performance_doc(results_dir: Path, path: Path) -> None:
    """Assemble ``docs/performance.md`` from the markdown results in ``results_dir``."""
    parts = [
        "# Performance",
        "",
        "Generated by `benchmarks/paper_scale.py`, `benchmarks/projected_training.py`, "
        "`benchmarks/blas_interference.py` and `benchmarks/hvp.py` from the "
        "results in `benchmarks/results/`; no number on this page is typed by hand. Each table "
        "names the machine and the command that produced it. Timings are ratios measured side "
        "by side in one process; absolute times depend on the machine and its load (the "
        "load average at the start of the run is printed with the machine).",
        "",
        "To regenerate this page (on a quiet 2-core CPU: the paper-scale runs about an "
        "hour, dominated by the cold solves of the CNN and the Transformer, whose products "
        "cost seconds; each paper-scale table names the command of its run, and `--merge` "
        "joins their JSON files into the page; the refresh analysis about "
        "5 minutes, projected training 8, BLAS interference 1, the HVP table a few; "
        "`--device cuda` adds GPU tables, `benchmarks/gpu_check.sh` the quick GPU check):",
        "",
        "```",
        "OMP_NUM_THREADS=1 python benchmarks/paper_scale.py --threads 1 --setups mnist-mlp "
        "--out /tmp/ps/a  # and the other setups' commands, then:",
        "python benchmarks/paper_scale.py --merge /tmp/ps/*/paper_scale.json --out "
        "benchmarks/results --docs docs/performance.md",
        "python benchmarks/refresh_analysis.py",
        "OMP_NUM_THREADS=2 python benchmarks/projected_training.py --docs docs/performance.md",
        "OMP_NUM_THREADS=2 python benchmarks/blas_interference.py --docs docs/performance.md",
        "OMP_NUM_THREADS=2 python benchmarks/hvp.py --docs docs/performance.md",
        "```",
        "",
    ]
    for stem in (
        "paper_scale",
        "paper_scale_cuda",
        "paper_scale_cuda.quick",
        "projected_training",
        "projected_training_cuda",
        "blas_interference",
    ):
        f = results_dir / f"{stem}.md"
        if f.exists():
            parts += [f.read_text(), ""]
    parts += refresh_analysis_notes(results_dir / "refresh_analysis.json")
    for stem in ("hvp", "hvp_cuda"):
        f = results_dir / f"{stem}.md"
        if f.exists():
            parts += [f.read_text(), ""]
    parts += hvp_lever_notes(results_dir / "hvp.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts).rstrip() + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--setups", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument(
        "--examples", type=int, default=None, help="training examples (default: mlp 1000, cnn 500)"
    )
    p.add_argument("--switch", type=int, default=100)
    p.add_argument(
        "--steps", type=int, default=None, help="projected steps (default: mlp 150, cnn 40)"
    )
    p.add_argument(
        "--samples", type=int, default=6, help="steps whose basis is checked against the exact one"
    )
    p.add_argument("--no-levers", dest="levers", action="store_false")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="cap NumPy/SciPy BLAS threads (default 1, see limit_blas_threads; 0: leave them)",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings for the smoke test")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: benchmarks/results; with --quick a new temporary folder)",
    )
    p.add_argument("--docs", type=Path, default=None, help="also write docs/performance.md here")
    p.add_argument(
        "--render", action="store_true", help="only rewrite the markdown from the saved JSON"
    )
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, RESULTS, "projected_training")
    if args.quick:
        args.examples, args.switch, args.samples = 100, 4, 2
        args.steps = args.steps or 3
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = torch.device(args.device)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    if args.render:
        results = json.loads((args.out / f"projected_training{suffix}.json").read_text())
        (args.out / f"projected_training{suffix}.md").write_text(to_markdown(results))
        if args.docs is not None:
            write_performance_doc(args.out, args.docs)
        return results
    command = "python benchmarks/projected_training.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    blas = limit_blas_threads(args.blas_threads or None)
    results: dict[str, Any] = {
        "machine": machine_info(device, blas),
        "command": command.strip(),
        "setups": [],
    }
    try:
        for name in args.setups:
            results["setups"].append(run_setup(name, args, device))
    finally:
        restore_blas_threads()
    results["machine"]["load_average_at_end"] = (
        os.getloadavg() if hasattr(os, "getloadavg") else None
    )
    save_results(args.out, f"projected_training{suffix}", results, to_markdown(results), args.docs)
    return results


if __name__ == "__main__":
    main()
