"""The reliability page (``docs/reliability.md``), one section per kind of case, from the
report's JSON only (``--from-json`` renders it again)."""

from __future__ import annotations

from .cases import ACCUMULATION_TOL


def _load(report: dict, when: str) -> str:
    value = report.get("machine", {}).get(f"load_average_{when}")
    return "unknown" if value is None else f"{value:.1f}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    """``docs/reliability.md`` from the report's JSON."""
    lines = _header(report)
    lines += _bad_inputs(report)
    lines += _faults(report)
    lines += _determinism(report)
    if "accumulation" in report:
        lines += _accumulation(report["accumulation"])
    if "self_check" in report:
        lines += _self_check(report["self_check"])
    lines += _soak(report["soak"])
    lines += _soak_windows(report["soak"])
    lines += _soak_end(report)
    return "\n".join(lines)


def _header(report: dict) -> list[str]:
    m = report["machine"]
    lines = [
        "# Reliability report",
        "",
        "What the wrapper does with bad input, numerical faults, checkpoints and long runs.",
        "Every row is produced by `benchmarks/reliability/` from the catalogue in",
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
    ]
    return lines


def _bad_inputs(report: dict) -> list[str]:
    """One row per bad input: what was raised, and whether the state stayed unchanged."""
    lines = ["| case | raised | message | state unchanged |", "|---|---|---|---|"]
    for r in report["bad_inputs"]:
        lines.append(
            f"| {_md_escape(r['name'])} | `{r['raised']}` | {_md_escape(r['message'])} | "
            f"{'yes' if r['state_unchanged'] else '**no**'} |"
        )
    return lines


def _faults(report: dict) -> list[str]:
    """One row per injected fault: the policy, the outcome, the parameters and counters."""
    lines: list[str] = []
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
    return lines


def _determinism(report: dict) -> list[str]:
    """Repeat and resume, bit for bit, per configuration."""
    lines: list[str] = []
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
    return lines


def _accumulation(rows: list[dict]) -> list[str]:
    """Accumulated micro-batches against one whole-batch step, per family and mode."""
    lines: list[str] = []
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
    return lines


def _self_check(rows: list[dict]) -> list[str]:
    """The operators' self-check: its cost at construction."""
    lines: list[str] = []
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
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {1e3 * r['without_check_s']:.1f} | "
            f"{1e3 * r['with_check_s']:.1f} | {1e3 * r['product_s']:.1f} |"
        )
    return lines


def _soak(s: dict) -> list[str]:
    """The soak: how it runs, what was injected and what the wrapper saw."""
    lines: list[str] = []
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
    return lines


def _soak_windows(s: dict) -> list[str]:
    """One row per measurement window of the soak."""
    windows = len(s["rss_mb"])
    per = s["steps"] // windows
    seg_steps = s["steps"] // s["segments"]
    lines: list[str] = []
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
    return lines


def _soak_end(report: dict) -> list[str]:
    """The soak's end, and the policy in one paragraph."""
    s = report["soak"]
    lines: list[str] = []
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
    return lines
