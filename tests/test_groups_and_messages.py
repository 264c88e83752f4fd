"""Parameter groups stay in sync with the projection, and the messages of issue 19 say
what happened and what to do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import subspace_optim as so
from subspace_optim.testing import FaultySolver


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


@pytest.fixture
def problem(generator):
    torch.manual_seed(0)  # module initialization only
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X = torch.randn(20, 4, generator=generator, dtype=torch.float64)
    Y = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    return model, X, Y


def snapshot(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


def test_a_group_added_to_the_base_behind_the_wrapper_is_refused_before_any_change(problem):
    model, X, Y = problem
    first, last = model[0], model[2]
    for p in last.parameters():
        p.requires_grad_(False)  # frozen while fine-tuning the first layer
    base = torch.optim.SGD(first.parameters(), lr=0.1)
    op = so.HessianOperator(model, mse, (X, Y), params=list(first.parameters()))
    opt = so.SubspaceProjectedOptimizer(base, op, k=2, mode="bulk")
    opt.zero_grad()
    mse(model(X), Y).backward()
    opt.step()

    for p in last.parameters():  # unfreeze, through the base: the wrapper never sees it
        p.requires_grad_(True)
    base.add_param_group({"params": list(last.parameters())})
    opt.zero_grad()
    mse(model(X), Y).backward()
    before = snapshot(*model.parameters(), opt.basis)
    counters = dict(opt.counters)
    with pytest.raises(RuntimeError, match=r"base\.add_param_group.*opt\.add_param_group"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, [*model.parameters(), opt.basis]))
    assert opt.counters == counters


def test_the_same_group_through_the_wrapper_is_projected(problem):
    model, X, Y = problem
    first, last = model[0], model[2]
    base = torch.optim.SGD(first.parameters(), lr=0.1)
    op = so.HessianOperator(model, mse, (X, Y), params=list(first.parameters()))
    opt = so.SubspaceProjectedOptimizer(base, op, k=2, mode="bulk")
    opt.add_param_group({"params": list(last.parameters())})
    opt.zero_grad()
    mse(model(X), Y).backward()
    opt.step()
    assert opt.basis.shape[0] == sum(p.numel() for p in model.parameters())
    # a frozen group added to the base needs no cover: it is never updated
    frozen = nn.Parameter(torch.zeros(3, dtype=torch.float64), requires_grad=False)
    base.add_param_group({"params": [frozen]})
    opt.zero_grad()
    mse(model(X), Y).backward()
    opt.step()


def test_unfreezing_a_parameter_is_refused_with_advice_that_works(problem):
    """Gradual unfreezing: a parameter frozen when the wrapper was built and unfrozen later
    is in a base group already, so the message must not only point at add_param_group; its
    advice for this case (wrap the same base again) projects the step."""
    model, X, Y = problem
    model[0].weight.requires_grad_(False)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = so.SubspaceProjectedOptimizer(base, so.HessianOperator(model, mse, (X, Y)), k=2)
    opt.zero_grad()
    mse(model(X), Y).backward()
    opt.step()
    model[0].weight.requires_grad_(True)
    opt.zero_grad()
    mse(model(X), Y).backward()
    before = snapshot(*model.parameters())
    with pytest.raises(RuntimeError, match=r"unfrozen since.*wrap the same base optimizer"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    again = so.SubspaceProjectedOptimizer(base, so.HessianOperator(model, mse, (X, Y)), k=2)
    again.step()
    assert again.last_stats.projected
    assert not torch.equal(before[0], model[0].weight)


def test_on_fault_raise_says_nothing_was_kept(problem):
    model, X, Y = problem
    solver = FaultySolver(so.Lanczos(), "linalg_error", fail_on=lambda c: True)
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        so.HessianOperator(model, mse, (X, Y)),
        k=2,
        eigensolver=solver,
        on_fault="raise",
    )
    opt.zero_grad()
    mse(model(X), Y).backward()
    with pytest.raises(FloatingPointError) as info:
        opt.step()
    message = str(info.value)
    assert "keeping the previous basis" not in message
    assert "on_fault='raise'" in message and "on_fault='keep'" in message


def test_a_stray_tensor_in_the_optimizer_gets_a_hint_that_works(problem):
    model, X, Y = problem
    stray = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    base = torch.optim.SGD([*model.parameters(), stray], lr=0.1)
    with pytest.raises(ValueError, match="does not cover") as info:
        so.SubspaceProjectedOptimizer(base, so.HessianOperator(model, mse, (X, Y)), k=2)
    message = str(info.value)
    assert "remove them from the optimizer" in message
    # following the hint for a tensor that is not the model's is what removes the error
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    so.SubspaceProjectedOptimizer(base, so.HessianOperator(model, mse, (X, Y)), k=2)
