"""Reliability report: run every bad input, injected fault, determinism check and a long soak
from ``tests/scenarios/`` (the same catalogue the tests check) and write
what happened in each case.

Outputs a JSON artefact (``benchmarks/results/reliability.json``) and a markdown page
(``docs/reliability.md``), both naming the machine.

Run::

    OMP_NUM_THREADS=1 python benchmarks/reliability_report.py               # 5,000-step soak
    python benchmarks/reliability_report.py --soak-steps 200 --out /tmp/r   # quick
    python benchmarks/reliability_report.py --from-json benchmarks/results/reliability.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

import subspace_optim as so

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
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

ROOT = Path(__file__).resolve().parent.parent


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
        op.release_graph()
        product = _median_seconds(lambda op=op, v=v: (op.release_graph(), op @ v))
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


def _load(report: dict, when: str) -> str:
    value = report.get("machine", {}).get(f"load_average_{when}")
    return "unknown" if value is None else f"{value:.1f}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Reliability report",
        "",
        "What the wrapper does with bad input, numerical faults, checkpoints and long runs.",
        "Every row is produced by `benchmarks/reliability_report.py` from the catalogue in",
        "`tests/scenarios/`, the same cases that `tests/test_bad_input.py`,",
        "`tests/test_reliability.py`, `tests/test_soak.py` assert on.",
        "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs ({m['torch_threads']} torch threads), "
        f"Python {m['python']}, torch {m['torch']}, CUDA {'yes' if m['cuda'] else 'no'}. "
        f"Generated in {report['seconds']:.0f} s.",
        "",
        "## Bad input",
        "",
        "Each call must raise before any state changes: the parameters, their `.grad` and the",
        "optimizers' `state_dict()` are compared before and after.",
        "",
        "| case | raised | message | state unchanged |",
        "|---|---|---|---|",
    ]
    for r in report["bad_inputs"]:
        lines.append(
            f"| {_md_escape(r['name'])} | `{r['raised']}` | {_md_escape(r['message'])} | "
            f"{'yes' if r['state_unchanged'] else '**no**'} |"
        )
    lines += [
        "",
        "## Injected numerical faults",
        "",
        "Bulk-projected training (k = 3, Adam, refresh every step) of a 51-parameter MLP for",
        f"{report['fault_steps']} steps with the fault injected at step 3. *params finite*: after",
        "every step; *loss*: full-data loss before → after the run (training went on if it fell).",
        "",
        "| fault | injection | on_fault | outcome | params finite | loss | counters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["faults"]:
        if r["raised"]:
            outcome = f"raised `{r['raised']}`, state {'unchanged' if r['state_unchanged'] else '**changed**'}"
        else:
            outcome = "went on" if r["loss_last"] < r["loss_first"] else "every step skipped"
        counters = ", ".join(
            f"{k} {int(v)}"
            for k, v in r["counters"].items()
            if v
            and k
            in ("faults", "skipped_steps", "cold_restarts", "reorthonormalized", "unconverged")
        )
        lines.append(
            f"| {r['name']} | {_md_escape(r['injection'])} | `{r['policy']}` | {outcome} | "
            f"{'yes' if r['params_finite'] else '**no**'} | {r['loss_first']:.4f} → "
            f"{r['loss_last']:.4f} | {counters or '–'} |"
        )
    lines += [
        "",
        "## Determinism and resume",
        "",
        "Each configuration runs twice (must agree bit for bit: parameters, basis, eigenvalues,",
        "per-step record, counters), and once per resume point `s`: stop after `s` steps,",
        "`torch.save` model and optimizer, build a fresh job, `torch.load(weights_only=True)`,",
        "finish; the result must equal the uninterrupted run bit for bit.",
        "",
        "| configuration | steps | refreshes | repeat identical | resumes identical |",
        "|---|---|---|---|---|",
    ]
    for r in report["determinism"]:
        same = sum(r["resume_identical"])
        lines.append(
            f"| {r['config']} | {r['steps']} | {r['refreshes']} | "
            f"{'yes' if r['repeat_identical'] else '**no**'} | {same} of {len(r['resume_identical'])} |"
        )
    if "accumulation" in report:
        rows = report["accumulation"]
        worst = max(r["max_abs_diff"] for r in rows)
        lines += [
            "",
            "## Gradient accumulation",
            "",
            "Four micro-batches of `loss / 4`, one backward each, then one `step()`, against one",
            "step on the whole batch of 8, for 3 steps, from the same start, for every optimizer",
            "family and mode (`tests/test_grad_accumulation.py`'s own runs; float64). The",
            f"wrapper must step once per `step()`: {len(rows)} runs, the largest parameter",
            f"difference {worst:.1e} (accepted: {ACCUMULATION_TOL:g}), "
            f"{sum(r['refreshes'] == 3 for r in rows)} of {len(rows)} with exactly one refresh "
            "per step.",
            "",
            "| family | " + " | ".join(dict.fromkeys(r["mode"] for r in rows)) + " |",
            "|---|" + "---|" * len(dict.fromkeys(r["mode"] for r in rows)),
        ]
        for family in dict.fromkeys(r["family"] for r in rows):
            cells = [f"{r['max_abs_diff']:.1e}" for r in rows if r["family"] == family]
            lines.append(f"| {family} | " + " | ".join(cells) + " |")
    if "self_check" in report:
        lines += [
            "",
            "## The operators' self-check at construction",
            "",
            "`HessianOperator(..., check=True)` (the default) runs at most 64 examples of the",
            "first micro-batch through `model` and `loss_fn` twice (once repeated, to catch a",
            "summed loss) and makes two full-data products",
            "with one vector (to catch a random operator), so that a wrong `loss_fn`, wrong input",
            "dtypes or a `reduction='sum'` loss are refused at construction with what to do, and",
            "dropout in train mode or a shuffling loader that drops batches gets a",
            "`CurvatureCheckWarning`. Its cost (median of 3 constructions, one torch thread;",
            "a product is one full-data Hessian-vector product without the graph cache):",
            "",
            "| model | parameters | construction, check off (ms) | check on (ms) | one product (ms) |",
            "|---|---|---|---|---|",
        ]
        for r in report["self_check"]:
            lines.append(
                f"| {r['model']} | {r['params']:,} | {1e3 * r['without_check_s']:.1f} | "
                f"{1e3 * r['with_check_s']:.1f} | {1e3 * r['product_s']:.1f} |"
            )
    s = report["soak"]
    windows = len(s["rss_mb"])
    per = s["steps"] // windows
    seg_steps = s["steps"] // s["segments"]
    inj, c = s["injected"], s["counters"]
    lines += [
        "",
        "## Soak",
        "",
        f"Bulk-Adam (k = 3) on the {s['problem']}, {s['steps']:,} steps of 32 examples,",
        "the basis refreshed at every step by one warm-started block power iteration",
        "(`PowerIteration(max_iter=1, shift_steps=0)`: one product with a block of 5 vectors",
        'per step), `on_fault="keep"`. The run is cut into',
        f"{s['segments']} segments of {seg_steps:,} steps, each run by a fresh Python process",
        "(`python -c`) that loads the previous segment's checkpoint (model and optimizer",
        "`state_dict`, `torch.load(weights_only=True)`) and saves its own:",
        f"**{s['resumes']} resumes**. Faults injected: every 97th Hessian product of a process",
        "comes back NaN (`FaultyOperator`), and once, at step",
        f"{s['steps'] // 3:,}, the loss raises inside the refresh; the training loop catches",
        "the error, checks the parameters and takes the step again.",
        "",
        "| | injected | seen by the wrapper / the loop |",
        "|---|---|---|",
        f"| NaN Hessian products | {inj['nan_products']} | `faults` {int(c['faults'])} "
        f"(basis kept), `skipped_steps` {int(c['skipped_steps'])}, `cold_restarts` "
        f"{int(c['cold_restarts'])} |",
        f"| loss raises in a refresh | {inj['loss_raises']} | propagated "
        f"{inj['raises_propagated']}, parameters untouched {inj['params_untouched_after_raise']} |",
        "",
        f"Counters at the end (carried across the resumes by the optimizer's `state_dict`): "
        f"refreshes {int(c['refreshes']):,}, Hessian products {int(c['matvecs']):,}, "
        f"unconverged {int(c['unconverged']):,} (one iteration never meets the tolerance; "
        "counted, not a fault), reorthonormalized "
        f"{int(c['reorthonormalized'])}.",
        "",
        f"Measured at the end of each window of {per} steps (two per process), after",
        "`gc.collect()`, in the process that ran it; the first window of each process follows",
        "its imports and the checkpoint load.",
        "",
        "| window end | process | RSS (MiB) | gc-tracked objects | live tensors "
        "| with a graph | HVPs per step | median step, CPU (ms) | median step, wall (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = zip(
        s["rss_mb"],
        s["objects"],
        s["tensors"],
        s["graph_tensors"],
        s["matvecs_per_step"],
        s["step_cpu_ms"],
        s["step_ms"],
    )
    for i, (rss, obj, ten, gr, mv, cpu, ms) in enumerate(rows):
        end = (i + 1) * per
        lines.append(
            f"| {end:,} | {(end - 1) // seg_steps + 1} | {rss:.1f} | {obj:,} | {ten} | {gr} "
            f"| {mv:g} | {cpu:.1f} | {ms:.1f} |"
        )
    lines += [
        "",
        f"Parameters finite: {'yes' if s['params_finite'] else '**no**'}; full-data loss "
        f"{s['loss_first']:.4f} → {s['loss_last']:.4f}. Step times are medians; CPU time is "
        "this process's own, wall time also measures the machine's other load (load average "
        f"{_load(report, 'start')} at the start of the report, {_load(report, 'end')} at the "
        "end); compare windows with each other.",
        "",
        "## Policy in one paragraph",
        "",
        "A minibatch gradient (or closure loss) holding NaN/Inf skips the step before the base",
        "optimizer runs, so neither the parameters nor its state (momentum, Adam moments) see",
        "it; an update that comes out non-finite anyway is undone. A refresh whose Hessian",
        "products or eigenpairs are non-finite, or whose solver raises `LinAlgError` /",
        '`EigensolverError`, keeps the previous basis (`on_fault="keep"`), retries from a',
        'random start first (`"cold"`), or raises `FloatingPointError` with parameters and',
        'optimizer state untouched (`"raise"`). A basis that lost orthonormality is',
        "re-orthonormalized. A solver that stops short of its tolerance is not a fault: its",
        "best estimate is used and counted (`raise_on_failure=True` makes it one). Errors that",
        "are not numerical (a wrong `loss_fn`, data that ran dry) propagate, parameters",
        "untouched. Every event is counted in `opt.counters` and the per-step `opt.last_stats`",
        "(`skipped`, `faults`, `refresh_converged`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--soak-steps",
        type=int,
        default=5000,
        help="a multiple of 2 x --soak-segments (default 5000)",
    )
    parser.add_argument("--soak-segments", type=int, default=10)
    parser.add_argument("--fault-steps", type=int, default=8)
    parser.add_argument(
        "--out", type=Path, default=None, help="directory for both outputs (default: the repo's)"
    )
    parser.add_argument(
        "--from-json", type=Path, default=None, help="only re-render the markdown from this JSON"
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        md_path = (args.out or ROOT / "docs") / "reliability.md"
        md_path.write_text(markdown(json.loads(args.from_json.read_text())))
        print(f"wrote {md_path}")
        return 0
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = [asdict(run_bad_input(case)) for case in BAD_INPUTS]
        faults = []
        for case in FAULTS:
            out = asdict(run_fault(case, args.fault_steps))
            faults.append({**out, "injection": case.injection, "policy": case.policy})
        det = determinism()
        accumulated = accumulation()
        soaked = asdict(soak_resumed(args.soak_steps, segments=args.soak_segments))
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
            "load_average_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "seconds": time.perf_counter() - t0,
        "fault_steps": args.fault_steps,
        "bad_inputs": bad,
        "faults": faults,
        "determinism": det,
        "accumulation": accumulated,
        "soak": soaked,
        "self_check": checks,
    }
    json_path = (args.out or ROOT / "benchmarks" / "results") / "reliability.json"
    md_path = (args.out or ROOT / "docs") / "reliability.md"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown(report))
    failed = [
        r["name"]
        for r in bad
        if not (r["matched"] and r["state_unchanged"] and r["raised"] == r["expected"])
    ]
    failed += [r["name"] for r in faults if not r["params_finite"]]
    failed += [r["config"] for r in det if not r["ok"]]
    failed += [
        f"accumulation {r['family']} {r['mode']}"
        for r in accumulated
        if r["max_abs_diff"] > ACCUMULATION_TOL or r["refreshes"] != 3
    ]
    sk = report["soak"]
    if not (
        sk["params_finite"]
        and sk["resumes"] == sk["segments"] - 1
        and sk["counters"]["faults"] == sk["injected"]["nan_products"]
        and sk["injected"]["params_untouched_after_raise"] == sk["injected"]["loss_raises"] == 1
    ):
        failed.append("soak")
    print(f"wrote {json_path} and {md_path} in {report['seconds']:.0f} s")
    if failed:
        print("FAILED:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
