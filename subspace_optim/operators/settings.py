"""How a curvature operator over a model evaluates its products: one frozen value.

:class:`OperatorSettings` holds every setting of :class:`~subspace_optim.HessianOperator`,
:class:`~subspace_optim.GGNOperator` and :class:`~subspace_optim.GradientCovarianceOperator`
that is not the model, the loss, the data or the parameters: micro-batching, back end,
mode, block width, memory budget, graph cache, self-check, random source, and whether the
products are summed over the data-parallel ranks of a process group
(:class:`DataParallel`). Each value is checked when the settings are built, so a bad one is
refused before any model is touched, with a message that says what to pass instead.

An operator holds one (``op.settings``); :meth:`~subspace_optim.Curvature.extended` and
everything else that rebuilds an operator pass it on unchanged. The operators' keyword
arguments (``HessianOperator(model, loss_fn, data, chunk_size=64)``) build it; a value can
also be passed whole (``settings=``) to give several operators the same settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .._utils import check_int, choice
from ._memory import check_budget

__all__ = ["PRODUCT_METHODS", "DataParallel", "OperatorSettings"]

#: the product back ends every curvature operator over a model offers: ``"autograd"``
#: (double backward through one graph per micro-batch, cacheable), ``"func"`` (torch.func
#: transforms ``vmap``-ed over the block) and ``"auto"`` (a fixed choice per operator)
PRODUCT_METHODS = ("auto", "autograd", "func")


def _check_flag(name: str, value: object, *, allow_none: bool = False) -> None:
    if isinstance(value, bool) or (allow_none and value is None):
        return
    allowed = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"{name} must be {allowed}; got {value!r}")


@dataclass(frozen=True)
class DataParallel:
    """Sum an operator's products over the data shards of every rank of a process group.

    The setting that makes a curvature operator data-parallel (the ``parallel`` field of
    :class:`OperatorSettings`): every product and ``loss_and_grad()`` becomes a
    collective that all-reduces each rank's local sum and example count, so the operator is
    the mean over the union of the shards.
    :class:`~subspace_optim.DistributedHessianOperator` and its GGN and covariance siblings
    set it from their ``group`` and ``check_consistency`` arguments.

    Args:
        group: the process group (default ``None``: the world group of
            ``torch.distributed``).
        check_consistency: compare a checksum of the input block across ranks at every
            product (it rides in the same all-reduce). Turn off only if the ranks feed
            deliberately different vectors, which makes the product meaningless.

    Raises:
        TypeError: ``check_consistency`` is not a bool.

    Example:
        >>> from subspace_optim import DataParallel, OperatorSettings
        >>> OperatorSettings(chunk_size=32, parallel=DataParallel()).parallel.check_consistency
        True
    """

    group: Any = None
    check_consistency: bool = True

    def __post_init__(self) -> None:
        _check_flag("check_consistency", self.check_consistency)


@dataclass(frozen=True)
class OperatorSettings:
    """The settings of a curvature operator over a model, validated at construction.

    Every field is also a keyword argument of the operators, documented in full on
    :class:`~subspace_optim.HessianOperator`.

    Args:
        chunk_size: split batches into micro-batches of at most this many examples
            (``None``: whole batches).
        method: the product back end, one of
            :data:`~subspace_optim.operators.settings.PRODUCT_METHODS`.
        train: evaluate in train (``True``) or eval (``False``) mode; ``None`` keeps the
            model's mode.
        max_block_size: evaluate at most this many columns of a block per pass over the
            data (``None``: the whole block).
        memory_budget: bytes one sub-block product may use (``None``: no limit).
        cache_graph: keep each micro-batch's graph between products at one point
            (``None``: when it costs no memory; see the operator's note).
        check: run the self-check at construction.
        generator: a CPU ``torch.Generator`` every pass draws its randomness from
            (``None``: the operator makes a private one seeded with 0, and its
            ``settings`` then hold that generator).
        parallel: ``None`` (one process) or a :class:`DataParallel`: products are summed
            over the shards of every rank of its process group.

    Raises:
        TypeError: a field has the wrong type (an int, a bool, a ``torch.Generator`` on
            the CPU, a :class:`DataParallel`), with what is accepted.
        ValueError: ``chunk_size`` or ``max_block_size`` below 1, ``memory_budget`` not
            positive, or an unknown ``method``.

    Example:
        >>> import dataclasses
        >>> from subspace_optim import OperatorSettings
        >>> s = OperatorSettings(chunk_size=64, max_block_size=4)
        >>> s.chunk_size, s.method, s.check
        (64, 'auto', True)
        >>> dataclasses.replace(s, method="func").method
        'func'
        >>> OperatorSettings(chunk_size=0)
        Traceback (most recent call last):
            ...
        ValueError: chunk_size must be >= 1; got 0
    """

    chunk_size: int | None = None
    method: str = "auto"
    train: bool | None = None
    max_block_size: int | None = None
    memory_budget: int | None = None
    cache_graph: bool | None = None
    check: bool = True
    generator: torch.Generator | None = None
    parallel: DataParallel | None = None

    def __post_init__(self) -> None:
        _check_flag("check", self.check)
        g = self.generator
        if g is not None and (not isinstance(g, torch.Generator) or g.device.type != "cpu"):
            raise TypeError(
                "generator must be a CPU torch.Generator (it seeds the randomness of each pass "
                f"over the data); got {g!r}"
            )
        choice("method", self.method, PRODUCT_METHODS)
        for name in ("chunk_size", "max_block_size"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=1)
        _check_flag("train", self.train, allow_none=True)
        check_budget(self.memory_budget)
        _check_flag("cache_graph", self.cache_graph, allow_none=True)
        if self.parallel is not None and not isinstance(self.parallel, DataParallel):
            raise TypeError(
                "parallel must be None or a DataParallel(group=..., check_consistency=...); "
                f"got {type(self.parallel).__name__}"
            )


_DEFAULTS = OperatorSettings()


def _is_default(value: object, default: object) -> bool:
    # ``1`` is not the default ``True``: a keyword of another type counts as given
    return value is default or (type(value) is type(default) and value == default)


def settings_from(settings: OperatorSettings | None, **keywords: Any) -> OperatorSettings:
    """The settings an operator's constructor was given: ``settings``, or its keywords.

    Args:
        settings: an :class:`OperatorSettings` passed whole, or ``None``.
        **keywords: the constructor's keyword settings (fields of :class:`OperatorSettings`).

    Returns:
        ``settings`` when given, else an :class:`OperatorSettings` of the keywords.

    Raises:
        TypeError: ``settings`` is not an :class:`OperatorSettings`, or it is given together
            with a keyword that differs from its default (one of them would be ignored).
    """
    if settings is None:
        return OperatorSettings(**keywords)
    if not isinstance(settings, OperatorSettings):
        raise TypeError(f"settings must be an OperatorSettings; got {type(settings).__name__}")
    given = [k for k, v in keywords.items() if not _is_default(v, getattr(_DEFAULTS, k))]
    if given:
        raise TypeError(
            f"pass the settings either as keywords or as settings=OperatorSettings(...), not "
            f"both: {', '.join(given)} given besides settings. Use "
            f"dataclasses.replace(settings, {given[0]}=...) to change one"
        )
    return settings


def with_parallel(settings: OperatorSettings, parallel: DataParallel) -> OperatorSettings:
    """``settings`` made data-parallel: its own ``parallel`` if it has one, else ``parallel``."""
    if settings.parallel is not None:
        return settings
    return dataclasses.replace(settings, parallel=parallel)
