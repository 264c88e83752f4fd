"""What every study shares: the machine and its load, where results go, the command that
made them, markdown tables, the JSON a page is rendered from, and side-by-side timing.

Import what a study needs from here (``from benchmarks.harness import machine_info, ...``)
and run the study from the repository root as ``python -m benchmarks.<study>``.

Machine and load (a page names the machine, its load and the command):

* :func:`machine_info` ``(device, blas=None) -> dict``: CPU, cores, torch threads, torch
  and Python versions, the device (and GPU name), the load average at the start and a
  one-line ``description``;
* :func:`cpu_name` ``() -> str``: the CPU's model name (for a study that keeps its own
  machine record);
* :func:`load_average` ``() -> list | None``: the 1, 5 and 15 minute load averages; store
  it as ``machine["load_average_at_end"]`` when the measurements end;
* :func:`machine_line` ``(machine, command) -> str``: ``Machine: … Command: `…`.``;
* :func:`load_clause` ``(machine, loaded) -> str``: ``"; load average (1 min) X at the
  start and Y at the end"``, followed by ``loaded`` when the machine was busy.

Commands and folders:

* :func:`command_line` ``(study, argv) -> str``: ``python -m benchmarks.<study> <argv>``
  (``argv=None``: this process's arguments);
* :func:`output_dir` ``(out, quick, default, prefix) -> Path``: ``out`` when given, a new
  temporary folder for ``--quick`` (a smoke run never overwrites committed results), else
  ``default``;
* :data:`ROOT`, :data:`RESULTS` (``benchmarks/results``), :data:`DOCS` (``docs``).

Tables and JSON:

* :func:`markdown_table` ``(header, rows) -> str``; :func:`fmt` ``(x, spec)``: a number or
  ``–`` for a missing or NaN one;
* :func:`compact` ``(obj)``: finite floats to 7 significant digits, tuples as lists (what
  a results JSON keeps, so that a page rendered from it renders the same again);
  :func:`write_json` ``(path, obj, indent=None)`` writes it (folders created).

Timing side by side (runs advance in lockstep so a change of load hits every row alike):

* :func:`rotated` ``(items, step) -> list``: the order of round ``step`` (it rotates every
  round);
* :func:`limit_blas_threads` ``(threads) -> str`` / :func:`restore_blas_threads` ``()``: cap
  NumPy's and SciPy's BLAS threads for a run (and undo it, a study's ``main`` may run inside
  a test process);
* :func:`synchronize` ``(device)``: wait for a CUDA device before reading a clock.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"

T = TypeVar("T")


# ------------------------------------------------------------------ machine and load
def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the platform has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` says."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine_info(device: torch.device, blas: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on, including the load (other processes) at the start:
    ``cpu``, ``cpu_count``, ``torch_threads``, ``torch``, ``python``, ``device``,
    ``load_average_at_start``, ``gpu`` (on CUDA), ``blas`` (when given) and a one-line
    ``description``."""
    cpu = cpu_name()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    desc = f"{cpu}, {info['cpu_count']} cores, torch {torch.__version__} with {info['torch_threads']} threads"
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        desc = f"{info['gpu']} (host: {desc})"
    if blas is not None:
        info["blas"] = blas
        desc += f", {blas}"
    load = info["load_average_at_start"]
    if load is not None:
        desc += f", load average {load[0]:.1f} at start"
    info["description"] = desc
    return info


def machine_line(m: dict[str, Any], command: str) -> str:
    """``Machine: … Command: …`` with the load at the end of the run when it was recorded."""
    end = m.get("load_average_at_end")
    tail = f" and {end[0]:.1f} at the end" if end else ""
    return f"Machine: {m['description']}{tail}. Command: `{command}`."


def load_clause(m: dict[str, Any], loaded: str) -> str:
    """``"; load average (1 min) X at the start and Y at the end"`` from a machine record,
    followed by ``loaded`` when either exceeds 0.75 per core; ``""`` when no load was
    recorded."""
    start, end = m.get("load_average_at_start"), m.get("load_average_at_end")
    if not start:
        return ""
    text = f"; load average (1 min) {start[0]:.1f} at the start"
    text += f" and {end[0]:.1f} at the end" if end else ""
    if max(start[0], (end or start)[0]) > 0.75 * m["cpu_count"]:
        text += loaded
    return text


# --------------------------------------------------------------- commands and folders
def command_line(study: str, argv: list[str] | None) -> str:
    """``python -m benchmarks.<study> <argv>`` (``argv=None``: this process's arguments)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", f"benchmarks.{study}", *args])


def output_dir(out: Path | None, quick: bool, default: Path, prefix: str) -> Path:
    """Where a benchmark writes: ``out`` when given; else, for ``--quick``, a new temporary
    folder (a smoke run never overwrites the committed results); else ``default``."""
    if out is not None:
        return out
    if quick:
        return Path(tempfile.mkdtemp(prefix=f"{prefix}_quick_"))
    return default


# ------------------------------------------------------------------- tables and JSON
def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the header, its rule and one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(x: float | None, spec: str, missing: str = "–") -> str:
    """``format(x, spec)``, or ``missing`` for ``None`` and NaN."""
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def compact(obj: Any) -> Any:
    """``obj`` with finite floats rounded to 7 significant digits and tuples as lists (what a
    results JSON keeps; a page made from it renders the same again from the file)."""
    if isinstance(obj, float):
        return obj if not math.isfinite(obj) else float(f"{obj:.7g}")
    if isinstance(obj, dict):
        return {k: compact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [compact(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON (values it cannot encode as their ``str``), folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, default=str))


# -------------------------------------------------------------- timing side by side
def rotated(items: list[T], step: int) -> list[T]:
    """``items`` in the order of round ``step``: the first ``step mod len`` moved to the end,
    so that no item always runs right after the same neighbour."""
    shift = step % len(items)
    return items[shift:] + items[:shift]


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on a CPU) before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_BLAS_LIMITS: list[Any] = []  # the active threadpoolctl limiter (kept alive for the run)


def limit_blas_threads(threads: int | None) -> str:
    """Cap the threads of NumPy's and SciPy's BLAS (OpenBLAS) at ``threads``; say what was done.

    Why: after each call, OpenBLAS worker threads keep spinning for a while. On a small CPU
    they then take the cores from torch's own threads in whatever runs next (the
    ``blas_interference`` study measures it); ARPACK's BLAS work on vectors of the size of a
    model's parameters is level-1/2, which a second thread does not speed up. ``None``
    leaves the BLAS as it is.
    """
    if threads is None:
        return "BLAS threads left at their default"
    import scipy.sparse.linalg  # noqa: F401  (loads SciPy's own OpenBLAS, so it is capped too)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings threadpoolctl; without it, say so
        return "BLAS threads left at their default (threadpoolctl not installed)"
    _BLAS_LIMITS.append(threadpool_limits(limits=threads, user_api="blas"))
    return f"NumPy/SciPy BLAS capped at {threads} thread{'s' if threads > 1 else ''}"


def restore_blas_threads() -> None:
    """Undo :func:`limit_blas_threads` (a benchmark's ``main`` may run inside a test process)."""
    while _BLAS_LIMITS:
        _BLAS_LIMITS.pop().restore_original_limits()
