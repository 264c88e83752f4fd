"""Long runs and determinism: the soak, bit-for-bit repeats and resume from any step."""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from subspace_optim import HessianOperator, SubspaceProjectedOptimizer
from subspace_optim.eigensolvers import Lanczos, PowerIteration
from subspace_optim.schedules import AlignmentSwitch, Every
from subspace_optim.testing.checks import all_finite

from .problem import checkpoint_bytes, full_loss, load_bytes, tiny_problem, train


@dataclass(frozen=True)
class SoakOutcome:
    """A long projected run, per window: RSS, gc-tracked objects, live tensors holding a
    graph, median wall and CPU (this process) time per step, Hessian products per step.
    CPU time is what to compare on a shared machine: wall time also measures the others."""

    steps: int
    rss_mb: tuple[float, ...]
    objects: tuple[int, ...]
    graph_tensors: tuple[int, ...]
    step_ms: tuple[float, ...]
    step_cpu_ms: tuple[float, ...]
    matvecs_per_step: tuple[float, ...]
    params_finite: bool
    loss_first: float
    loss_last: float


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):  # not Linux: peak RSS is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _graph_tensors() -> int:
    """Tensors alive anywhere that still hold an autograd graph."""
    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated torch aliases warns
        for obj in gc.get_objects():
            try:
                if isinstance(obj, Tensor) and obj.grad_fn is not None:
                    count += 1
            except ReferenceError:  # pragma: no cover - weak proxies
                pass
    return count


def soak(
    steps: int = 200,
    *,
    windows: int = 4,
    solver: Any = None,
    on_step: Callable[[Tensor], Any] | None = None,
) -> SoakOutcome:
    """Bulk-Adam on the tiny problem, refreshing the basis at every step (by default one
    warm-started block power iteration per step, the cheap tracking configuration).

    The run is cut into ``windows`` equal windows; after each one the RSS, the number of
    gc-tracked Python objects and the number of live tensors holding an autograd graph are
    recorded, and the median step time of the window. ``on_step(loss)`` receives each
    minibatch loss, graph attached (the self-test uses it to leak graphs on purpose).
    """
    model, loss_fn, data = tiny_problem()
    opt = SubspaceProjectedOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.01),
        HessianOperator(model, loss_fn, data),
        k=3,
        eigensolver=solver if solver is not None else PowerIteration(max_iter=1),
        refresh=Every(1),
        generator=torch.Generator().manual_seed(0),
    )
    loss_first = full_loss(model, loss_fn, data)
    per = max(1, steps // windows)
    rss, objects, graphs, times, cpu_times, matvecs = [], [], [], [], [], []
    X, Y = data
    done = 0
    for _ in range(windows):
        durations, cpu = [], []
        before = opt.counters["matvecs"]
        for t in range(done, done + per):
            g = torch.Generator().manual_seed(t)
            idx = torch.randint(0, X.shape[0], (8,), generator=g)
            t0, c0 = time.perf_counter(), time.process_time()
            opt.zero_grad()
            loss = loss_fn(model(X[idx]), Y[idx])
            loss.backward()
            opt.step()
            durations.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if on_step is not None:
                on_step(loss)
            del loss
        done += per
        times.append(1e3 * statistics.median(durations))
        cpu_times.append(1e3 * statistics.median(cpu))
        matvecs.append((opt.counters["matvecs"] - before) / per)
        gc.collect()
        rss.append(_rss_mb())
        objects.append(len(gc.get_objects()))
        graphs.append(_graph_tensors())
    return SoakOutcome(
        steps=done,
        rss_mb=tuple(rss),
        objects=tuple(objects),
        graph_tensors=tuple(graphs),
        step_ms=tuple(times),
        step_cpu_ms=tuple(cpu_times),
        matvecs_per_step=tuple(matvecs),
        params_finite=all_finite(model.parameters()),
        loss_first=loss_first,
        loss_last=full_loss(model, loss_fn, data),
    )


@dataclass(frozen=True)
class ResumeOutcome:
    """Whether two runs agree bit for bit, and whether a run resumed from a checkpoint taken
    after step ``s`` (for every ``s``) ends exactly where the uninterrupted run ends."""

    steps: int
    refreshes: int
    repeat_identical: bool
    resume_identical: tuple[bool, ...]

    @property
    def ok(self) -> bool:
        return self.repeat_identical and all(self.resume_identical)


def _fingerprint(model: nn.Module, opt: SubspaceProjectedOptimizer) -> list[Any]:
    stats = opt.last_stats.as_dict() if opt.last_stats is not None else {}
    stats.pop("refresh_seconds", None)
    counters = {k: v for k, v in opt.counters.items() if k != "refresh_seconds"}
    tensors = [p.detach().clone() for p in model.parameters()]
    tensors += [t.clone() for t in (opt.basis, opt.eigenvalues) if t is not None]
    return [tensors, repr(stats), counters]  # repr: NaN fields compare equal


def _identical(a: list[Any], b: list[Any]) -> bool:
    return (
        len(a[0]) == len(b[0])
        and all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
        and a[1:] == b[1:]
    )


def resume_check(
    make: Callable[
        [], tuple[nn.Module, Callable, tuple[Tensor, Tensor], SubspaceProjectedOptimizer]
    ],
    steps: int = 6,
    *,
    closure: bool = False,
) -> ResumeOutcome:
    """Run ``make()``'s setup for ``steps`` steps twice, then once per resume point: stop
    after ``s`` steps, checkpoint model and optimizer through ``torch.save``, build a fresh
    setup, ``torch.load(weights_only=True)`` the checkpoint and finish the run.

    ``make`` must build the same setup every time (same seeds, a fixed ``generator``).
    """

    def run(stop: int | None) -> list[Any]:
        model, loss_fn, data, opt = make()
        if stop is None:
            train(opt, model, loss_fn, data, steps, closure=closure)
            return _fingerprint(model, opt)
        train(opt, model, loss_fn, data, stop, closure=closure)
        blob = checkpoint_bytes({"model": model.state_dict(), "opt": opt.state_dict()})
        model, loss_fn, data, opt = make()
        state = load_bytes(blob)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        train(opt, model, loss_fn, data, range(stop, steps), closure=closure)
        return _fingerprint(model, opt)

    reference = run(None)
    return ResumeOutcome(
        steps=steps,
        refreshes=int(reference[2]["refreshes"]),
        repeat_identical=_identical(run(None), reference),
        resume_identical=tuple(_identical(run(stop), reference) for stop in range(steps)),
    )


def setup_factory(
    family: str,
    schedule: Callable[[], Any],
    solver: Callable[[], Any] | None,
    *,
    k: int = 3,
) -> Callable[[], tuple[nn.Module, Callable, tuple[Tensor, Tensor], SubspaceProjectedOptimizer]]:
    """A ``make()`` for :func:`resume_check`: the tiny problem wrapped with a fresh schedule,
    a fresh eigensolver (``None``: the library default) and a generator seeded with 7."""
    from subspace_optim.testing.strategies import FAMILIES

    def make() -> tuple[nn.Module, Callable, tuple[Tensor, Tensor], SubspaceProjectedOptimizer]:
        model, loss_fn, data = tiny_problem()
        kwargs: dict[str, Any] = {} if solver is None else {"eigensolver": solver()}
        opt = SubspaceProjectedOptimizer(
            FAMILIES[family](model.parameters()),
            HessianOperator(model, loss_fn, data),
            k=k,
            refresh=schedule(),
            generator=torch.Generator().manual_seed(7),
            **kwargs,
        )
        return model, loss_fn, data, opt

    return make


#: ``(label, family, schedule factory, solver factory or None for the default, closure)``
DETERMINISM_CONFIGS: tuple[
    tuple[str, str, Callable[[], Any], Callable[[], Any] | None, bool], ...
] = (
    (
        "Adam, Every(2), default solver (WarmRefresh)",
        "adam",
        lambda: Every(2),
        None,
        False,
    ),
    (
        "SGD+momentum, AlignmentSwitch, PowerIteration",
        "momentum",
        lambda: AlignmentSwitch(threshold=0.3, ema=0.5, max_steps=3),
        lambda: PowerIteration(max_iter=2),
        False,
    ),
    (
        "SAM(SGD) with closure, Every(1), Lanczos",
        "sam",
        lambda: Every(1),
        lambda: Lanczos(ncv=8),
        True,
    ),
)
