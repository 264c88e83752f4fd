"""Subspace sources across processes (2 gloo ranks on CPU).

Under DistributedDataParallel every rank sees the same averaged gradient, so the base
optimizer makes the same update on every rank, each rank's source records the same history
and holds the same bases with no communication of its own; the parameters equal a
single-process run on the whole batch. FSDP2 (``fully_shard``) is refused at construction,
before any change, with what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import join_workers, spawn_workers
from torch import nn

import subspace_optim as so

WORLD, STEPS, BATCH = 2, 12, 16
DEADLINE_S = 120


def model_and_data():
    g = torch.Generator().manual_seed(11)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    X = torch.randn(STEPS * BATCH, 6, generator=g, dtype=torch.float64)
    Y = torch.randn(STEPS * BATCH, 3, generator=g, dtype=torch.float64)
    return model, X, Y


def make_opt(params, source):
    return so.SubspaceProjectedOptimizer(
        torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1), source, mode=(0.5, 2.0)
    )


def sources():
    return {
        "history": lambda: so.UpdateHistory(k=2, window=4, refresh_every=3),
        "sketch": lambda: so.GradientSketch(k=2, sketch=4, refresh_every=3),
    }


def train(model, opt, X, Y, rank=0, world=1):
    for t in range(STEPS):
        xb, yb = X[t * BATCH : (t + 1) * BATCH], Y[t * BATCH : (t + 1) * BATCH]
        shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        opt.zero_grad()
        (0.5 * (model(xb[shard]) - yb[shard]).square().sum(1).mean()).backward()
        opt.step()


def _worker(rank: int, store: str, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for name, make in sources().items():
            model, X, Y = model_and_data()
            ddp = nn.parallel.DistributedDataParallel(model)
            src = make()
            opt = make_opt(ddp.parameters(), src)
            train(ddp, opt, X, Y, rank, WORLD)
            results[name] = {
                "params": [p.detach().clone() for p in model.parameters()],
                "bases": [None if U is None else U.clone() for U in src.bases],
            }
            dist.barrier()
        from torch.distributed.fsdp import fully_shard

        model, _, _ = model_and_data()
        fully_shard(model)
        before = [p.to_local().clone() for p in model.parameters()]
        try:
            make_opt(model.parameters(), so.UpdateHistory(k=2, window=4))
            results["fsdp"] = "accepted"
        except TypeError as exc:
            unchanged = all(
                torch.equal(a, p.to_local()) for a, p in zip(before, model.parameters())
            )
            results["fsdp"] = f"{exc} | unchanged={unchanged}"
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.done").touch()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources_ddp")
    ctx = spawn_workers(_worker, (str(tmp / "store"), str(tmp)), WORLD)
    error = join_workers(ctx, tmp, DEADLINE_S)
    if error is not None:
        pytest.fail(error)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(sources()))
def test_every_rank_holds_the_same_bases(ranks, name):
    a, b = ranks[0][name]["bases"], ranks[1][name]["bases"]
    assert any(U is not None for U in a)
    for Ua, Ub in zip(a, b):
        assert (Ua is None) == (Ub is None)
        if Ua is not None:
            assert torch.equal(Ua, Ub)


@pytest.mark.parametrize("name", list(sources()))
def test_ddp_matches_one_process_on_the_whole_batch(ranks, name):
    model, X, Y = model_and_data()
    src = sources()[name]()
    train(model, make_opt(model.parameters(), src), X, Y)
    for rank in ranks:
        for p, q in zip(model.parameters(), rank[name]["params"]):
            torch.testing.assert_close(q, p.detach(), rtol=1e-10, atol=1e-12)


def test_fsdp2_sharded_parameters_are_refused_before_any_change(ranks):
    for rank in ranks:
        message = rank["fsdp"]
        assert "sharded (DTensor" in message and "DistributedDataParallel" in message
        assert message.endswith("unchanged=True")
