"""The `Curvature` protocol: what the wrapper reads from an operator beyond products."""

from __future__ import annotations

import pytest
import torch
from conftest import make_case

import subspace_optim as so
from subspace_optim import Curvature, DenseOperator, HessianOperator
from subspace_optim.optim._refresh import agreed


def test_hessian_operators_are_curvatures_and_dense_ones_are_not(generator):
    model, loss_fn, data = make_case("mlp", generator)
    assert isinstance(HessianOperator(model, loss_fn, data), Curvature)
    assert not isinstance(DenseOperator(torch.eye(3, dtype=torch.float64)), Curvature)


@pytest.mark.parametrize(
    "settings",
    [
        {"memory_budget": 2**22},
        {"max_block_size": 2},
        {"cache_graph": False},
        {"cache_graph": True, "chunk_size": 5},
        {"method": "func", "train": False},
    ],
)
def test_extended_keeps_every_setting(settings, generator):
    model, loss_fn, data = make_case("mlp", generator)
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    op = HessianOperator(model, loss_fn, data, params=first, **settings)
    wider = op.extended([*first, *second])
    assert type(wider) is HessianOperator and wider is not op
    assert [id(p) for p in wider.params] == [id(p) for p in model.parameters()]
    for name in ("chunk_size", "method", "train", "max_block_size", "memory_budget"):
        assert getattr(wider, name) == getattr(op, name), name
    assert wider.caches_graph == op.caches_graph
    assert wider.block_size == op.block_size or settings.get("memory_budget")
    assert [id(p) for p in op.params] == [id(p) for p in first]  # the original is unchanged
    full = HessianOperator(model, loss_fn, data)
    V = torch.randn(full.shape[0], 3, generator=generator, dtype=torch.float64)
    assert torch.allclose(wider @ V, full @ V, rtol=1e-12, atol=1e-12)


def test_extended_refuses_a_subset_before_building(generator):
    model, loss_fn, data = make_case("mlp", generator)
    op = HessianOperator(model, loss_fn, data)
    with pytest.raises(ValueError, match="superset"):
        op.extended(list(model.parameters())[:1])
    with pytest.raises(ValueError, match="not a parameter of the model"):
        op.extended([*op.params, torch.zeros(3, requires_grad=True)])


def test_solve_scope_frees_the_cached_graph_on_exit_and_on_error(generator):
    model, loss_fn, data = make_case("mlp", generator)
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    op = HessianOperator(model, loss_fn, data, check=False)  # the self-check's passes aside
    v = torch.randn(op.shape[0], generator=generator, dtype=torch.float64)
    with op.solve_scope():
        op @ v
        op @ v
    assert calls[0] == 1  # one graph for the whole scope
    op @ v
    assert calls[0] == 2  # rebuilt: the scope freed it
    with pytest.raises(KeyError), op.solve_scope():
        op @ v
        raise KeyError("a solver bug")
    op @ v
    assert calls[0] == 3  # freed on the error too (the scope reused the graph of the 2nd pass)


def test_agree_is_the_identity_in_one_process(generator):
    op = DenseOperator.from_spectrum(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    result = so.Eigh().solve(op, 2)
    assert op.agree_tensors(result.eigenvalues)[0] is result.eigenvalues
    assert agreed(op, result) is result
