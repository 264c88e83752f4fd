"""Injected numerical faults: each case trains the tiny problem with one fault."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from subspace_optim import HessianOperator, SubspaceProjectedOptimizer
from subspace_optim.eigensolvers import Lanczos, PowerIteration
from subspace_optim.testing.checks import StateSnapshot, all_finite, orthonormality_error
from subspace_optim.testing.faults import FaultyLoss, FaultyModule, FaultySolver

from .problem import full_loss, tiny_problem


@dataclass(frozen=True)
class FaultOutcome:
    """What a run with an injected fault did."""

    name: str
    steps: int
    params_finite: bool
    raised: str | None
    state_unchanged: bool | None
    loss_first: float
    loss_last: float
    basis_orthonormality: float
    counters: dict[str, float] = field(default_factory=dict)
    warnings: int = 0
    note: str = ""

    @property
    def trained(self) -> bool:
        """The full-data loss went down over the run (training went on after the fault)."""
        return self.loss_last < self.loss_first


#: the wrapper's counters that a fault case pins exactly
FAULT_COUNTERS = ("faults", "skipped_steps", "unconverged", "reorthonormalized", "cold_restarts")


@dataclass(frozen=True)
class FaultCase:
    """A fault to inject: ``run(steps)`` trains the tiny problem with it and reports.

    ``expect`` maps counter names to the exact value the run must show (every fault counter
    it does not name, :data:`FAULT_COUNTERS`, must stay 0); ``raises`` is the
    exception the policy ``"raise"`` must give (``None``: the run must go on); ``trains``:
    the full-data loss must go down over the run despite the fault.
    """

    name: str
    injection: str
    policy: str
    run: Callable[[int], FaultOutcome]
    expect: dict[str, int] = field(default_factory=dict)
    raises: type[BaseException] | None = None
    trains: bool = True


def _fault_run(
    name: str,
    *,
    steps: int,
    at: int = 3,
    wrap_model: bool = False,
    solver: Any = None,
    on_fault: str = "keep",
    inject: Callable[[dict[str, Any]], None] | None = None,
    base: str = "adam",
    closure: bool = False,
    cache_graph: bool | None = None,
) -> FaultOutcome:
    model, loss_fn, data = tiny_problem()
    faulty = FaultyModule(model, fail_on=()) if wrap_model else None
    net = faulty if faulty is not None else model
    make = {
        "adam": lambda p: torch.optim.Adam(p, lr=0.01),
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    }[base]
    opt = SubspaceProjectedOptimizer(
        make(net.parameters()),
        HessianOperator(net, loss_fn, data, cache_graph=cache_graph),
        k=3,
        eigensolver=solver if solver is not None else Lanczos(ncv=8),
        on_fault=on_fault,
        generator=torch.Generator().manual_seed(0),
    )
    ctx = {"model": faulty, "opt": opt, "loss": None}
    loss_first = full_loss(net, loss_fn, data)
    X, Y = data
    batch_loss = FaultyLoss(loss_fn, fail_on=())
    raised = None
    state_unchanged = None
    finite = True
    n_warn = 0
    t = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(steps):
            g = torch.Generator().manual_seed(t)
            idx = torch.randint(0, X.shape[0], (8,), generator=g)
            if t == at and inject is not None:
                ctx["loss"] = batch_loss
                inject(ctx)

            def closure_fn(idx: Tensor = idx) -> Tensor:
                opt.zero_grad()
                loss = batch_loss(net(X[idx]), Y[idx])
                loss.backward()
                return loss

            try:
                if closure:
                    snapshot = StateSnapshot.take(net.parameters(), [opt.base])
                    opt.step(closure_fn)
                else:
                    closure_fn()
                    if t == at and "grad" in ctx:
                        ctx["grad"]()
                    snapshot = StateSnapshot.take(net.parameters(), [opt.base])
                    opt.step()
            except Exception as exc:
                raised = type(exc).__name__
                state_unchanged = not StateSnapshot.take(net.parameters(), [opt.base]).differences(
                    snapshot
                )
                break
            finally:
                finite = finite and all_finite(net.parameters())
            if t == at and "after" in ctx:
                ctx["after"]()
        n_warn = sum(issubclass(w.category, RuntimeWarning) for w in caught)
    U = opt.basis
    return FaultOutcome(
        name=name,
        steps=t + 1,
        params_finite=finite,
        raised=raised,
        state_unchanged=state_unchanged,
        loss_first=loss_first,
        loss_last=full_loss(net, loss_fn, data),
        basis_orthonormality=math.nan if U is None else orthonormality_error(U),
        counters={k: v for k, v in opt.counters.items() if k != "refresh_seconds"},
        warnings=n_warn,
    )


def _hvp_fault(
    k: int, value: float = math.nan, *, whole_step: bool = False
) -> Callable[[dict[str, Any]], None]:
    """Fail the k-th Hessian product of the next refresh, or (``whole_step``) every forward
    pass of the refresh from the k-th product on, warm and cold attempts alike. Counts one
    forward pass per product: use with ``cache_graph=False``. With the graph cache, ``k=0``
    fails the forward pass that builds the refresh's graph (its gradient and every product)."""

    def inject(ctx: dict[str, Any]) -> None:
        m = ctx["model"]
        m.value = value
        # the training loop's own forward comes first, then the refresh: full gradient, HVPs
        first = m.calls + 2 + k
        if whole_step:
            m.fail_at(lambda c: c >= first)
            ctx["after"] = lambda: m.fail_at(())
        else:
            m.fail_at({first})

    return inject


def _nan_loss(ctx: dict[str, Any]) -> None:
    ctx["loss"].fail_at({ctx["loss"].calls + 1})


def _nan_grad(ctx: dict[str, Any]) -> None:
    def poison() -> None:
        p = next(iter(ctx["opt"].base.param_groups[0]["params"]))
        p.grad.view(-1)[0] = math.inf

    ctx["grad"] = poison


def _case(
    name: str,
    injection: str,
    policy: str,
    expect: dict[str, int],
    raises: type[BaseException] | None = None,
    *,
    trains: bool = True,
    **kw: Any,
) -> FaultCase:
    return FaultCase(
        name,
        injection,
        policy,
        lambda steps: _fault_run(name, steps=steps, on_fault=policy, **kw),
        expect,
        raises,
        trains,
    )


FAULTS: tuple[FaultCase, ...] = (
    _case(
        "NaN in the 3rd HVP of a refresh",
        "FaultyModule: NaN output on one forward pass",
        "keep",
        {"faults": 1},
        wrap_model=True,
        cache_graph=False,
        inject=_hvp_fault(3),
    ),
    _case(
        "Inf in the 3rd HVP, cold retry",
        "FaultyModule: +Inf output on one forward pass",
        "cold",
        {"cold_restarts": 1},
        wrap_model=True,
        cache_graph=False,
        inject=_hvp_fault(3, math.inf),
    ),
    _case(
        "NaN in every HVP of a refresh, cold retry",
        "FaultyModule: NaN on every forward pass of one refresh",
        "cold",
        {"faults": 1, "cold_restarts": 1},
        wrap_model=True,
        cache_graph=False,
        inject=_hvp_fault(1, whole_step=True),
    ),
    _case(
        "Inf in the forward pass of a cached graph, cold retry",
        "FaultyModule: +Inf output on the pass that builds the refresh's graph",
        "cold",
        {"cold_restarts": 1},
        wrap_model=True,
        inject=_hvp_fault(0, math.inf),
    ),
    _case(
        "NaN in an HVP, on_fault='raise'",
        "FaultyModule: NaN output on one forward pass",
        "raise",
        {},
        FloatingPointError,
        wrap_model=True,
        cache_graph=False,
        inject=_hvp_fault(3),
    ),
    _case(
        "NaN minibatch loss",
        "FaultyLoss: loss × NaN on one training batch",
        "keep",
        {"skipped_steps": 1, "faults": 1},
        inject=_nan_loss,
    ),
    _case(
        "NaN minibatch loss inside a closure",
        "FaultyLoss inside step(closure)",
        "keep",
        {"skipped_steps": 1, "faults": 1},
        inject=_nan_loss,
        closure=True,
    ),
    _case(
        "Inf in the gradient",
        "p.grad[0] = inf before step()",
        "keep",
        {"skipped_steps": 1, "faults": 1},
        inject=_nan_grad,
    ),
    _case(
        "Inf in the gradient, on_fault='raise'",
        "p.grad[0] = inf before step()",
        "raise",
        {},
        FloatingPointError,
        inject=_nan_grad,
    ),
    _case(
        "eigensolver does not converge",
        "FaultySolver('unconverged') on every 2nd solve",
        "keep",
        {"unconverged": 4},  # solves 2, 4, 6, 8 of 8
        solver=FaultySolver(Lanczos(ncv=8), "unconverged", fail_on=lambda c: c % 2 == 0),
    ),
    _case(
        "non-convergence as a fault (raise_on_failure=True)",
        "FaultySolver('unconverged', raise_on_failure=True) on solve 4",
        "keep",
        {"faults": 1},
        solver=FaultySolver(Lanczos(ncv=8), "unconverged", fail_on={4}, raise_on_failure=True),
    ),
    _case(
        "eigensolver returns NaN eigenpairs",
        "FaultySolver('nan') on solve 4",
        "keep",
        {"faults": 1},
        solver=FaultySolver(Lanczos(ncv=8), "nan", fail_on={4}),
    ),
    _case(
        "eigensolver raises LinAlgError",
        "FaultySolver('linalg_error') on solve 4",
        "keep",
        {"faults": 1},
        solver=FaultySolver(Lanczos(ncv=8), "linalg_error", fail_on={4}),
    ),
    _case(
        "LinAlgError, cold retry",
        "FaultySolver('linalg_error') on solve 4",
        "cold",
        {"cold_restarts": 1},
        solver=FaultySolver(Lanczos(ncv=8), "linalg_error", fail_on={4}),
    ),
    _case(
        "basis loses orthonormality",
        "FaultySolver('non_orthonormal') on every 3rd solve",
        "keep",
        {"reorthonormalized": 2},
        solver=FaultySolver(PowerIteration(), "non_orthonormal", fail_on=lambda c: c % 3 == 0),
    ),
    _case(
        "no basis can ever be computed",
        "FaultySolver('linalg_error') on every solve",
        "keep",
        {"skipped_steps": 8, "faults": 16},  # each step: a failed refresh and a skip
        trains=False,
        solver=FaultySolver(Lanczos(ncv=8), "linalg_error", fail_on=lambda c: True),
    ),
)


def run_fault(case: FaultCase, steps: int = 8) -> FaultOutcome:
    """Run one fault case for ``steps`` steps (the fault is injected at step 3)."""
    return case.run(steps)
