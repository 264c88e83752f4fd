"""HessianOperator against dense float64 Hessians built two independent ways."""

from __future__ import annotations

import pytest
import torch
from conftest import CASES, make_case
from torch import nn
from torch.func import functional_call

from subspace_optim import HessianOperator


def _flat_loss(model, loss_fn, batches, params):
    """L(θ) as a function of a flat vector, buffers cloned (mean over all examples)."""
    names = {id(p): n for n, p in model.named_parameters()}
    pnames = [names[id(p)] for p in params]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    total = sum(y.shape[0] for _, y in batches)

    def f(flat):
        pieces = torch.split(flat, sizes)
        state = {n: t.view(s) for n, t, s in zip(pnames, pieces, shapes)}
        for bn, b in model.named_buffers():
            state[bn] = b.clone()
        out = 0
        for x, y in batches:
            out = out + loss_fn(functional_call(model, state, (x,)), y) * (y.shape[0] / total)
        return out

    return f


def dense_references(model, loss_fn, batches, params):
    """(H via torch.autograd.functional.hessian, H via a loop of single HVPs through
    torch.autograd.functional.hvp), both on a flat-vector function written independently of
    the operator (torch.func.hessian is avoided: wrong for LayerNorm in torch 2.13)."""
    f = _flat_loss(model, loss_fn, batches, params)
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    H1 = torch.autograd.functional.hessian(f, theta)
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    H2 = torch.stack([torch.autograd.functional.hvp(f, theta, e)[1] for e in eye], dim=1)
    return H1, H2


def rel(a, b):
    return float((a - b).norm() / b.norm())


def snapshot(model):
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ["autograd", "func"])
def test_matches_dense_references(case, method, generator):
    model, loss_fn, (X, Y) = make_case(case, generator)
    params = [p for p in model.parameters() if p.requires_grad]
    H1, H2 = dense_references(model, loss_fn, [(X, Y)], params)
    assert rel(H1, H2) < 1e-10, "the two references disagree"
    before = snapshot(model)
    op = HessianOperator(model, loss_fn, (X, Y), method=method)
    H = op.to_dense()
    assert rel(H, H1) < 1e-6
    assert rel(H, H.T) < 1e-10  # symmetric
    after = snapshot(model)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "parameters/buffers moved"
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("case", CASES)
def test_block_equals_single_products(case, generator):
    model, loss_fn, data = make_case(case, generator)
    for method in ["autograd", "func"]:
        op = HessianOperator(model, loss_fn, data, method=method)
        V = torch.randn(op.shape[0], 5, generator=generator, dtype=torch.float64)
        block = op.matmat(V)
        singles = torch.stack([op.matvec(V[:, j]) for j in range(5)], dim=1)
        assert rel(block, singles) < 1e-10
        assert op.num_matvecs == 10


def test_func_failure_names_the_fix(generator):
    model, _, data = make_case("mlp", generator)
    # F.mse_loss breaks forward-over-reverse (torch 2.13): the failure names the fix, at
    # construction (the self-check's products) or at the first product
    with pytest.raises(RuntimeError, match="method='autograd'"):
        op = HessianOperator(model, nn.MSELoss(), data, method="func")
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
    # the default path handles the same loss
    H = HessianOperator(model, nn.MSELoss(), data).to_dense()
    H1, _ = dense_references(model, nn.MSELoss(), [data], list(model.parameters()))
    assert rel(H, H1) < 1e-10


def test_symmetry_u_hv(generator):
    model, loss_fn, data = make_case("cnn", generator)
    op = HessianOperator(model, loss_fn, data)
    u, v = torch.randn(2, op.shape[0], generator=generator, dtype=torch.float64)
    assert abs(float(u @ op.matvec(v) - v @ op.matvec(u))) < 1e-10 * float(u.norm() * v.norm())


def test_iterable_of_unequal_batches_and_chunks(generator):
    model, loss_fn, (X, Y) = make_case("mlp", generator)
    batches = [(X[:5], Y[:5]), (X[5:17], Y[5:17]), (X[17:], Y[17:])]
    params = list(model.parameters())
    H1, _ = dense_references(model, loss_fn, batches, params)
    full = HessianOperator(model, loss_fn, (X, Y)).to_dense()
    assert rel(full, H1) < 1e-10  # weighting by batch size = Hessian of the mean over all
    for chunk in (None, 1, 4):
        op = HessianOperator(model, loss_fn, batches, chunk_size=chunk)
        assert rel(op.to_dense(), H1) < 1e-10


def test_parameter_subset(generator):
    model, loss_fn, (X, Y) = make_case("mlp", generator)
    subset = [model[2].weight, model[0].bias]
    H1, H2 = dense_references(model, loss_fn, [(X, Y)], subset)
    op = HessianOperator(model, loss_fn, (X, Y), params=subset)
    assert op.shape == (18 + 6, 18 + 6)
    assert rel(op.to_dense(), H1) < 1e-10
    assert rel(H1, H2) < 1e-10


def test_tied_parameters_count_once(generator):
    model, loss_fn, data = make_case("tied", generator)
    op = HessianOperator(model, loss_fn, data)
    assert op.shape[0] == sum(p.numel() for p in model.parameters())  # parameters() dedups
    assert op.shape[0] == 25 + 5 + 5


def test_train_flag_overrides_and_restores_mode(generator):
    model, loss_fn, data = make_case("batchnorm_eval", generator)
    params = list(model.parameters())
    op_train = HessianOperator(model, loss_fn, data, train=True)
    H_train = op_train.to_dense()
    assert not model.training  # restored
    model.train()
    ref, _ = dense_references(model, loss_fn, [data], params)
    model.eval()
    assert rel(H_train, ref) < 1e-8
    assert rel(HessianOperator(model, loss_fn, data).to_dense(), ref) > 1e-3  # eval differs


@pytest.mark.parametrize("train", [False, True])
def test_the_train_flag_reaches_every_module_and_each_gets_its_own_mode_back(train, generator):
    """Fine-tuning with a frozen BatchNorm (the model in train mode, the BatchNorm in eval):
    ``train=`` applies to every submodule during a pass, and afterwards each module is back
    in its own mode (setting the root's mode on the way back unfroze the BatchNorm)."""
    model, loss_fn, data = make_case("batchnorm_eval", generator)
    model.train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    op = HessianOperator(model, loss_fn, data, train=train)
    H = op.to_dense()
    assert [m.training for m in model.modules()] == modes
    model.train(train)  # the reference: every module in the requested mode
    ref, _ = dense_references(model, loss_fn, [data], list(model.parameters()))
    assert rel(H, ref) < 1e-8


def test_parameters_outside_the_operator_are_constants_in_every_back_end(generator):
    """With ``params=`` a subset, the other parameters enter the products as constants:
    ``method="func"`` returns products without an autograd graph (it built one into the
    other parameters, which grew with every product a solver kept), equal to the
    autograd back end's; a half-precision model evaluates the others in float32 too."""
    from subspace_optim import GGNOperator, top_k_eigenpairs

    model, loss_fn, (X, Y) = make_case("mlp", generator)
    last = list(model[-1].parameters())
    V = torch.randn(sum(p.numel() for p in last), 3, generator=generator, dtype=torch.float64)
    ref = GGNOperator(model, loss_fn, (X, Y), params=last) @ V
    func = GGNOperator(model, loss_fn, (X, Y), params=last, method="func")
    out = func @ V
    assert not out.requires_grad and rel(out, ref) < 1e-12
    result = top_k_eigenpairs(func, 2, generator=generator)
    assert not result.eigenvectors.requires_grad and not result.eigenvalues.requires_grad
    half = model.to(torch.bfloat16)
    last = list(half[-1].parameters())
    out = HessianOperator(half, loss_fn, (X.bfloat16(), Y.bfloat16()), params=last) @ V.float()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_float32_agrees_with_float64(generator):
    model, loss_fn, (X, Y) = make_case("mlp", generator)
    H64 = HessianOperator(model, loss_fn, (X, Y)).to_dense()
    model32 = model.float()
    H32 = HessianOperator(model32, loss_fn, (X.float(), Y.float())).to_dense()
    assert H32.dtype == torch.float32
    assert rel(H32.double(), H64) < 1e-5


def test_loss_and_grad_match_autograd(generator):
    model, loss_fn, (X, Y) = make_case("mlp", generator)
    op = HessianOperator(model, loss_fn, [(X[:7], Y[:7]), (X[7:], Y[7:])], chunk_size=3)
    loss, g = op.loss_and_grad()
    ref_loss = loss_fn(model(X), Y)
    ref_g = torch.autograd.grad(ref_loss, list(model.parameters()))
    assert torch.allclose(loss, ref_loss.detach())
    assert torch.allclose(g, torch.cat([t.reshape(-1) for t in ref_g]))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "data, match",
    [
        ((torch.zeros(0, 4), torch.zeros(0, 3)), "no examples"),
        ([], "no examples"),
        ((torch.zeros(5, 4), torch.zeros(4, 3)), "5 examples but targets hold 4"),
        ([torch.zeros(3)], "pair"),
        ("abc", "iterable"),
    ],
)
def test_bad_data_is_refused(data, match):
    model = nn.Linear(4, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        HessianOperator(model, nn.MSELoss(), data)


def test_one_shot_iterator_is_refused():
    model = nn.Linear(4, 3)
    gen = ((torch.zeros(2, 4), torch.zeros(2, 3)) for _ in range(2))
    with pytest.raises(TypeError, match="one-shot iterator"):
        HessianOperator(model, nn.MSELoss(), gen)


def test_bad_arguments():
    model = nn.Linear(4, 3)
    data = (torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="valid choices"):
        HessianOperator(model, nn.MSELoss(), data, method="magic")
    with pytest.raises(ValueError, match="not a parameter of the model"):
        HessianOperator(model, nn.MSELoss(), data, params=[torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match=">= 1"):
        HessianOperator(model, nn.MSELoss(), data, chunk_size=0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        HessianOperator(model, nn.MSELoss(), data)


def test_matmat_validates_shape_and_dtype():
    model = nn.Linear(2, 1)
    op = HessianOperator(model, nn.MSELoss(), (torch.zeros(2, 2), torch.zeros(2, 1)))
    with pytest.raises(ValueError, match=r"\(3, b\)"):
        op.matmat(torch.zeros(4, 1))
    with pytest.raises(TypeError, match="float64"):
        op.matmat(torch.zeros(3, 1, dtype=torch.float64))


# ------------------------------------------------------------ sub-blocks and memory budget
@pytest.mark.parametrize("method", ["autograd", "func"])
@pytest.mark.parametrize("case", ["mlp", "batchnorm_train", "layernorm"])
def test_sub_blocks_equal_unsplit_product_and_dense_reference(case, method, generator):
    """Splitting a block into sub-blocks leaves every column's product unchanged: bitwise
    for double backward (each column is its own backward pass), to rounding for vmap."""
    model, loss_fn, (X, Y) = make_case(case, generator)
    params = [p for p in model.parameters() if p.requires_grad]
    # micro-batches of 6 (batch statistics of BatchNorm are per micro-batch)
    chunks = list(zip(torch.split(X, 6), torch.split(Y, 6)))
    H1, _ = dense_references(model, loss_fn, chunks, params)
    V = torch.randn(H1.shape[0], 7, generator=generator, dtype=torch.float64)
    whole = HessianOperator(model, loss_fn, (X, Y), method=method, chunk_size=6).matmat(V)
    for width in (1, 3, 7, 50):
        op = HessianOperator(
            model, loss_fn, (X, Y), method=method, chunk_size=6, max_block_size=width
        )
        assert op.block_size == width
        HV = op.matmat(V)
        assert op.num_matvecs == 7
        if method == "autograd":
            assert torch.equal(HV, whole), f"width {width}"
        else:
            assert rel(HV, whole) < 1e-13, f"width {width}"
        assert rel(HV, H1 @ V) < 1e-8


@pytest.mark.parametrize("method", ["autograd", "func"])
def test_memory_budget_picks_the_widest_fitting_sub_block(method, generator):
    model, loss_fn, (X, Y) = make_case("mlp", generator)
    probe = HessianOperator(model, loss_fn, (X, Y), method=method, memory_budget=2**40)
    est = probe.memory_estimate
    assert est is not None and est.method == method
    assert est.graph_bytes > 0 and est.bytes_per_column > 0
    # the per-column part grows with the parameters: at least two n-vectors per column
    assert est.bytes_per_column >= 2 * probe.shape[0] * 8
    for width in (1, 2, 5):
        budget = est.peak(width)
        op = HessianOperator(model, loss_fn, (X, Y), method=method, memory_budget=budget)
        assert op.block_size == width
        assert est.max_width(budget - 1) == width - 1  # the widest that fits, not wider
        V = torch.randn(op.shape[0], 6, generator=generator, dtype=torch.float64)
        ref = HessianOperator(model, loss_fn, (X, Y), method=method).matmat(V)
        assert rel(op.matmat(V), ref) < 1e-13
    # max_block_size caps the budget's width
    capped = HessianOperator(
        model, loss_fn, (X, Y), method=method, memory_budget=est.peak(5), max_block_size=2
    )
    assert capped.block_size == 2
    # the gradient graph, hence the estimate, shrinks with the micro-batch
    small = HessianOperator(
        model, loss_fn, (X, Y), method=method, chunk_size=2, memory_budget=2**40
    ).memory_estimate
    assert small.graph_bytes < est.graph_bytes


def test_bad_block_size_and_budget_are_refused_at_construction(generator):
    model, loss_fn, data = make_case("mlp", generator)
    with pytest.raises(ValueError, match="max_block_size must be >= 1"):
        HessianOperator(model, loss_fn, data, max_block_size=0)
    with pytest.raises(TypeError, match="max_block_size must be an int"):
        HessianOperator(model, loss_fn, data, max_block_size=2.0)
    for bad in (0, -5):
        with pytest.raises(ValueError, match=r"must be positive .* Omit it"):
            HessianOperator(model, loss_fn, data, memory_budget=bad)
    with pytest.raises(TypeError, match="memory_budget must be an int"):
        HessianOperator(model, loss_fn, data, memory_budget=1e9)
    with pytest.raises(ValueError, match=r"too small for one column.*lower chunk_size") as info:
        HessianOperator(model, loss_fn, data, memory_budget=100)
    assert "per column" in str(info.value)  # the estimate is in the message
