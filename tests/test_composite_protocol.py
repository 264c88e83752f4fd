"""`CompositeOptimizer`: a third-party two-step optimizer gets what SAM gets from the wrapper
(its inner optimizer guarded, its readiness checked, its existing gradient projected only
when it will use it), through the protocol alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim import Optimizer

import subspace_optim as so
from subspace_optim.optim import CompositeOptimizer
from subspace_optim.optim.protocol import inner_chain


class ExtraGradient(Optimizer):
    """Extragradient around a base optimizer: the gradient at ``θ − γ g`` steps from ``θ``.

    ``g`` is the gradient in ``.grad`` when ``use_existing`` is set, else the closure's at
    ``θ``. ``hold()`` marks a step as begun outside (what SAM's ``first_step`` does).
    """

    def __init__(self, base: Optimizer, gamma: float = 0.05, use_existing: bool = True) -> None:
        self.base, self.gamma, self.use_existing = base, gamma, use_existing
        self.begun = False
        self.closure_calls = 0
        self.seen_first_gradient: list[torch.Tensor] = []
        super().__init__(base.param_groups, base.defaults)
        self.param_groups, self.state = base.param_groups, base.state

    # the protocol
    def inner_optimizers(self):
        return [self.base]

    def check_ready_to_step(self, *, closure: bool) -> None:
        if not closure:
            raise ValueError("ExtraGradient needs step(closure)")

    def step_in_progress(self) -> bool:
        return self.begun

    def uses_existing_gradient(self) -> bool:
        return self.use_existing

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def _call(self, closure):
        self.closure_calls += 1
        with torch.enable_grad():
            return closure()

    @torch.no_grad()
    def step(self, closure=None):
        self.grad_at_entry = torch.cat([p.grad.flatten() for p in self._params()])
        if not self.use_existing:
            self._call(closure)
        self.seen_first_gradient.append(torch.cat([p.grad.flatten() for p in self._params()]))
        saved = [p.detach().clone() for p in self._params()]
        for p in self._params():
            p.sub_(self.gamma * p.grad)
        loss = self._call(closure)
        for p, s in zip(self._params(), saved):
            p.copy_(s)
        self.base.step()
        return loss


def problem():
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    X = torch.randn(20, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(20, 3, generator=g, dtype=torch.float64)
    return model, X, Y


def mse(out, y):
    return ((out - y) ** 2).mean()


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def build(use_existing=True, project="gradient"):
    model, X, Y = problem()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    eg = ExtraGradient(sgd, use_existing=use_existing)
    op = so.HessianOperator(model, mse, (X, Y))
    opt = so.SubspaceProjectedOptimizer(eg, op, k=3, project=project, eigensolver="eigh")

    def closure():
        opt.zero_grad()
        loss = mse(model(X), Y)
        loss.backward()
        return loss

    return model, X, Y, sgd, eg, opt, closure


def test_sam_and_the_third_party_optimizer_satisfy_the_protocol():
    model, *_ = problem()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert isinstance(so.SAM(sgd), CompositeOptimizer)
    assert isinstance(ExtraGradient(sgd), CompositeOptimizer)
    assert not isinstance(sgd, CompositeOptimizer)
    chain = inner_chain(ExtraGradient(so.SAM(sgd)))
    assert [type(o).__name__ for o in chain] == ["ExtraGradient", "SAM", "SGD"]


def test_the_inner_optimizer_is_guarded():
    _model, _X, _Y, sgd, _eg, opt, closure = build()
    closure()
    with pytest.raises(RuntimeError, match="bypasses the projection"):
        sgd.step()
    opt.step(closure)  # the wrapper itself steps it
    assert opt.subspace.step == 1


def test_readiness_is_checked_before_any_change():
    model, _X, _Y, _sgd, _eg, opt, closure = build()
    closure()
    theta = flat(model)
    with pytest.raises(ValueError, match="needs step\\(closure\\)"):
        opt.step()
    assert torch.equal(flat(model), theta) and opt.basis is None and opt.subspace.step == 0
    assert opt.counters["refreshes"] == 0


def test_a_step_begun_outside_is_refused_when_wrapping():
    model, *_ = problem()
    eg = ExtraGradient(torch.optim.SGD(model.parameters(), lr=0.1))
    eg.begun = True
    op = so.HessianOperator(model, mse, (problem()[1], problem()[2]))
    with pytest.raises(ValueError, match="ExtraGradient optimizer is in the middle of a step"):
        so.SubspaceProjectedOptimizer(eg, op, k=2)


@pytest.mark.parametrize("use_existing", [True, False])
def test_the_existing_gradient_is_projected_only_when_it_will_be_used(use_existing):
    """Bulk gradient projection: the gradient the optimizer starts from has no component
    in the subspace, whether it came from ``.grad`` or from the closure; an unused
    ``.grad`` is left as it was until the closure replaces it."""
    model, _X, _Y, _sgd, eg, opt, closure = build(use_existing=use_existing)
    closure()
    raw = torch.cat([p.grad.flatten() for p in model.parameters()])
    opt.step(closure)
    U = opt.basis[:, : opt.active_k]
    # projected in place only if it is used; else it reaches the optimizer untouched
    assert torch.equal(eg.grad_at_entry, raw) != use_existing
    first = eg.seen_first_gradient[-1]
    assert float((U.T @ first).abs().max()) < 1e-10
    assert eg.closure_calls == (1 if use_existing else 2)
    # the update SGD made is the projected gradient at θ − γ g: Bulk, so ⟂ U
    before = flat(model)
    closure()
    opt.step(closure)
    delta = flat(model) - before
    U = opt.basis[:, : opt.active_k]
    assert float((U.T @ delta).abs().max()) < 1e-10 * max(1.0, float(delta.norm()))
