"""``add_param_group`` widens the curvature through ``Curvature.extended``: every operator
setting is kept (memory budget, block width, graph cache, micro-batching), and the
data-parallel operator works too (a real 2-process gloo group)."""

from __future__ import annotations

import datetime
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import join_workers, spawn_workers
from torch import nn

import subspace_optim as so

WORLD = 2
DEADLINE_S = 120


def problem():
    g = torch.Generator().manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    X = torch.randn(18, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(18, 3, generator=g, dtype=torch.float64)
    return model, X, Y


def mse(out, y):
    return ((out - y) ** 2).mean()


def split(model):
    params = list(model.parameters())
    return params[:2], params[2:]


def full_batch_step(opt, model, X, Y):
    opt.zero_grad()
    mse(model(X), Y).backward()
    opt.step()


SETTINGS = [
    {"memory_budget": 2**22},
    {"max_block_size": 2},
    {"cache_graph": False},
    {"cache_graph": True, "chunk_size": 5},
    {"method": "func", "train": False},
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_add_param_group_keeps_every_operator_setting(settings):
    model, X, Y = problem()
    first, rest = split(model)
    op = so.HessianOperator(model, mse, (X, Y), params=first, **settings)
    opt = so.SubspaceProjectedOptimizer(torch.optim.SGD(first, lr=0.1), op, k=2, eigensolver="eigh")
    full_batch_step(opt, model, X, Y)
    opt.add_param_group({"params": rest, "lr": 0.05})
    wider = opt.curvature
    assert type(wider) is so.HessianOperator and wider is not op
    assert [id(p) for p in wider.params] == [id(p) for p in model.parameters()]
    for name in ("chunk_size", "method", "train", "max_block_size", "memory_budget"):
        assert getattr(wider, name) == getattr(op, name), name
    assert wider.caches_graph == op.caches_graph
    assert opt.basis is None  # the parameter space changed: recomputed at the next step
    reference = so.HessianOperator(model, mse, (X, Y), **settings)
    V = torch.randn(wider.shape[0], 3, generator=torch.Generator().manual_seed(1)).double()
    torch.testing.assert_close(wider @ V, reference @ V, rtol=1e-12, atol=1e-12)
    full_batch_step(opt, model, X, Y)
    assert opt.last_stats.projected and opt.basis.shape == (wider.shape[0], 2)


def test_an_operator_without_extended_refuses_new_parameters_before_any_change():
    model, _X, _Y = problem()
    first, rest = split(model)
    n = sum(p.numel() for p in first)
    dense = so.DenseOperator(torch.eye(n, dtype=torch.float64))
    opt = so.SubspaceProjectedOptimizer(torch.optim.SGD(first, lr=0.1), dense, k=1)
    with pytest.raises(ValueError, match="not covered by the curvature operator"):
        opt.add_param_group({"params": rest})
    assert len(opt.param_groups) == 1 and opt.curvature is dense


# ------------------------------------------------------------------- distributed
def _worker(rank: int, store: str, out_dir: str) -> None:
    out = Path(out_dir)
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=WORLD,
            timeout=datetime.timedelta(seconds=60),
        )
        try:
            model, X, Y = problem()
            first, rest = split(model)
            shard = (X[rank::WORLD], Y[rank::WORLD])
            op = so.DistributedHessianOperator(model, mse, shard, params=first, max_block_size=2)
            opt = so.SubspaceProjectedOptimizer(
                torch.optim.SGD(first, lr=0.1), op, k=2, eigensolver="eigh"
            )
            full_batch_step(opt, model, X, Y)
            opt.add_param_group({"params": rest, "lr": 0.1})
            wider = opt.curvature
            res = {
                "type": type(wider).__name__,
                "group_kept": wider.group is op.group,
                "max_block_size": wider.max_block_size,
                "n": wider.shape[0],
            }
            for _ in range(3):
                full_batch_step(opt, model, X, Y)
            res["theta"] = torch.cat([p.detach().flatten() for p in model.parameters()])
            res["basis"] = opt.basis.clone()
        finally:
            dist.destroy_process_group()
        torch.save(res, out / f"rank{rank}.pt")
        (out / f"rank{rank}.done").touch()
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


def test_add_param_group_extends_the_distributed_operator(tmp_path):
    ctx = spawn_workers(_worker, (str(tmp_path / "store"), str(tmp_path)), WORLD)
    # the single-process reference meanwhile: the same run on one HessianOperator
    model, X, Y = problem()
    first, rest = split(model)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(first, lr=0.1),
        so.HessianOperator(model, mse, (X, Y), params=first),
        k=2,
        eigensolver="eigh",
    )
    full_batch_step(opt, model, X, Y)
    opt.add_param_group({"params": rest, "lr": 0.1})
    for _ in range(3):
        full_batch_step(opt, model, X, Y)
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    error = join_workers(ctx, tmp_path, DEADLINE_S)
    if error is not None:
        pytest.fail(error)
    runs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for res in runs:
        assert res["type"] == "DistributedHessianOperator" and res["group_kept"]
        assert res["max_block_size"] == 2 and res["n"] == theta.numel()
    assert torch.equal(runs[0]["theta"], runs[1]["theta"])  # replicas stay identical
    assert torch.equal(runs[0]["basis"], runs[1]["basis"])
    torch.testing.assert_close(runs[0]["theta"], theta, rtol=0, atol=1e-10)
