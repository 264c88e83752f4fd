"""The library on a CUDA device, against its own CPU results.

Every test that needs a GPU is skipped without one (``benchmarks/gpu_check.sh`` runs this
file on a GPU machine, with the paper-scale benchmark). The helpers that decide what the
GPU tests accept run on the CPU too (the last tests of the file), so the file's own logic is
checked everywhere.

Host synchronizations. A projected step without a refresh may synchronize with the host
only where the result is needed on the host, each justified:

* ``torch.isfinite(...).all()`` read as a bool: the non-finite guards (parameters before
  the step, the mini-batch gradient, the update), which decide on the host whether to skip
  a step or raise; one sync each;
* ``.tolist()``: the step record (:class:`~subspace_optim.StepStats`), all its numbers
  moved in one transfer.

A refresh synchronizes by design (an iterative eigensolver decides on the host when to
stop); :func:`test_projected_step_syncs_only_where_justified` checks the step without one.
"""

from __future__ import annotations

import io
import linecache
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import subspace_optim as so

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device (benchmarks/gpu_check.sh)"
)
F64 = torch.float64

#: source patterns of the host synchronizations a step without refresh may make (see the
#: module docstring): the non-finite guards and the one transfer of the step record
JUSTIFIED_SYNCS = {
    r"torch\.isfinite\(.*\)\.all\(\)": "non-finite guard (skip or raise is decided on the host)",
    r"\.tolist\(\)": "the step record, one transfer for all its numbers",
}
#: at most this many syncs in a step without refresh (three guards and the record)
MAX_SYNCS_PER_STEP = 4


def problem(device: torch.device | str, dtype: torch.dtype = F64, n: int = 96):
    """A tanh MLP (6-16-3) with a BatchNorm buffer and a regression batch, the same numbers
    on every device (drawn on the CPU from a private generator)."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))
    model = model.to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    X = torch.randn(n, 6, generator=g, dtype=dtype)
    Y = torch.randn(n, 3, generator=g, dtype=dtype)
    return model.to(device), X.to(device), Y.to(device)


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - y).pow(2).sum(-1).mean()


def classify_syncs(records: list[warnings.WarningMessage]) -> tuple[list[str], list[str]]:
    """Split the sync warnings of ``torch.cuda.set_sync_debug_mode("warn")`` into
    (justified, unjustified) ``"file:line: source"`` strings by :data:`JUSTIFIED_SYNCS`."""
    justified, other = [], []
    for w in records:
        if "synchroniz" not in str(w.message):
            continue
        source = linecache.getline(w.filename, w.lineno).strip()
        where = f"{Path(w.filename).name}:{w.lineno}: {source}"
        ok = any(re.search(p, source) for p in JUSTIFIED_SYNCS)
        (justified if ok else other).append(where)
    return justified, other


# ------------------------------------------------------------------ the operator
@needs_cuda
@pytest.mark.parametrize("method", ["autograd", "func"])
@pytest.mark.parametrize("cache_graph", [False, True])
def test_operator_matches_cpu(method: str, cache_graph: bool) -> None:
    if method == "func" and cache_graph:
        pytest.skip("the graph cache is for method='autograd'")
    ops, outs = {}, {}
    V = torch.randn(
        sum(p.numel() for p in problem("cpu")[0].parameters()),
        5,
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    for device in ("cpu", "cuda"):
        model, X, Y = problem(device)
        model.train()
        buffers = [b.clone() for b in model.buffers()]
        op = so.HessianOperator(
            model, loss_fn, (X, Y), method=method, cache_graph=cache_graph, train=False
        )
        ops[device] = op
        outs[device] = (op.matmat(V.to(device)), *op.loss_and_grad())
        assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
        assert outs[device][0].device.type == device
    for a, b in zip(outs["cpu"], outs["cuda"]):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)


@needs_cuda
def test_memory_budget_and_chunks_on_cuda() -> None:
    """Micro-batches and a memory budget give the same product as one pass."""
    model, X, Y = problem("cuda")
    V = torch.randn(sum(p.numel() for p in model.parameters()), 4, dtype=F64, device="cuda")
    whole = so.HessianOperator(model, loss_fn, (X, Y)).matmat(V)
    split = so.HessianOperator(model, loss_fn, (X, Y), chunk_size=32, max_block_size=2).matmat(V)
    torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- eigensolvers
@needs_cuda
@pytest.mark.parametrize("name", so.available_eigensolvers())
def test_each_eigensolver_on_cuda(name: str) -> None:
    """Every registered solver finds the top 4 of a known spectrum on the GPU and returns
    its vectors there (residuals checked, sign- and rotation-invariant)."""
    lam = torch.cat([torch.tensor([9.0, 8.0, 7.0, 6.0]), torch.linspace(-1, 4, 146)]).to(F64)
    op = so.DenseOperator.from_spectrum(lam.cuda())
    solver = so.resolve_eigensolver(name)
    res = solver.solve(op, 4, generator=torch.Generator(device="cuda").manual_seed(0))
    assert res.eigenvectors.device.type == "cuda" and res.eigenvalues.device.type == "cuda"
    torch.testing.assert_close(res.eigenvalues.cpu(), lam[:4], rtol=0, atol=1e-2)
    R = op.A @ res.eigenvectors - res.eigenvectors * res.eigenvalues
    assert float(R.norm(dim=0).max()) <= 10 * getattr(solver, "tol", 1e-6) * 9.0 + 1e-8


@needs_cuda
def test_warm_refresh_check_on_a_hessian() -> None:
    """The default solver on a GPU Hessian: a second refresh at the same point is accepted by
    the sketched check (a few products) with the same basis."""
    model, X, Y = problem("cuda")
    op = so.HessianOperator(model, loss_fn, (X, Y))
    warm = so.WarmRefresh()
    U = warm.solve(op, 3).eigenvectors
    for _ in range(3):
        res = warm.solve(op, 3, init=U)
        U = res.eigenvectors
    assert "sketch check" in res.message and res.num_matvecs == warm.probes


# ------------------------------------------------------------------- the wrapper
def _train(device: str, mode, steps: int, *, skip: int = 0, state=None, model_state=None):
    """``steps`` Bulk/Dom/... steps on the mini-batches ``skip .. skip + steps`` of one fixed
    sequence, from a fresh model (or ``model_state``) and optimizer (or ``state``)."""
    model, X, Y = problem(device)
    if model_state is not None:
        model.load_state_dict(model_state)
    op = so.HessianOperator(model, loss_fn, (X, Y))
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt = so.SubspaceProjectedOptimizer(base, op, k=3, mode=mode, refresh=so.Every(2))
    if state is not None:
        opt.load_state_dict(state)
    g = torch.Generator().manual_seed(7)
    batches = [torch.randint(0, X.shape[0], (32,), generator=g) for _ in range(skip + steps)]
    for idx in batches[skip:]:
        idx = idx.to(device)
        opt.zero_grad()
        loss_fn(model(X[idx]), Y[idx]).backward()
        opt.step()
    return model, opt


@needs_cuda
@pytest.mark.parametrize("mode", [*so.optim.MODES, (0.5, 1.0)])
def test_wrapper_every_mode_and_resume(mode) -> None:
    """Each mode on the GPU follows the CPU run; a checkpoint saved on the GPU after 3 steps
    and loaded with ``weights_only=True`` into a fresh model and optimizer continues to
    where 6 uninterrupted steps go."""
    cuda_model, _ = _train("cuda", mode, 6)
    cpu_model, _ = _train("cpu", mode, 6)
    for a, b in zip(cpu_model.parameters(), cuda_model.parameters()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-8, atol=1e-10)
    half_model, half_opt = _train("cuda", mode, 3)
    buf = io.BytesIO()
    torch.save({"opt": half_opt.state_dict(), "model": half_model.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed, opt = _train("cuda", mode, 3, skip=3, state=saved["opt"], model_state=saved["model"])
    assert opt.basis is None or opt.basis.device.type == "cuda"
    for a, b in zip(cuda_model.parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


@needs_cuda
def test_projected_step_syncs_only_where_justified() -> None:
    """A Bulk step without a refresh synchronizes only at the justified places of the module
    docstring, at most :data:`MAX_SYNCS_PER_STEP` times; the projection itself never."""
    model, X, Y = problem("cuda")
    op = so.HessianOperator(model, loss_fn, (X, Y))
    base = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = so.SubspaceProjectedOptimizer(base, op, k=3, mode="bulk", refresh=so.Every(2))
    for _step in range(2):  # step 0 refreshes; step 1 only projects (its syncs are kept)
        opt.zero_grad()
        loss_fn(model(X), Y).backward()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    justified, other = classify_syncs(records)
    assert not other, f"unjustified host syncs in a projected step: {other}"
    assert len(justified) <= MAX_SYNCS_PER_STEP, justified
    U = opt.basis
    d = torch.randn(U.shape[0], dtype=U.dtype, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        so.project_out(d, U[:, :3])
        so.project(d, U[:, :3])
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_orthonormalize_fills_weak_columns_from_a_generator_on_either_device(
    generator_device: str,
) -> None:
    """A rank-deficient block on the GPU: the weak column is filled with draws from the
    generator where it lives (a CPU generator serves a CUDA block), reproducibly, and the
    result is orthonormal on the block's device."""
    V = torch.randn(50, 4, dtype=F64, generator=torch.Generator().manual_seed(0)).cuda()
    V[:, 3] = V[:, 0] + V[:, 1]  # dependent: filled

    def run() -> torch.Tensor:
        g = torch.Generator(device=generator_device).manual_seed(1)
        return so.orthonormalize(V, generator=g)

    Q = run()
    assert Q.device == V.device and Q.dtype == F64
    assert torch.allclose(Q.T @ Q, torch.eye(4, dtype=F64, device="cuda"), atol=1e-12)
    assert torch.equal(Q, run())


# ------------------------------------------------------------ end to end runs
@needs_cuda
def test_reproduce_quick_on_cuda(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "subspace_optim", "reproduce", "--quick", "--device", "cuda"]
    cmd += ["--out", str(out), "--no-figures", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(out.iterdir())


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (NCCL)")
def test_ddp_example_on_nccl(tmp_path) -> None:
    ckpt = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += ["2", str(ROOT / "examples" / "ddp_bulk_sgd.py"), "--backend", "nccl"]
    cmd += ["--steps", "4", "--switch", "2", "--checkpoint", str(ckpt)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(ckpt, weights_only=True)


# ------------------------------------------------- the helpers, on every machine
def _warning(filename: str, lineno: int, text: str) -> warnings.WarningMessage:
    return warnings.WarningMessage(UserWarning(text), UserWarning, filename, lineno)


def test_sync_classifier(tmp_path) -> None:
    """The classifier of the sync test accepts the justified patterns and nothing else."""
    src = tmp_path / "step.py"
    src.write_text(
        "ok = bool(torch.isfinite(g).all())\n"
        "stats = torch.stack(values).tolist()\n"
        "x = float(loss)\n"
        "y = v.cpu()\n"
    )
    msg = "called a synchronizing CUDA operation"
    records = [_warning(str(src), i, msg) for i in (1, 2, 3, 4)]
    records.append(_warning(str(src), 3, "an unrelated warning"))
    justified, other = classify_syncs(records)
    assert [j.split(":")[1] for j in justified] == ["1", "2"]
    assert [o.split(":")[1] for o in other] == ["3", "4"]


def test_file_skips_cleanly_without_cuda() -> None:
    """Without CUDA every GPU test carries the skip mark (so a CPU run reports them skipped,
    never failed); with CUDA none does."""
    marked = [
        f
        for name, f in globals().items()
        if name.startswith("test_")
        and any(m.name == "skipif" for m in getattr(f, "pytestmark", []))
    ]
    assert len(marked) >= 8
    for f in marked:
        first = next(m for m in f.pytestmark if m.name == "skipif")
        assert first.args[0] == (not HAS_CUDA)
