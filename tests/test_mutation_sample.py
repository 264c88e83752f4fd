"""A sample of mutants drawn by a fixed seed, each of which the unit tests must kill (issue 26).

The full mutation run (``python -m benchmarks.mutation``, mutmut; page ``docs/mutation.md``)
takes tens of minutes, too long for CI. This test builds a *catalogue* of candidate mutants
mechanically from the source of the functions the full run studies (:data:`TARGETS`), with
``ast``: every binary operator swapped (``+``/``-``, ``*``/``/``, ``//``/``/``, ``**``/``*``,
in expressions and augmented assignments), every comparison turned (``<``/``<=``,
``>``/``>=``, ``==``/``!=``, ``is``/``is not``, ``in``/``not in``), every ``and``/``or``
swapped, every numeric constant increased by one and every unary minus or ``not`` dropped,
outside ``raise``, ``assert``, warnings and f-strings (messages). It draws :data:`SIZE` of
them with :data:`SEED`, applies each to a copy of the package in a temporary folder, runs
the tests listed for its module against the copy, and asserts that they fail: the score of
the sample must be 100%, less the mutants listed in :data:`EQUIVALENT` with the reason they
cannot be killed. It needs no mutmut.

The sample changes when the code of a studied function changes (the catalogue is rebuilt
from the source every time); a new survivor then fails this test, and the fix is a test that
kills it or a line in :data:`EQUIVALENT`.
"""

from __future__ import annotations

import ast
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.mutation.run import ONLY_FUNCTIONS

ROOT = Path(__file__).resolve().parents[1]

#: the seed of the draw and the number of mutants drawn
SEED = 26
SIZE = 8

_PYTEST = ["-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "not slow"]


def _studied(module: str) -> tuple[str, ...]:
    """The functions the full run mutates in ``module`` (its ``ONLY_FUNCTIONS``)."""
    return tuple(sorted(ONLY_FUNCTIONS[module]))


#: module -> (functions whose bodies the catalogue mutates, pytest arguments that select the
#: fast unit tests reaching them); the same functions as the full run's (benchmarks/mutation)
TARGETS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "subspace_optim/subspace.py": (
        (
            "orthonormalize",
            "project",
            "project_out",
            "alignment",
            "principal_angles",
            "subspace_distance",
        ),
        ["tests/test_subspace.py"],
    ),
    "subspace_optim/optim/_update.py": (
        (
            "zero_frozen",
            "dominant_part",
            "project_gradient",
            "plan_update",
            "plan_blockwise",
            "step_statistics",
            "effective_rates",
            "moved_eigenvalue",
        ),
        ["tests/test_update_math.py", "-k", "not test_dominant_part_is_the_orthogonal"],
    ),
    "subspace_optim/optim/_blockwise.py": (
        ("delta_of", "scale_blocks", "block_statistics"),
        ["tests/test_sources.py", "-k", "block_statistics or scale_blocks or delta_of"],
    ),
    "subspace_optim/sources/_pca.py": (
        ("_centering", "gram_directions", "frequent_directions_shrink"),
        [
            "tests/test_sources.py",
            "-k",
            "gram_directions or centring or frequent_directions or sketch_is or shrunk",
        ],
    ),
    "subspace_optim/bases.py": (
        ("coords", "dominant", "_pieces", "projected", "as_basis"),
        ["tests/test_sources.py", "-k", "block_basis or scale_blocks"],
    ),
    "subspace_optim/schedules.py": (
        ("decide", "observe", "state_dict", "load_state_dict", "resolve_schedule"),
        ["tests/test_schedules_switch.py"],
    ),
    "subspace_optim/eigensolvers/warm.py": (
        _studied("subspace_optim/eigensolvers/warm.py"),
        ["tests/test_warm_check.py", "-k", "not drift"],
    ),
    "subspace_optim/operators/_data.py": (
        _studied("subspace_optim/operators/_data.py"),
        ["tests/test_operator_products_mutants.py", "-k", "helpers or tuple or unequal"],
    ),
    "subspace_optim/operators/_model_operator.py": (
        _studied("subspace_optim/operators/_model_operator.py"),
        ["tests/test_operator_products_mutants.py", "-k", "unequal"],
    ),
    "subspace_optim/operators/_hvp.py": (
        _studied("subspace_optim/operators/_hvp.py"),
        ["tests/test_hessian_operator.py", "-k", "dense_references or block_equals"],
    ),
    "subspace_optim/operators/_jacobian.py": (
        _studied("subspace_optim/operators/_jacobian.py"),
        ["tests/test_ggn.py", "-k", "dense_references"],
    ),
    "subspace_optim/operators/hessian.py": (
        _studied("subspace_optim/operators/hessian.py"),
        ["tests/test_hessian_operator.py", "-k", "dense_references or loss_and_grad"],
    ),
    "subspace_optim/operators/ggn.py": (
        _studied("subspace_optim/operators/ggn.py"),
        ["tests/test_ggn.py", "-k", "dense_references"],
    ),
    "subspace_optim/operators/covariance.py": (
        _studied("subspace_optim/operators/covariance.py"),
        ["tests/test_covariance.py", "-k", "stacked or per_example_loss or training_loss"],
    ),
}

#: (module, function, mutation) -> why the mutant cannot be killed (only ever drawn ones)
EQUIVALENT: dict[tuple[str, str, str], str] = {
    (
        "subspace_optim/operators/_model_operator.py",
        "_local_loss_and_grad",
        "0 -> 1  in  grad_sum = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)",
    ): "a curvature operator is square: shape[1] is shape[0]",
    (
        "subspace_optim/operators/ggn.py",
        "_chunk_product",
        "0 -> 1  in  return self._graph_product(self._build_graph(x, y, 0), W)",
    ): "the graph's example count is read only from the cache (_local_matmat's cached path); "
    "a graph built for one product is used and dropped, its count never read",
    (
        "subspace_optim/subspace.py",
        "principal_angles",
        "1 -> 2  in  cos = torch.linalg.svdvals(U.T @ W).clamp(0, 1)",
    ): "a cosine never exceeds 1 by more than rounding, and above 0.7071 the sine formula is "
    "taken instead (mutmut's x_principal_angles__mutmut_18, docs/mutation.md)",
}

_BINOP: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Pow: ast.Mult,
}
_CMPOP: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}

Mutation = tuple[str, str, str, Callable[[], None]]  # function, label, kind, apply


def _messages(node: ast.AST) -> bool:
    """Whether ``node`` only builds a message (never the math)."""
    if isinstance(node, (ast.Raise, ast.Assert, ast.JoinedStr)):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "warn"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and its descendants in a fixed order, leaving out message-building code."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not _messages(child):
            yield from _walk(child)


def _functions(tree: ast.Module, names: tuple[str, ...]) -> Iterator[ast.FunctionDef]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in names:
                    yield item
        elif isinstance(node, ast.FunctionDef) and node.name in names:
            yield node


def _mutations(tree: ast.Module, names: tuple[str, ...], source: str) -> Iterator[Mutation]:
    """Every mutation of the catalogue in ``tree``'s functions ``names``, in a fixed order;
    each applies itself to ``tree`` in place. A label ends with the source line."""
    lines = source.splitlines()
    for fn in _functions(tree, names):
        body = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
        for node in (n for stmt in body for n in _walk(stmt)):
            for name, label, kind, apply in _node_mutations(fn.name, node):
                yield name, f"{label}  in  {lines[node.lineno - 1].strip()}", kind, apply


def _setter(node: ast.AST, field: str, value: object) -> Callable[[], None]:
    return lambda: setattr(node, field, value)


def _node_mutations(fn: str, node: ast.AST) -> Iterator[Mutation]:
    text = ast.unparse(node) if not isinstance(node, ast.AugAssign) else ""
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BINOP:
        new = _BINOP[type(node.op)]()
        if isinstance(node, ast.AugAssign):
            before = ast.unparse(node)
            node.op, old = new, node.op
            after = ast.unparse(node)
            node.op = old
            yield fn, f"{before} -> {after}", "operator", _setter(node, "op", new)
        else:
            yield fn, f"{text} -> {_swapped(node, 'op', new)}", "operator", _setter(node, "op", new)
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _CMPOP:
                ops = [*node.ops]
                ops[i] = _CMPOP[type(op)]()
                label = f"{text} -> {_swapped(node, 'ops', ops)}"
                yield fn, label, "comparison", _setter(node, "ops", ops)
    elif isinstance(node, ast.BoolOp):
        new = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield fn, f"{text} -> {_swapped(node, 'op', new)}", "boolean", _setter(node, "op", new)
    elif (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    ):
        value = node.value + 1
        yield fn, f"{text} -> {value!r}", "constant", _setter(node, "value", value)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
        yield from _drop_unary(fn, node, text)


def _swapped(node: ast.AST, field: str, value: object) -> str:
    old = getattr(node, field)
    setattr(node, field, value)
    try:
        return ast.unparse(node)
    finally:
        setattr(node, field, old)


def _drop_unary(fn: str, node: ast.UnaryOp, text: str) -> Iterator[Mutation]:
    """``-x`` -> ``+x``; ``not x`` -> ``+bool(x)`` (truthy exactly when ``x`` is)."""
    operand = ast.unparse(node.operand)
    if isinstance(node.op, ast.USub):
        yield fn, f"{text} -> +{operand}", "sign", _setter(node, "op", ast.UAdd())
        return
    call = ast.Call(ast.Name("bool", ast.Load()), [node.operand], [])

    def apply() -> None:
        node.op, node.operand = ast.UAdd(), call

    yield fn, f"{text} -> +bool({operand})", "negation", apply


def catalogue() -> list[tuple[str, int, str, str, str]]:
    """``(module, index, function, mutation, kind)`` for every candidate mutant."""
    out = []
    for module, (names, _) in TARGETS.items():
        source = (ROOT / module).read_text()
        for i, (fn, label, kind, _) in enumerate(_mutations(ast.parse(source), names, source)):
            out.append((module, i, fn, label, kind))
    return out


def mutated_source(module: str, index: int) -> str:
    """The module's source with candidate ``index`` applied (``ast.unparse`` of the tree:
    comments and layout go, the code is the same)."""
    source = (ROOT / module).read_text()
    tree = ast.parse(source)
    for i, (_, _, _, apply) in enumerate(_mutations(tree, TARGETS[module][0], source)):
        if i == index:
            apply()
            return ast.unparse(ast.fix_missing_locations(tree))
    raise IndexError(index)


def sample() -> list[tuple[str, int, str, str, str]]:
    return random.Random(SEED).sample(catalogue(), SIZE)


def test_the_catalogue_covers_every_studied_function() -> None:
    """Every listed function exists and yields candidates, so a renamed function cannot
    silently drop out of the draw; the unmutated unparse round trip is the same code."""
    found = {(m, fn) for m, _, fn, _, _ in catalogue()}
    for module, (names, _) in TARGETS.items():
        tree = ast.parse((ROOT / module).read_text())
        defined = {fn.name for fn in _functions(tree, names)}
        assert defined == set(names), (module, set(names) - defined)
        assert {fn for m, fn in found if m == module}, module
    assert len(catalogue()) > 20 * SIZE


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package and the tests, copied once."""
    base = tmp_path_factory.mktemp("pristine")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "subspace_optim", base / "subspace_optim", ignore=ignore)
    shutil.copytree(ROOT / "tests", base / "tests", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", base / "pyproject.toml")
    # the copy, not the installed (editable) package, must be the one the tests import
    where = subprocess.run(
        [sys.executable, "-c", "import subspace_optim; print(subspace_optim.__file__)"],
        cwd=base,
        env=_env(base),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(base.resolve()), where
    return base


def _env(work: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize(
    ("module", "index", "function", "mutation", "kind"),
    sample(),
    ids=[f"{m.rsplit('/', 1)[1]}:{fn}:{kind}:{i}" for m, i, fn, _, kind in sample()],
)
def test_sampled_mutant_is_killed(
    pristine: Path,
    tmp_path: Path,
    module: str,
    index: int,
    function: str,
    mutation: str,
    kind: str,
) -> None:
    reason = EQUIVALENT.get((module, function, mutation))
    if reason is not None:
        pytest.skip(f"equivalent: {reason}")
    work = tmp_path / "copy"
    shutil.copytree(pristine, work, symlinks=True)
    (work / module).write_text(mutated_source(module, index))
    tests = TARGETS[module][1]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *_PYTEST, *tests],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1, (
        f"the mutant in {module}:{function} ({kind}: {mutation}) survived {tests} "
        f"(pytest exit {run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    )


def test_refreshing_mutmuts_copies_keeps_only_the_mutated_modules_and_their_results(
    tmp_path: Path,
) -> None:
    """``python -m benchmarks.mutation`` deletes mutmut's stale copies of unmutated files
    (mutmut 3 never refreshes them) and keeps each mutated module with its cached verdicts."""
    from benchmarks.mutation.run import refresh_copies

    files = [
        "pkg/mutated.py",
        "pkg/mutated.py.meta",
        "pkg/plain.py",
        "pkg/sub/other.py",
        "tests/test_x.py",
        "mutmut-stats.json",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    refresh_copies(tmp_path, ["pkg/mutated.py"])
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["pkg", "pkg/mutated.py", "pkg/mutated.py.meta"]
