"""Measure the presets and write the README block."""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    RESULTS,
    ROOT,
    command_line,
    fmt,
    load_average,
    machine_info,
    markdown_table,
    output_dir,
    write_json,
)
from subspace_optim.experiments import RunConfig, run
from subspace_optim.experiments.setups import load_setup

STUDY = "preset_cost"
SWITCH, AFTER = 100, 30
#: the protocol the estimate is for: switch near step 2,000, then 200 steps of each run
PROTOCOL = (2000, 200)
#: (preset, N values) of the committed table
PLAN = (
    ("digits", (1000,)),
    ("mnist-5k-mlp", (1000, 5000)),
    # 200 sentences took over 30 minutes here (one at 64 took 13 under a load of 7)
    ("sst2-1k-transformer", (64,)),
)
QUICK_PLAN = (("digits-quick", (100,)),)
START, END = "<!-- preset-cost:start -->", "<!-- preset-cost:end -->"


def measure(preset: str, n: int, data_dir: str, quick: bool) -> dict[str, Any]:
    """One short run of ``preset`` on ``n`` examples; seconds per step of each phase."""
    kwargs: dict[str, Any] = {"examples": n}
    if preset.startswith("sst2"):
        kwargs["data_dir"] = data_dir
    setup = load_setup(preset, **kwargs)
    switch, after = (20, 5) if quick else (SWITCH, AFTER)
    # the preset's settings with a fixed switch (so none of the rule's steps), measuring
    # every 10 steps and evaluating every step where the preset does not say otherwise
    settings = {"track_every": 10, "eval_every": 1, **setup.defaults}
    settings.pop("switch_by", None)
    settings.pop("switch_after", None)
    settings.update(optimizers="sgd", steps=switch + after, switch=switch, after_switch=after)
    config = RunConfig(**settings)
    t0 = time.perf_counter()
    result = run(copy.deepcopy(setup.model), setup.loss_fn, setup.train_data, config,
                 setup=setup.name, progress=False)  # fmt: skip
    fam = result.families[0]
    out: dict[str, Any] = {
        "preset": preset,
        "examples": n,
        "params": result.config["num_params"],
        "data": setup.description,
        "wall": time.perf_counter() - t0,
        "prefix_step": fam.prefix_seconds / switch,
    }
    out["base"] = fam.runs["base"].seconds / after
    for variant in ("dom", "bulk"):
        secs = [float(r["refresh_seconds"]) for r in fam.rows
                if r["variant"] == variant and "refresh_seconds" in r]  # fmt: skip
        out[f"{variant}_first"] = secs[0]
        out[f"{variant}_refresh_median"] = statistics.median(secs[1:])
        # per step after the cold start (the whole step: gradient, refresh, evaluation)
        out[variant] = (fam.runs[variant].seconds - secs[0]) / after
    return out


def estimate_hours(r: dict[str, Any]) -> float:
    """The protocol's hours from the measured rates (first steps counted once)."""
    prefix, after = PROTOCOL
    projected = sum(r[v] * after + r[f"{v}_first"] for v in ("dom", "bulk"))
    return (prefix * r["prefix_step"] + after * r["base"] + projected) / 3600


def to_block(saved: dict[str, Any]) -> str:
    """The README block: the table, the machine and the command."""
    rows = [
        [f"`{r['preset']}`", f"{r['examples']:,}", f"{r['params']:,}",
         fmt(1000 * r["prefix_step"], ".0f"), fmt(r["dom_first"], ".1f"),
         fmt(r["dom"], ".2f"), fmt(r["bulk"], ".2f"), fmt(r["wall"] / 60, ".1f"),
         fmt(estimate_hours(r), ".2f")]
        for r in saved["rows"]
    ]  # fmt: skip
    m = saved["machine"]
    end = m.get("load_average_at_end")
    header = ["setup", "N", "parameters", "ms/step before the switch", "first Dom step s",
              "Dom s/step", "Bulk s/step", "short run min", "protocol h (estimate)"]  # fmt: skip
    return "\n".join([
        START,
        markdown_table(header, rows),
        "",
        f"Measured by `{saved['command']}` on {m['description']}"
        + (f", load average {end[0]:.1f} at the end" if end else "")
        + f" (the machine was shared: wall times). Short run: SGD, a fixed switch at step "
        f"{SWITCH} with χ_k measured every 10 steps before it, then {AFTER} steps of base, Dom "
        "and Bulk, the basis refreshed every step; `ms/step before the switch` includes the "
        "χ_k measurements; `first Dom step` is the eigensolver's cold start. `protocol h` "
        f"estimates the presets' protocol on N examples from those rates: the switch near step "
        f"{PROTOCOL[0]:,} (where the presets force it) and {PROTOCOL[1]} steps of each run "
        "after it; the paper's 20,000 steps are a GPU job.",
        END,
    ])  # fmt: skip


def write_readme(block: str, readme: Path) -> None:
    """Replace the marked block of ``readme``."""
    text = readme.read_text()
    i, j = text.index(START), text.index(END) + len(END)
    readme.write_text(text[:i] + block + text[j:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{STUDY}", description=__doc__)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--render", action="store_true")
    args = p.parse_args(argv)
    out = output_dir(args.out, args.quick, RESULTS, f"{STUDY}-")
    path = out / f"{STUDY}.json"
    if args.render:
        saved = json.loads(path.read_text())
    else:
        torch.set_num_threads(1)
        saved = {"machine": machine_info(torch.device("cpu")), "rows": [],
                 "command": command_line(STUDY, argv)}  # fmt: skip
        for preset, sizes in QUICK_PLAN if args.quick else PLAN:
            for n in sizes:
                saved["rows"].append(measure(preset, n, args.data_dir, args.quick))
                print(json.dumps(saved["rows"][-1]), flush=True)
                saved["machine"]["load_average_at_end"] = load_average()
                write_json(path, saved, indent=1)  # after every row: a stopped run keeps them
    if not args.quick:
        write_readme(to_block(saved), args.readme)
    saved["block"] = to_block(saved)
    return saved
