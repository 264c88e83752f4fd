"""Shared fixtures: small models of every kind the Hessian operator must handle."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from torch import nn

# keep the suite predictable on small CI machines
torch.set_num_threads(max(1, min(2, int(os.environ.get("OMP_NUM_THREADS", "2")))))


class TiedAutoencoder(nn.Module):
    """Decoder reuses the encoder's weight (tied parameters)."""

    def __init__(self, d: int = 5) -> None:
        super().__init__()
        self.enc = nn.Linear(d, d)
        self.dec = nn.Linear(d, d)
        self.dec.weight = self.enc.weight  # one Parameter registered under two names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.tanh(self.enc(x)))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x))
        h = nn.functional.avg_pool2d(h, 2)
        return self.head(h.flatten(1))


def make_case(name: str, generator: torch.Generator):
    """(model, loss_fn, data) in float64 for a named architecture."""
    g = generator

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # written out: F.mse_loss breaks torch.func forward-over-reverse in torch 2.13
        return ((out - target) ** 2).mean()

    if name == "mlp":
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        X, Y = torch.randn(24, 4, generator=g), torch.randn(24, 3, generator=g)
    elif name == "layernorm":
        model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3))
        X, Y = torch.randn(24, 4, generator=g), torch.randn(24, 3, generator=g)
    elif name in ("batchnorm_train", "batchnorm_eval"):
        model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
        X, Y = torch.randn(24, 4, generator=g), torch.randn(24, 3, generator=g)
        model.train(name == "batchnorm_train")
        with torch.no_grad():  # non-trivial running statistics
            model[1].running_mean.uniform_(-0.5, 0.5, generator=g)
            model[1].running_var.uniform_(0.5, 2.0, generator=g)
    elif name == "cnn":
        model = SmallCNN()
        X, Y = torch.randn(10, 1, 8, 8, generator=g), torch.randn(10, 4, generator=g)
    elif name == "tied":
        model = TiedAutoencoder()
        X = torch.randn(16, 5, generator=g)
        Y = X.clone()
    else:  # pragma: no cover
        raise KeyError(name)
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return model, mse, (X.double(), Y.double())


CASES = ["mlp", "layernorm", "batchnorm_train", "batchnorm_eval", "cnn", "tied"]


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One torch thread for a module, the previous count restored afterwards. For modules of
    tiny models: with two intra-op threads on a busy 2-core machine OpenMP's waiting costs
    ~10x the CPU time (measured); the CLI runs its digits setups on one thread too. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def spawn_workers(worker, args: tuple, nprocs: int):
    """Start ``nprocs`` spawned processes running ``worker(rank, *args)`` on one torch thread
    each (set through ``OMP_NUM_THREADS`` while they start, then restored); returns the
    ``torch.multiprocessing`` context, not joined."""
    import torch.multiprocessing as mp

    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return mp.start_processes(
            worker, args=args, nprocs=nprocs, join=False, start_method="spawn"
        )
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def join_workers(ctx, out: Path, deadline_s: float) -> str | None:
    """Join the processes of :func:`spawn_workers` (each on its own, so one rank's exit
    kills no other mid-run; the live ones are killed after ``deadline_s``) and say why they
    failed, or ``None`` when every rank finished.

    A rank finished when it exited cleanly, or when it wrote ``out/rank{r}.done`` (after
    ``destroy_process_group``) and then died of SIGABRT: torch 2.13's gloo can abort a
    process at interpreter exit (``terminate called without an active exception``; about
    one launch in 60 of a plain two-rank DDP script on a loaded 2-core machine), when every
    result is already on disk. The failure names the exit code and every
    ``out/rank*.error`` file.
    """
    deadline = time.monotonic() + deadline_s
    try:
        for p in ctx.processes:
            p.join(max(0.0, deadline - time.monotonic()))
        return worker_failure(out, ctx.processes, deadline_s)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def worker_failure(out: Path, processes: list, deadline_s: float) -> str | None:
    """The verdict of :func:`join_workers` on joined (or still live) ``processes``."""
    for rank, p in enumerate(processes):
        if p.is_alive():
            return f"the workers did not finish within {deadline_s} s (hang?)"
        done = (out / f"rank{rank}.done").exists()
        if p.exitcode == 0 or (done and p.exitcode == -signal.SIGABRT):
            continue
        errors = "\n".join(e.read_text() for e in sorted(out.glob("rank*.error")))
        return f"distributed worker {rank} exited with code {p.exitcode}:\n{errors}"
    return None


def tiny_reproduction(loss_fn=None, **settings):
    """``experiments.run`` of SGD on a 4-8-3 MLP over 64 random points of 3 classes: 12
    steps, switch at 5, k=2, minibatches of 16 (a few seconds); ``settings`` override."""
    from subspace_optim.experiments import half_sum_mse, mlp, run

    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    Y = torch.nn.functional.one_hot(torch.arange(64) % 3, 3).float()
    config = dict(optimizers="sgd", steps=12, switch=5, k=2, batch_size=16, progress=False)
    model = mlp((4, 8, 3), generator=g)
    return run(model, loss_fn or half_sum_mse, (X, Y), **{**config, **settings})
