"""``docs/performance.md``: the page that several studies write together (paper scale,
projected training, BLAS interference, the refresh analysis and the HVP back ends), assembled
from their markdown and JSON in ``benchmarks/results/``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.harness import markdown_table


def hvp_lever_notes(path: Path) -> list[str]:
    """What the HVP table says about each back-end lever, with numbers read from its JSON."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = {(r["setup"], r["dtype"], r["backend"], r["b"]): r for r in data["rows"]}
    b = data["block"]
    lines = ["## HVP levers: what the table above implies", ""]
    for setup in dict.fromkeys(r["setup"] for r in data["rows"]):
        for dtype in ("float32", "float64"):

            def ms(backend: str, width: int, setup: str = setup, dtype: str = dtype) -> float:
                row = rows.get((setup, dtype, backend, width))
                return row["ms_per_column"] if row else math.nan

            single, block = ms("autograd", 1), ms("autograd", b)
            parts = [
                f"* {setup}, {dtype}: a block of {b} through the shared graph costs "
                f"{block / ms('paper', 1):.2f}× the paper's HVP per column "
                f"({single / block:.2f}× faster than one column at a time); "
                f"`is_grads_batched` {ms('autograd-batched', b) / block:.2f}× and torch.func "
                f"vmap {ms('func', b) / block:.2f}× the shared-graph loop's time; with the "
                f"graph cached between calls, one column costs "
                f"{ms('autograd-cached', 1) / single:.2f}× and a block of {b} "
                f"{ms('autograd-cached', b) / block:.2f}× the uncached call"
            ]
            compiled = ms("func-compiled", b)
            if not math.isnan(compiled):
                secs = data.get("compile", {}).get(f"{setup}/torch.{dtype}/compile_seconds_b{b}")
                parts.append(
                    f"; torch.compile of jvp∘grad {compiled / block:.2f}× (after "
                    f"{secs:.0f} s of compilation per block width)"
                )
            if dtype == "float64":
                parts.append(
                    f"; float64 costs {block / ms('autograd', b, setup, 'float32'):.2f}× float32"
                )
            lines.append("".join(parts) + ".")
    lines += [
        "",
        'The library keeps the shared-graph double-backward loop (`method="auto"`), feeds '
        "it blocks through the warm refresh and, for one in-memory batch, keeps the graph "
        "between the products of a solve (`cache_graph`: single-vector Lanczos pays the "
        "forward pass once per solve). torch.compile is measured here but not "
        "used in training: compiled once for one block width (narrower blocks padded with "
        "zero columns), it wins only near that width, while the warm refresh's LOBPCG steps "
        "change the width from one iteration to the next; its compile time is in the row.",
        "",
    ]
    return lines


def refresh_analysis_notes(path: Path) -> list[str]:
    """The refresh-cost study of ``benchmarks/refresh_analysis/`` as a table, from its JSON."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    k, steps = data["k"], data["steps"]
    lines = [
        "## What a refresh must spend: cost against accuracy along one trajectory",
        "",
        f"Command: `python -m benchmarks.refresh_analysis --steps {steps}`. The digits MLP "
        f"(k = {k}) after 100 SGD steps; {steps} Bulk-SGD steps (lr 0.1, batch 50) projected "
        f"with the exact top-{k} (float64 Lanczos, tol 1e-7) computed at every step. Each "
        "strategy replays that trajectory on the float32 Hessian from its own cold start and "
        f"is compared with the exact top-{k} at *every* step (not a sample); `HVP/step` "
        "counts columns (a block of b counts b), the cold start excluded.",
        "",
    ]
    for j, d in data["drift"].items():
        lines.append(
            f"* the exact top-{k} subspace itself moves by sin θ {d['median']:.3f} (median) "
            f"and up to {d['max']:.3f} over {j} step(s)"
        )
    lines += [
        f"* smallest λ_{k}/λ_{k + 1} along the trajectory: {data['min_gap_ratio']:.4f}",
        "",
    ]
    rows = [
        [
            r["label"],
            f"{r['matvecs_per_step']:.1f}",
            str(r["matvecs_max"]),
            f"{r['sin_max']:.3f}",
            f"{r['sin_median']:.3f}",
            str(r["unconverged"]),
        ]
        for r in data["rows"]
    ]
    header = ["strategy", "HVP/step", "max", "sin θ max", "sin θ median", "unconverged"]
    lines += [markdown_table(header, rows), ""]
    return lines


def save_results(out: Path, stem: str, results: dict[str, Any], md: str, docs: Path | None) -> None:
    """Write ``<stem>.json`` (when ``results`` is given) and ``<stem>.md`` under ``out``, print
    the markdown and, with ``docs``, rewrite the performance page from ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if results:
        (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"{stem}.md").write_text(md)
    print(md)
    if docs is not None:
        write_performance_doc(out, docs)


def write_performance_doc(results_dir: Path, path: Path) -> None:
    """Assemble ``docs/performance.md`` from the markdown results in ``results_dir``."""
    parts = [
        "# Performance",
        "",
        "Generated by `benchmarks/paper_scale/`, `benchmarks/projected_training/`, "
        "`benchmarks/blas_interference/` and `benchmarks/hvp/` from the "
        "results in `benchmarks/results/`; no number on this page is typed by hand. Each table "
        "names the machine and the command that produced it. Timings are ratios measured side "
        "by side in one process; absolute times depend on the machine and its load (the "
        "load average at the start of the run is printed with the machine).",
        "",
        "To regenerate this page (on a quiet 2-core CPU: the paper-scale runs about an "
        "hour, dominated by the cold solves of the CNN and the Transformer, whose products "
        "cost seconds; each paper-scale table names the command of its run, and `--merge` "
        "joins their JSON files into the page; the refresh analysis about "
        "5 minutes, projected training 8, BLAS interference 1, the HVP table a few; "
        "`--device cuda` adds GPU tables, `benchmarks/gpu_check.sh` the quick GPU check):",
        "",
        "```",
        "OMP_NUM_THREADS=1 python -m benchmarks.paper_scale --threads 1 --setups mnist-mlp "
        "--out /tmp/ps/a  # and the other setups' commands, then:",
        "python -m benchmarks.paper_scale --merge /tmp/ps/*/paper_scale.json --out "
        "benchmarks/results --docs docs/performance.md",
        "python -m benchmarks.refresh_analysis",
        "OMP_NUM_THREADS=2 python -m benchmarks.projected_training --docs docs/performance.md",
        "OMP_NUM_THREADS=2 python -m benchmarks.blas_interference --docs docs/performance.md",
        "OMP_NUM_THREADS=2 python -m benchmarks.hvp --docs docs/performance.md",
        "```",
        "",
    ]
    for stem in (
        "paper_scale",
        "paper_scale_cuda",
        "paper_scale_cuda.quick",
        "projected_training",
        "projected_training_cuda",
        "blas_interference",
    ):
        f = results_dir / f"{stem}.md"
        if f.exists():
            parts += [f.read_text(), ""]
    parts += refresh_analysis_notes(results_dir / "refresh_analysis.json")
    for stem in ("hvp", "hvp_cuda"):
        f = results_dir / f"{stem}.md"
        if f.exists():
            parts += [f.read_text(), ""]
    parts += hvp_lever_notes(results_dir / "hvp.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts).rstrip() + "\n")
