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


class Asymmetric(nn.Module):
    """``forward(features, mask, *, scale=None)``: swapping ``features`` and ``mask`` (both
    ``(m, 4)``) changes the outputs, and ``scale`` can only be passed by keyword."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(4, 3, generator=generator, dtype=torch.float64))
        self.head = nn.Linear(3, 2).double()

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, *, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = torch.tanh(features @ self.W + 0.5 * mask.sum(-1, keepdim=True))
        return self.head(z if scale is None else z * scale)


class InOrder(nn.Module):
    """The tuple-input reference: takes every input by position, hands ``scale`` on by
    keyword (same parameters, same flat order)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, features, mask, scale=None):
        return (
            self.inner(features, mask) if scale is None else self.inner(features, mask, scale=scale)
        )


def asymmetric_data(generator: torch.Generator):
    X = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    M = (torch.rand(12, 4, generator=generator) > 0.3).double()
    S = torch.rand(12, 1, generator=generator, dtype=torch.float64) + 0.5
    Y = torch.randn(12, 2, generator=generator, dtype=torch.float64)
    return X, M, S, Y


@pytest.mark.parametrize("method", ["autograd", "func"])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_dict_inputs_reach_the_model_by_keyword_in_any_order(method, chunk_size, generator):
    """Keys out of the signature's order: passing the values by position would compute the
    Hessian of ``mask @ W + 3·features.sum`` instead, silently."""
    model = Asymmetric(generator)
    X, M, _, Y = asymmetric_data(generator)
    inputs = {"mask": M, "features": X}  # not forward's order
    by_name = so.HessianOperator(model, mse, [(inputs, Y)], method=method, chunk_size=chunk_size)
    by_position = so.HessianOperator(InOrder(model), mse, ((X, M), Y))
    H = by_name.to_dense()
    assert rel(H, by_position.to_dense()) < 1e-12
    swapped = so.HessianOperator(InOrder(model), mse, ((M, X), Y)).to_dense()
    assert rel(swapped, H) > 0.1  # the order matters: this test sees a positional call
    loss, _ = by_name.loss_and_grad()
    assert torch.allclose(loss, mse(model(mask=M, features=X), Y))


@pytest.mark.parametrize("curvature", [so.HessianOperator, so.GGNOperator])
def test_a_keyword_only_input_reaches_the_model(curvature, generator):
    model = Asymmetric(generator)
    X, M, S, Y = asymmetric_data(generator)
    by_name = curvature(model, mse, [({"scale": S, "mask": M, "features": X}, Y)], chunk_size=5)
    by_position = curvature(InOrder(model), mse, ((X, M, S), Y), chunk_size=5)
    assert rel(by_name.to_dense(), by_position.to_dense()) < 1e-12
