"""Long runs and determinism: the soak, bit-for-bit repeats and resume from any step."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from subspace_optim import HessianOperator, SubspaceProjectedOptimizer
from subspace_optim.eigensolvers import Lanczos, PowerIteration
from subspace_optim.schedules import AlignmentSwitch, Every
from subspace_optim.testing import FaultyOperator
from subspace_optim.testing.checks import all_finite

from .problem import (
    checkpoint_bytes,
    digits_problem,
    full_loss,
    load_bytes,
    tiny_problem,
    train,
)


@dataclass(frozen=True)
class SoakOutcome:
    """A long projected run, per window: RSS, gc-tracked objects, live tensors (all, and
    those holding a graph), median wall and CPU (this process) time per step, Hessian
    products per step. CPU time is what to compare on a shared machine: wall time also
    measures the others.

    A run cut into ``segments`` processes (:func:`soak_resumed`) also reports the
    ``resumes`` done (a fresh process that loaded the previous one's checkpoint), the faults
    ``injected`` (and what the training loop saw of them) and the wrapper's final
    ``counters``, carried across the resumes by its ``state_dict``."""

    steps: int
    rss_mb: tuple[float, ...]
    objects: tuple[int, ...]
    tensors: tuple[int, ...]
    graph_tensors: tuple[int, ...]
    step_ms: tuple[float, ...]
    step_cpu_ms: tuple[float, ...]
    matvecs_per_step: tuple[float, ...]
    params_finite: bool
    loss_first: float
    loss_last: float
    problem: str = "tiny MLP 4-6-3"
    segments: int = 1
    resumes: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):  # not Linux: peak RSS is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _live_tensors() -> tuple[int, int]:
    """``(tensors, with_graph)``: tensors alive anywhere, and those still holding an
    autograd graph."""
    count = graphs = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated torch aliases warns
        for obj in gc.get_objects():
            try:
                if isinstance(obj, Tensor):
                    count += 1
                    graphs += obj.grad_fn is not None
            except ReferenceError:  # pragma: no cover - weak proxies
                pass
    return count, graphs


_WINDOW_FIELDS = (
    "rss_mb",
    "objects",
    "tensors",
    "graph_tensors",
    "step_ms",
    "step_cpu_ms",
    "matvecs_per_step",
)


def _windows(
    opt: SubspaceProjectedOptimizer,
    step: Callable[[int], Tensor],
    start: int,
    per: int,
    windows: int,
    on_step: Callable[[Tensor], Any] | None = None,
) -> dict[str, list[float]]:
    """Run ``step(t)`` for ``t = start, ..., start + per * windows - 1`` (it returns the
    minibatch loss) and measure each window: median wall and CPU step time, Hessian products
    per step, then after ``gc.collect()`` the RSS, gc-tracked objects and live tensors."""
    out: dict[str, list[float]] = {k: [] for k in _WINDOW_FIELDS}
    done = start
    for _ in range(windows):
        durations, cpu = [], []
        before = opt.counters["matvecs"]
        for t in range(done, done + per):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step(t)
            durations.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if on_step is not None:
                on_step(loss)
            del loss
        done += per
        out["step_ms"].append(1e3 * statistics.median(durations))
        out["step_cpu_ms"].append(1e3 * statistics.median(cpu))
        out["matvecs_per_step"].append((opt.counters["matvecs"] - before) / per)
        gc.collect()
        out["rss_mb"].append(_rss_mb())
        out["objects"].append(len(gc.get_objects()))
        tensors, graphs = _live_tensors()
        out["tensors"].append(tensors)
        out["graph_tensors"].append(graphs)
    return out


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
    gc-tracked Python objects and the number of live tensors (all, and those holding an
    autograd graph) are recorded, and the median step time of the window. ``on_step(loss)``
    receives each minibatch loss, graph attached (the self-test uses it to leak graphs on
    purpose). :func:`soak_resumed` is the long version with faults and resumes.
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
    X, Y = data

    def step(t: int) -> Tensor:
        g = torch.Generator().manual_seed(t)
        idx = torch.randint(0, X.shape[0], (8,), generator=g)
        opt.zero_grad()
        loss = loss_fn(model(X[idx]), Y[idx])
        loss.backward()
        opt.step()
        return loss

    measured = _windows(opt, step, 0, per, windows, on_step)
    return SoakOutcome(
        steps=per * windows,
        **{k: tuple(v) for k, v in measured.items()},
        params_finite=all_finite(model.parameters()),
        loss_first=loss_first,
        loss_last=full_loss(model, loss_fn, data),
    )


class InjectedError(RuntimeError):
    """What :class:`_RaisingLoss` raises: a non-numerical error inside a refresh."""


class _RaisingLoss:
    """``loss_fn`` that raises :class:`InjectedError` on its next call once ``armed``."""

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.loss_fn = loss_fn
        self.armed = False
        self.raised = 0

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        if self.armed:
            self.armed = False
            self.raised += 1
            raise InjectedError("injected: the loss raised inside a refresh")
        return self.loss_fn(out, y)


class _Every:
    """``fail_on`` predicate for the fault injectors: every ``n``-th call, counted."""

    def __init__(self, n: int) -> None:
        self.n, self.hits = n, 0

    def __call__(self, call: int) -> bool:
        hit = call % self.n == 0
        self.hits += hit
        return hit


_PROBLEMS: dict[str, tuple[str, Callable[[], Any], float, int]] = {
    # name: (label, factory, Adam's lr, batch)
    "digits": (
        "digits MLP 64-64-64-10 (8,970 parameters), 1,000 examples",
        digits_problem,
        1e-3,
        32,
    ),
    "tiny": ("tiny MLP 4-6-3 (51 parameters), 32 examples", tiny_problem, 1e-2, 8),
}


def _segment(spec_path: str) -> None:
    """One segment of :func:`soak_resumed`, run in its own process: build the setup, load
    the previous segment's checkpoint (``torch.load(weights_only=True)``), train and measure
    ``spec["windows"]`` windows, save the checkpoint and write the measurements as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    _, make, lr, batch = _PROBLEMS[spec["problem"]]
    model, loss_fn, data = make()
    raising = _RaisingLoss(loss_fn)
    nan_products = _Every(spec["nan_every"])
    opt = SubspaceProjectedOptimizer(
        torch.optim.Adam(model.parameters(), lr=lr),
        FaultyOperator(HessianOperator(model, raising, data), fail_on=nan_products),
        k=3,
        # shift_steps=0: with max_iter=1 the shift is never applied, so its 20 Lanczos
        # products would be spent for nothing (and a NaN among them would change nothing)
        eigensolver=PowerIteration(max_iter=1, shift_steps=0),
        refresh=Every(1),
        on_fault="keep",
        generator=torch.Generator().manual_seed(0),
    )
    seen = {"raises_propagated": 0, "params_untouched_after_raise": 0}
    start = spec["start"]
    if start:
        state = torch.load(spec["checkpoint_in"], weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        seen = state["seen"]
        if state["step"] != start:
            raise AssertionError(f"checkpoint is at step {state['step']}, expected {start}")
        del state  # its tensors would count as live ones in every window
    loss_first = full_loss(model, loss_fn, data)
    X, Y = data

    def step(t: int) -> Tensor:
        g = torch.Generator().manual_seed(t)
        idx = torch.randint(0, X.shape[0], (batch,), generator=g)
        opt.zero_grad()
        loss = loss_fn(model(X[idx]), Y[idx])
        loss.backward()
        if t != spec["raise_at"]:
            opt.step()
            return loss
        raising.armed = True
        before = [p.detach().clone() for p in model.parameters()]
        try:
            opt.step()
        except InjectedError:  # a user's loop: log it, then take the same step again
            seen["raises_propagated"] += 1
            seen["params_untouched_after_raise"] += all(
                torch.equal(a, p) for a, p in zip(before, model.parameters())
            )
            opt.step()
        return loss

    measured = _windows(opt, step, start, spec["per"], spec["windows"])
    end = start + spec["per"] * spec["windows"]
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "step": end, "seen": seen},
        spec["checkpoint_out"],
    )
    result = {
        **measured,
        "pid": os.getpid(),
        "resumed_from": start,
        "loss_first": loss_first,
        "loss_last": full_loss(model, loss_fn, data),
        "params_finite": all_finite(model.parameters()),
        "nan_products": nan_products.hits,
        "loss_raises": raising.raised,
        "seen": seen,
        "counters": {k: v for k, v in opt.counters.items() if k != "refresh_seconds"},
    }
    Path(spec["result"]).write_text(json.dumps(result))


def soak_resumed(
    steps: int = 5000,
    *,
    segments: int = 10,
    windows_per_segment: int = 2,
    problem: str = "digits",
    nan_every: int = 97,
    raise_at: int | None = None,
    workdir: str | Path | None = None,
    timeout: float | None = None,
) -> SoakOutcome:
    """The long soak: Bulk-Adam (k = 3, a refresh at every step by one warm-started block
    power iteration, ``PowerIteration(max_iter=1, shift_steps=0)``: one product of a block
    of 5, ``on_fault="keep"``) cut into ``segments`` equal
    segments, each run by a fresh Python process (``python -c``) that loads the previous
    segment's checkpoint with ``torch.load(weights_only=True)`` and saves its own.

    Faults: every ``nan_every``-th Hessian product (counted per process) comes back NaN
    (:class:`~subspace_optim.testing.FaultyOperator`), and at step ``raise_at`` (default
    ``steps // 3``) the loss raises inside the refresh; the training loop catches it, checks
    that the parameters are untouched and takes the step again. Each segment is measured
    in ``windows_per_segment`` windows as :func:`soak` does.

    Raises:
        ValueError: ``steps`` is not a positive multiple of ``segments * windows_per_segment``
            or ``problem`` is unknown.
        subprocess.CalledProcessError: a segment's process failed (its stderr is attached).
    """
    if problem not in _PROBLEMS:
        raise ValueError(f"unknown problem {problem!r}; choose one of {sorted(_PROBLEMS)}")
    if steps <= 0 or steps % (segments * windows_per_segment):
        raise ValueError(
            f"steps ({steps}) must be a positive multiple of segments * windows_per_segment "
            f"({segments} * {windows_per_segment})"
        )
    per = steps // (segments * windows_per_segment)
    raise_at = steps // 3 if raise_at is None else raise_at
    tests_dir = str(Path(__file__).resolve().parent.parent)
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i in range(segments):
            spec = {
                "problem": problem,
                "start": i * per * windows_per_segment,
                "per": per,
                "windows": windows_per_segment,
                "nan_every": nan_every,
                "raise_at": raise_at,
                "checkpoint_in": f"{tmp}/segment{i - 1}.pt",
                "checkpoint_out": f"{tmp}/segment{i}.pt",
                "result": f"{tmp}/segment{i}.json",
            }
            spec_path = Path(tmp) / f"spec{i}.json"
            spec_path.write_text(json.dumps(spec))
            code = (
                f"import sys; sys.path.insert(0, {tests_dir!r}); "
                f"from scenarios.longrun import _segment; _segment({str(spec_path)!r})"
            )
            subprocess.run(
                [sys.executable, "-c", code],
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            results.append(json.loads(Path(spec["result"]).read_text()))
    last = results[-1]
    windows = {k: tuple(x for r in results for x in r[k]) for k in _WINDOW_FIELDS}
    return SoakOutcome(
        steps=steps,
        **windows,
        params_finite=all(r["params_finite"] for r in results),
        loss_first=results[0]["loss_first"],
        loss_last=last["loss_last"],
        problem=_PROBLEMS[problem][0],
        segments=len({r["pid"] for r in results}),
        resumes=sum(r["resumed_from"] > 0 for r in results),
        injected={
            "nan_products": sum(r["nan_products"] for r in results),
            "loss_raises": sum(r["loss_raises"] for r in results),
            **last["seen"],
        },
        counters=last["counters"],
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
