"""Inputs as a dict of tensors (``model(**inputs)``, the Hugging Face shape) in the
curvature operators, and whole-dict batches refused with what to do."""

from __future__ import annotations

import pytest
import torch
from test_hessian_operator import dense_references, rel
from torch import nn

import subspace_optim as so


class KeywordModel(nn.Module):
    """Takes its inputs by keyword, with a mask that zeroes some features."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(features * mask)))


class PositionalModel(KeywordModel):
    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().forward(features, mask)


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out - target) ** 2).mean()


def make_data(generator: torch.Generator):
    X = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    M = (torch.rand(12, 4, generator=generator) > 0.3).double()
    Y = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    return X, M, Y


@pytest.mark.parametrize("method", ["autograd", "func"])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_dict_inputs_match_tuple_inputs_and_the_dense_reference(method, chunk_size, generator):
    model = KeywordModel().double()
    X, M, Y = make_data(generator)
    by_name = so.HessianOperator(
        model, mse, [({"features": X, "mask": M}, Y)], method=method, chunk_size=chunk_size
    )
    by_position = so.HessianOperator(model, mse, ((X, M), Y))
    H = by_name.to_dense()
    assert rel(H, by_position.to_dense()) < 1e-12

    params = list(model.parameters())
    wrapped = nn.Module()  # the reference's flat loss calls model(x): feed it the pair
    wrapped.inner = model
    wrapped.forward = lambda pair: model(*pair)  # type: ignore[method-assign]
    H1, _ = dense_references(wrapped, mse, [((X, M), Y)], params)
    assert rel(H, H1) < 1e-10
    loss, _ = by_name.loss_and_grad()
    assert torch.allclose(loss, mse(model(features=X, mask=M), Y))


def test_a_whole_dict_batch_is_refused_with_the_mapping_to_use(generator):
    model = KeywordModel().double()
    X, M, Y = make_data(generator)
    batches = [{"features": X, "mask": M, "labels": Y}]
    with pytest.raises(TypeError, match=r"batch 0 of data is a dict .*labels.*model\(\*\*inputs\)"):
        so.HessianOperator(model, mse, batches)


def test_a_dict_with_a_non_tensor_value_is_refused(generator):
    model = KeywordModel().double()
    X, _, Y = make_data(generator)
    with pytest.raises(TypeError, match="dict of Tensors"):
        so.HessianOperator(model, mse, [({"features": X, "mask": 1.0}, Y)])
