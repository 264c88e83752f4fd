"""The paper-scale section of ``docs/performance.md``: one table per setup, the blocked
products, the issue's targets checked against the rows (the verdict) and the profile."""

from __future__ import annotations

import math
from typing import Any

import subspace_optim as so
from benchmarks.harness import machine_line, markdown_table

from .measure import BLOCK
from .rows import PAPER_STEPS, PREVIOUS_DEFAULT


def _fmt(x: Any, spec: str, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec) + unit


def _intro(results: dict[str, Any]) -> list[str]:
    """The section's title, machine, how to read the columns and, without a GPU, a note."""
    m = results["machine"]
    lines = [
        "## Paper scale: a Bulk-projected step on the paper's model sizes",
        "",
        machine_line(m, results["command"]),
        "",
        "The machine was shared with other work while this ran (see the load averages): "
        "compare rows of one table by their ratios and product counts, not across tables. "
        "All rows of a setup advance in lockstep from one SGD snapshot on the same "
        "mini-batches, the order rotating every step. Columns: `ms/step` mean and median over "
        "the projected steps after the first; `first` the first projected step (the cold "
        "start); `HVP/step` products per step after the first (a block of b counts b); "
        "`ms/HVP` one full-data product alone and per column of a block of "
        f"{results['block']} through the row's operator; `peak MiB` the largest rise of "
        "the process's memory during a step (CPU: resident set sampled every 2 ms; CUDA: "
        "allocator peak); `sin θ` the largest principal angle between the basis used and a "
        "tightly converged top-k (Lanczos, relative residual 1e-5) at the sampled steps; `Δloss` the "
        "final full-data loss relative to the paper protocol's; `χ_k` the alignment "
        "‖P_k∇L‖/‖∇L‖ of the full gradient with the row's basis at the first projected step "
        "(the paper switches once its EMA is near 1); `hours` the first step plus "
        f"{PAPER_STEPS:,} − 1 median steps; `vs default` the median against the library "
        "default's.",
        "",
    ]
    if m.get("device", "cpu") == "cpu":
        lines += [
            "No CUDA path of the library has run yet (no GPU was available to this work): "
            "`benchmarks/gpu_check.sh` runs `tests/test_cuda.py` and this benchmark with "
            "`--device cuda --quick` on a GPU machine and adds its table to this page.",
            "",
        ]
    return lines


HEADER = [
    "run",
    "ms/step mean",
    "median",
    "first",
    "HVP/step",
    "ms/HVP single",
    "per column",
    "peak MiB",
    "sin θ",
    "χ_k",
    "Δloss",
    "hours",
    "vs default",
]


def _row(r: dict[str, Any]) -> list[str]:
    """One run's cells, in the order of :data:`HEADER`."""
    return [
        r["label"],
        _fmt(r["ms_mean"], ".0f"),
        _fmt(r["ms_median"], ".0f"),
        _fmt(r["ms_first"], ".0f"),
        _fmt(r["hvp_per_step"], ".1f"),
        _fmt(r.get("ms_per_hvp_single"), ".1f"),
        _fmt(r.get("ms_per_hvp_column"), ".1f"),
        _fmt(r["peak_mib"], ".0f"),
        _fmt(r["sin_max"], ".1e"),
        _fmt(r.get("chi_first"), ".2f"),
        _fmt(100 * r["loss_vs_paper"] if "loss_vs_paper" in r else None, "+.2f", "%"),
        _fmt(r["hours_20k"], ".2f"),
        _fmt(r.get("median_vs_default"), ".2f", "×"),
    ]


def _setup_lines(block: dict[str, Any]) -> list[str]:
    """One setup: its title, the table, the blocked products, each row's configuration,
    the targets and the profile."""
    lines = [
        f"### {block['setup']}: {block['n']:,} parameters, {block['examples']:,} examples "
        f"({block['data']}), k = {block['k']}, SGD lr {block['lr']} batch {block['batch']}, "
        f"{block['warmup']} SGD steps then {block['steps']} projected steps",
        "",
        markdown_table(HEADER, [_row(r) for r in block["runs"]]),
        "",
        *column_lines(block),
        "Configurations:",
        "",
        *[f"* {r['label']}: `{r['config']}`" for r in block["runs"]],
        "",
        *verdict_lines(block),
        "",
    ]
    if block.get("profile"):
        lines += profile_lines(block["profile"], block.get("profile_command"))
    return lines


def to_markdown(results: dict[str, Any]) -> str:
    """The paper-scale section of ``docs/performance.md`` from the saved results."""
    lines = _intro(results)
    for block in results["setups"]:
        lines += _setup_lines(block)
    return "\n".join(lines).rstrip() + "\n"


def column_lines(block: dict[str, Any]) -> list[str]:
    """Per column of a block, the library's loop of double backwards against one batched
    double backward (the blocked-product lever), from :func:`.measure.batched_column_ms`."""
    ms = block.get("column_ms")
    if not ms:
        return []
    ratio = ms["batched"] / ms["loop"]
    return [
        f"Blocked products, per column of a block of {BLOCK} with the gradient graph "
        f'built once: a loop of double backwards (the library\'s `method="autograd"`) '
        f"{ms['loop']:.1f} ms; one batched double backward "
        f"(`torch.autograd.grad(..., is_grads_batched=True)`) {ms['batched']:.1f} ms "
        f"({ratio:.2f}× the loop; "
        + ("faster" if ratio < 1 else "slower, so the library keeps the loop")
        + " here).",
        "",
    ]


def verdict_lines(block: dict[str, Any]) -> list[str]:
    """The issue's targets on this setup, checked against the measured rows."""
    runs = {r["label"]: r for r in block["runs"]}
    lib, paper = runs.get("library default"), runs.get("paper protocol")
    before = runs.get(PREVIOUS_DEFAULT)
    if lib is None or paper is None:
        return []
    out = ["Targets (median step; sin θ ≤ 0.05; |Δloss| ≤ 2%):", ""]
    if before is not None:
        ratio = lib["ms_median"] / before["ms_median"]
        out.append(
            f"* library default against the previous default ({PREVIOUS_DEFAULT}): "
            f"{ratio:.2f}× the median step ({'met' if ratio <= 0.5 else 'missed'}: ≤ 0.5×); "
            f"products per step {lib['hvp_per_step']:.1f} against {before['hvp_per_step']:.1f}"
        )
    speed = paper["ms_median"] / lib["ms_median"]
    out.append(
        f"* against the paper protocol: {speed:.1f}× faster per median step "
        f"({'met' if speed >= 10 else 'missed'}: ≥ 10×)"
    )
    column, warm = lib.get("ms_per_hvp_column"), so.WarmRefresh()
    if column is not None and math.isfinite(column):
        out.append(
            f"* where the floor is: a refresh whose sketched check passes costs "
            f"{warm.probes} products, one that recomputes at least k + {warm.extra} = "
            f"{block['k'] + warm.extra} (the Rayleigh–Ritz block), about "
            f"{(block['k'] + warm.extra) * column:.0f} ms at {column:.1f} ms per column "
            f"here; the default measured {lib['hvp_per_step']:.1f} products per step"
        )
    sin, dloss = lib["sin_max"], lib.get("loss_vs_paper", math.nan)
    out.append(
        f"* accuracy: sin θ {sin:.1e} ({'met' if sin <= 0.05 else 'missed'}), Δloss "
        f"{100 * dloss:+.3f}% ({'met' if abs(dloss) <= 0.02 else 'missed'})"
    )
    return out


def profile_lines(profile: list[dict[str, Any]], command: str | None = None) -> list[str]:
    """The torch.profiler breakdown of a few projected steps, one line per row profiled
    (``command``: the run it came from, when not the table's own)."""
    header = [
        "row",
        "steps",
        "ms/step",
        "products",
        "full gradient",
        "dense algebra (solver)",
        "rest of the step",
        "Python + dispatch",
        "matmul share of op time",
    ]
    body = [
        [
            p["label"],
            str(p["steps"]),
            f"{p['ms_per_step']:.0f}",
            f"{p['products_pct']:.0f}%",
            f"{p['gradient_pct']:.0f}%",
            f"{p['dense_pct']:.0f}%",
            f"{p['rest_pct']:.0f}%",
            f"{p['python_pct']:.0f}%",
            f"{p['mm_pct']:.0f}%",
        ]
        for p in profile
    ]
    return [
        "Where a projected step's time goes (torch.profiler over the steps after the first; "
        "`products`: inside the operator's block products; `full gradient`: the full-data "
        "loss and gradient of each refresh; `dense algebra`: the rest of the eigensolve "
        "(orthogonalization, Rayleigh–Ritz, small eigenproblems); `rest`: mini-batch "
        "gradient, base step, projection and diagnostics; `Python + dispatch`: wall time "
        "not spent inside any ATen operator; `matmul share`: mm/addmm/bmm self time over "
        "all operator self time)"
        + (f", from a separate run on the same machine: `{command}`" if command else "")
        + ":",
        "",
        markdown_table(header, body),
        "",
    ]
