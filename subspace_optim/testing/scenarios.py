"""The reliability catalogue: bad inputs, injected numerical faults, determinism and a soak,
each runnable on its own and reported as a typed outcome.

``tests/test_bad_input.py``, ``tests/test_reliability.py``, ``tests/test_soak.py`` and
``benchmarks/reliability_report.py`` run the same cases, so the documented table is what the
tests check. Everything runs on a tiny float64 MLP (4-6-3, tanh, 51 parameters) in seconds.

Example:
    >>> from subspace_optim.testing.scenarios import BAD_INPUTS, run_bad_input
    >>> outcome = run_bad_input(BAD_INPUTS[0])
    >>> outcome.ok, outcome.raised
    (True, 'ValueError')
"""

from __future__ import annotations

import gc
import io
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..eigensolvers import Lanczos, PowerIteration
from ..operators.dense import DenseOperator
from ..operators.hessian import HessianOperator
from ..optim.projected import SubspaceProjectedOptimizer
from ..schedules import AlignmentSwitch, Every
from .checks import StateSnapshot, all_finite, orthonormality_error
from .faults import FaultyLoss, FaultyModule, FaultySolver

__all__ = [
    "BAD_INPUTS",
    "DETERMINISM_CONFIGS",
    "FAULTS",
    "BadInput",
    "BadInputOutcome",
    "FaultCase",
    "FaultOutcome",
    "ResumeOutcome",
    "SoakOutcome",
    "Trial",
    "checkpoint_bytes",
    "load_bytes",
    "mse",
    "resume_check",
    "run_bad_input",
    "run_fault",
    "setup_factory",
    "soak",
    "tiny_problem",
    "train",
]


def mse(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error written out (works with every HVP back end)."""
    return ((out - y) ** 2).mean()


def tiny_problem(
    seed: int = 0, *, dtype: torch.dtype = torch.float64, hidden: int = 6, examples: int = 32
) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], tuple[Tensor, Tensor]]:
    """``(model, loss_fn, (X, Y))``: an MLP 4-hidden-3 with tanh and a regression target,
    all drawn from a private generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    X = torch.randn(examples, 4, generator=g, dtype=dtype)
    Y = torch.randn(examples, 3, generator=g, dtype=dtype)
    return model, mse, (X, Y)


def train(
    opt: Optimizer,
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: tuple[Tensor, Tensor],
    steps: range | int,
    *,
    batch: int = 8,
    seed: int = 0,
    before_step: Callable[[int], None] | None = None,
    check_finite: bool = True,
    closure: bool = False,
) -> None:
    """Minibatch training; the batch of step ``t`` depends only on ``(seed, t)``, so a run
    resumed at any step sees the same batches as the uninterrupted one. ``closure=True``
    also passes the batch as ``step(closure)``, as SAM needs (after a first backward pass
    at the current parameters, as in the usual SAM loop).

    Raises:
        AssertionError: if ``check_finite`` and a parameter became non-finite.
    """
    X, Y = data
    for t in range(steps) if isinstance(steps, int) else steps:
        g = torch.Generator().manual_seed(seed * 100_003 + t)
        idx = torch.randint(0, X.shape[0], (min(batch, X.shape[0]),), generator=g)

        def evaluate(idx: Tensor = idx) -> Tensor:
            opt.zero_grad()
            loss = loss_fn(model(X[idx]), Y[idx])
            loss.backward()
            return loss

        evaluate()  # SAM-style loops backpropagate at θ_t before step(closure) too
        if before_step is not None:
            before_step(t)
        opt.step(evaluate if closure else None)
        if check_finite and not all_finite(model.parameters()):
            raise AssertionError(f"a parameter became non-finite at step {t}")


def _full_loss(model: nn.Module, loss_fn: Callable, data: tuple[Tensor, Tensor]) -> float:
    with torch.no_grad():
        return float(loss_fn(model(data[0]), data[1]))


# ----------------------------------------------------------------------------- bad input
@dataclass
class Trial:
    """What a bad-input case sets up: the state that must not change, and the call that
    must raise."""

    params: list[Tensor]
    optimizers: list[Optimizer]
    action: Callable[[], Any]


@dataclass(frozen=True)
class BadInput:
    """One bad input: ``prepare()`` builds a :class:`Trial` whose action must raise
    ``expected`` with a message matching ``match`` (a case-insensitive regex naming the
    fix), leaving the trial's state unchanged."""

    name: str
    category: str
    expected: type[BaseException]
    match: str
    prepare: Callable[[], Trial]


@dataclass(frozen=True)
class BadInputOutcome:
    name: str
    category: str
    expected: str
    raised: str | None
    message: str
    matched: bool
    state_unchanged: bool
    differences: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.raised == self.expected and self.matched and self.state_unchanged


def run_bad_input(case: BadInput) -> BadInputOutcome:
    """Prepare the case, snapshot its state, run the action and report what happened."""
    trial = case.prepare()
    before = StateSnapshot.take(trial.params, trial.optimizers)
    raised: BaseException | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial.action()
    except Exception as exc:
        raised = exc
    diffs = StateSnapshot.take(trial.params, trial.optimizers).differences(before)
    message = "" if raised is None else str(raised)
    return BadInputOutcome(
        name=case.name,
        category=case.category,
        expected=case.expected.__name__,
        raised=None if raised is None else type(raised).__name__,
        message=message,
        matched=bool(re.search(case.match, message, flags=re.IGNORECASE)),
        state_unchanged=not diffs,
        differences=tuple(diffs),
    )


def _setup(**kwargs: Any) -> tuple[nn.Module, Optimizer, HessianOperator]:
    model, loss_fn, data = tiny_problem()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, base, HessianOperator(model, loss_fn, data, **kwargs)


def _construct(**kwargs: Any) -> Callable[[], Trial]:
    """A trial that builds the wrapper with ``kwargs`` over a fresh tiny problem."""

    def prepare() -> Trial:
        model, base, op = _setup()
        return Trial(
            list(model.parameters()),
            [base],
            lambda: SubspaceProjectedOptimizer(base, op, **{"k": 3, **kwargs}),
        )

    return prepare


def _trained(steps: int = 2, **kwargs: Any) -> tuple[nn.Module, SubspaceProjectedOptimizer, tuple]:
    model, loss_fn, data = tiny_problem()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = SubspaceProjectedOptimizer(
        base, HessianOperator(model, loss_fn, data), **{"k": 3, **kwargs}
    )
    train(opt, model, loss_fn, data, steps)
    return model, opt, data


def _operator_trial(
    build: Callable[[nn.Module, tuple[Tensor, Tensor]], Any],
) -> Callable[[], Trial]:
    def prepare() -> Trial:
        model, _, data = tiny_problem()
        return Trial(list(model.parameters()), [], lambda: build(model, data))

    return prepare


def _nan_params_at_construction() -> Trial:
    model, base, op = _setup()
    with torch.no_grad():
        model[0].weight[0, 0] = math.nan
    return Trial(
        list(model.parameters()), [base], lambda: SubspaceProjectedOptimizer(base, op, k=3)
    )


def _nan_params_at_step() -> Trial:
    model, opt, data = _trained()
    opt.zero_grad()
    mse(model(data[0]), data[1]).backward()
    with torch.no_grad():
        model[2].bias[1] = math.inf
    return Trial(list(model.parameters()), [opt], opt.step)


def _devices() -> Trial:
    # parameters on the meta device, operator on the CPU: any two devices behave alike
    w = nn.Parameter(torch.empty(6, device="meta"))
    base = torch.optim.SGD([w], lr=0.1)
    op = DenseOperator(torch.eye(6, dtype=torch.float32))
    return Trial([], [base], lambda: SubspaceProjectedOptimizer(base, op, k=2))


def _sparse_grad_at_step() -> Trial:
    w = nn.Parameter(torch.zeros(6, 2, dtype=torch.float64))
    base = torch.optim.SGD([w], lr=0.1)
    opt = SubspaceProjectedOptimizer(base, DenseOperator(torch.eye(12, dtype=torch.float64)), k=2)
    w.grad = torch.sparse_coo_tensor(
        [[0, 3]], torch.ones(2, 2, dtype=torch.float64), (6, 2), check_invariants=True
    )
    return Trial([w], [opt], opt.step)


def _complex_params() -> Trial:
    w = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    base = torch.optim.SGD([w], lr=0.1)
    op = DenseOperator(torch.eye(3))
    return Trial([w], [base], lambda: SubspaceProjectedOptimizer(base, op, k=1))


def _complex_model() -> Trial:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "complex modules are a new feature"
        model = nn.Linear(3, 1).to(torch.complex64)
    return Trial(
        list(model.parameters()),
        [],
        lambda: HessianOperator(
            model, mse, (torch.ones(4, 3, dtype=torch.complex64), torch.ones(4, 1))
        ),
    )


def _load(make_sd: Callable[[], dict[str, Any]], **kwargs: Any) -> Callable[[], Trial]:
    def prepare() -> Trial:
        sd = make_sd()
        model, opt, _ = _trained(**kwargs)
        return Trial(list(model.parameters()), [opt], lambda: opt.load_state_dict(sd))

    return prepare


def _sd_other_model() -> dict[str, Any]:
    model, loss_fn, data = tiny_problem(hidden=7)
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = SubspaceProjectedOptimizer(base, HessianOperator(model, loss_fn, data), k=3)
    train(opt, model, loss_fn, data, 2)
    return opt.state_dict()


def _sd_same_size_other_shapes() -> dict[str, Any]:
    # 4-6-3 has 51 parameters, and so has 4-3-9: same n, other shapes
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 9)).double()
    data = (
        torch.randn(32, 4, generator=g, dtype=torch.float64),
        torch.randn(32, 9, generator=g, dtype=torch.float64),
    )
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = SubspaceProjectedOptimizer(base, HessianOperator(model, mse, data), k=3)
    train(opt, model, mse, data, 2)
    return opt.state_dict()


def _sd_with(key: str, value: Any) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        _, opt, _ = _trained()
        sd = opt.state_dict()
        sd["subspace"][key] = value(sd["subspace"][key]) if callable(value) else value
        return sd

    return make


class _SameIterator:
    """An iterable whose ``__iter__`` hands out one generator: exhausted after one pass."""

    def __init__(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        self._it = iter(batches)

    def __iter__(self):
        return self._it


def _later_batch_mismatch() -> Trial:
    # a non-Sequence loader is only checked on its first batch at construction; a bad later
    # batch is caught at the first refresh, before the optimizer changes anything
    model, loss_fn, (X, Y) = tiny_problem()

    class Loader:
        def __iter__(self):
            yield X[:16], Y[:16]
            yield X[16:], Y[16:20]

    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = SubspaceProjectedOptimizer(base, HessianOperator(model, loss_fn, Loader()), k=3)
    opt.zero_grad()
    loss_fn(model(X), Y).backward()
    return Trial(list(model.parameters()), [opt], opt.step)


def _bad_loss_fn() -> Trial:
    # a loss_fn that returns per-example losses: a bug, not a numerical fault, so it
    # propagates (the refresh runs before the base step: nothing has moved)
    model, _, (X, Y) = tiny_problem()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    op = HessianOperator(model, lambda out, y: ((out - y) ** 2).mean(1), (X, Y))
    opt = SubspaceProjectedOptimizer(base, op, k=3)
    opt.zero_grad()
    mse(model(X), Y).backward()
    return Trial(list(model.parameters()), [opt], opt.step)


def _uncovered_group() -> Trial:
    model, opt, _ = _trained()
    extra = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    return Trial(list(model.parameters()), [opt], lambda: opt.add_param_group({"params": [extra]}))


def _partial_operator() -> Trial:
    model, loss_fn, data = tiny_problem()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    op = HessianOperator(model, loss_fn, data, params=list(model[0].parameters()))
    return Trial(
        list(model.parameters()), [base], lambda: SubspaceProjectedOptimizer(base, op, k=3)
    )


def _partial_optimizer() -> Trial:
    model, loss_fn, data = tiny_problem()
    base = torch.optim.SGD(model[0].parameters(), lr=0.1)
    op = HessianOperator(model, loss_fn, data)
    return Trial(
        list(model.parameters()), [base], lambda: SubspaceProjectedOptimizer(base, op, k=3)
    )


def _not_an_optimizer() -> Trial:
    model, _, op = _setup()
    return Trial(list(model.parameters()), [], lambda: SubspaceProjectedOptimizer(model, op, k=3))  # type: ignore[arg-type]


def _already_wrapped() -> Trial:
    model, opt, _ = _trained()
    return Trial(
        list(model.parameters()), [opt], lambda: SubspaceProjectedOptimizer(opt, opt.curvature, k=3)
    )


BAD_INPUTS: tuple[BadInput, ...] = (
    BadInput(
        "k = number of parameters",
        "k",
        ValueError,
        r"smaller than the number of parameters",
        _construct(k=51),
    ),
    BadInput("k < 0", "k", ValueError, r"k must be >= 0", _construct(k=-1)),
    BadInput("k not an int (2.5)", "k", TypeError, r"k must be an int", _construct(k=2.5)),
    BadInput(
        "k + num_extra too large for Lanczos",
        "k",
        ValueError,
        r"too large for Lanczos.*lower k",
        _construct(k=40, num_extra=11, eigensolver=Lanczos()),
    ),
    BadInput(
        "block width < k (PowerIteration(block_size=2), k=3)",
        "k",
        ValueError,
        r"block_size=2 .*narrower than k=3; set block_size >= 3",
        _construct(eigensolver=PowerIteration(block_size=2)),
    ),
    BadInput(
        "unknown mode",
        "names",
        ValueError,
        r"valid choices are 'bulk', 'dominant', 'none'",
        _construct(mode="dom"),
    ),
    BadInput(
        "unknown eigensolver",
        "names",
        ValueError,
        r"valid names are .*'lanczos'",
        _construct(eigensolver="arpack"),
    ),
    BadInput(
        "unknown refresh schedule",
        "names",
        ValueError,
        r"valid choices are 'every', 'switch'",
        _construct(refresh="often"),
    ),
    BadInput(
        "unknown on_fault policy",
        "names",
        ValueError,
        r"valid choices are 'keep', 'cold', 'raise'",
        _construct(on_fault="ignore"),
    ),
    BadInput(
        "unknown project target",
        "names",
        ValueError,
        r"valid choices are 'update', 'gradient'",
        _construct(project="loss"),
    ),
    BadInput(
        "base is a model, not an optimizer",
        "types",
        TypeError,
        r"torch\.optim\.Optimizer \(e\.g\.",
        _not_an_optimizer,
    ),
    BadInput(
        "base is already wrapped",
        "types",
        TypeError,
        r"wrap the underlying optimizer once",
        _already_wrapped,
    ),
    BadInput(
        "generator is not a torch.Generator",
        "types",
        TypeError,
        r"generator must be a torch\.Generator",
        _construct(generator=0),
    ),
    BadInput(
        "optimizer parameters not covered by the operator",
        "coverage",
        ValueError,
        r"does not cover.*build the operator with",
        _partial_operator,
    ),
    BadInput(
        "operator covers parameters the optimizer does not update",
        "coverage",
        ValueError,
        r"does not update.*build the operator with",
        _partial_optimizer,
    ),
    BadInput(
        "add_param_group with uncovered parameters",
        "coverage",
        ValueError,
        r"not covered.*Build a new operator",
        _uncovered_group,
    ),
    BadInput(
        "empty data",
        "data",
        ValueError,
        r"no examples; pass at least one non-empty",
        _operator_trial(lambda m, d: HessianOperator(m, mse, (d[0][:0], d[1][:0]))),
    ),
    BadInput(
        "empty list of batches",
        "data",
        ValueError,
        r"no examples",
        _operator_trial(lambda m, d: HessianOperator(m, mse, [])),
    ),
    BadInput(
        "mismatched batch sizes",
        "data",
        ValueError,
        r"inputs hold 32 examples but targets hold 31; the first dimension",
        _operator_trial(lambda m, d: HessianOperator(m, mse, (d[0], d[1][:31]))),
    ),
    BadInput(
        "mismatched batch sizes in a later batch of a loader (caught at the first refresh)",
        "data",
        ValueError,
        r"batch 1: inputs hold 16 examples but targets hold 4",
        _later_batch_mismatch,
    ),
    BadInput(
        "one-shot iterator (generator)",
        "data",
        TypeError,
        r"one-shot iterator.*Pass a list of batches or a DataLoader",
        _operator_trial(lambda m, d: HessianOperator(m, mse, (b for b in [d]))),
    ),
    BadInput(
        "iterable that hands out one exhausted iterator",
        "data",
        TypeError,
        r"same iterator every time.*Pass a list",
        _operator_trial(lambda m, d: HessianOperator(m, mse, _SameIterator([d]))),
    ),
    BadInput(
        "loss_fn returns per-example losses (a bug: propagates, not a fault)",
        "data",
        ValueError,
        r"loss_fn must return a scalar",
        _bad_loss_fn,
    ),
    BadInput(
        "NaN in the parameters at construction",
        "values",
        ValueError,
        r"NaN/Inf at construction.*Restore it",
        _nan_params_at_construction,
    ),
    BadInput(
        "Inf in the parameters before a step",
        "values",
        ValueError,
        r"NaN/Inf before step 2.*Restore it",
        _nan_params_at_step,
    ),
    BadInput(
        "parameters and operator on different devices",
        "devices",
        ValueError,
        r"move the model to one device",
        _devices,
    ),
    BadInput(
        "model parameters on several devices",
        "devices",
        ValueError,
        r"several devices.*move the model to one device",
        _operator_trial(
            lambda m, d: HessianOperator(
                nn.ModuleList([m, nn.Linear(2, 2, device="meta").double()]), mse, d
            )
        ),
    ),
    BadInput(
        "sparse embedding",
        "sparse",
        TypeError,
        r"sparse=True.*Build it with sparse=False",
        _operator_trial(
            lambda m, d: HessianOperator(
                nn.Sequential(nn.Embedding(10, 2, sparse=True), nn.Flatten()),
                mse,
                (torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 4)),
            )
        ),
    ),
    BadInput(
        "sparse gradient at step time",
        "sparse",
        TypeError,
        r"sparse gradient.*sparse=False",
        _sparse_grad_at_step,
    ),
    BadInput("complex model", "dtypes", TypeError, r"real floating point", _complex_model),
    BadInput(
        "complex parameters (custom operator)",
        "dtypes",
        TypeError,
        r"complex parameters are not supported.*view_as_real",
        _complex_params,
    ),
    BadInput(
        "complex data",
        "dtypes",
        TypeError,
        r"complex inputs are not supported.*real",
        _operator_trial(lambda m, d: HessianOperator(m, mse, (d[0].to(torch.complex128), d[1]))),
    ),
    BadInput(
        "state_dict of a different model (size)",
        "checkpoint",
        ValueError,
        r"model with 59 parameters, this one has 51.*model it was saved from",
        _load(_sd_other_model),
    ),
    BadInput(
        "state_dict of a different model (same size, other shapes)",
        "checkpoint",
        ValueError,
        r"different model.*architecture it was saved from",
        _load(_sd_same_size_other_shapes),
    ),
    BadInput(
        "state_dict saved with another k",
        "checkpoint",
        ValueError,
        r"saved with k=3.*this optimizer has k=4.*same k",
        _load(_sd_with("k", 3), k=4),
    ),
    BadInput(
        "state_dict with a NaN basis",
        "checkpoint",
        ValueError,
        r"corrupted.*to None to recompute",
        _load(_sd_with("basis", lambda b: torch.full_like(b, math.nan))),
    ),
    BadInput(
        "state_dict with a foreign generator state",
        "checkpoint",
        ValueError,
        r"not a valid state for a generator",
        _load(_sd_with("generator", torch.zeros(3, dtype=torch.uint8))),
    ),
    BadInput(
        "a plain optimizer's state_dict",
        "checkpoint",
        ValueError,
        r"no 'subspace' entry.*opt\.base",
        _load(lambda: torch.optim.SGD(tiny_problem()[0].parameters(), lr=0.1).state_dict()),
    ),
)


# ------------------------------------------------------------------------ numerical faults
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


@dataclass(frozen=True)
class FaultCase:
    """A fault to inject: ``run(steps)`` trains the tiny problem with it and reports.

    ``expect`` maps counter names to the minimum value the run must show; ``raises`` is the
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
        HessianOperator(net, loss_fn, data),
        k=3,
        eigensolver=solver if solver is not None else Lanczos(ncv=8),
        on_fault=on_fault,
        generator=torch.Generator().manual_seed(0),
    )
    ctx = {"model": faulty, "opt": opt, "loss": None}
    loss_first = _full_loss(net, loss_fn, data)
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
        loss_last=_full_loss(net, loss_fn, data),
        basis_orthonormality=math.nan if U is None else orthonormality_error(U),
        counters={k: v for k, v in opt.counters.items() if k != "refresh_seconds"},
        warnings=n_warn,
    )


def _hvp_fault(
    k: int, value: float = math.nan, *, whole_step: bool = False
) -> Callable[[dict[str, Any]], None]:
    """Fail the k-th Hessian product of the next refresh, or (``whole_step``) every forward
    pass of the refresh from the k-th product on, warm and cold attempts alike."""

    def inject(ctx: dict[str, Any]) -> None:
        m = ctx["model"]
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
        inject=_hvp_fault(3),
    ),
    _case(
        "Inf in the 3rd HVP, cold retry",
        "FaultyModule: +Inf output on one forward pass",
        "cold",
        {"cold_restarts": 1},
        wrap_model=True,
        inject=_hvp_fault(3, math.inf),
    ),
    _case(
        "NaN in every HVP of a refresh, cold retry",
        "FaultyModule: NaN on every forward pass of one refresh",
        "cold",
        {"faults": 1, "cold_restarts": 1},
        wrap_model=True,
        inject=_hvp_fault(1, whole_step=True),
    ),
    _case(
        "NaN in an HVP, on_fault='raise'",
        "FaultyModule: NaN output on one forward pass",
        "raise",
        {},
        FloatingPointError,
        wrap_model=True,
        inject=_hvp_fault(3),
    ),
    _case(
        "NaN minibatch loss",
        "FaultyLoss: loss × NaN on one training batch",
        "keep",
        {"skipped_steps": 1},
        inject=_nan_loss,
    ),
    _case(
        "NaN minibatch loss inside a closure",
        "FaultyLoss inside step(closure)",
        "keep",
        {"skipped_steps": 1},
        inject=_nan_loss,
        closure=True,
    ),
    _case(
        "Inf in the gradient",
        "p.grad[0] = inf before step()",
        "keep",
        {"skipped_steps": 1},
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
        {"unconverged": 2},
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
        {"skipped_steps": 8},
        trains=False,
        solver=FaultySolver(Lanczos(ncv=8), "linalg_error", fail_on=lambda c: True),
    ),
)


def run_fault(case: FaultCase, steps: int = 8) -> FaultOutcome:
    """Run one fault case for ``steps`` steps (the fault is injected at step 3)."""
    return case.run(steps)


# ------------------------------------------------------------------------------- soak
@dataclass(frozen=True)
class SoakOutcome:
    """A long projected run: memory, objects and time per step over its windows."""

    steps: int
    rss_mb: tuple[float, ...]
    objects: tuple[int, ...]
    graph_tensors: tuple[int, ...]
    step_ms: tuple[float, ...]
    params_finite: bool
    loss_first: float
    loss_last: float


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):  # not Linux: peak RSS is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _graph_tensors() -> int:
    """Tensors alive anywhere that still hold an autograd graph."""
    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated torch aliases warns
        for obj in gc.get_objects():
            try:
                if isinstance(obj, Tensor) and obj.grad_fn is not None:
                    count += 1
            except ReferenceError:  # pragma: no cover - weak proxies
                pass
    return count


def soak(
    steps: int = 200,
    *,
    windows: int = 4,
    solver: Any = None,
    on_step: Callable[[Tensor], Any] | None = None,
) -> SoakOutcome:
    """Bulk-Adam on the tiny problem, refreshing the basis at every step (by default one
    warm-started block power iteration per step, the cheap tracking configuration).

    The run is cut into ``windows`` equal windows; after each one the RSS, the number of
    gc-tracked Python objects and the number of live tensors holding an autograd graph are
    recorded, and the median step time of the window. ``on_step(loss)`` receives each
    minibatch loss, graph attached (the self-test uses it to leak graphs on purpose).
    """
    model, loss_fn, data = tiny_problem()
    opt = SubspaceProjectedOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.01),
        HessianOperator(model, loss_fn, data),
        k=3,
        eigensolver=solver if solver is not None else PowerIteration(max_iter=1),
        refresh=Every(1),
        generator=torch.Generator().manual_seed(0),
    )
    loss_first = _full_loss(model, loss_fn, data)
    per = max(1, steps // windows)
    rss, objects, graphs, times = [], [], [], []
    X, Y = data
    done = 0
    for _ in range(windows):
        durations = []
        for t in range(done, done + per):
            g = torch.Generator().manual_seed(t)
            idx = torch.randint(0, X.shape[0], (8,), generator=g)
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = loss_fn(model(X[idx]), Y[idx])
            loss.backward()
            opt.step()
            durations.append(time.perf_counter() - t0)
            if on_step is not None:
                on_step(loss)
            del loss
        done += per
        durations.sort()
        times.append(1e3 * durations[len(durations) // 2])
        gc.collect()
        rss.append(_rss_mb())
        objects.append(len(gc.get_objects()))
        graphs.append(_graph_tensors())
    return SoakOutcome(
        steps=done,
        rss_mb=tuple(rss),
        objects=tuple(objects),
        graph_tensors=tuple(graphs),
        step_ms=tuple(times),
        params_finite=all_finite(model.parameters()),
        loss_first=loss_first,
        loss_last=_full_loss(model, loss_fn, data),
    )


# ------------------------------------------------------------------------ determinism
@dataclass(frozen=True)
class ResumeOutcome:
    """Whether two runs agree bit for bit, and whether a run resumed from a checkpoint taken
    after step ``s`` (for every ``s``) ends exactly where the uninterrupted run ends."""

    steps: int
    refreshes: int
    repeat_identical: bool
    resume_identical: tuple[bool, ...]

    @property
    def ok(self) -> bool:
        return self.repeat_identical and all(self.resume_identical)


def _fingerprint(model: nn.Module, opt: SubspaceProjectedOptimizer) -> list[Any]:
    stats = opt.last_stats.as_dict() if opt.last_stats is not None else {}
    stats.pop("refresh_seconds", None)
    counters = {k: v for k, v in opt.counters.items() if k != "refresh_seconds"}
    tensors = [p.detach().clone() for p in model.parameters()]
    tensors += [t.clone() for t in (opt.basis, opt.eigenvalues) if t is not None]
    return [tensors, repr(stats), counters]  # repr: NaN fields compare equal


def _identical(a: list[Any], b: list[Any]) -> bool:
    return (
        len(a[0]) == len(b[0])
        and all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
        and a[1:] == b[1:]
    )


def resume_check(
    make: Callable[
        [], tuple[nn.Module, Callable, tuple[Tensor, Tensor], SubspaceProjectedOptimizer]
    ],
    steps: int = 6,
    *,
    closure: bool = False,
) -> ResumeOutcome:
    """Run ``make()``'s setup for ``steps`` steps twice, then once per resume point: stop
    after ``s`` steps, checkpoint model and optimizer through ``torch.save``, build a fresh
    setup, ``torch.load(weights_only=True)`` the checkpoint and finish the run.

    ``make`` must build the same setup every time (same seeds, a fixed ``generator``).
    """

    def run(stop: int | None) -> list[Any]:
        model, loss_fn, data, opt = make()
        if stop is None:
            train(opt, model, loss_fn, data, steps, closure=closure)
            return _fingerprint(model, opt)
        train(opt, model, loss_fn, data, stop, closure=closure)
        blob = checkpoint_bytes({"model": model.state_dict(), "opt": opt.state_dict()})
        model, loss_fn, data, opt = make()
        state = load_bytes(blob)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        train(opt, model, loss_fn, data, range(stop, steps), closure=closure)
        return _fingerprint(model, opt)

    reference = run(None)
    return ResumeOutcome(
        steps=steps,
        refreshes=int(reference[2]["refreshes"]),
        repeat_identical=_identical(run(None), reference),
        resume_identical=tuple(_identical(run(stop), reference) for stop in range(steps)),
    )


def setup_factory(
    family: str,
    schedule: Callable[[], Any],
    solver: Callable[[], Any] | None,
    *,
    k: int = 3,
) -> Callable[[], tuple[nn.Module, Callable, tuple[Tensor, Tensor], SubspaceProjectedOptimizer]]:
    """A ``make()`` for :func:`resume_check`: the tiny problem wrapped with a fresh schedule,
    a fresh eigensolver (``None``: the library default) and a generator seeded with 7."""
    from .strategies import FAMILIES

    def make() -> tuple[nn.Module, Callable, tuple[Tensor, Tensor], SubspaceProjectedOptimizer]:
        model, loss_fn, data = tiny_problem()
        kwargs: dict[str, Any] = {} if solver is None else {"eigensolver": solver()}
        opt = SubspaceProjectedOptimizer(
            FAMILIES[family](model.parameters()),
            HessianOperator(model, loss_fn, data),
            k=k,
            refresh=schedule(),
            generator=torch.Generator().manual_seed(7),
            **kwargs,
        )
        return model, loss_fn, data, opt

    return make


#: ``(label, family, schedule factory, solver factory or None for the default, closure)``
DETERMINISM_CONFIGS: tuple[
    tuple[str, str, Callable[[], Any], Callable[[], Any] | None, bool], ...
] = (
    (
        "Adam, Every(2), default solver (WarmRefresh)",
        "adam",
        lambda: Every(2),
        None,
        False,
    ),
    (
        "SGD+momentum, AlignmentSwitch, PowerIteration",
        "momentum",
        lambda: AlignmentSwitch(threshold=0.3, ema=0.5, max_steps=3),
        lambda: PowerIteration(max_iter=2),
        False,
    ),
    (
        "SAM(SGD) with closure, Every(1), Lanczos",
        "sam",
        lambda: Every(1),
        lambda: Lanczos(ncv=8),
        True,
    ),
)


def checkpoint_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory (what a checkpoint file would hold)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_bytes(blob: bytes) -> Any:
    """``torch.load(..., weights_only=True)`` from :func:`checkpoint_bytes`."""
    return torch.load(io.BytesIO(blob), weights_only=True)
