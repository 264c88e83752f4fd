"""The reliability report's measurements: the cases of ``tests/scenarios/`` through their own
runners (bad inputs, faults, the soak) and what the scenarios do not hold (the machine,
determinism and resume, gradient accumulation, the self-check's cost)."""

from __future__ import annotations

import itertools
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict

import torch

import subspace_optim as so
from benchmarks.harness import ROOT, load_average

sys.path.insert(0, str(ROOT / "tests"))  # the scenario catalogue and the tests' own runs
from scenarios import (
    BAD_INPUTS,
    DETERMINISM_CONFIGS,
    FAULTS,
    resume_check,
    run_bad_input,
    run_fault,
    setup_factory,
    soak_resumed,
)


def machine() -> dict[str, str | int]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def determinism(steps: int = 6) -> list[dict]:
    """The configurations ``tests/test_reliability.py`` checks, with one more step."""
    rows = []
    for label, family, schedule, solver, closure in DETERMINISM_CONFIGS:
        out = resume_check(setup_factory(family, schedule, solver), steps, closure=closure)
        rows.append({"config": label, **asdict(out), "ok": out.ok})
    return rows


#: the largest parameter difference accepted between accumulated and whole-batch steps
ACCUMULATION_TOL = 1e-13


def accumulation() -> list[dict]:
    """Four accumulated micro-batches, then one ``step()``, against one step on the whole
    batch, 3 steps, for every family and mode of ``tests/test_grad_accumulation.py`` (its
    own functions: the same runs the test asserts on)."""
    import test_grad_accumulation as acc
    from test_optimizer_matrix import INFOS

    rows = []
    for info in INFOS:
        for mode in acc.MODES:
            ref, _ = acc.run(info, mode, acc.whole)
            got, opt = acc.run(info, mode, acc.accumulate)
            diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
            rows.append(
                {
                    "family": info.name,
                    "mode": str(mode),
                    "max_abs_diff": diff,
                    "refreshes": int(opt.counters["refreshes"]),
                }
            )
    return rows


def _median_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _fresh_product(op, v):
    """One product on its own forward pass: the graph it builds is freed after it."""
    with op.solve_scope():
        return op @ v


def self_check_cost() -> list[dict]:
    """Construction of a HessianOperator with and without its self-check, and one product.

    The digits MLP of ``subspace-optim reproduce`` (1,000 examples) and a 0.5M-parameter MLP
    on 5,000 synthetic MNIST-shaped examples (data shape only: the cost does not depend on
    the values).
    """
    from sklearn.datasets import load_digits
    from torch import nn

    def half_mse(out, y):
        return 0.5 * ((out - y) ** 2).sum(dim=1).mean()

    X, y = load_digits(return_X_y=True)
    Xd = torch.tensor(X[:1000], dtype=torch.float32)
    Xd = (Xd - Xd.mean(0)) / Xd.std(0).clamp_min(1e-6)
    Yd = nn.functional.one_hot(torch.tensor(y[:1000]), 10).float()
    g = torch.Generator().manual_seed(0)
    Xm = torch.rand(5000, 784, generator=g)
    Ym = nn.functional.one_hot(torch.randint(0, 10, (5000,), generator=g), 10).float()
    cases = [
        ("digits MLP 64-64-64-10, 1,000 examples", (64, 64, 64, 10), Xd, Yd),
        ("MLP 784-512-256-10, 5,000 examples (synthetic)", (784, 512, 256, 10), Xm, Ym),
    ]
    rows = []
    for label, widths, Xc, Yc in cases:
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(widths) - 2 else [])
        model = nn.Sequential(*layers)
        n = sum(p.numel() for p in model.parameters())

        def build(check: bool, model=model, Xc=Xc, Yc=Yc):
            return so.HessianOperator(model, half_mse, (Xc, Yc), check=check)

        plain = _median_seconds(lambda: build(False))
        checked = _median_seconds(lambda: build(True))
        op = build(False)
        v = torch.randn(n, generator=g)
        product = _median_seconds(lambda op=op, v=v: _fresh_product(op, v))
        rows.append(
            {
                "model": label,
                "params": n,
                "without_check_s": plain,
                "with_check_s": checked,
                "product_s": product,
            }
        )
    return rows


def measure(fault_steps: int, soak_steps: int, soak_segments: int) -> dict:
    """Every case of the catalogue, the determinism and accumulation runs, the soak and the
    self-check's cost: the report's JSON."""
    t0 = time.perf_counter()
    load_start = (load_average() or [None])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = [asdict(run_bad_input(case)) for case in BAD_INPUTS]
        faults = []
        for case in FAULTS:
            out = asdict(run_fault(case, fault_steps))
            faults.append({**out, "injection": case.injection, "policy": case.policy})
        det = determinism()
        accumulated = accumulation()
        soaked = asdict(soak_resumed(soak_steps, segments=soak_segments))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            checks = self_check_cost()
        finally:
            torch.set_num_threads(threads)
    report = {
        "machine": {
            **machine(),
            "load_average_start": load_start,
            "load_average_end": (load_average() or [None])[0],
        },
        "seconds": time.perf_counter() - t0,
        "fault_steps": fault_steps,
        "bad_inputs": bad,
        "faults": faults,
        "determinism": det,
        "accumulation": accumulated,
        "soak": soaked,
        "self_check": checks,
    }
    return report
