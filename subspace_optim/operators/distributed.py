"""Data-parallel Hessian of the global mean loss over the shards of every rank (torch.distributed).

Each rank holds its own shard of the training set. A product ``H V`` evaluates, on every
rank, the *unnormalized* local sum ``Σ_chunks count · H_chunk V`` and its example count,
all-reduces both in one flat buffer, and divides by the global count:

.. math::

    H V = \\frac{1}{\\sum_r N_r} \\sum_{r} \\sum_{i \\in \\mathcal{D}_r}
          \\nabla^2_\\theta \\ell_i(\\theta)\\, V

so the operator is the Hessian of the mean loss over the union of the shards, whatever
their sizes (uneven and empty shards are weighted correctly).

Data parallelism is a setting, not a kind of operator: a
:class:`~subspace_optim.DataParallel` in an operator's
:class:`~subspace_optim.OperatorSettings` makes it compose the all-reduce reduction
(``_data_parallel``: the reduction, the failure protocol, the agreement of results across
ranks) around its local sums. The classes here are the single-process operators with that
setting always on: their constructors take the same arguments plus ``group`` and
``check_consistency``, and they show the reduction's state under the names DDP users read
(``rank``, ``world_size``, ``last_counts``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ._data import Batch
from ._data_parallel import DistributedCurvatureError
from .covariance import GradientCovarianceOperator
from .ggn import GGNOperator
from .hessian import HessianOperator
from .settings import DataParallel, OperatorSettings, settings_from, with_parallel

__all__ = [
    "DataParallel",
    "DistributedCurvatureError",
    "DistributedGGNOperator",
    "DistributedGradientCovarianceOperator",
    "DistributedHessianOperator",
]


def _reduction_attribute(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.reduction, name), doc=doc)


#: the reduction's state under the names DDP users read, shared by the three classes below
#: (read-only; a property object can serve several classes)
_GROUP = _reduction_attribute("group", "The process group (``None``: the world group).")
_CHECK = _reduction_attribute(
    "check_consistency", "Whether each product compares a checksum of its input block."
)
_RANK = _reduction_attribute("rank", "This process's rank in :attr:`group`.")
_WORLD = _reduction_attribute("world_size", "The number of ranks in :attr:`group`.")
_BACKEND = _reduction_attribute("backend", "The group's backend (``'gloo'``, ``'nccl'``).")
_COUNTS = _reduction_attribute(
    "last_counts", "Example count of each rank in the latest reduction (index = rank)."
)


def data_parallel_settings(
    settings: OperatorSettings | None, group: Any, check_consistency: bool, **keywords: Any
) -> OperatorSettings:
    """The settings of a data-parallel operator's constructor: its keywords (or
    ``settings``) with ``parallel`` set from ``group`` and ``check_consistency`` (or kept
    from ``settings``).

    Raises:
        TypeError: ``settings`` given together with another keyword that is not at its
            default (``group`` and ``check_consistency`` included).
    """
    parallel = DataParallel(group=group, check_consistency=check_consistency)
    if settings is not None and parallel != DataParallel():
        raise TypeError(
            "pass group and check_consistency either as keywords or inside settings ("
            "OperatorSettings(parallel=DataParallel(group=..., check_consistency=...))), "
            "not both"
        )
    return with_parallel(settings_from(settings, **keywords), parallel)


class DistributedHessianOperator(HessianOperator):
    """Hessian of the global mean loss over every rank's data shard, as a matrix-free operator.

    Construct it on every rank of ``group`` (like DistributedDataParallel), each with its own
    shard in ``data``. Every product and :meth:`loss_and_grad` is a collective: all ranks
    must call them in the same order, which they do when they run the same solver and
    optimizer code (the subspace optimizer does).

    .. math::

        H = \\frac{1}{N} \\sum_{r=0}^{R-1} \\sum_{i \\in \\mathcal{D}_r}
            \\nabla^2_\\theta \\ell(f_\\theta(x_i), y_i), \\qquad N = \\sum_r |\\mathcal{D}_r|

    One product is one pass over the local shard in micro-batches of at most ``chunk_size``
    examples (peak memory is bounded by the chunk) followed by **one** all-reduce of a flat
    buffer of ``n·b + 3R`` numbers: the block ``Σ count · H_chunk V``, then each rank's
    example count, failure flag and a checksum of its input block ``V``. From the tail every
    rank learns the global count, whether any rank failed (then all raise
    :class:`DistributedCurvatureError`), and whether the ranks' inputs diverged (then all
    raise ``RuntimeError`` instead of silently mixing different vectors).

    Args:
        model: the network, or the ``DistributedDataParallel`` wrapping it (products run on
            ``model.module``). Parameters must be the same on every rank, as DDP keeps them.
        loss_fn: ``loss_fn(outputs, targets)`` returning the mean loss of a batch.
        data: this rank's shard: one ``(inputs, targets)`` batch or a re-iterable of
            batches (a list, a ``DataLoader`` with a ``DistributedSampler``). It may be
            empty on some ranks, and shards may be uneven: examples are weighted by count.
        params, chunk_size, method, train, max_block_size, memory_budget, cache_graph: as in
            :class:`HessianOperator`. Sub-blocks only split the local passes: a product
            still all-reduces one buffer for the whole block. With ``memory_budget`` every
            rank estimates its own peak (shards differ) and all ranks use the smallest
            width; if one column does not fit on some rank, every rank raises
            ``ValueError`` at construction.
        check, generator: as in :class:`HessianOperator`.
        group: the process group (default: the world group of ``torch.distributed``).
        check_consistency: compare a checksum of the input block across ranks at every
            product (free: it rides in the same all-reduce). Turn off only if the ranks feed
            deliberately different vectors, which makes the product meaningless.
        settings: every keyword setting at once (see
            :class:`~subspace_optim.OperatorSettings`); its ``parallel``, when set, takes
            the place of ``group`` and ``check_consistency``.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialized, or the ranks' models differ
            in size or dtype (checked with one collective at construction).
        ValueError: an NCCL group with parameters on the CPU.
        TypeError: ``settings`` given with another keyword that is not at its default.

    Shapes:
        ``matvec``: ``(n,) -> (n,)``; ``matmat``: ``(n, b) -> (n, b)``, identical on every
        rank.

    .. note::
        The paper computes the Hessian on one device with scipy's ``eigsh``. Here the
        eigensolver runs redundantly on every rank (its dense work is ``O(n k^2)``, small
        next to the HVPs) so that no rank idles while serving products; see
        :meth:`~subspace_optim.Curvature.agree_tensors` for how the ranks are made to agree
        bit for bit.

    Example:
        A one-process gloo group (what ``torchrun --nproc_per_node 1`` gives); with more
        ranks the same code sees every rank's shard.

        >>> import os, tempfile, torch
        >>> import torch.distributed as dist
        >>> from torch import nn
        >>> from subspace_optim import DistributedHessianOperator, HessianOperator
        >>> store = os.path.join(tempfile.mkdtemp(), "store")
        >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(3, 2).double()
        >>> X = torch.randn(10, 3, generator=g, dtype=torch.float64)
        >>> Y = torch.randn(10, 2, generator=g, dtype=torch.float64)
        >>> H = DistributedHessianOperator(model, nn.MSELoss(), [(X[:4], Y[:4]), (X[4:], Y[4:])])
        >>> ref = HessianOperator(model, nn.MSELoss(), (X, Y))
        >>> v = torch.randn(8, generator=g, dtype=torch.float64)
        >>> torch.allclose(H @ v, ref @ v)
        True
        >>> H.last_counts
        [10]
        >>> dist.destroy_process_group()
    """

    group = _GROUP
    check_consistency = _CHECK
    rank = _RANK
    world_size = _WORLD
    backend = _BACKEND
    last_counts = _COUNTS

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor],
        data: Batch | Iterable[Batch],
        *,
        params: Iterable[Tensor] | None = None,
        chunk_size: int | None = None,
        method: str = "auto",
        train: bool | None = None,
        max_block_size: int | None = None,
        memory_budget: int | None = None,
        cache_graph: bool | None = None,
        check: bool = True,
        generator: torch.Generator | None = None,
        group: Any = None,
        check_consistency: bool = True,
        settings: OperatorSettings | None = None,
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            data,
            params=params,
            settings=data_parallel_settings(
                settings,
                group,
                check_consistency,
                chunk_size=chunk_size,
                method=method,
                train=train,
                max_block_size=max_block_size,
                memory_budget=memory_budget,
                cache_graph=cache_graph,
                check=check,
                generator=generator,
            ),
        )


class DistributedGGNOperator(GGNOperator):
    """Gauss–Newton matrix of the global mean loss over every rank's data shard.

    :class:`~subspace_optim.GGNOperator` with the data-parallel setting, as
    :class:`DistributedHessianOperator` is the Hessian's: its arguments, then ``group`` and
    ``check_consistency``; one all-reduce per product; every rank gets the same bits;
    :meth:`~subspace_optim.Curvature.agree_tensors` gives every rank rank 0's eigenpairs.
    Construct it on every rank, each with its own shard.

    Args:
        model, loss_fn, data, params: as in :class:`DistributedHessianOperator` (``data``
            is this rank's shard; ``model`` may be wrapped in DDP).
        chunk_size, method, train, max_block_size, memory_budget, cache_graph: as in
            :class:`~subspace_optim.GGNOperator`.
        check, generator: as in :class:`~subspace_optim.GGNOperator`.
        group, check_consistency: as in :class:`DistributedHessianOperator`.
        settings: every keyword setting at once (see
            :class:`~subspace_optim.OperatorSettings`); its ``parallel``, when set, takes
            the place of ``group`` and ``check_consistency``.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialized, or the ranks' models differ.
        TypeError: ``settings`` given with another keyword that is not at its default.

    Example:
        >>> import os, tempfile, torch
        >>> import torch.distributed as dist
        >>> from torch import nn
        >>> import subspace_optim as so
        >>> store = os.path.join(tempfile.mkdtemp(), "store")
        >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> X = torch.randn(10, 3, generator=g, dtype=torch.float64)
        >>> y = torch.randint(0, 2, (10,), generator=g)
        >>> shards = [(X[:3], y[:3]), (X[3:], y[3:])]
        >>> G = so.DistributedGGNOperator(model, nn.CrossEntropyLoss(), shards)
        >>> ref = so.GGNOperator(model, nn.CrossEntropyLoss(), (X, y))
        >>> v = torch.randn(G.shape[0], generator=g, dtype=torch.float64)
        >>> torch.allclose(G @ v, ref @ v)
        True
        >>> dist.destroy_process_group()
    """

    group = _GROUP
    check_consistency = _CHECK
    rank = _RANK
    world_size = _WORLD
    backend = _BACKEND
    last_counts = _COUNTS

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor],
        data: Batch | Iterable[Batch],
        *,
        params: Iterable[Tensor] | None = None,
        chunk_size: int | None = None,
        method: str = "auto",
        train: bool | None = None,
        max_block_size: int | None = None,
        memory_budget: int | None = None,
        cache_graph: bool | None = None,
        check: bool = True,
        generator: torch.Generator | None = None,
        group: Any = None,
        check_consistency: bool = True,
        settings: OperatorSettings | None = None,
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            data,
            params=params,
            settings=data_parallel_settings(
                settings,
                group,
                check_consistency,
                chunk_size=chunk_size,
                method=method,
                train=train,
                max_block_size=max_block_size,
                memory_budget=memory_budget,
                cache_graph=cache_graph,
                check=check,
                generator=generator,
            ),
        )


class DistributedGradientCovarianceOperator(GradientCovarianceOperator):
    """Per-example gradient covariance over every rank's data shard.

    :class:`~subspace_optim.GradientCovarianceOperator` with the data-parallel setting, as
    :class:`DistributedHessianOperator` is the Hessian's. The mean gradient ``ḡ`` of the
    centred form travels in the same all-reduce as the product (one more column), so the
    centring uses the mean over all ranks' examples.

    Args:
        model, loss_fn, data, params: as in :class:`DistributedHessianOperator` (``data``
            is this rank's shard; ``model`` may be wrapped in DDP).
        centered, per_example_loss: as in :class:`~subspace_optim.GradientCovarianceOperator`.
        chunk_size, method, train, max_block_size, memory_budget, cache_graph: as in
            :class:`~subspace_optim.GradientCovarianceOperator`.
        check, generator: as in :class:`~subspace_optim.GradientCovarianceOperator`.
        group, check_consistency: as in :class:`DistributedHessianOperator`.
        settings: every keyword setting at once (see
            :class:`~subspace_optim.OperatorSettings`); its ``parallel``, when set, takes
            the place of ``group`` and ``check_consistency``.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialized, or the ranks' models differ.
        TypeError: ``settings`` given with another keyword that is not at its default.

    Example:
        >>> import os, tempfile, torch
        >>> import torch.distributed as dist
        >>> from torch import nn
        >>> import subspace_optim as so
        >>> store = os.path.join(tempfile.mkdtemp(), "store")
        >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(3, 2).double()
        >>> X = torch.randn(10, 3, generator=g, dtype=torch.float64)
        >>> Y = torch.randn(10, 2, generator=g, dtype=torch.float64)
        >>> C = so.DistributedGradientCovarianceOperator(model, nn.MSELoss(), [(X[:4], Y[:4]), (X[4:], Y[4:])])
        >>> ref = so.GradientCovarianceOperator(model, nn.MSELoss(), (X, Y))
        >>> v = torch.randn(C.shape[0], generator=g, dtype=torch.float64)
        >>> torch.allclose(C @ v, ref @ v)
        True
        >>> dist.destroy_process_group()
    """

    group = _GROUP
    check_consistency = _CHECK
    rank = _RANK
    world_size = _WORLD
    backend = _BACKEND
    last_counts = _COUNTS

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor],
        data: Batch | Iterable[Batch],
        *,
        centered: bool = True,
        per_example_loss: Callable[[Any, Tensor], Tensor] | None = None,
        params: Iterable[Tensor] | None = None,
        chunk_size: int | None = None,
        method: str = "auto",
        train: bool | None = None,
        max_block_size: int | None = None,
        memory_budget: int | None = None,
        cache_graph: bool | None = None,
        check: bool = True,
        generator: torch.Generator | None = None,
        group: Any = None,
        check_consistency: bool = True,
        settings: OperatorSettings | None = None,
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            data,
            centered=centered,
            per_example_loss=per_example_loss,
            params=params,
            settings=data_parallel_settings(
                settings,
                group,
                check_consistency,
                chunk_size=chunk_size,
                method=method,
                train=train,
                max_block_size=max_block_size,
                memory_budget=memory_budget,
                cache_graph=cache_graph,
                check=check,
                generator=generator,
            ),
        )
