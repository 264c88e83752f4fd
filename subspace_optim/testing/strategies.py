"""Hypothesis strategies for fuzzing projected training: model shapes, dtypes, ``k``, modes,
schedules, eigensolvers and optimizer families.

A drawn :class:`TrainingSetup` is plain data (it prints as a readable failing example) and
:meth:`TrainingSetup.build` turns it into a model, data and a wrapped optimizer, identically
every time, so one setup can be built twice to compare two runs.

Needs ``hypothesis`` (``pip install subspace-optim[test]``).

Example:
    >>> from hypothesis import given, settings
    >>> from subspace_optim.testing.strategies import training_setups
    >>> @settings(max_examples=3, deadline=None, derandomize=True)
    ... @given(training_setups())
    ... def check(setup):
    ...     model, loss_fn, data, opt = setup.build()
    ...     assert opt.k == setup.k
    >>> check()
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..eigensolvers import (
    Eigensolver,
    Lanczos,
    PowerIteration,
    available_eigensolvers,
    resolve_eigensolver,
)
from ..operators.hessian import HessianOperator
from ..optim.projected import MODES, SubspaceProjectedOptimizer
from ..optim.sam import SAM
from ..schedules import AlignmentSwitch, AtSteps, Every, RefreshSchedule

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised only without the test extra
    raise ImportError(
        "subspace_optim.testing.strategies needs hypothesis: pip install 'subspace-optim[test]'"
    ) from exc

__all__ = [
    "FAMILIES",
    "SOLVERS",
    "MLPSpec",
    "TrainingSetup",
    "build_optimizer",
    "build_schedule",
    "mlp_specs",
    "schedule_specs",
    "training_setups",
]

#: optimizer families and their learning rates (stable on the small MLPs drawn here)
FAMILIES: dict[str, Callable[[Any], Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05),
    "sam": lambda p: SAM(torch.optim.SGD(p, lr=0.05), rho=0.05),
}

#: eigensolvers drawn by the strategies (those registered in this installation)
SOLVERS: tuple[str, ...] = tuple(
    s for s in ("warm", "lanczos", "power", "eigh", "lobpcg") if s in available_eigensolvers()
)

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
}


@dataclass(frozen=True)
class MLPSpec:
    """An MLP ``in_dim -> hidden... -> out_dim`` and a regression data set.

    With ``rank_deficient`` the last input feature repeats the first (the first layer's
    weights on the two are interchangeable), so the Hessian has exactly repeated and zero
    eigenvalues: degenerate spectra for the eigensolvers.
    """

    in_dim: int
    hidden: tuple[int, ...]
    out_dim: int
    activation: str
    dtype: str
    examples: int
    seed: int
    rank_deficient: bool = False

    @property
    def num_params(self) -> int:
        dims = (self.in_dim, *self.hidden, self.out_dim)
        return sum((a + 1) * b for a, b in itertools.pairwise(dims))

    def build(self) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], tuple[Tensor, Tensor]]:
        """The model, its mean-squared-error loss and the data set, all from ``seed``.

        Returns:
            ``(model, loss_fn, (X, Y))`` with ``X`` of shape ``(examples, in_dim)`` and ``Y``
            of shape ``(examples, out_dim)``, in ``dtype``.
        """
        dtype = getattr(torch, self.dtype)
        g = torch.Generator().manual_seed(self.seed)
        dims = (self.in_dim, *self.hidden, self.out_dim)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(_ACTIVATIONS[self.activation]())
        model = nn.Sequential(*layers).to(dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
        X = torch.randn(self.examples, self.in_dim, generator=g, dtype=dtype)
        if self.rank_deficient and self.in_dim > 1:
            X[:, -1] = X[:, 0]
        Y = torch.randn(self.examples, self.out_dim, generator=g, dtype=dtype)

        def loss_fn(out: Tensor, y: Tensor) -> Tensor:
            return ((out - y) ** 2).mean()

        return model, loss_fn, (X, Y)


def mlp_specs(*, max_hidden_layers: int = 2, max_width: int = 6) -> st.SearchStrategy[MLPSpec]:
    """Small MLPs (2 to a few hundred parameters) in float32 or float64.

    Args:
        max_hidden_layers: at most this many hidden layers.
        max_width: at most this many units per hidden layer.

    Returns:
        A hypothesis strategy of :class:`MLPSpec`.
    """
    return st.builds(
        MLPSpec,
        in_dim=st.integers(1, 5),
        hidden=st.lists(st.integers(1, max_width), max_size=max_hidden_layers).map(tuple),
        out_dim=st.integers(1, 4),
        activation=st.sampled_from(sorted(_ACTIVATIONS)),
        dtype=st.sampled_from(["float32", "float64"]),
        examples=st.integers(2, 24),
        seed=st.integers(0, 2**16),
        rank_deficient=st.booleans(),
    )


def schedule_specs() -> st.SearchStrategy[tuple[Any, ...]]:
    """``("every", n, start)``, ``("at", steps)`` or
    ``("switch", threshold, ema, check_every, min_steps, max_steps)``.

    Returns:
        A hypothesis strategy of such tuples (see :func:`build_schedule`).
    """
    return st.one_of(
        st.tuples(st.just("every"), st.integers(1, 4), st.integers(0, 3)),
        st.tuples(st.just("at"), st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple)),
        st.tuples(
            st.just("switch"),
            st.floats(0.05, 1.0),
            st.floats(0.0, 0.95),
            st.integers(1, 3),
            st.integers(0, 2),
            st.integers(0, 4),
        ).map(lambda s: (*s[:5], max(s[4], s[5]))),  # max_steps >= min_steps
    )


def build_schedule(spec: tuple[Any, ...]) -> RefreshSchedule:
    """The schedule a :func:`schedule_specs` tuple describes.

    Args:
        spec: a tuple drawn from :func:`schedule_specs`.

    Returns:
        :class:`~subspace_optim.Every`, :class:`~subspace_optim.AtSteps` or an
        :class:`~subspace_optim.AlignmentSwitch` (a spec of the older form
        ``("switch", threshold)`` is forced at step 3 with ``ema=0.5``).
    """
    if spec[0] == "every":
        return Every(spec[1], start=spec[2])
    if spec[0] == "at":
        return AtSteps(spec[1])
    if len(spec) == 2:
        return AlignmentSwitch(threshold=spec[1], ema=0.5, check_every=1, max_steps=3)
    _, threshold, ema, check_every, min_steps, max_steps = spec
    return AlignmentSwitch(
        threshold=threshold,
        ema=ema,
        check_every=check_every,
        min_steps=min_steps,
        max_steps=max_steps,
    )


def build_optimizer(family: str, params: Any) -> Optimizer:
    """A base optimizer of ``family`` (a key of :data:`FAMILIES`).

    Args:
        family: the family's name.
        params: the parameters (or parameter groups) to optimize.

    Returns:
        The optimizer, built with the family's settings.
    """
    return FAMILIES[family](params)


def _solver(name: str) -> Eigensolver:
    # loose tolerances and few iterations: the fuzzing checks invariants, not accuracy
    if name == "lanczos":
        return Lanczos(max_iter=20)
    if name == "power":
        return PowerIteration(max_iter=20)
    return resolve_eigensolver(name)


@dataclass(frozen=True)
class TrainingSetup:
    """Everything one fuzzed training run needs; :meth:`build` is deterministic."""

    model: MLPSpec
    family: str
    k: int
    num_extra: int
    mode: str
    solver: str
    schedule: tuple[Any, ...]
    project: str
    seed: int

    @property
    def uses_closure(self) -> bool:
        """SAM needs ``step(closure)``."""
        return self.family == "sam"

    def build(
        self, **overrides: Any
    ) -> tuple[
        nn.Module,
        Callable[[Tensor, Tensor], Tensor],
        tuple[Tensor, Tensor],
        SubspaceProjectedOptimizer,
    ]:
        """``(model, loss_fn, data, optimizer)``; ``overrides`` replace wrapper arguments.

        Args:
            **overrides: keyword arguments of
                :class:`~subspace_optim.SubspaceProjectedOptimizer` that replace the drawn
                ones (``k``, ``mode``, ``eigensolver``, ``refresh``, ...).

        Returns:
            The model, its loss, the data set and the wrapped optimizer.
        """
        model, loss_fn, data = self.model.build()
        kwargs: dict[str, Any] = {
            "k": self.k,
            "mode": self.mode,
            "num_extra": self.num_extra,
            "eigensolver": _solver(self.solver),
            "refresh": build_schedule(self.schedule),
            "project": self.project,
            "generator": torch.Generator().manual_seed(self.seed),
        }
        kwargs.update(overrides)
        opt = SubspaceProjectedOptimizer(
            build_optimizer(self.family, model.parameters()),
            HessianOperator(model, loss_fn, data),
            **kwargs,
        )
        return model, loss_fn, data, opt


@st.composite
def training_setups(
    draw: st.DrawFn,
    *,
    families: tuple[str, ...] | None = None,
    modes: tuple[str, ...] = MODES,
    projects: tuple[str, ...] = ("update", "gradient"),
    max_k: int = 6,
) -> TrainingSetup:
    """A model, an optimizer family, a valid ``k`` (and ``num_extra``) for the drawn
    eigensolver, a mode, a schedule and a projection target.

    Args:
        draw: hypothesis' draw function (supplied by ``st.composite``; call
            ``training_setups(...)`` without it).
        families: the families to draw from (default: every key of :data:`FAMILIES`).
        modes: the modes to draw from.
        projects: the projection targets to draw from.
        max_k: the largest ``k`` to draw.

    Returns:
        A strategy of :class:`TrainingSetup` (through ``st.composite``).
    """
    spec = draw(mlp_specs().filter(lambda s: s.num_params >= 3))
    n = spec.num_params
    solver = draw(st.sampled_from(SOLVERS))
    k = draw(st.integers(1, min(max_k, n - 2)))
    num_extra = draw(st.integers(0, min(3, n - 1 - k)))
    try:
        _solver(solver).check_k(n, k + num_extra)
    except ValueError:
        solver = "eigh"  # always fits k + num_extra <= n
    family = draw(st.sampled_from(families or tuple(FAMILIES)))
    project = draw(st.sampled_from(projects))  # SAM steps with a closure: both are supported
    return TrainingSetup(
        model=spec,
        family=family,
        k=k,
        num_extra=num_extra,
        mode=draw(st.sampled_from(modes)),
        solver=solver,
        schedule=draw(schedule_specs()),
        project=project,
        seed=draw(st.integers(0, 2**16)),
    )
