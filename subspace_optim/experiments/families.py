"""The optimizer families of the paper, as small configured records.

Each :class:`Family` knows how to build its base optimizer over a list of parameters at a
given learning rate, whether it trains on minibatches or on the full batch, and whether its
``step`` needs a closure (SAM). The stability threshold the runner compares the tracked
eigenvalues with (``2/η``, ``2(1+β)/η`` with momentum, none for Adam) is read off the built
optimizer by :func:`~subspace_optim.stability_threshold`.

The default learning rates are those of the measurements on scikit-learn's digits
(MLP 64-64-64-10, MSE): SGD 0.1, SGD+momentum 0.01 with β = 0.9, Adam 1e-3, SAM over
SGD 0.1 with ρ = 0.05. Full-batch GD at the Edge of Stability takes its learning rate from
the sharpness at initialization (see :data:`EOS_FRACTION`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["EOS_FRACTION", "FAMILIES", "Family", "resolve_families"]

#: GD at the Edge of Stability runs at ``η = EOS_FRACTION · 2 / λ_1(θ_0)``: just below the
#: stability limit at initialization, so that progressive sharpening drives λ_1 up to ``2/η``
#: within the run (on digits ``λ_1(θ_0) ≈ 2.35`` gives ``η ≈ 0.70``, ``2/η ≈ 2.86``).
EOS_FRACTION = 0.82


@dataclass(frozen=True)
class Family:
    """One optimizer family of the paper.

    Attributes:
        name: the key used on the command line (``"sgd"``, ``"gd-eos"``, ...).
        label: a human name for tables and figures.
        lr: the default learning rate; ``None`` means "derived from the sharpness at
            initialization" (GD at the Edge of Stability).
        full_batch: every step uses the whole training set (GD) instead of a minibatch.
        needs_closure: ``step`` must receive a closure (SAM).
        build: ``build(params, lr) -> Optimizer``.

    Example:
        >>> import torch
        >>> from subspace_optim.experiments.families import resolve_families
        >>> [(f.name, f.lr, f.needs_closure) for f in resolve_families("sgd,sam")]
        [('sgd', 0.1, False), ('sam', 0.1, True)]
        >>> type(resolve_families("adam")[0].build([torch.zeros(2, requires_grad=True)], 1e-3))
        <class 'torch.optim.adam.Adam'>
    """

    name: str
    label: str
    lr: float | None
    full_batch: bool
    needs_closure: bool
    build: Callable[[Iterable[Tensor], float], Optimizer]


def _sgd(params: Iterable[Tensor], lr: float) -> Optimizer:
    return torch.optim.SGD(params, lr=lr)


def _momentum(params: Iterable[Tensor], lr: float) -> Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _adam(params: Iterable[Tensor], lr: float) -> Optimizer:
    return torch.optim.Adam(params, lr=lr)


def _sam(params: Iterable[Tensor], lr: float) -> Optimizer:
    from ..optim.sam import SAM

    return SAM(torch.optim.SGD(params, lr=lr), rho=0.05)


#: The five families of the paper, in the order of its figures.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sgd", "SGD", 0.1, False, False, _sgd),
        Family("gd-eos", "GD (Edge of Stability)", None, True, False, _sgd),
        Family("sam", "SAM (SGD, ρ=0.05)", 0.1, False, True, _sam),
        Family("momentum", "SGD+momentum (β=0.9)", 0.01, False, False, _momentum),
        Family("adam", "Adam", 1e-3, False, False, _adam),
    )
}


def resolve_families(names: str | Sequence[str]) -> list[Family]:
    """Turn ``"sgd,adam"``, ``"all"`` or a list of names into families (order kept, no
    duplicates).

    Args:
        names: family names (case-insensitive), as a comma-separated string or a
            sequence, or ``"all"``.

    Returns:
        The families, in the order given.

    Raises:
        ValueError: no name, or an unknown one.

    Example:
        >>> from subspace_optim.experiments.families import resolve_families
        >>> [f.name for f in resolve_families("adam,sgd")]
        ['adam', 'sgd']
    """
    if isinstance(names, str):
        items = [s.strip().lower() for s in names.split(",") if s.strip()]
    else:
        items = [str(s).strip().lower() for s in names]
    if items == ["all"]:
        items = list(FAMILIES)
    if not items:
        raise ValueError(f"no optimizer given; choose from {', '.join(FAMILIES)} (or 'all')")
    unknown = [s for s in items if s not in FAMILIES]
    if unknown:
        raise ValueError(
            f"unknown optimizer {unknown[0]!r}; valid: {', '.join(FAMILIES)} (comma separated) "
            "or 'all'"
        )
    return [FAMILIES[s] for s in dict.fromkeys(items)]
