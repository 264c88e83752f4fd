"""
Bulk-SGD under DistributedDataParallel
======================================

The dominant subspace is computed over every rank's data. Launch (CPU, gloo; one process
per rank)::

    torchrun --nproc_per_node 2 examples/ddp_bulk_sgd.py
    torchrun --nproc_per_node 2 examples/ddp_bulk_sgd.py --quick   # 30 steps, switch at 20

or on GPUs (NCCL, one GPU per rank)::

    torchrun --nproc_per_node 4 examples/ddp_bulk_sgd.py --backend nccl

Each rank holds a shard of scikit-learn's digits (1000 examples, the paper's MLP and MSE
loss). Training follows the paper's protocol with a fixed switch: plain SGD for
``--switch`` steps, then Bulk-SGD with the top-``k`` Hessian eigenvectors of the *full*
training loss (all shards) recomputed every step. Every rank runs the eigensolver in
lockstep on the same all-reduced products and finally takes rank 0's basis, so the
projected updates, and DDP's replicas, stay bit-for-bit identical; the script checks that
at the end. Rank 0 saves a checkpoint that resumes on any number of ranks.

At exit, torch 2.13's gloo back end can abort a rank after ``destroy_process_group``
("terminate called without an active exception"; seen in about one launch in 60 of a plain
two-rank DDP script on a loaded CPU). The run's output and checkpoint are complete by then.

Threads: on CPU each rank uses ``cpu_count // ranks`` torch threads, so the ranks do not
oversubscribe the cores. The documentation shows this script without running it (it needs
``torchrun``); the test suite runs it on two gloo processes.
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

import subspace_optim as so
from subspace_optim.experiments import half_sum_mse, load_digits, mlp


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Bulk-SGD under DistributedDataParallel.")
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--switch", type=int, default=100, help="first projected step")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=50, help="global batch size")
    parser.add_argument("--chunk", type=int, default=250, help="HVP micro-batch size")
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        help="MiB one Hessian product may use on each rank (sub-blocks the solver's blocks)",
    )
    parser.add_argument("--checkpoint", default=None, help="rank 0 saves here at the end")
    parser.add_argument(
        "--quick", action="store_true", help="a short run: 30 steps, switch at step 20"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.switch = min(args.steps, 30), min(args.switch, 20)
    return args


def rank_device(backend: str, world: int) -> torch.device:
    """One GPU per rank with NCCL; on CPU, the cores shared out among the ranks."""
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return torch.device("cpu")


def bulk_sgd(
    args: argparse.Namespace, ddp: nn.Module, shard: tuple[torch.Tensor, torch.Tensor]
) -> so.SubspaceProjectedOptimizer:
    """SGD projected out of the top-k Hessian subspace of the loss over every rank's shard,
    recomputed every step from ``--switch`` on."""
    # HVPs run on ddp.module over this rank's shard; products are all-reduced over ranks
    budget = None if args.memory_budget is None else int(args.memory_budget * 2**20)
    curvature = so.DistributedHessianOperator(
        ddp, half_sum_mse, shard, chunk_size=args.chunk, memory_budget=budget
    )
    if dist.get_rank() == 0 and budget is not None:
        print(f"memory budget {args.memory_budget:g} MiB: {curvature.block_size} columns per pass")
    return so.SubspaceProjectedOptimizer(
        torch.optim.SGD(ddp.parameters(), lr=args.lr),
        curvature,
        k=args.k,
        mode="bulk",
        refresh=so.Every(1, start=args.switch),
    )


def train(
    args: argparse.Namespace,
    ddp: nn.Module,
    opt: so.SubspaceProjectedOptimizer,
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """``--steps`` steps on global batches of ``--batch`` examples, each rank taking its
    slice; every 25 steps rank 0 prints the full-batch loss (over all shards)."""
    X, Y = data
    rank, world = dist.get_rank(), dist.get_world_size()
    order = torch.Generator().manual_seed(1)  # the same batch order on every rank
    per_rank = args.batch // world
    epochs = -(-args.steps * args.batch // X.shape[0])
    perm = torch.cat([torch.randperm(X.shape[0], generator=order) for _ in range(epochs)])
    for step in range(args.steps):
        batch = perm[step * args.batch : (step + 1) * args.batch].to(X.device)
        mine = batch[rank * per_rank : (rank + 1) * per_rank]
        opt.zero_grad()
        half_sum_mse(ddp(X[mine]), Y[mine]).backward()
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            loss, _ = opt.curvature.loss_and_grad()  # collective: every rank calls it
            stats = opt.last_stats
            if rank == 0:
                extra = ""
                if stats is not None and stats.projected:
                    extra = (
                        f"  λ_1 {stats.eigenvalues[0]:.3f}  χ_k(∇L) {stats.grad_alignment:.3f}"
                        f"  HVPs/refresh {stats.refresh_matvecs}"
                    )
                print(f"step {step:4d}  full-batch loss {float(loss):.4f}{extra}", flush=True)


def replicas_identical(model: nn.Module) -> bool:
    """Whether every rank holds the same parameters, bit for bit (a collective)."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    replicas = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(replicas, flat)
    return all(torch.equal(replicas[0], r) for r in replicas)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dist.init_process_group(args.backend, timeout=datetime.timedelta(minutes=5))
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {world} ranks")
    device = rank_device(args.backend, world)

    X, Y, _ = load_digits(1000, device=device)
    shard = torch.arange(rank, X.shape[0], world, device=device)  # like DistributedSampler
    model = mlp((64, 64, 64, 10), generator=torch.Generator().manual_seed(0)).to(device)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = bulk_sgd(args, ddp, (X[shard], Y[shard]))
    train(args, ddp, opt, (X, Y))

    same = replicas_identical(model)
    if rank == 0:
        print(
            f"{world} ranks, {opt.curvature.last_counts} examples per rank; "
            f"{int(opt.counters['refreshes'])} refreshes, {int(opt.counters['matvecs'])} HVPs; "
            f"parameters identical on all ranks: {same}"
        )
        if args.checkpoint:
            torch.save(
                {"model": model.state_dict(), "optimizer": opt.state_dict()}, args.checkpoint
            )
    # the DDP wrapper's reducer and the operator hold the process group: let every rank
    # finish, drop them, then tear the group down (a reducer outliving its group can abort
    # the process at exit)
    dist.barrier()
    del ddp, opt
    dist.destroy_process_group()
    if not same:
        raise SystemExit("replicas diverged")


if __name__ == "__main__":
    main()
