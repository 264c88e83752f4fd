"""Micro-batch weighting and the curvature operators' products, at their edges (issue 26).

Each test kills mutants of the mutation run (``python -m benchmarks.mutation``,
``docs/mutation.md``) in ``operators/_data.py``, ``_model_operator.py`` and the three
operators: a batch of one example, an empty batch between two others, a chunk exactly the
size of a batch, chunks of unequal size, tuple and dict inputs split into chunks, and
sub-blocks of a wide block. The reference is always the same operator over the whole data
as one batch: weighting micro-batches by their number of examples must make the split
invisible.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subspace_optim import GGNOperator, GradientCovarianceOperator, HessianOperator
from subspace_optim.operators._data import batch_size, micro_batches, num_micro_batches

F64 = torch.float64
CPU = torch.device("cpu")


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out - target) ** 2).mean()


class TwoInputs(nn.Module):
    """An asymmetric model of two inputs, so that swapped or mispaired pieces show."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(2, 2)

    def forward(self, features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(features)) * (1 + self.b(scale))


def mlp_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    X, Y = torch.randn(15, 3, generator=g, dtype=F64), torch.randn(15, 2, generator=g, dtype=F64)
    return model, X, Y


def uneven(X: torch.Tensor, Y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of 7, 1, 0 and 7 examples."""
    cuts = [(0, 7), (7, 8), (8, 8), (8, 15)]
    return [(X[a:b], Y[a:b]) for a, b in cuts]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def dense_reference(name: str, model: nn.Module, X: torch.Tensor, Y: torch.Tensor):
    """The operator as a dense matrix, from torch.autograd.functional over the flat
    parameters of the whole data (no operator code involved)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat: torch.Tensor) -> torch.Tensor:
        state = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        return torch.func.functional_call(model, state, (X,))

    if name == "hessian":
        return torch.autograd.functional.hessian(lambda t: mse(f(t), Y), theta)
    if name == "ggn":  # mse is the mean over N·d entries: its output Hessian is 2/(N·d)·I
        J = torch.autograd.functional.jacobian(lambda t: f(t).reshape(-1), theta)
        return 2 * J.T @ J / J.shape[0]
    G = torch.autograd.functional.jacobian(lambda t: ((f(t) - Y) ** 2).mean(1), theta)
    D = G - G.mean(0) if name == "covariance" else G
    return D.T @ D / G.shape[0]


OPERATORS = {
    "hessian": lambda model, data, **kw: HessianOperator(model, mse, data, **kw),
    "ggn": lambda model, data, **kw: GGNOperator(model, mse, data, **kw),
    "covariance": lambda model, data, **kw: GradientCovarianceOperator(model, mse, data, **kw),
    "fisher": lambda model, data, **kw: GradientCovarianceOperator(
        model, mse, data, centered=False, **kw
    ),
}


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize(
    ("method", "chunk_size", "cache_graph"),
    [
        ("autograd", None, True),
        ("autograd", 7, False),
        ("autograd", 3, True),
        ("func", 5, None),
    ],
)
def test_unequal_micro_batches_are_weighted_by_their_examples(
    name: str, method: str, chunk_size: int | None, cache_graph: bool | None
) -> None:
    """Batches of 7, 1, 0 and 7 examples, chunks of the batch's size or of unequal sizes,
    sub-blocks of 2 columns: the products, the loss and its gradient equal those over the
    whole data as one batch."""
    model, X, Y = mlp_case()
    whole = OPERATORS[name](model, (X, Y))
    split = OPERATORS[name](
        model,
        uneven(X, Y),
        method=method,
        chunk_size=chunk_size,
        cache_graph=cache_graph,
        max_block_size=2,
    )
    V = torch.randn(whole.shape[0], 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = dense_reference(name, model, X, Y) @ V
    assert rel(whole.matmat(V), ref) < 1e-10
    out = split.matmat(V)
    assert out.shape == V.shape and rel(out, ref) < 1e-10
    assert rel(split.matvec(V[:, 0]), ref[:, 0]) < 1e-10
    loss, grad = split.loss_and_grad()
    ref_loss = mse(model(X), Y)
    ref_grad = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(ref_loss, list(model.parameters()))]
    )
    assert torch.allclose(loss, ref_loss.detach(), rtol=1e-12, atol=0)
    assert grad.shape == ref_grad.shape and rel(grad, ref_grad) < 1e-10


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("inputs", ["tuple", "dict"])
def test_tuple_and_dict_inputs_split_into_chunks(name: str, inputs: str) -> None:
    """Inputs of several tensors are cut into chunks together, each piece with its own
    targets and keys: the chunked operator equals the unchunked one."""
    g = torch.Generator().manual_seed(2)
    model = TwoInputs().double()
    F, S = torch.randn(11, 3, generator=g, dtype=F64), torch.randn(11, 2, generator=g, dtype=F64)
    Y = torch.randn(11, 2, generator=g, dtype=F64)
    x = (F, S) if inputs == "tuple" else {"scale": S, "features": F}
    whole = OPERATORS[name](model, (x, Y))
    split = OPERATORS[name](model, [(x, Y)], chunk_size=4, cache_graph=False)
    V = torch.randn(whole.shape[0], 3, generator=g, dtype=F64)
    assert rel(split.matmat(V), whole.matmat(V)) < 1e-10


def test_micro_batch_helpers_by_hand() -> None:
    """The helpers the operators weight with: examples per batch, micro-batches per pass
    and what each pass yields (an empty batch skipped, never the end of the pass)."""
    X, Y = torch.arange(30.0).view(15, 2), torch.arange(15.0)
    data = [(X[:5], Y[:5]), (X[5:5], Y[5:5]), (X[5:6], Y[5:6]), (X[6:], Y[6:])]
    assert [batch_size(x) for x, _ in data] == [5, 0, 1, 9]
    assert batch_size((X[:4], X[:4, :1])) == 4 and batch_size({"a": X[:3]}) == 3
    assert batch_size(torch.tensor(1.0)) == 0  # a 0-dim input holds no examples
    assert num_micro_batches(data, None) == 3
    assert num_micro_batches(data, 5) == 1 + 1 + 2
    assert num_micro_batches(data, 4) == 2 + 1 + 3
    got = [(x.shape[0], y.tolist(), m) for x, y, m in micro_batches(data, 5, CPU)]
    assert got == [
        (5, [0.0, 1.0, 2.0, 3.0, 4.0], 5),
        (1, [5.0], 1),
        (5, [6.0, 7.0, 8.0, 9.0, 10.0], 5),
        (4, [11.0, 12.0, 13.0, 14.0], 4),
    ]
    assert [m for _, _, m in micro_batches(data, None, CPU)] == [5, 1, 9]
    pieces = list(micro_batches([((X[:5], X[:5] + 100), Y[:5])], 2, CPU))
    assert [type(x) for x, _, _ in pieces] == [tuple] * 3
    assert all(torch.equal(b - 100, a) for (a, b), _, _ in pieces)
    assert [y.tolist() for _, y, _ in pieces] == [[0.0, 1.0], [2.0, 3.0], [4.0]]
    keyed = list(micro_batches([({"a": X[:5], "b": X[:5] + 100}, Y[:5])], 3, CPU))
    assert [sorted(x) for x, _, _ in keyed] == [["a", "b"], ["a", "b"]]
    assert all(torch.equal(x["b"] - 100, x["a"]) for x, _, _ in keyed)
    assert [m for _, _, m in keyed] == [3, 2]


class WithUnused(nn.Module):
    """An MLP with a parameter that never reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        self.unused = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("method", ["autograd", "func"])
def test_a_parameter_the_loss_never_reads_has_zero_rows(name: str, method: str) -> None:
    """The rows and columns of a parameter that never reaches the loss are zero, and the
    rest is the operator over the other parameters."""
    g = torch.Generator().manual_seed(3)
    model = WithUnused().double()
    X, Y = torch.randn(9, 3, generator=g, dtype=F64), torch.randn(9, 2, generator=g, dtype=F64)
    cache = {"cache_graph": True} if method == "autograd" else {}  # the cached gradient too
    full = OPERATORS[name](model, (X, Y), method=method, chunk_size=4, **cache)
    used = OPERATORS[name](model, (X, Y), params=list(model.net.parameters()))
    V = torch.randn(full.shape[0], 3, generator=g, dtype=F64)
    out = full.matmat(V)
    # model.parameters() lists the module's own parameter (unused) before its children's
    assert next(iter(model.parameters())) is model.unused
    u = model.unused.numel()
    assert torch.equal(out[:u], torch.zeros_like(out[:u]))
    assert rel(out[u:], used.matmat(V[u:])) < 1e-10
    # the gradient too: zero for the unused parameter, the rest as without it
    loss, grad = full.loss_and_grad()
    want_loss, want_grad = used.loss_and_grad()
    assert torch.equal(grad[:u], torch.zeros_like(grad[:u]))
    assert rel(grad[u:], want_grad) < 1e-12 and abs(float(loss - want_loss)) < 1e-14


def test_a_product_without_keep_frees_the_graph_and_with_keep_holds_it() -> None:
    """``graph_hvp(keep=False)`` lets go of the micro-batch's graph after its last column
    (peak memory), ``keep=True`` holds it for the next product (the graph cache)."""
    from subspace_optim.operators._hvp import build_chunk_graph, graph_hvp

    model, X, Y = mlp_case()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    V = torch.randn(n, 2, generator=torch.Generator().manual_seed(4), dtype=F64)

    def loss_of(leaves):
        out = torch.func.functional_call(
            model, dict(zip([k for k, _ in model.named_parameters()], leaves)), (X,)
        )
        return mse(out, Y)

    kept = build_chunk_graph(loss_of, params, 15)
    first = graph_hvp(kept, V, params, keep=True)
    assert torch.equal(graph_hvp(kept, V, params, keep=True), first)
    freed = build_chunk_graph(loss_of, params, 15)
    assert torch.equal(graph_hvp(freed, V, params, keep=False), first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        graph_hvp(freed, V, params, keep=False)


class CheckedReduction:
    """The one-process reduction, checking the ``Reduction`` protocol's contract that a
    single process cannot otherwise see: ``local()`` returns ``size`` numbers, and a
    product passes its input block (a data-parallel reduction sizes its all-reduce buffer
    by ``size`` and compares the block's checksum across ranks)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.blocks: list[torch.Tensor | None] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def sum(self, local, size: int, V: torch.Tensor | None):
        def checked():
            total, count = local()
            assert total.numel() == size, (total.shape, size)
            return total, count

        self.blocks.append(V)
        return self.inner.sum(checked, size, V)


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("cache_graph", [True, False])
def test_the_reduction_gets_the_size_of_the_local_sums_and_the_block(
    name: str, cache_graph: bool
) -> None:
    """Products and the gradient hand their reduction the number of numbers they sum (the
    centred covariance one column more than the block) and, for a product, the block."""
    model, X, Y = mlp_case()
    op = OPERATORS[name](model, (X, Y), cache_graph=cache_graph)
    op.reduction = CheckedReduction(op.reduction)
    V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    out = op.matmat(V)
    assert rel(out, dense_reference(name, model, X, Y) @ V) < 1e-10
    assert len(op.reduction.blocks) == 1 and torch.equal(op.reduction.blocks[0], V)
    op.loss_and_grad()
    assert op.reduction.blocks[1] is None


@pytest.mark.parametrize("name", list(OPERATORS))
def test_sub_blocks_make_one_pass_over_the_data_each(name: str) -> None:
    """Without the graph cache, a product of 5 columns in sub-blocks of 2 runs the model
    once per micro-batch for each of its 3 passes (the memory a budget buys)."""
    model, X, Y = mlp_case()
    op = OPERATORS[name](model, (X, Y), chunk_size=5, cache_graph=False, max_block_size=2)
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        op.matmat(
            torch.randn(op.shape[0], 5, generator=torch.Generator().manual_seed(6), dtype=F64)
        )
    finally:
        hook.remove()
    # 3 passes (columns 0-1, 2-3, 4) of 3 micro-batches (15 examples in chunks of 5), and
    # for the centred covariance one more pass for the mean gradient
    passes = 3 + (name == "covariance")
    assert len(calls) == passes * 3


def test_a_model_output_that_ignores_the_parameters_has_a_zero_jacobian() -> None:
    """The output graph of the GGN and the covariance when ``z`` does not depend on the
    parameters (J = 0), and when it depends on one leaf of two: the zero columns and rows
    come back with the right shapes and dtypes, and the graph holds what the products read."""
    from subspace_optim.operators._jacobian import build_output_graph, graph_jvp, graph_vjp

    g = torch.Generator().manual_seed(7)
    a = torch.randn(3, dtype=F64, generator=g, requires_grad=True)
    b = torch.randn(2, dtype=F64, generator=g, requires_grad=True)
    x = torch.randn(4, 3, dtype=F64, generator=g)
    const = build_output_graph(lambda leaves: x.sum(1), [a, b], 4)
    assert const.leaves == [a, b] and const.count == 4 and const.live == []
    assert torch.equal(const.z, x.sum(1)) and const.jt == (None, None)
    assert torch.equal(const.u, torch.zeros(4, dtype=F64)) and const.u.requires_grad
    w = torch.randn(4, dtype=F64, generator=g)
    assert torch.equal(graph_jvp(const, [torch.ones(3, dtype=F64), torch.ones(2, dtype=F64)]),
                       torch.zeros(4, dtype=F64))  # fmt: skip
    zero = graph_vjp(const, w, [a, b])
    assert zero.shape == (5,) and zero.dtype == F64 and not zero.any()
    # z reads a only: J^T w has zero rows for b, and J v ignores v's piece for b
    half = build_output_graph(lambda leaves: x @ leaves[0], [a, b], 4)
    assert half.live == [0]
    vjp = graph_vjp(half, w, [a, b])
    assert torch.allclose(vjp[:3], x.T @ w, rtol=1e-12) and not vjp[3:].any()
    v = [torch.randn(3, dtype=F64, generator=g), torch.randn(2, dtype=F64, generator=g)]
    assert torch.allclose(graph_jvp(half, v), x @ v[0], rtol=1e-12)


def test_a_bad_batch_is_named_by_its_index() -> None:
    """Splitting data into micro-batches names the batch at fault."""
    X, Y = torch.zeros(4, 3), torch.zeros(4, 2)
    data = [(X, Y), (X, Y[:3])]
    with pytest.raises(ValueError, match=r"^batch 1: inputs hold 4 examples but targets hold 3"):
        list(micro_batches(data, 2, CPU))
    with pytest.raises(ValueError, match=r"^batch 1: inputs hold 4 examples but targets hold 3"):
        num_micro_batches(data, 2)


def test_func_hvp_failure_names_the_way_out() -> None:
    """``method="func"`` on a loss torch.func cannot transform (``F.mse_loss`` in torch 2.13)
    fails at construction with a message that ends with the way out."""
    model = nn.Linear(3, 2).double()
    X, Y = torch.randn(5, 3, dtype=F64), torch.randn(5, 2, dtype=F64)
    with pytest.raises(
        RuntimeError,
        match=r"Use method='autograd' \(the default\), which supports every model "
        r"\(in torch 2\.13, F\.mse_loss breaks forward-over-reverse\)\.$",
    ):
        HessianOperator(model, nn.functional.mse_loss, (X, Y), method="func")
