"""The rows of a setup: what each runs from the SGD snapshot (:class:`Spec`), one run advanced
a step at a time with its timings, products, memory and sampled bases (:class:`Row`)."""

from __future__ import annotations

import copy
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import subspace_optim as so
from benchmarks.harness import synchronize
from benchmarks.projected_training.paper_protocol import PaperEigsh
from benchmarks.projected_training.setups import Setup, full_loss, params_of, write_flat
from subspace_optim._utils import flatten

#: the label of the row that runs the library default as it was before the sketched check
PREVIOUS_DEFAULT = "previous default: WarmRefresh(probes=0, cold=LOBPCG)"
#: the paper's run length, for the projected hours
PAPER_STEPS = 20_000


@dataclass
class Spec:
    """One row: its label, its kind (``"sgd"``, ``"paper"`` or ``"library"``) and, for a
    library row, the optimizer's and the operator's arguments changed from the defaults."""

    label: str
    kind: str  # "sgd" | "paper" | "library"
    optimizer: dict[str, Any] = field(default_factory=dict)
    operator: dict[str, Any] = field(default_factory=dict)


def lever_specs(which: bool | str) -> list[Spec]:
    """Bulk rows with one choice changed from the default, each a lever the issue names."""
    out = [
        Spec(
            PREVIOUS_DEFAULT,
            "library",
            {"eigensolver": so.WarmRefresh(probes=0, cold=so.LOBPCG(tol=3e-3))},
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

    def __init__(self, spec: Spec, snapshot: Setup, device: torch.device) -> None:
        self.spec, self.s, self.device = spec, copy.deepcopy(snapshot), device
        self.params = params_of(self.s.model)
        base = torch.optim.SGD(self.params, lr=self.s.lr)
        self.opt: torch.optim.Optimizer = base
        self.op: so.HessianOperator | None = None
        self.paper = PaperEigsh(self.s) if spec.kind == "paper" else None
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
            synchronize(self.device)
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
                    write_flat(self.params, theta_old + delta - U @ (U.T @ delta))
            synchronize(self.device)
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

    def record(self) -> dict[str, Any]:
        """The row's timings, products, memory, final loss and χ_k at its first step."""
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
            "hours_20k": (1e3 * sec[0] + ms_median * (PAPER_STEPS - 1)) / 3.6e6,
            "final_loss": full_loss(self.s),
            # χ_k of the full gradient at the first projected step: how aligned the
            # gradient was where the rows start (the paper switches once it is high)
            "chi_first": self.alignment[0] if self.alignment else None,
        }
