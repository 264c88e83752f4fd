"""Data parallelism for every curvature operator over a model (torch.distributed; private).

Each rank holds its own shard of the training set. A product ``A V`` evaluates, on every
rank, the *unnormalized* local sum ``Σ_chunks count · A_chunk V`` and its example count,
all-reduces both in one flat buffer, and divides by the global count, so the operator is
the mean over the union of the shards, whatever their sizes (uneven and empty shards are
weighted correctly). Every rank receives the same bits, so eigensolvers run in lockstep on
all ranks from the same generator seed and end with the same basis;
:meth:`AllReduce.agree_tensors` then gives every rank rank 0's eigenpairs, which makes the
agreement bit-for-bit even where ranks would round differently (different CPUs or BLAS
builds).

:class:`AllReduce` is the :class:`~._reduction.Reduction` an operator composes when its
settings hold a :class:`~subspace_optim.DataParallel`: the operator's own code is the same
on one process and on a group, and this module is the whole of what a group adds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._memory import budget_message
from ._reduction import Joining, OneProcess, Reduction
from ._selfcheck import Checkable, check_locally, check_repeatable
from .settings import DataParallel

__all__ = ["AllReduce", "DistributedCurvatureError", "reduction_for"]

_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}


class DistributedCurvatureError(RuntimeError):
    """A rank failed inside a distributed curvature product or gradient (Hessian, GGN or covariance).

    Raised on *every* rank of the group at the same collective (never a hang): the failing
    rank packs a failure flag into the reduction buffer, every rank sees it, and the error
    messages are exchanged so each rank reports which rank failed and why.

    Args:
        message: the error text, naming the failing ranks and their errors.
        ranks: the ranks (in the operator's group) that failed.
        messages: ``"ExceptionType: message"`` of each failing rank, in the order of
            ``ranks``.

    Attributes:
        ranks: the ranks (in the operator's group) that failed.
        messages: ``"ExceptionType: message"`` of each failing rank, in the order of ``ranks``.

    Example:
        A loss that fails inside a product, in a one-process gloo group: the rank's
        exception comes back as a ``DistributedCurvatureError`` that names it.

        >>> import os, tempfile, torch
        >>> import torch.distributed as dist
        >>> from torch import nn
        >>> from subspace_optim import DistributedCurvatureError, DistributedHessianOperator
        >>> tmp = tempfile.TemporaryDirectory()
        >>> store = os.path.join(tmp.name, "store")
        >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        >>> def broken_loss(outputs, targets):
        ...     raise ValueError("targets have the wrong shape")
        >>> X = torch.zeros(4, 3, dtype=torch.float64)
        >>> model = nn.Linear(3, 1).double()
        >>> H = DistributedHessianOperator(model, broken_loss, (X, X[:, :1]), check=False)
        >>> try:
        ...     H @ torch.ones(4, dtype=torch.float64)
        ... except DistributedCurvatureError as err:
        ...     print(err.ranks, err.messages)
        [0] ['ValueError: targets have the wrong shape']
        >>> dist.destroy_process_group()
        >>> tmp.cleanup()
    """

    def __init__(self, message: str, ranks: Sequence[int], messages: Sequence[str]) -> None:
        super().__init__(message)
        self.ranks = list(ranks)
        self.messages = list(messages)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel / DataParallel wrappers.

    DDP's hooks do not fire for double backward or torch.func transforms, and its forward
    may broadcast buffers (a collective that only rank 0 would enter inside an HVP), so the
    products run on the plain module. Its parameters are the very tensors DDP trains.
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


class AllReduce:
    """The reduction of a data-parallel operator: every sum is one all-reduce over the group.

    Built from the operator's :class:`~subspace_optim.DataParallel` setting, once per
    operator (it keeps the counts of the latest reduction). Every product and gradient is
    then a collective: all ranks must call them in the same order, which they do when they
    run the same solver and optimizer code (the subspace optimizer does).

    One product is one pass over the local shard followed by **one** all-reduce of a flat
    buffer: the local block, then each rank's example count, failure flag and a checksum
    of its input block ``V``. From the tail every rank learns the global count, whether any
    rank failed (then all raise :class:`DistributedCurvatureError`), and whether the ranks'
    inputs diverged (then all raise ``RuntimeError`` instead of silently mixing different
    vectors).

    Args:
        parallel: the operator's setting (group and consistency check).

    Attributes:
        group: the process group (``None``: the world group).
        check_consistency: whether each product compares a checksum of its input block.
        rank: this process's rank in ``group`` (set when the operator joins).
        world_size: the number of ranks in ``group``.
        backend: the group's backend (``"gloo"``, ``"nccl"``).
        last_counts: example count of each rank in the latest reduction (index = rank in
            ``group``).

    Raises:
        RuntimeError: ``torch.distributed`` is not initialized.
    """

    allows_empty_shard = True  # an empty shard is fine: other ranks have data

    def __init__(self, parallel: DataParallel) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "torch.distributed is not initialized: call "
                "torch.distributed.init_process_group(...) on every rank first (torchrun sets "
                "the environment for init_method='env://'), or use the single-process "
                "operator"
            )
        self.group = parallel.group
        self.check_consistency = parallel.check_consistency
        self.rank = -1
        self.world_size = 0
        self.backend = ""
        self.last_counts: list[int] = []
        self.dtype = torch.float64
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ setup
    def construct(self, build: Callable[[nn.Module], None], model: nn.Module) -> None:
        """``build`` the operator on the module under any DDP wrapper; a rank that fails
        makes every rank raise (one collective, never a hang).

        Raises:
            Exception: this rank's own construction error, unchanged.
            DistributedCurvatureError: on the ranks that succeeded, when another failed.
        """
        failure: Exception | None = None
        try:
            build(_unwrap(model))
        except Exception as exc:  # raised on every rank below, never a hang
            failure = exc
        _agree_on_construction(failure, self.group)

    def join(self, op: Joining) -> int | None:
        """Learn this rank's place in the group, then one collective that refuses
        mismatched models before any product can hang and agrees on the block width.

        Returns:
            The smallest width ``memory_budget`` allows on any rank (``None``: no rank
            passed one).

        Raises:
            ValueError: this process is not a member of ``group``; an NCCL group with
                parameters on the CPU; ``memory_budget`` passed on some ranks only, or too
                small for one column on some rank (every rank raises).
            RuntimeError: the ranks' models differ in size or dtype.
        """
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the given process group")
        self.backend = str(dist.get_backend(self.group)).lower()
        if self.backend == "nccl" and op.device.type != "cuda":
            raise ValueError(
                "the NCCL backend reduces CUDA tensors only, but the model's parameters are on "
                f"{op.device}; move the model to this rank's GPU or use the gloo backend"
            )
        self.dtype, self.device = op.dtype, op.device
        return self._handshake(op)

    def _handshake(self, op: Joining) -> int | None:
        code = _DTYPE_CODES.get(op.dtype, 0)
        # the width that fits this rank's memory_budget (0: not even one column)
        fits = -1.0
        if op.memory_estimate is not None and op.memory_budget is not None:
            fits = float(op.memory_estimate.max_width(op.memory_budget))
        mine = torch.tensor([op.shape[0], code, fits], dtype=torch.float64)
        both = torch.cat([mine, -mine]).to(op.device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        hi, lo = both[:3].tolist(), (-both[3:]).tolist()
        width = None
        if hi[2] >= 0:  # some rank passed memory_budget: every rank decides alike
            if lo[2] < 0:
                raise ValueError(
                    "memory_budget was passed on some ranks but not on others; pass the same "
                    "arguments on every rank"
                )
            if lo[2] < 1:
                assert op.memory_estimate is not None and op.memory_budget is not None
                here = (
                    budget_message(op.memory_budget, op.memory_estimate)
                    if fits < 1
                    else op.memory_estimate.describe()
                )
                raise ValueError(
                    "memory_budget is too small for one column on at least one rank (seen "
                    f"from rank {self.rank}; here: {here})"
                )
            width = int(lo[2])
        if hi[:2] != lo[:2]:
            raise RuntimeError(
                f"the ranks' models differ: parameter counts range over [{int(lo[0])}, "
                f"{int(hi[0])}] (rank {self.rank} has {op.shape[0]}) or their dtypes differ; "
                "build the same model on every rank (DistributedDataParallel requires it too)"
            )
        return width

    def self_check(self, op: Checkable) -> None:
        """The construction self-check, collectively: a rank whose first micro-batch fails
        makes every rank raise (never a hang), then every rank joins the products."""
        failure: BaseException | None = None
        try:
            check_locally(op)
        except Exception as exc:
            failure = exc
        self._allreduce(None, 0, 0, failure, None)
        self.last_counts = []
        check_repeatable(op)

    # -------------------------------------------------------------- reduction
    def sum(
        self, local: Callable[[], tuple[Tensor, int]], size: int, V: Tensor | None
    ) -> tuple[Tensor, int]:
        """Every rank's ``local()`` summed, with the global example count (a collective).

        Args:
            local: this rank's unnormalized sum (``size`` numbers) and example count.
            size: how many numbers ``local()`` returns (every rank passes the same).
            V: the product's input block, whose checksum every rank compares
                (``None``: a gradient, nothing to compare).

        Raises:
            DistributedCurvatureError: some rank failed computing its share (every rank
                raises).
            RuntimeError: the ranks' input blocks differ.
            ValueError: no rank has any example.
        """
        payload: Tensor | None = None
        count = 0
        failure: BaseException | None = None
        try:
            payload, count = local()
        except Exception as exc:  # surfaced on every rank by _allreduce
            failure = exc
        checksum = self._checksum(V) if V is not None and self.check_consistency else None
        total = self._allreduce(payload, size, count, failure, checksum)
        return total, self._global_count()

    def _tail_dtype(self) -> torch.dtype:
        # counts and checksums must be exact: half precision cannot hold counts above 2048
        return self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float64

    def _allreduce(
        self,
        payload: Tensor | None,
        size: int,
        count: int,
        failure: BaseException | None,
        checksum: Tensor | None,
    ) -> Tensor:
        """All-reduce ``payload`` (``size`` numbers) with the bookkeeping tail; return the sum.

        Raises the same error on every rank if any rank failed or the inputs diverged.
        """
        R = self.world_size
        inline = self._tail_dtype() == self.dtype
        buf = torch.zeros(size + (3 * R if inline else 0), dtype=self.dtype, device=self.device)
        if payload is not None and failure is None:
            buf[:size] = payload.reshape(-1)
        tail = buf[size:] if inline else torch.zeros(3 * R, dtype=torch.float64, device=self.device)
        tail = tail.view(3, R)
        tail[0, self.rank] = count
        tail[1, self.rank] = 1.0 if failure is not None else 0.0
        if checksum is not None:
            tail[2, self.rank] = checksum.to(tail.dtype)
        dist.all_reduce(buf, group=self.group)
        if not inline:
            dist.all_reduce(tail, group=self.group)
        counts, failed, sums = tail.tolist()  # the one host read per product
        if any(failed):
            ranks = [r for r in range(R) if failed[r]]
            text = None if failure is None else f"{type(failure).__name__}: {failure}"
            gathered: list[Any] = [None] * R
            dist.all_gather_object(gathered, text, group=self.group)
            messages = [str(gathered[r]) for r in ranks]
            detail = "; ".join(f"rank {r}: {m}" for r, m in zip(ranks, messages))
            error = DistributedCurvatureError(
                f"distributed Hessian computation failed on rank(s) {ranks} (seen from rank "
                f"{self.rank}): {detail}",
                ranks,
                messages,
            )
            if failure is not None:
                raise error from failure
            raise error
        if checksum is not None:
            ref = sums[0]
            if any(s != ref and not (s != s and ref != ref) for s in sums):
                raise RuntimeError(
                    f"the ranks called the distributed Hessian with different vectors "
                    f"(checksums {sums}); every rank must run the same solver with the same "
                    "generator seed and warm start. If ranks run on different hardware, their "
                    "rounding can differ: use solvers without data-dependent branching or "
                    "broadcast the start block from rank 0"
                )
        self.last_counts = [round(c) for c in counts]
        return buf[:size]

    @staticmethod
    def _checksum(V: Tensor) -> Tensor:
        # position-weighted, so permuted or sign-flipped columns differ too
        w = torch.arange(1, V.shape[1] + 1, dtype=V.dtype, device=V.device)
        return (torch.nan_to_num(V, nan=0.0, posinf=0.0, neginf=0.0) @ w).sum() + V.shape[1]

    def _global_count(self) -> int:
        total = sum(self.last_counts)
        if total == 0:
            raise ValueError(
                f"no rank has any examples (counts per rank: {self.last_counts}); give at "
                "least one rank a non-empty shard"
            )
        return total

    # -------------------------------------------------------------- agreement
    def agree_tensors(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Rank 0's ``tensors`` on every rank, bit for bit: one broadcast per dtype.

        Lockstep solves already agree when the ranks round identically; broadcasting a
        solve's eigenpairs through this makes the agreement exact regardless, so projected
        updates, and therefore DDP's replicas, stay identical. A collective: every rank
        passes tensors of the same shapes and dtypes, in the same order. Tensors of one
        dtype travel in one flat buffer (on the operator's device), so nothing is rounded.

        Args:
            *tensors: this rank's tensors, of any shapes, dtypes and devices.

        Returns:
            Rank 0's tensors, in the order given, each with the shape, dtype and device of
            this rank's (``tensors`` themselves in a one-process group).
        """
        if self.world_size == 1:
            return tensors
        src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        out: list[Tensor] = list(tensors)
        for dtype, members in by_dtype.items():
            wire = torch.uint8 if dtype is torch.bool else dtype  # collectives take no bool
            buf = torch.cat(
                [tensors[i].detach().reshape(-1).to(self.device, wire) for i in members]
            ).contiguous()
            dist.broadcast(buf, src=src, group=self.group)
            start = 0
            for i in members:
                t = tensors[i]
                piece = buf[start : start + t.numel()].view(t.shape)
                out[i] = piece.to(t.device, dtype).clone()
                start += t.numel()
        return tuple(out)

    def describe(self) -> str:
        """What the operator's ``repr`` adds: rank, group size and backend."""
        return f", rank={self.rank}, world_size={self.world_size}, backend={self.backend!r}"


def _agree_on_construction(failure: Exception | None, group: Any) -> None:
    """One collective after the single-process construction: every rank learns whether any
    rank failed (a check on its own data shard, say), and all raise together.

    Raises:
        Exception: this rank's own construction error, unchanged.
        DistributedCurvatureError: on the ranks that succeeded, when another rank failed
            (with that rank's message).
    """
    nccl = str(dist.get_backend(group)).lower() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    flag = torch.tensor([0.0 if failure is None else 1.0], device=device)
    dist.all_reduce(flag, group=group)
    if float(flag) == 0:
        return
    size = dist.get_world_size(group)
    text = None if failure is None else f"{type(failure).__name__}: {failure}"
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, text, group=group)
    if failure is not None:
        raise failure
    ranks = [r for r in range(size) if gathered[r] is not None]
    messages = [str(gathered[r]) for r in ranks]
    detail = "; ".join(f"rank {r}: {m}" for r, m in zip(ranks, messages))
    raise DistributedCurvatureError(
        f"building the distributed operator failed on rank(s) {ranks} (seen from rank "
        f"{dist.get_rank(group)}): {detail}",
        ranks,
        messages,
    )


def reduction_for(parallel: DataParallel | None) -> Reduction:
    """The reduction an operator with the setting ``parallel`` composes.

    Raises:
        RuntimeError: ``parallel`` is given but ``torch.distributed`` is not initialized.
    """
    return OneProcess() if parallel is None else AllReduce(parallel)
