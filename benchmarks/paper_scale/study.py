"""One setup measured: plain SGD to the snapshot, then every row from it in lockstep, and the
numbers of each row (:func:`run_setup`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.projected_training.setups import batch_schedule, params_of, sgd_steps

from .measure import BLOCK, batched_column_ms, product_ms, profile_row, reference_sin
from .rows import PREVIOUS_DEFAULT, Row, Spec, lever_specs
from .setups import make_setup


@dataclass(frozen=True)
class SetupRun:
    """How one setup is run: ``steps`` projected steps after ``warmup`` plain SGD steps,
    ``samples`` of them checked against a tightly converged top-k; ``levers``: ``True``
    every lever row, ``"previous"`` only the previous default, ``False`` none; ``profile``
    the library default's steps; ``quick`` tiny data, ``examples`` fewer, ``small`` narrow
    networks."""

    name: str
    device: torch.device
    quick: bool
    steps: int
    warmup: int
    samples: int
    levers: bool | str
    profile: bool
    data_dir: str
    examples: int | None = None
    small: bool = False


def _lockstep(name: str, runs: list[Row], after: list[Tensor], samples: int) -> None:
    """Every row one step at a time on the same mini-batches, the order rotating every step;
    ``samples`` steps spread over the run keep their basis for :func:`reference_sin`."""
    sample_at = (
        {int(i) for i in np.linspace(1, len(after) - 1, samples).round()} if len(after) > 1 else {0}
    )
    for t, idx in enumerate(after):
        shift = t % len(runs)
        for row in runs[shift:] + runs[:shift]:
            row.step(idx, t in sample_at)
        print(f"[{name}] step {t + 1}/{len(after)}", flush=True)


def _measured(row: Row) -> dict[str, Any]:
    """The row's record with the angle to the exact top-k and the cost of one product."""
    rec = row.record()
    # every sample for the main rows, the last one for the levers (each costs a solve)
    main_rows = ("paper protocol", "library default", PREVIOUS_DEFAULT)
    samples = row.samples if row.spec.label in main_rows else row.samples[-1:]
    rec["sin_max"] = reference_sin(row.s, samples)
    if row.op is not None:
        rec["ms_per_hvp_single"], rec["ms_per_hvp_column"] = product_ms(row.op, BLOCK)
    elif row.paper is not None:
        v = np.random.default_rng(0).standard_normal(row.paper.n)
        t0 = time.perf_counter()
        row.paper.hvp(v)
        rec["ms_per_hvp_single"] = 1e3 * (time.perf_counter() - t0)
    return rec


def _compared(records: list[dict[str, Any]]) -> None:
    """Each row's final loss against the paper protocol's, its median step against the
    library default's."""
    by = {r["label"]: r for r in records}
    paper, default = by["paper protocol"], by["library default"]
    for r in records:
        r["loss_vs_paper"] = (r["final_loss"] - paper["final_loss"]) / paper["final_loss"]
        r["median_vs_default"] = r["ms_median"] / default["ms_median"]


def run_setup(c: SetupRun) -> dict[str, Any]:
    """Every row of one setup in lockstep: the setup's sizes, each row's record (see
    :meth:`Row.record`) with its angle, product costs and comparisons, the blocked-product
    timing and, with ``c.profile``, the library default's profile."""
    s, source = make_setup(
        c.name,
        quick=c.quick,
        device=c.device,
        data_dir=c.data_dir,
        examples=c.examples,
        small=c.small,
    )
    n = sum(p.numel() for p in params_of(s.model))
    print(f"[{c.name}] {n:,} parameters, {s.X.shape[0]} examples ({source})", flush=True)
    batches = [b.to(c.device) for b in batch_schedule(s.X.shape[0], s.batch, c.warmup + c.steps)]
    sgd_steps(s, batches[: c.warmup])
    specs = [
        Spec("SGD", "sgd"),
        Spec("paper protocol", "paper"),
        Spec("library default", "library"),
    ]
    specs += lever_specs(c.levers) if c.levers else []
    runs = [Row(spec, s, c.device) for spec in specs]
    after = batches[c.warmup :]
    _lockstep(c.name, runs, after, c.samples)
    records = []
    for row in runs:
        records.append(_measured(row))
        rec = records[-1]
        print(
            f"[{c.name}] {rec['label']}: median {rec['ms_median']:.0f} ms, "
            f"{rec['hvp_per_step']:.1f} HVP/step, sin {rec['sin_max']:.1e}",
            flush=True,
        )
    _compared(records)
    out = {
        "setup": c.name,
        "n": n,
        "examples": int(s.X.shape[0]),
        "data": source,
        "k": s.k,
        "lr": s.lr,
        "batch": s.batch,
        "warmup": c.warmup,
        "steps": c.steps,
        "runs": records,
        "column_ms": batched_column_ms(s, BLOCK),
    }
    if c.profile:
        chosen = [sp for sp in specs if sp.label == "library default"]
        out["profile"] = [
            profile_row(sp, s, c.device, after[: min(len(after), 4)]) for sp in chosen
        ]
    return out
