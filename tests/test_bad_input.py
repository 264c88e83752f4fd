"""Bad input: every case of the catalogue raises the documented error, with a message that
says what to do, before any state changes (parameters, gradients, optimizer state)."""

from __future__ import annotations

import pytest
import torch
from scenarios import (
    BAD_INPUTS,
    BadInput,
    Trial,
    mse,
    run_bad_input,
    tiny_problem,
    train,
)
from torch import nn

import subspace_optim as so
from subspace_optim.testing import StateSnapshot


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_is_refused_clearly_and_changes_nothing(case):
    outcome = run_bad_input(case)
    assert outcome.raised == case.expected.__name__, outcome.message
    assert outcome.matched, f"message {outcome.message!r} does not match {case.match!r}"
    assert outcome.state_unchanged, outcome.differences
    assert outcome.ok


def test_the_unchanged_check_can_fail():
    """run_bad_input notices an action that changes state before raising."""
    model, _, _ = tiny_problem()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def action():
        with torch.no_grad():
            model[0].bias.add_(1.0)
        raise ValueError("changed something first")

    case = BadInput(
        "mutating action",
        "self-test",
        ValueError,
        "changed",
        lambda: Trial(list(model.parameters()), [base], action),
    )
    outcome = run_bad_input(case)
    assert not outcome.state_unchanged and not outcome.ok
    assert outcome.differences == ("params[1]: tensor changed",)


def test_snapshot_sees_optimizer_state_and_grads():
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    before = StateSnapshot.take([w], [opt])
    w.grad = torch.ones(3)
    opt.step()
    diffs = StateSnapshot.take([w], [opt]).differences(before)
    assert "params[0]: tensor changed" in diffs
    assert "grads[0]: NoneType became Tensor" in diffs
    assert any(d.startswith("optimizers[0]['state']") for d in diffs)


def test_reiterable_loaders_are_accepted():
    """The one-shot check refuses iterators, not re-iterable loaders."""
    model, loss_fn, (X, Y) = tiny_problem()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=8)

    class Loader:
        def __iter__(self):
            return iter([(X[:16], Y[:16]), (X[16:], Y[16:])])

    H_dl = so.HessianOperator(model, loss_fn, loader)
    H_custom = so.HessianOperator(model, loss_fn, Loader())
    H_full = so.HessianOperator(model, loss_fn, (X, Y))
    v = torch.randn(
        H_full.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    for H in (H_dl, H_custom):
        for _ in range(2):  # a second pass sees the same data
            torch.testing.assert_close(H @ v, H_full @ v)


def test_nan_params_before_step_leave_everything_unchanged_and_training_can_resume():
    """After the refusal the user restores the parameters and training goes on."""
    model, loss_fn, data = tiny_problem()
    opt = so.SubspaceProjectedOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.01), so.HessianOperator(model, loss_fn, data), k=3
    )
    train(opt, model, loss_fn, data, 2)
    good = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        model[0].weight[1, 1] = float("nan")
    opt.zero_grad()
    mse(model(data[0]), data[1]).backward()
    before = StateSnapshot.take([], [opt])
    with pytest.raises(ValueError, match="Restore it from a checkpoint"):
        opt.step()
    assert not StateSnapshot.take([], [opt]).differences(before)
    with torch.no_grad():
        for p, q in zip(model.parameters(), good):
            p.copy_(q)
    train(opt, model, loss_fn, data, range(2, 4))
    assert opt.last_stats.step == 3 and not opt.last_stats.skipped


# ------------------------------------------------------ GradScaler and SAM misuse


def _wrapped(base_fn=None, **kwargs):
    model, loss_fn, data = tiny_problem()
    base = (base_fn or (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)))(model.parameters())
    opt = so.SubspaceProjectedOptimizer(
        base, so.HessianOperator(model, loss_fn, data), k=3, eigensolver="eigh", **kwargs
    )
    return model, loss_fn, data, opt


def _base_step_while_wrapped() -> Trial:
    model, loss_fn, (X, Y), opt = _wrapped()
    loss_fn(model(X), Y).backward()
    return Trial(list(model.parameters()), [opt.base, opt], opt.base.step)


def _scaled_step_with_attached_scaler() -> Trial:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model, loss_fn, (X, Y), opt = _wrapped(grad_scaler=scaler)
    scaler.scale(loss_fn(model(X), Y)).backward()
    return Trial(list(model.parameters()), [opt], opt.step)


def _unscale_twice() -> Trial:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model, loss_fn, (X, Y), opt = _wrapped()
    scaler.scale(loss_fn(model(X), Y)).backward()
    scaler.unscale_(opt)
    return Trial(list(model.parameters()), [opt], lambda: scaler.unscale_(opt))


def _sam(**kwargs):
    return _wrapped(lambda ps: so.SAM(torch.optim.SGD(ps, lr=0.1), rho=0.05), **kwargs)


def _sam_without_closure() -> Trial:
    model, loss_fn, (X, Y), opt = _sam()
    loss_fn(model(X), Y).backward()
    return Trial(list(model.parameters()), [opt], opt.step)


def _sam_second_step_while_wrapped() -> Trial:
    model, loss_fn, (X, Y), opt = _sam()
    loss_fn(model(X), Y).backward()
    opt.base.first_step(zero_grad=True)
    loss_fn(model(X), Y).backward()
    return Trial(list(model.parameters()), [opt], opt.base.second_step)


def _sam_two_call_gradient_projection() -> Trial:
    model, loss_fn, (X, Y), opt = _sam(project="gradient")
    loss_fn(model(X), Y).backward()
    opt.base.first_step(zero_grad=True)
    loss_fn(model(X), Y).backward()
    opt.base.unperturb()
    return Trial(list(model.parameters()), [opt], opt.step)


MISUSE = [
    BadInput(
        "base.step() while wrapped",
        "amp",
        RuntimeError,
        "step the wrapper",
        _base_step_while_wrapped,
    ),
    BadInput(
        "opt.step() on scaled gradients (grad_scaler attached)",
        "amp",
        RuntimeError,
        r"use scaler\.step\(opt\)",
        _scaled_step_with_attached_scaler,
    ),
    BadInput(
        "scaler.unscale_(opt) twice", "amp", RuntimeError, "already been called", _unscale_twice
    ),
    BadInput(
        "SAM base without a closure", "sam", ValueError, r"sam\.unperturb\(\)", _sam_without_closure
    ),
    BadInput(
        "sam.second_step() under the wrapper",
        "sam",
        RuntimeError,
        r"sam\.unperturb\(\) and then opt\.step\(\)",
        _sam_second_step_while_wrapped,
    ),
    BadInput(
        "SAM two-call API with project='gradient'",
        "sam",
        ValueError,
        r"use opt\.step\(closure\)",
        _sam_two_call_gradient_projection,
    ),
]


@pytest.mark.parametrize("case", MISUSE, ids=lambda c: c.name)
def test_grad_scaler_and_sam_misuse_is_refused_clearly_and_changes_nothing(case):
    """Parameters, gradients, the base state and the wrapper's (basis, step, counters) are
    all unchanged after the refusal."""
    outcome = run_bad_input(case)
    assert outcome.raised == case.expected.__name__, outcome.message
    assert outcome.matched, f"message {outcome.message!r} does not match {case.match!r}"
    assert outcome.state_unchanged, outcome.differences
