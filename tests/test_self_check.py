"""The operators' self-check at construction: a wrong loss_fn, wrong input dtypes and a
summed reduction are refused with what to do; a random operator is reported; the check
moves no state and costs no counted product."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import subspace_optim as so
from subspace_optim import CurvatureCheckWarning, HessianOperator


@pytest.fixture
def data(generator):
    X = torch.randn(32, 6, generator=generator)
    Y = torch.randn(32, 3, generator=generator)
    labels = torch.randint(0, 3, (32,), generator=generator)
    return X, Y, labels


def mlp(*middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)  # module initialization only
    return nn.Sequential(nn.Linear(6, 8), *middle, nn.Tanh(), nn.Linear(8, 3))


def quiet(*args, **kwargs) -> HessianOperator:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CurvatureCheckWarning)
        return HessianOperator(*args, **kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda X, Y, labels: (mlp(), nn.MSELoss(), (X, Y)),
        lambda X, Y, labels: (mlp(), nn.CrossEntropyLoss(), (X, labels)),
        lambda X, Y, labels: (mlp(nn.BatchNorm1d(8)).train(), nn.MSELoss(), (X, Y)),
        lambda X, Y, labels: (
            mlp(nn.LayerNorm(8)),
            nn.MSELoss(),
            [(X[:20], Y[:20]), (X[20:], Y[20:])],
        ),
        lambda X, Y, labels: (
            mlp(),
            nn.MSELoss(),
            torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(X, Y), batch_size=8, shuffle=True
            ),
        ),
    ],
    ids=[
        "mse",
        "cross_entropy",
        "batchnorm_train",
        "layernorm_batches",
        "shuffled_loader_full_pass",
    ],
)
def test_sound_operators_pass_silently_and_untouched(make, data):
    model, loss_fn, batches = make(*data)
    before = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    rng = torch.get_rng_state()
    op = quiet(model, loss_fn, batches)
    assert op.num_matvecs == 0 and op._graph is None
    assert all(torch.equal(a, b) for a, b in zip(before, (*model.parameters(), *model.buffers())))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(
    "loss_fn",
    [lambda out, y: ((out - y) ** 2).sum(), nn.MSELoss(reduction="sum")],
    ids=["written_sum", "mse_sum"],
)
def test_a_summed_loss_is_refused_with_the_fix(loss_fn, data):
    X, Y, _ = data
    with pytest.raises(ValueError, match=r"sums over the batch.*reduction='mean'"):
        HessianOperator(mlp(), loss_fn, (X, Y))
    assert HessianOperator(mlp(), loss_fn, (X, Y), check=False).num_matvecs == 0


def test_a_wrong_loss_signature_is_refused_at_construction(data):
    X, Y, _ = data
    with pytest.raises(TypeError, match=r"loss_fn\(outputs, targets\) failed on the first"):
        HessianOperator(mlp(), lambda out: out.mean(), (X, Y))
    with pytest.raises(ValueError, match="must return a scalar"):
        HessianOperator(mlp(), nn.MSELoss(reduction="none"), (X, Y))
    with pytest.raises(RuntimeError, match=r"loss_fn.*failed on the first micro-batch"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), (X, Y[:, :2]))


def test_wrong_input_dtypes_are_refused_with_the_conversion(data):
    X, Y, _ = data
    with pytest.raises(
        RuntimeError, match=r"model failed on the first micro-batch.*\.to\(torch\.float32\)"
    ):
        HessianOperator(mlp(), nn.MSELoss(), (X.double(), Y))


@pytest.mark.parametrize("source", ["dropout", "dropping_loader"])
def test_a_random_operator_is_reported(source, data):
    X, Y, _ = data
    if source == "dropout":
        model, batches = mlp(nn.Dropout(0.3)).train(), (X, Y)
    else:
        dataset = torch.utils.data.TensorDataset(X, Y)
        loader = torch.utils.data.DataLoader(dataset, batch_size=10, shuffle=True, drop_last=True)
        model, batches = mlp(), loader
    with pytest.warns(CurvatureCheckWarning, match="differ by"):
        HessianOperator(model, nn.MSELoss(), batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CurvatureCheckWarning)
        HessianOperator(model, nn.MSELoss(), batches, check=False)
    if source == "dropout":  # evaluated in eval mode, the same model is a fixed matrix
        quiet(model, nn.MSELoss(), batches, train=False)


def test_extended_keeps_the_check_setting(data):
    X, Y, _ = data
    model = mlp()
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    op = HessianOperator(
        model, lambda out, y: ((out - y) ** 2).sum(), (X, Y), params=first, check=False
    )
    assert op.extended([*first, *rest]).check is False
    assert so.HessianOperator(model, nn.MSELoss(), (X, Y)).check is True
