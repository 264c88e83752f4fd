"""What a projected run will cost, estimated before it starts.

The cost of Dom/Bulk training is products with the full-data Hessian. One refresh of the
default solver (:class:`~subspace_optim.WarmRefresh`) spends, besides the full-data loss and
gradient (which builds the graph the products then reuse):

* after a step that moved the top-k subspace little: ``probes`` products (the sketched
  check accepts the previous pairs);
* otherwise: ``k + extra`` products (one block, the Rayleigh–Ritz of the previous basis and
  its guards), plus about ``k`` per LOBPCG iteration when the subspace moved more than the
  angle target (the first iteration is counted in the upper end of the range);
* the first refresh: a cold solve, between ``2·(k + extra)`` (single-vector Lanczos) and
  ``9·(k + extra)`` products (the default LOBPCG; ``python -m benchmarks.paper_scale``
  measures it on the paper's setups).

:func:`estimate_refresh_cost` measures the two prices on the user's own operator (one
full-data gradient, one block of products) and multiplies. ``docs/guide/cost.rst`` explains
the model and when to use a data subset, a wider block or a GPU.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from .operators.base import LinearOperator

__all__ = ["RefreshCostEstimate", "estimate_refresh_cost"]

#: paper protocol: 20,000 steps per run
PAPER_STEPS = 20_000
#: the first refresh costs between these multiples of ``k + extra`` products
COLD_MULTIPLES = (2, 9)


@dataclass(frozen=True)
class RefreshCostEstimate:
    """A run's predicted cost; ranges are ``(best, worst)``.

    Attributes:
        n: parameters (the operator's size).
        k: subspace dimension.
        block: columns of one warm block, ``k + extra``.
        ms_gradient: measured full-data loss and gradient (builds the products' graph), ms.
        ms_per_product: measured: one product on its own (graph built for it), ms.
        ms_per_column: measured: per column of a block of ``block`` columns, ms.
        products_first: products of the first (cold) refresh.
        products_per_refresh: products of a later refresh.
        ms_per_refresh: ``ms_gradient + products · ms_per_column`` for a later refresh.
        ms_first_refresh: the same for the first refresh.
        refresh_every: steps per refresh.
        steps: steps of the run.
        hours: the refreshes of the whole run (first included), in hours; the base
            optimizer's own steps come on top (usually far cheaper).
    """

    n: int
    k: int
    block: int
    ms_gradient: float
    ms_per_product: float
    ms_per_column: float
    products_first: tuple[int, int]
    products_per_refresh: tuple[int, int]
    ms_per_refresh: tuple[float, float]
    ms_first_refresh: tuple[float, float]
    refresh_every: int
    steps: int
    hours: tuple[float, float]

    def describe(self) -> str:
        """A few lines for people.

        Returns:
            The numbers above, rounded, one topic per line (``str``).
        """
        lo, hi = self.products_per_refresh
        return "\n".join(
            [
                f"{self.n:,} parameters, k = {self.k}, blocks of {self.block} columns",
                f"full-data gradient {self.ms_gradient:.1f} ms; one product alone "
                f"{self.ms_per_product:.1f} ms, {self.ms_per_column:.1f} ms per column of a "
                f"block of {self.block}",
                f"first refresh: {self.products_first[0]}-{self.products_first[1]} products, "
                f"{self.ms_first_refresh[0] / 1e3:.1f}-{self.ms_first_refresh[1] / 1e3:.1f} s",
                f"later refreshes: {lo}-{hi} products, {self.ms_per_refresh[0]:.0f}-"
                f"{self.ms_per_refresh[1]:.0f} ms each, one every {self.refresh_every} step(s)",
                f"{self.steps:,} steps: {self.hours[0]:.2f}-{self.hours[1]:.2f} h of refreshes",
            ]
        )


def _ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - t0)


def estimate_refresh_cost(
    operator: LinearOperator,
    k: int,
    *,
    steps: int = PAPER_STEPS,
    refresh_every: int = 1,
    extra: int = 5,
    probes: int = 2,
    generator: torch.Generator | None = None,
) -> RefreshCostEstimate:
    """Predict the refresh cost of a Dom/Bulk run with the default solver, by measuring.

    Spends one full-data loss and gradient, one lone product and one block of
    ``k + extra`` products on ``operator`` at the current parameters (about
    ``k + extra + 3`` products' worth of time), then applies the cost model of the module
    docstring. The parameters are not changed.

    Args:
        operator: the curvature, e.g. a :class:`~subspace_optim.HessianOperator` over the
            training set as it will be used (same data, ``chunk_size``, device, dtype).
        k: subspace dimension (``>= 1``).
        steps: run length (default 20,000, the paper's).
        refresh_every: steps per refresh (``Every(m)`` schedules; default 1).
        extra, probes: the :class:`~subspace_optim.WarmRefresh` settings (defaults 5, 2).
        generator: for the random probe block (default: seeded with 0).

    Returns:
        A :class:`RefreshCostEstimate` (times in ms, ranges best to worst).

    Raises:
        ValueError: ``k``, ``steps``, ``refresh_every`` or ``extra`` out of range, or
            ``k + extra`` not below the operator's size.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from subspace_optim import HessianOperator, estimate_refresh_cost
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        >>> X, Y = torch.randn(200, 8, generator=g), torch.randn(200, 3, generator=g)
        >>> op = HessianOperator(model, nn.MSELoss(), (X, Y))
        >>> est = estimate_refresh_cost(op, k=3, steps=1000)
        >>> est.products_per_refresh, est.products_first
        ((2, 11), (16, 72))
        >>> est.hours[0] <= est.hours[1]
        True
    """
    n = operator.shape[0]
    for name, value, low in (("k", k, 1), ("steps", steps, 1), ("refresh_every", refresh_every, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    if not isinstance(extra, int) or extra < 0 or not isinstance(probes, int) or probes < 0:
        raise ValueError(f"extra and probes must be ints >= 0; got {extra!r}, {probes!r}")
    block = k + extra
    if block >= n:
        raise ValueError(f"k + extra = {block} must be below the operator's size {n}")
    device = operator.device
    scope = getattr(operator, "solve_scope", contextlib.nullcontext)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    V = torch.randn(n, block, generator=gen, dtype=operator.dtype).to(device)
    with scope():  # nothing cached before the estimate is reused
        pass
    grad = getattr(operator, "loss_and_grad", None)
    with scope():
        ms_gradient = _ms(grad, device) if grad is not None else 0.0
    with scope():
        ms_single = _ms(lambda: operator.matmat(V[:, :1]), device)
        operator.matmat(V[:, :1])  # the graph of this point, as a refresh has it
        ms_column = _ms(lambda: operator.matmat(V), device) / block
    later = (min(probes, block) if probes else block, block + k)
    first = (COLD_MULTIPLES[0] * block, COLD_MULTIPLES[1] * block)
    per = tuple(ms_gradient + p * ms_column for p in later)
    first_ms = tuple(ms_gradient + p * ms_column for p in first)
    refreshes = -(-steps // refresh_every)
    hours = tuple((f + (refreshes - 1) * r) / 3.6e6 for f, r in zip(first_ms, per))
    return RefreshCostEstimate(
        n=n,
        k=k,
        block=block,
        ms_gradient=ms_gradient,
        ms_per_product=ms_single,
        ms_per_column=ms_column,
        products_first=first,
        products_per_refresh=later,
        ms_per_refresh=per,  # type: ignore[arg-type]
        ms_first_refresh=first_ms,  # type: ignore[arg-type]
        refresh_every=refresh_every,
        steps=steps,
        hours=hours,  # type: ignore[arg-type]
    )
