"""The package's shape, read from its source with ``ast``: no import circles (lazy imports
inside functions and imports under ``if TYPE_CHECKING:`` count: a type-only import is still
a dependency), no module over 500 lines, the layers point one way (operators know no
eigensolver), and the optimizer wrapper depends on protocols, not on particular optimizers
or operators."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "subspace_optim"
MAX_LINES = 500


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {_module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement anywhere in ``tree``: module level, inside functions and
    under ``if TYPE_CHECKING:`` alike."""
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (resolving relative imports)."""
    modules = _modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # ``from pkg import sub`` names the submodule; ``from pkg import name``
                # names the package (its ``__init__``) or the module itself
                targets = [
                    f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix
                    for a in node.names
                ]
            for target in targets:
                # the deepest package module the import names
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strongconnect(v)
    return out


def test_the_graph_reader_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reader_resolves_relative_imports():
    graph = import_graph()
    assert "subspace_optim.optim._guard" in graph["subspace_optim.optim.sam"]
    assert "subspace_optim.operators.protocol" in graph["subspace_optim.optim._config"]


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "pkg"


def test_the_checker_catches_a_plain_circle(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from . import b\n",
            "b.py": "def f():\n    from .sub import c  # a lazy import counts\n",
            "sub/__init__.py": "",
            "sub/c.py": "from ..a import something\n",
            "d.py": "import pkg.a\n",
        },
    )
    assert find_cycles(import_graph(package)) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_the_checker_catches_a_circle_hidden_behind_type_checking(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "ops.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:  # only for annotations\n"
                "    from .solvers import Result\n"
            ),
            "solvers.py": (
                "import typing\nfrom .ops import Operator\nif typing.TYPE_CHECKING:\n    pass\n"
            ),
            "free.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import ops\n",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.ops"] == {"pkg.solvers"} and graph["pkg.free"] == {"pkg.ops"}
    assert find_cycles(graph) == [["pkg.ops", "pkg.solvers"]]


def test_no_import_circles_between_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, f"import circles: {cycles}"


def test_operators_know_no_eigensolver_or_optimizer():
    """The layers point one way: eigensolvers and the optimizer import operators, never the
    reverse (not even for annotations); agreement across ranks is a broadcast of tensors."""
    for module, deps in import_graph().items():
        if module.startswith("subspace_optim.operators"):
            wrong = {
                d
                for d in deps
                if d.startswith(("subspace_optim.eigensolvers", "subspace_optim.optim"))
            }
            assert not wrong, f"{module} imports {sorted(wrong)}"


def test_no_module_is_longer_than_500_lines():
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_wrapper_knows_no_particular_optimizer_or_operator():
    """Only ``sam.py`` may import SAM, and nothing in ``optim/`` imports the Hessian
    operator's module: the wrapper reaches both through protocols."""
    graph = import_graph()
    optim = {m: d for m, d in graph.items() if m.startswith("subspace_optim.optim")}
    for module, deps in optim.items():
        if module not in ("subspace_optim.optim", "subspace_optim.optim.sam"):
            assert "subspace_optim.optim.sam" not in deps, module
        assert not any(d.startswith("subspace_optim.operators.hessian") for d in deps), module
        assert "subspace_optim.operators.distributed" not in deps, module
    # SAM, a base optimizer, knows no wrapper: it asks the protocol and _guard instead
    assert "subspace_optim.optim.projected" not in graph["subspace_optim.optim.sam"]
    source = (PACKAGE / "optim" / "projected.py").read_text()
    for private in ("_perturbed", "_has_fresh_gradient", "broadcast_result", "release_graph"):
        assert private not in source, private
    assert 'hasattr(base, "curvature")' not in (PACKAGE / "optim" / "sam.py").read_text()
