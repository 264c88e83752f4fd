"""Run the study: per setup and family, the χ_k trajectory, the rule's threshold, the run."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    DOCS,
    RESULTS,
    command_line,
    load_average,
    machine_info,
    output_dir,
    write_json,
)
from subspace_optim.experiments import RunConfig, run, write_report
from subspace_optim.experiments.setups import Setup, load_setup

from . import page
from .rule import Trajectory, rule_threshold, trajectory

STUDY = "paper_setups"
DEFAULT_OUT = RESULTS / STUDY


@dataclass(frozen=True)
class Plan:
    """What one setup runs: the preset, how many examples, and the switch protocol."""

    preset: str
    examples: int | None
    switch_by: int
    after_switch: int
    check_every: int
    switch_after: int


#: the committed runs (``--quick`` shrinks them)
PLANS = {
    "mnist": Plan("mnist-5k-mlp", None, 3000, 200, 25, 100),
    # N = 52 sentences: the largest tried that fits the 30 minutes for two families (29.5
    # min on an idle machine here; 40 took 17.8 min, 64 took 99 min at load 4)
    "sst2": Plan("sst2-1k-transformer", 52, 500, 200, 25, 100),
}
#: ``--quick`` checks the pipeline, not the setups: the paper's networks (199k parameters, a
#: Transformer) take minutes even on a few examples, so every setup name runs this instead
QUICK = Plan("digits-quick", 200, 40, 4, 10, 10)


def _config(setup: Setup, plan: Plan, family: str, switch: float, after: int) -> RunConfig:
    """The preset's settings with the plan's switch protocol for one family."""
    return RunConfig(
        **{
            **setup.defaults,
            "optimizers": family,
            "steps": plan.switch_by + after,
            "switch": switch,
            "switch_by": plan.switch_by,
            "switch_after": plan.switch_after,
            "after_switch": after,
            "check_every": plan.check_every,
            "track_every": plan.check_every,
            "eval_every": 10,
        }
    )


def run_family(setup: Setup, plan: Plan, family: str) -> tuple[Any, Trajectory, dict[str, Any]]:
    """Pass 1 (the trajectory, 1 step after a switch at 0.95 or ``switch_by``), the rule's
    threshold, then pass 2 (the run switched by it). Returns the run, the trajectory and
    what the rule decided."""
    data = setup.train_data
    t0 = time.perf_counter()
    first = run(
        copy.deepcopy(setup.model),
        setup.loss_fn,
        data,
        _config(setup, plan, family, 0.95, 1),
        setup=setup.name,
        progress=False,
    )
    track = trajectory(first.families[0].rows, plan.check_every)
    threshold, highest = rule_threshold(track, plan.switch_after)
    pass1 = time.perf_counter() - t0
    result = run(
        copy.deepcopy(setup.model),
        setup.loss_fn,
        data,
        _config(setup, plan, family, threshold, plan.after_switch),
        setup=setup.name,
        progress=False,
    )
    fam = result.families[0]
    rule = {
        "family": family,
        "threshold": threshold,
        "highest_ema": highest,
        "switch_step": fam.switch_step,
        "switch_reason": fam.switch_reason,
        "trajectory_seconds": pass1,
        "run_seconds": result.seconds,
    }
    return result, track, rule


def run_setup(name: str, plan: Plan, args: argparse.Namespace, out: Path) -> None:
    """Every family of one setup; writes ``out/<name>/`` (one report folder per family and
    ``study.json``)."""
    kwargs: dict[str, Any] = {"examples": plan.examples}
    if plan.preset.startswith("sst2"):
        kwargs["data_dir"] = args.data_dir
    setup = load_setup(plan.preset, **kwargs)
    folder = out / name
    machine = machine_info(torch.device("cpu"))
    t0 = time.perf_counter()
    rules = []
    for family in args.optimizers.split(","):
        result, track, rule = run_family(setup, plan, family)
        write_report(result, folder / family)
        write_json(folder / family / "trajectory.json", track.as_dict())
        rules.append(rule)
        print(json.dumps(rule), flush=True)
        machine["load_average_at_end"] = load_average()
        _write_study(
            folder,
            {
                "setup": setup.name,
                "description": setup.description,
                "info": setup.info,
                "plan": dataclasses.asdict(plan),
                "rules": rules,
                "machine": machine,
                "seconds": time.perf_counter() - t0,
                "command": command_line(STUDY, None),
                "quick": args.quick,
            },
        )


def _write_study(folder: Path, study: dict[str, Any]) -> None:
    """``study.json``, rewritten after every family so that a stopped run keeps the ones done."""
    write_json(folder / "study.json", study, indent=1)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{STUDY}", description=__doc__)
    p.add_argument("--setups", default="mnist", help="comma-separated: mnist, sst2")
    p.add_argument("--optimizers", default="sgd,momentum", help="families (default sgd,momentum)")
    p.add_argument("--examples", type=int, default=None, help="examples of every setup")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[3] / "shared/data"))
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument("--docs", type=Path, default=DOCS / "paper_setups.md", help="page to write")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a temporary folder")
    p.add_argument("--render", action="store_true", help="only render the page from --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Run the chosen setups (or only ``--render``) and write the page; returns its path."""
    args = parse(argv)
    out = output_dir(args.out, args.quick, DEFAULT_OUT, f"{STUDY}-")
    if not args.render:
        torch.set_num_threads(1)
        for name in args.setups.split(","):
            plan = QUICK if args.quick else PLANS[name]
            if args.examples is not None:
                plan = dataclasses.replace(plan, examples=args.examples)
            run_setup(name, plan, args, out)
    docs = out / "paper_setups.md" if args.quick else args.docs
    return page.write(out, docs)
