"""HessianOperator's gradient-graph cache: same products, fewer forward passes, never stale."""

from __future__ import annotations

import pytest
import torch
from conftest import CASES, make_case
from test_hessian_operator import dense_references, rel
from torch import nn

import subspace_optim as so
from subspace_optim import HessianOperator


def count_forwards(model: nn.Module) -> list[int]:
    """A counter of the model's forward calls (functional_call runs the hooks too)."""
    calls = [0]

    def hook(*_):  # type: ignore[no-untyped-def]
        calls[0] += 1

    model.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("case", CASES)
def test_cached_products_equal_fresh_ones_and_the_dense_reference(case, generator):
    model, loss_fn, (X, Y) = make_case(case, generator)
    # two batches: the cache holds one graph per micro-batch (opted in with True)
    data = [(X[:12], Y[:12]), (X[12:], Y[12:])]
    cached = HessianOperator(model, loss_fn, data, cache_graph=True)
    fresh = HessianOperator(model, loss_fn, data, cache_graph=False)
    assert cached.caches_graph and not fresh.caches_graph
    V = torch.randn(cached.shape[0], 4, generator=generator, dtype=torch.float64)
    for _ in range(2):  # the second product runs on the cached graph
        assert torch.equal(cached @ V, fresh @ V)
        assert torch.equal(cached @ V[:, 0], fresh @ V[:, 0])
    if case != "batchnorm_train":  # batch statistics are per batch: no one-batch reference
        params = [p for p in model.parameters() if p.requires_grad]
        H1, _ = dense_references(model, loss_fn, data, params)
        assert rel(cached.to_dense(), H1) < 1e-10


def test_one_forward_pass_per_point_and_a_rebuild_after_each_step(generator):
    model, loss_fn, data = make_case("mlp", generator)
    calls = count_forwards(model)
    op = HessianOperator(model, loss_fn, data, check=False)  # the self-check's passes aside
    assert op.caches_graph  # one in-memory micro-batch: cached by default
    V = torch.randn(op.shape[0], 3, generator=generator, dtype=torch.float64)
    first = op @ V
    op @ V
    op.matvec(V[:, 0])
    loss, grad = op.loss_and_grad()  # from the cached graph as well
    assert calls[0] == 1
    reference = HessianOperator(model, loss_fn, data, cache_graph=False)
    ref_loss, ref_grad = reference.loss_and_grad()
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)

    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    sgd.zero_grad()
    loss_fn(model(data[0]), data[1]).backward()
    sgd.step()  # in place: the parameters' version counters move
    calls[0] = 0
    after = op @ V
    assert calls[0] == 1
    assert not torch.equal(after, first)
    assert torch.equal(after, reference @ V)

    with op.solve_scope():  # an empty scope frees the cached graph
        pass
    calls[0] = 0
    op @ V
    assert calls[0] == 1


class Scaled(nn.Module):
    """An MLP whose forward reads a registered buffer that is not a running statistic."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * self.scale)


def build_case(case, generator):  # type: ignore[no-untyped-def]
    """:func:`conftest.make_case`, plus ``"buffer"``: :class:`Scaled` in float64."""
    if case != "buffer":
        return make_case(case, generator)
    model, loss_fn, (X, Y) = make_case("mlp", generator)
    scaled = Scaled().double()
    scaled.body.load_state_dict(model.state_dict())
    return scaled, loss_fn, (X, Y)


def _mutations():  # type: ignore[no-untyped-def]
    """(case, change) pairs: each change alters the loss without an optimizer step, one per
    kind of state the loss reads: parameters, buffers, modes, the data."""

    # parameters
    def param_in_place(model, data):  # version counter
        with torch.no_grad():
            next(model.parameters()).mul_(1.5)

    def new_storage(model, data):  # p.data = ... swaps the storage
        p = next(model.parameters())
        p.data = p.data * 1.5

    def load_state(model, data):
        state = {k: v * 0.9 for k, v in model.state_dict().items()}
        model.load_state_dict(state)

    def frozen_param(model, data):  # read by the forward, but not a variable of the operator
        with torch.no_grad():
            model[0].bias.add_(0.5)

    frozen_param.freeze = lambda model: model[0].bias.requires_grad_(False)  # type: ignore[attr-defined]

    def param_data_in_place(model, data):  # through .data: the version counter stays put
        next(model.parameters()).data.mul_(1.5)

    # buffers
    def running_stats(model, data):  # eval-mode BatchNorm reads its running statistics
        with torch.no_grad():
            model[1].running_var.mul_(2.0)

    def buffer_in_place(model, data):  # a buffer the forward reads, changed in place
        with torch.no_grad():
            model.scale.mul_(2.0)

    def buffer_reassigned(model, data):  # a buffer the forward reads, replaced
        model.scale = model.scale * 2.0

    # modes
    def mode(model, data):  # train=None: BatchNorm switches to batch statistics
        model.train()

    def submodule_mode(model, data):  # one submodule switched, the root left as it was
        model[1].eval()

    # the data
    def data_in_place(model, data):
        with torch.no_grad():
            data[0].mul_(0.5)

    def targets_in_place(model, data):
        with torch.no_grad():
            data[1].add_(1.0)

    return [
        ("mlp", param_in_place),
        ("mlp", new_storage),
        ("layernorm", load_state),
        pytest.param(
            "mlp",
            frozen_param,
            marks=(),
        ),
        ("mlp", param_data_in_place),
        ("batchnorm_eval", running_stats),
        ("buffer", buffer_in_place),
        ("buffer", buffer_reassigned),
        ("batchnorm_eval", mode),
        ("batchnorm_train", submodule_mode),
        ("cnn", data_in_place),
        ("mlp", targets_in_place),
    ]


@pytest.mark.parametrize(("case", "change"), _mutations(), ids=lambda m: getattr(m, "__name__", m))
def test_the_cache_follows_every_change_of_what_the_loss_reads(case, change, generator):
    model, loss_fn, data = build_case(case, generator)
    getattr(change, "freeze", lambda model: None)(model)
    op = HessianOperator(model, loss_fn, data)
    assert op.caches_graph
    V = torch.randn(op.shape[0], 2, generator=generator, dtype=torch.float64)
    before = op @ V
    change(model, data)
    fresh = HessianOperator(model, loss_fn, data, cache_graph=False) @ V
    assert not torch.equal(fresh, before), "the change should alter the Hessian"
    assert torch.equal(op @ V, fresh)


def test_dropout_draws_its_masks_once_per_cached_graph(generator):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)).double()
    X = torch.randn(16, 4, generator=generator, dtype=torch.float64)
    Y = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    op = HessianOperator(model, nn.MSELoss(), (X, Y), train=True, check=False)  # random
    H = op.to_dense()
    assert torch.equal(H, op.to_dense())  # one matrix per point: the masks are fixed
    assert rel(H, H.T) < 1e-12  # and it is symmetric


def test_auto_rule_and_bad_values(generator):
    model, loss_fn, (X, Y) = make_case("mlp", generator)
    assert HessianOperator(model, loss_fn, (X, Y)).caches_graph
    assert HessianOperator(model, loss_fn, [(X, Y)], chunk_size=24).caches_graph
    # more than one micro-batch: caching would hold every micro-batch's graph at once
    assert not HessianOperator(model, loss_fn, (X, Y), chunk_size=6).caches_graph
    assert not HessianOperator(model, loss_fn, [(X[:12], Y[:12]), (X[12:], Y[12:])]).caches_graph
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=24)
    assert not HessianOperator(model, loss_fn, loader).caches_graph
    assert not HessianOperator(model, loss_fn, (X, Y), method="func").caches_graph
    with pytest.raises(ValueError, match="needs data held in memory"):
        HessianOperator(model, loss_fn, loader, cache_graph=True)
    with pytest.raises(ValueError, match="method='autograd'"):
        HessianOperator(model, loss_fn, (X, Y), method="func", cache_graph=True)
    with pytest.raises(TypeError, match="cache_graph must be"):
        HessianOperator(model, loss_fn, (X, Y), cache_graph="yes")


def test_sub_blocks_through_the_cache_equal_the_whole_block(generator):
    model, loss_fn, data = make_case("tied", generator)
    whole = HessianOperator(model, loss_fn, data, cache_graph=False)
    split = HessianOperator(model, loss_fn, data, max_block_size=2)
    assert split.caches_graph and split.block_size == 2
    V = torch.randn(whole.shape[0], 5, generator=generator, dtype=torch.float64)
    assert torch.equal(split @ V, whole @ V)


def test_solves_release_the_graph_when_they_are_over(generator):
    model, loss_fn, data = make_case("mlp", generator)
    op = HessianOperator(model, loss_fn, data)
    so.top_k_eigenpairs(op, 2, generator=generator)
    assert op._graph is None
    base = torch.optim.SGD(model.parameters(), lr=0.01)
    opt = so.SubspaceProjectedOptimizer(base, op, k=2, mode="bulk")
    base.zero_grad()
    loss_fn(model(data[0]), data[1]).backward()
    opt.step()
    assert op._graph is None
    assert opt.counters["refreshes"] == 1


def test_a_cold_retry_rebuilds_a_graph_built_on_a_faulty_forward_pass():
    from scenarios import FAULTS, run_fault

    (case,) = [c for c in FAULTS if c.name.startswith("Inf in the forward pass of a cached")]
    outcome = run_fault(case)
    assert outcome.params_finite and outcome.raised is None
    # the warm solve saw Inf everywhere; the retry rebuilt the graph and succeeded
    assert outcome.counters["cold_restarts"] == 1
    assert outcome.counters["faults"] == 0


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float64,
        torch.float32,
        torch.bfloat16,
        torch.float16,
        torch.int64,
        torch.bool,
        torch.complex64,
    ],
)
def test_the_bits_sum_changes_with_any_one_element(dtype):
    """The key's value fingerprint: a change of any one element changes it, for every
    element width; a non-contiguous tensor reads like its contiguous copy."""
    from subspace_optim.operators._graph_cache import bits_sum

    g = torch.Generator().manual_seed(0)
    t = (torch.randn(4, 6, generator=g) * 3).to(dtype)
    if dtype == torch.bool:
        t = torch.rand(4, 6, generator=g) > 0.5
    base = bits_sum(t)
    assert base.dtype == torch.int64 and base.shape == ()
    assert torch.equal(bits_sum(t.T), bits_sum(t.T.contiguous()))
    for i in range(t.numel()):
        changed = t.clone().reshape(-1)
        changed[i] = ~changed[i] if dtype == torch.bool else changed[i] + 1
        assert not torch.equal(bits_sum(changed), base), i


def test_the_cache_sees_manual_sgd_through_p_data(generator):
    """The classic loop ``p.data.add_(-lr * p.grad)`` moves no version counter: products
    after it still follow the parameters (they were stale before the value fingerprint)."""
    model, loss_fn, data = make_case("mlp", generator)
    op = HessianOperator(model, loss_fn, data)
    V = torch.randn(op.shape[0], 3, generator=generator, dtype=torch.float64)
    for _ in range(3):
        before = op @ V
        model.zero_grad()
        loss_fn(model(data[0]), data[1]).backward()
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-0.5)
        fresh = HessianOperator(model, loss_fn, data, cache_graph=False) @ V
        assert not torch.equal(fresh, before)
        assert torch.equal(op @ V, fresh)
