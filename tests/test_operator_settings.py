"""`OperatorSettings`: the curvature operators' settings as one frozen, validated value;
`extended()` passes it on; constructors show their real parameters; data parallelism is a
setting (`DataParallel`) the operator composes, not a kind of class."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import make_case
from torch import nn

import subspace_optim as so
from subspace_optim import DataParallel, OperatorSettings

OPERATORS = [so.HessianOperator, so.GGNOperator, so.GradientCovarianceOperator]
DISTRIBUTED = [
    so.DistributedHessianOperator,
    so.DistributedGGNOperator,
    so.DistributedGradientCovarianceOperator,
]
SETTINGS = [f.name for f in dataclasses.fields(OperatorSettings) if f.name != "parallel"]


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def small_case(generator):
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    X = torch.randn(14, 4, generator=generator, dtype=torch.float64)
    Y = torch.randn(14, 3, generator=generator, dtype=torch.float64)
    return model, [(X[:6], Y[:6]), (X[6:], Y[6:])]


# --------------------------------------------------------------------- the value
def test_the_settings_are_frozen_and_compare_by_value():
    s = OperatorSettings(chunk_size=8, method="func")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.chunk_size = 4  # type: ignore[misc]
    assert s == OperatorSettings(chunk_size=8, method="func") and s != OperatorSettings()
    assert dataclasses.replace(s, chunk_size=4).chunk_size == 4 and s.chunk_size == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        DataParallel().group = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1; got 0"),
        ({"chunk_size": 2.5}, TypeError, "chunk_size must be an int"),
        ({"max_block_size": 0}, ValueError, "max_block_size must be >= 1"),
        ({"max_block_size": True}, TypeError, "max_block_size must be an int"),
        ({"memory_budget": 0}, ValueError, r"must be positive .* Omit it for no limit"),
        ({"memory_budget": 1e9}, TypeError, "memory_budget must be an int"),
        ({"method": "autogard"}, ValueError, "unknown method 'autogard'; valid choices are"),
        ({"train": 1}, TypeError, "train must be True, False or None; got 1"),
        ({"cache_graph": "yes"}, TypeError, "cache_graph must be True, False or None"),
        ({"check": None}, TypeError, "check must be True or False; got None"),
        ({"generator": 0}, TypeError, "generator must be a CPU torch.Generator"),
        ({"parallel": "gloo"}, TypeError, r"parallel must be None or a DataParallel\("),
    ],
)
def test_a_bad_setting_is_refused_at_construction_with_what_to_do(kwargs, error, match, generator):
    with pytest.raises(error, match=match):
        OperatorSettings(**kwargs)
    if "parallel" in kwargs:
        return
    model, data = small_case(generator)
    for cls in OPERATORS:  # the keywords build the same value, so they fail the same way
        with pytest.raises(error, match=match):
            cls(model, mse, data, **kwargs)


def test_data_parallel_refuses_a_non_bool_check():
    with pytest.raises(TypeError, match="check_consistency must be True or False; got 'no'"):
        DataParallel(check_consistency="no")  # type: ignore[arg-type]


# -------------------------------------------------------------- the operators hold it
@pytest.mark.parametrize("cls", OPERATORS)
def test_the_keywords_build_the_settings_and_the_attributes_read_them(cls, generator):
    model, data = small_case(generator)
    g = torch.Generator().manual_seed(3)
    op = cls(model, mse, data, chunk_size=4, max_block_size=2, train=False, generator=g)
    assert op.settings == OperatorSettings(chunk_size=4, max_block_size=2, train=False, generator=g)
    for name in SETTINGS:  # cache_graph as given; ``caches_graph`` is what it resolved to
        if name != "cache_graph":
            assert getattr(op, name) is getattr(op.settings, name), name
    with pytest.raises(AttributeError):
        op.chunk_size = 8  # one truth: the attributes are read-only views of the value
    # no generator given: the operator's own one is in its settings
    default = cls(model, mse, data)
    assert isinstance(default.settings.generator, torch.Generator)
    assert default.generator is default.settings.generator and default.settings.parallel is None


@pytest.mark.parametrize("cls", OPERATORS)
def test_settings_passed_whole_equal_the_keywords_bit_for_bit(cls, generator):
    model, data = small_case(generator)
    keywords = {"chunk_size": 4, "max_block_size": 2, "method": "func"}
    by_keywords = cls(model, mse, data, **keywords)
    whole = cls(model, mse, data, settings=OperatorSettings(**keywords))
    V = torch.randn(by_keywords.shape[0], 3, generator=generator, dtype=torch.float64)
    assert torch.equal(by_keywords @ V, whole @ V)
    assert dataclasses.replace(by_keywords.settings, generator=None) == OperatorSettings(**keywords)


def test_settings_and_keywords_together_are_refused(generator):
    model, data = small_case(generator)
    with pytest.raises(TypeError, match=r"not both: chunk_size given besides settings"):
        so.HessianOperator(model, mse, data, chunk_size=4, settings=OperatorSettings())
    with pytest.raises(TypeError, match="settings must be an OperatorSettings; got dict"):
        so.HessianOperator(model, mse, data, settings={"chunk_size": 4})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both: check given"):  # 1 is not the default True
        so.HessianOperator(model, mse, data, check=1, settings=OperatorSettings())
    # a keyword left at its default is not a conflict
    op = so.HessianOperator(
        model, mse, data, method="auto", settings=OperatorSettings(chunk_size=3)
    )
    assert op.chunk_size == 3


@pytest.mark.parametrize("cls", OPERATORS)
def test_extended_passes_the_settings_on_unchanged(cls, generator):
    model, data = small_case(generator)
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    extra = {"centered": False} if cls is so.GradientCovarianceOperator else {}
    op = cls(model, mse, data, params=first, chunk_size=5, memory_budget=2**22, **extra)
    wider = op.extended([*first, *rest])
    assert type(wider) is cls and wider.settings is op.settings  # the generator too
    assert wider.caches_graph == op.caches_graph and wider.block_size is not None
    if extra:
        assert wider.centered is False
    full = cls(model, mse, data, chunk_size=5, **extra)
    V = torch.randn(full.shape[0], 2, generator=generator, dtype=torch.float64)
    assert torch.equal(wider @ V, full @ V)


# ------------------------------------------------------------------- signatures
@pytest.mark.parametrize("cls", OPERATORS + DISTRIBUTED)
def test_constructors_show_their_real_parameters(cls):
    params = inspect.signature(cls).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert "__signature__" not in vars(cls)  # nothing rewritten at run time
    names = list(params)
    assert names[:3] == ["model", "loss_fn", "data"]
    settings = ["params", *SETTINGS]
    expected = settings + (["group", "check_consistency"] if cls in DISTRIBUTED else [])
    own = ["centered", "per_example_loss"] if "Covariance" in cls.__name__ else []
    assert names[3:] == [*own, *expected, "settings"]
    defaults = {f.name: f.default for f in dataclasses.fields(OperatorSettings)}
    for name in SETTINGS:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == defaults[name], name
    if cls in DISTRIBUTED:
        assert params["group"].default is None and params["check_consistency"].default is True


def test_no_operator_module_rewrites_a_signature():
    package = Path(so.__file__).parent / "operators"
    for path in package.glob("*.py"):
        source = path.read_text()
        assert "__signature__" not in source and "import inspect" not in source, path.name


# ------------------------------------------------------------- data parallelism
def test_data_parallelism_needs_an_initialized_process_group(generator):
    model, data = small_case(generator)
    for make in (
        lambda: so.DistributedHessianOperator(model, mse, data),
        lambda: so.HessianOperator(
            model, mse, data, settings=OperatorSettings(parallel=DataParallel())
        ),
    ):
        with pytest.raises(RuntimeError, match=r"torch\.distributed is not initialized"):
            make()


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{os.path.join(tmp_path, 'store')}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_distributed_operator_is_its_operator_with_the_parallel_setting(
    one_process_group, generator
):
    model, data = small_case(generator)
    op = so.DistributedGradientCovarianceOperator(
        model, mse, data, centered=False, chunk_size=4, check_consistency=False
    )
    assert isinstance(op, so.GradientCovarianceOperator)
    assert op.settings.parallel == DataParallel(group=None, check_consistency=False)
    assert (op.rank, op.world_size, op.backend, op.check_consistency) == (0, 1, "gloo", False)
    assert repr(op).endswith("rank=0, world_size=1, backend='gloo')")
    # the same operator built from the value, and the single-process one: the same bits
    same = so.GradientCovarianceOperator(model, mse, data, centered=False, settings=op.settings)
    single = so.GradientCovarianceOperator(model, mse, data, centered=False, chunk_size=4)
    V = torch.randn(op.shape[0], 3, generator=generator, dtype=torch.float64)
    assert torch.equal(op @ V, same @ V) and torch.equal(op @ V, single @ V)
    assert op.last_counts == [14] and same.reduction.last_counts == [14]
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    narrow = so.DistributedHessianOperator(model, mse, data, params=first, max_block_size=2)
    wider = narrow.extended([*first, *rest])
    assert type(wider) is so.DistributedHessianOperator and wider.settings is narrow.settings
    assert wider.group is None and wider.max_block_size == 2


def test_group_keywords_and_whole_settings_together_are_refused(one_process_group, generator):
    model, data = small_case(generator)
    with pytest.raises(TypeError, match="group and check_consistency either as keywords"):
        so.DistributedHessianOperator(
            model, mse, data, check_consistency=False, settings=OperatorSettings()
        )
    # whole settings without parallel: a distributed operator is data-parallel anyway
    op = so.DistributedHessianOperator(model, mse, data, settings=OperatorSettings(chunk_size=3))
    assert op.settings.parallel == DataParallel() and op.chunk_size == 3


def test_make_case_models_keep_their_settings_through_extended(generator):
    """The shared test model (BatchNorm, dropout in eval mode) through the whole path."""
    model, loss_fn, data = make_case("mlp", generator)
    params = list(model.parameters())
    op = so.HessianOperator(model, loss_fn, data, params=params[:1], cache_graph=False)
    assert op.extended(params).settings.cache_graph is False
