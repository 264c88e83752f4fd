"""Bad inputs: each case must raise a clear error before any state changes."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from subspace_optim import DenseOperator, HessianOperator, SubspaceProjectedOptimizer
from subspace_optim.eigensolvers import Lanczos, PowerIteration
from subspace_optim.testing.checks import StateSnapshot

from .problem import mse, tiny_problem, train


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


class _Batches:
    """A re-iterable that is not a Sequence (checked on its first batch only)."""

    def __init__(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        self.batches = batches

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.batches)


def _later_batch_mismatch() -> Trial:
    # a non-Sequence loader is only checked on its first batch at construction; a bad later
    # batch is caught at the first refresh, before the optimizer changes anything
    model, loss_fn, (X, Y) = tiny_problem()

    class Loader:
        def __iter__(self):
            yield X[:16], Y[:16]
            yield X[16:], Y[16:20]

    base = torch.optim.SGD(model.parameters(), lr=0.1)
    # check=False: the construction self-check's products would find it first (its own row)
    op = HessianOperator(model, loss_fn, Loader(), check=False)
    opt = SubspaceProjectedOptimizer(base, op, k=3)
    opt.zero_grad()
    loss_fn(model(X), Y).backward()
    return Trial(list(model.parameters()), [opt], opt.step)


def _bad_loss_fn() -> Trial:
    # a loss_fn that returns per-example losses: a bug, not a numerical fault, so it
    # propagates (the refresh runs before the base step: nothing has moved)
    model, _, (X, Y) = tiny_problem()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    # check=False: past the construction self-check (which refuses it: its own row)
    op = HessianOperator(model, lambda out, y: ((out - y) ** 2).mean(1), (X, Y), check=False)
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
        _construct(mode="sideways"),
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
        "add_param_group with a tensor that is not a parameter of the model",
        "coverage",
        ValueError,
        r"not a parameter of the model; pass tensors from model.parameters\(\)",
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
        "mismatched batch sizes in a later batch of a loader (the self-check's products)",
        "data",
        ValueError,
        r"batch 1: inputs hold 16 examples but targets hold 4",
        _operator_trial(
            lambda m, d: HessianOperator(
                m, mse, _Batches([(d[0][:16], d[1][:16]), (d[0][16:], d[1][16:20])])
            )
        ),
    ),
    BadInput(
        "loss_fn sums over the batch (the self-check at construction)",
        "data",
        ValueError,
        r"sums over the batch.*reduction='mean'",
        _operator_trial(lambda m, d: HessianOperator(m, lambda o, y: ((o - y) ** 2).sum(), d)),
    ),
    BadInput(
        "loss_fn with a wrong signature (the self-check at construction)",
        "data",
        TypeError,
        r"loss_fn\(outputs, targets\) failed on the first micro-batch",
        _operator_trial(lambda m, d: HessianOperator(m, lambda out: out.mean(), d)),
    ),
    BadInput(
        "inputs of another dtype than the parameters (the self-check at construction)",
        "data",
        RuntimeError,
        r"model failed on the first micro-batch.*\.to\(torch\.float64\)",
        _operator_trial(lambda m, d: HessianOperator(m, mse, (d[0].float(), d[1]))),
    ),
    BadInput(
        "a whole batch as a dict (Hugging Face style) instead of (inputs, targets)",
        "data",
        TypeError,
        r"batch 0 of data is a dict.*model\(\*\*inputs\)",
        _operator_trial(lambda m, d: HessianOperator(m, mse, [{"x": d[0], "labels": d[1]}])),
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
