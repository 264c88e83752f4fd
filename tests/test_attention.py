"""Hessian products through attention: fused SDPA kernels have no double backward.

The operator runs its passes under the math attention kernel, so a Transformer works with
no action from the user. The dense references are built two independent ways: reverse over
reverse (``torch.autograd.functional.hessian``, under the math kernel too) and central
finite differences of the gradient, which need no double backward at all
(``torch.func.hessian`` is avoided: wrong on LayerNorm models in torch 2.13).
"""

from __future__ import annotations

import pytest
import torch
from test_hessian_operator import _flat_loss, rel
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import subspace_optim as so
from subspace_optim import HessianOperator


class TinyTransformer(nn.Module):
    """Token embedding, one encoder layer (attention + LayerNorm), mean pooling, a head."""

    def __init__(self, vocab: int = 7, width: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=6, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - target) ** 2).sum(dim=1).mean()


def make_transformer(generator: torch.Generator, *, train: bool):
    torch.manual_seed(0)  # module initialization only; the data uses the fixture generator
    model = TinyTransformer().double().train(train)
    X = torch.randint(0, 7, (6, 5), generator=generator)
    Y = nn.functional.one_hot(torch.randint(0, 2, (6,), generator=generator), 2).double()
    return model, (X, Y)


def dense_by_two_ways(model, data):
    params = [p for p in model.parameters() if p.requires_grad]
    f = _flat_loss(model, half_mse, [data], params)
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    with sdpa_kernel(SDPBackend.MATH):
        H_rr = torch.autograd.functional.hessian(f, theta)

    def grad(flat: torch.Tensor) -> torch.Tensor:
        flat = flat.detach().requires_grad_(True)
        return torch.autograd.grad(f(flat), flat)[0]

    eps = 1e-5
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    H_fd = torch.stack([(grad(theta + eps * e) - grad(theta - eps * e)) / (2 * eps) for e in eye])
    return H_rr, H_fd


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("method", ["autograd", "func"])
def test_transformer_products_match_dense_references(train, method, generator):
    model, data = make_transformer(generator, train=train)
    H_rr, H_fd = dense_by_two_ways(model, data)
    assert rel(H_fd, H_rr) < 1e-6, "the two references disagree"
    op = HessianOperator(model, half_mse, data, method=method)
    H = op.to_dense()
    assert rel(H, H_rr) < 1e-9
    assert rel(H, H.T) < 1e-10


def test_attention_products_ignore_the_callers_kernel_choice(generator):
    # a caller that asked for the fused kernels (the CPU default) still gets products
    model, data = make_transformer(generator, train=True)
    op = HessianOperator(model, half_mse, data)
    v = torch.randn(op.shape[0], generator=generator, dtype=torch.float64)
    reference = op @ v
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        assert torch.equal(op @ v, reference)
    # and the caller's setting is back afterwards: the fused kernel refuses double backward
    q = torch.randn(1, 2, 4, 8, dtype=torch.float32, requires_grad=True)
    out = nn.functional.scaled_dot_product_attention(q, q, q)
    (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative"):
        torch.autograd.grad(g.sum(), q)


def test_a_refresh_through_attention_trains(generator):
    model, (X, Y) = make_transformer(generator, train=True)
    op = HessianOperator(model, half_mse, (X, Y))
    base = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = so.SubspaceProjectedOptimizer(base, op, k=2, mode="bulk")
    for _ in range(3):
        opt.zero_grad()
        half_mse(model(X), Y).backward()
        opt.step()
    assert opt.counters["refreshes"] == 3 and opt.counters["faults"] == 0
    assert torch.isfinite(opt.eigenvalues).all()


class _FusedTanh(torch.autograd.Function):
    """tanh with a backward that has no derivative of its own, like a fused attention kernel."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (y,) = ctx.saved_tensors
        return _FusedTanhBackward.apply(grad, y)


class _FusedTanhBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, y):  # type: ignore[no-untyped-def]
        return grad * (1 - y * y)

    @staticmethod
    def backward(ctx, *_):  # type: ignore[no-untyped-def]
        raise RuntimeError("derivative for fused_tanh_backward is not implemented")


class Switchable(nn.Module):
    """An MLP whose activation has no double backward until ``fused`` is switched off."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 4)
        self.outer = nn.Linear(4, 2)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        return self.outer(_FusedTanh.apply(h) if self.fused else torch.tanh(h))


def test_a_failed_product_leaves_no_cached_graph(generator):
    model = Switchable().double()
    X = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    Y = torch.randn(8, 2, generator=generator, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="fused_tanh_backward"):
        HessianOperator(model, half_mse, (X, Y))  # the self-check's products find it
    op = HessianOperator(model, half_mse, (X, Y), check=False)
    assert op.caches_graph
    v = torch.randn(op.shape[0], generator=generator, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="fused_tanh_backward"):
        op @ v
    # the same parameters, buffers, modes and data: only a graph kept from the failed call
    # could be reused here, and it would fail again
    model.fused = False
    reference = HessianOperator(model, half_mse, (X, Y), cache_graph=False) @ v
    assert torch.equal(op @ v, reference)
