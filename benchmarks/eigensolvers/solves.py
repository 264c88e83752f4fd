"""Timing a seeded solve (the fastest of identical repeats) and one row of the table."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .problems import Checker, K

Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(solver, op, init=None):
    before = op.num_matvecs
    t0 = time.perf_counter()
    res = solver.solve(op, K, init=init, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t0
    assert res.num_matvecs == op.num_matvecs - before
    return res, seconds


def _with_count(pair: tuple[Any, float]) -> tuple[Any, float, int]:
    return pair[0], pair[1], pair[0].num_matvecs


def best_of(repeats: int, run: Callable[[], tuple[Any, float, int]]) -> tuple[Any, float]:
    """Run a seeded (deterministic) solve ``repeats`` times: the last result, the fastest time.

    ``run`` returns ``(result, seconds, matvecs)``; every repeat must spend the same matvecs.
    """
    times, counts = [], set()
    for _ in range(repeats):
        out, seconds, matvecs = run()
        times.append(seconds)
        counts.add(matvecs)
    if len(counts) != 1:
        raise RuntimeError(f"repeats of a seeded solve spent different matvecs: {sorted(counts)}")
    return out, min(times)


def row(name: str, kind: str, res, seconds: float, checker: Checker, **extra) -> dict[str, Any]:
    out = {
        "solver": name,
        "kind": kind,
        "matvecs": res.num_matvecs,
        "seconds": round(seconds, 3),
        "converged": bool(res.converged),
        **checker.check(res.eigenvalues, res.eigenvectors),
    }
    out.update(extra)
    return out
