"""One configuration's peak memory, measured in this process (the study runs each in a
fresh one), and the configurations of the two sweeps."""

from __future__ import annotations

import itertools
import time

WIDTHS = (128, 256, 256, 10)
EXAMPLES = 2048


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def measure(config: dict) -> dict:
    """Run one configuration in this process; return the peak in MiB and the time."""
    import torch
    from torch import nn

    from subspace_optim import HessianOperator

    device = torch.device(config["device"])
    g = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(WIDTHS)):
        layers.append(nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers).to(device)
    X = torch.randn(config["examples"], WIDTHS[0], generator=g).to(device)
    Y = torch.randn(config["examples"], WIDTHS[-1], generator=g).to(device)

    def loss_fn(out, target):  # written out: F.mse_loss breaks forward-over-reverse
        return ((out - target) ** 2).mean()

    common = {"chunk_size": config["chunk"], "method": config["method"]}
    op = HessianOperator(model, loss_fn, (X, Y), memory_budget=config.get("budget"), **common)
    # the library's estimate for this chunk size (an unlimited budget: only the estimate)
    estimate = HessianOperator(model, loss_fn, (X, Y), memory_budget=2**62, **common)
    estimate = estimate.memory_estimate
    n = op.shape[0]
    warm = HessianOperator(model, loss_fn, (X[:1], Y[:1]), method=config["method"])
    warm.matvec(torch.zeros(n, device=device))  # load kernels, allocate workspaces
    V = torch.randn(n, config["width"], generator=g).to(device)
    per_pass = config["width"] if op.block_size is None else min(config["width"], op.block_size)
    block_bytes = n * config["width"] * V.element_size()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = _rss_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    c0 = time.process_time()
    HV = op.matmat(V)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _rss_kib("VmHWM") * 1024
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    assert torch.isfinite(HV).all()
    return {
        **config,
        "n": n,
        "per_pass": per_pass,
        "peak_mib": (peak - before) / 2**20,
        # the sub-block product's estimate plus the output block
        "estimate_mib": (estimate.peak(per_pass) + block_bytes) / 2**20,
        "graph_mib": estimate.graph_bytes / 2**20,
        "block_mib": block_bytes / 2**20,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


BUDGET_MIB = 12  # the memory_budget of the budget sweep


def configs(device: str, quick: bool) -> list[dict]:
    examples = 512 if quick else EXAMPLES
    chunks = (None, 256) if quick else (None, 512, 128)
    widths = (1, 4) if quick else (1, 4, 16)
    wide = widths[-1]
    out = []
    for method in ("autograd", "func"):
        for chunk in chunks:
            out.append({"sweep": "chunk_size", "method": method, "chunk": chunk, "width": wide})
        for width in widths:
            if width != wide:
                out.append(
                    {"sweep": "width", "method": method, "chunk": chunks[-1], "width": width}
                )
        # the budget chooses the columns per pass of a wide block
        out.append(
            {
                "sweep": "budget",
                "method": method,
                "chunk": chunks[-1],
                "width": wide,
                "budget": BUDGET_MIB * 2**20,
            }
        )
    for c in out:
        c.update(device=device, examples=examples)
    return out
