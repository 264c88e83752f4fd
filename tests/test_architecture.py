"""The package's shape, read from its source with ``ast``: no import circles (lazy imports
inside functions and imports under ``if TYPE_CHECKING:`` count: a type-only import is still
a dependency), modules and functions of bounded complexity (lines of code rather than of
prose, and parameters), the layers point one way (operators know no eigensolver), and the
optimizer wrapper depends on protocols, not on particular optimizers or operators."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "subspace_optim"
#: the studies (one package per study, and the shared harness) follow the same rules
BENCHMARKS = ROOT / "benchmarks"
#: the gallery's scripts, which users read and copy, follow them too
EXAMPLES = ROOT / "examples"
#: at most this many lines of code in a module, and in a function's body (docstrings,
#: comments and blank lines excluded), and this many parameters of a function
MAX_MODULE_CODE = 350
MAX_FUNCTION_CODE = 60
MAX_PARAMETERS = 8


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


def layer_violations(graph: dict[str, set[str]], root: str = "subspace_optim") -> list[str]:
    """``module imports dep`` for every operator module that imports an eigensolver or the
    optimizer (the layers point one way)."""
    upper = (f"{root}.eigensolvers", f"{root}.optim")
    return [
        f"{module} imports {dep}"
        for module, deps in sorted(graph.items())
        if module.startswith(f"{root}.operators")
        for dep in sorted(deps)
        if dep.startswith(upper)
    ]


def test_the_layer_checker_catches_an_operator_that_imports_a_solver_for_typing(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "operators/__init__.py": "",
            "operators/base.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from ..eigensolvers.base import EigenResult\n"
            ),
            "eigensolvers/__init__.py": "",
            "eigensolvers/base.py": "from ..operators.base import something\n",
        },
    )
    assert layer_violations(import_graph(package), root="pkg") == [
        "pkg.operators.base imports pkg.eigensolvers.base"
    ]


def test_operators_know_no_eigensolver_or_optimizer():
    """The layers point one way: eigensolvers and the optimizer import operators, never the
    reverse (not even for annotations); agreement across ranks is a broadcast of tensors."""
    assert layer_violations(import_graph()) == []


_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _docstring(node: ast.AST) -> ast.Expr | None:
    """The docstring statement of a module, class or function (``None`` without one)."""
    if not isinstance(node, (ast.Module, ast.ClassDef, *_FUNCTIONS)) or not node.body:
        return None
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        return first if isinstance(first.value.value, str) else None
    return None


def code_lines(source: str) -> set[int]:
    """The numbers of the lines of ``source`` that hold code: a token other than a comment,
    outside every module, class and function docstring (any other string counts each of
    the lines it spans)."""
    rows: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in _NOT_CODE:
            rows.update(range(tok.start[0], tok.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        if (doc := _docstring(node)) is not None:
            rows.difference_update(range(doc.lineno, doc.end_lineno + 1))
    return rows


def parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef, constructor: bool) -> int:
    """Named parameters of ``fn``, ``self``/``cls`` not counted, nor ``*args``/``**kwargs``
    (as ruff's PLR0913 counts them).

    One exception, for ``constructor`` (the ``__init__`` of a public module-level class):
    its keyword-only parameters count as one when each has a default. They are the
    constructor's settings, spelled as torch spells its own (``torch.optim.Adam(params,
    lr, ..., *, foreach=None, maximize=False, ...)``, ``nn.TransformerEncoderLayer``): a
    user names the few to change, and a settings object would lengthen every call. Today
    ``SubspaceProjectedOptimizer``, ``ModelOperator`` (the curvature operators) and
    ``TransformerClassifier`` use it.
    """
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    if positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    keywords = len(args.kwonlyargs)
    if constructor and keywords and all(d is not None for d in args.kw_defaults):
        keywords = 1
    return len(positional) + keywords


def _public_constructors(tree: ast.Module) -> set[ast.AST]:
    return {
        fn
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and not cls.name.startswith("_")
        for fn in cls.body
        if isinstance(fn, _FUNCTIONS) and fn.name == "__init__"
    }


def complexity_violations(package: Path = PACKAGE) -> list[str]:
    """Every module over :data:`MAX_MODULE_CODE` lines of code, function whose body is over
    :data:`MAX_FUNCTION_CODE` lines of code (its docstring excluded; a nested function is
    part of the body) and function with over :data:`MAX_PARAMETERS` parameters."""
    out = []
    for name, path in _modules(package).items():
        source = path.read_text()
        rows = code_lines(source)
        if len(rows) > MAX_MODULE_CODE:
            out.append(f"module {name}: {len(rows)} lines of code")
        tree = ast.parse(source)
        constructors = _public_constructors(tree)
        for fn in (n for n in ast.walk(tree) if isinstance(n, _FUNCTIONS)):
            body = fn.body[1:] if _docstring(fn) is not None else fn.body
            lines = sum(1 for r in rows if body and body[0].lineno <= r <= fn.end_lineno)
            if lines > MAX_FUNCTION_CODE:
                out.append(f"function {name}.{fn.name} (line {fn.lineno}): {lines} lines of code")
            count = parameter_count(fn, fn in constructors)
            if count > MAX_PARAMETERS:
                out.append(f"function {name}.{fn.name} (line {fn.lineno}): {count} parameters")
    return out


def _statements(n: int, indent: str = "    ") -> str:
    return "".join(f"{indent}x{i} = {i}  # a comment\n" for i in range(n))


def test_the_checker_counts_code_not_prose(tmp_path):
    prose = '"""A module docstring\n\nover three lines."""\n\n# a comment\n\n'
    fits = (
        f'def f():\n    """Doc\n    string."""\n    # a comment\n\n{_statements(MAX_FUNCTION_CODE)}'
    )
    assert len(code_lines(prose + fits)) == 1 + MAX_FUNCTION_CODE
    package = _write_package(tmp_path, {"__init__.py": "", "fits.py": prose + fits})
    assert complexity_violations(package) == []
    text = 'TEXT = """\n' + "line\n" * 5 + '"""\n'  # a string that is not a docstring
    assert len(code_lines(prose + text)) == 7


def test_the_checker_catches_a_long_module(tmp_path):
    source = '"""Doc."""\n' + "".join(f"X{i} = {i}\n\n" for i in range(MAX_MODULE_CODE + 1))
    package = _write_package(tmp_path, {"__init__.py": "", "big.py": source})
    assert complexity_violations(package) == [
        f"module pkg.big: {MAX_MODULE_CODE + 1} lines of code"
    ]


def test_the_checker_catches_a_long_function(tmp_path):
    method = (
        f"class A:\n    def f(self):\n        'Doc.'\n{_statements(MAX_FUNCTION_CODE, ' ' * 8)}"
    )
    nested = "    def g():\n        return 0\n"  # a nested function is part of the body
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": method,
            "b.py": f"def f():\n{_statements(MAX_FUNCTION_CODE - 2)}{nested}",
            "c.py": f"def f():\n{_statements(MAX_FUNCTION_CODE - 1)}{nested}",
        },
    )
    assert complexity_violations(package) == [
        f"function pkg.c.f (line 1): {MAX_FUNCTION_CODE + 1} lines of code"
    ]
    (package / "a.py").write_text(method + "        return x0\n")
    assert complexity_violations(package)[0] == (
        f"function pkg.a.f (line 2): {MAX_FUNCTION_CODE + 1} lines of code"
    )


def test_the_checker_catches_too_many_parameters(tmp_path):
    names = ", ".join(f"a{i}" for i in range(MAX_PARAMETERS))
    fewer = ", ".join(f"a{i}" for i in range(MAX_PARAMETERS - 1))
    source = (
        f"def fits(self, {names}, *args, **kwargs): ...\n"
        f"def over({names}, *, extra=None): ...\n"
        f"class Public:\n    def __init__(self, {fewer}, *, x=1, y=2): ...\n"
        f"class _Private:\n    def __init__(self, {fewer}, *, x=1, y=2): ...\n"
        f"class Required:\n    def __init__(self, {fewer}, *, x, y=2): ...\n"
        f"class Methods:\n    def method(self, {fewer}, *, x=1, y=2): ...\n"
    )
    package = _write_package(tmp_path, {"__init__.py": "", "sig.py": source})
    over = MAX_PARAMETERS + 1
    # a public constructor's keyword-only settings count as one (Public fits); not those of
    # a private class, nor keyword-only arguments without a default, nor another method's
    assert complexity_violations(package) == [
        f"function pkg.sig.over (line 2): {over} parameters",
        f"function pkg.sig.__init__ (line 6): {over} parameters",
        f"function pkg.sig.__init__ (line 8): {over} parameters",
        f"function pkg.sig.method (line 10): {over} parameters",
    ]


#: violations that a change in progress elsewhere must still remove, each with its reason;
#: each must still be a violation (like a strict xfail), so an entry goes when it is fixed
PENDING: dict[str, str] = {}


def test_modules_and_functions_stay_simple():
    violations = complexity_violations()
    pending = {v for v in violations if v.partition(":")[0] in PENDING}
    assert not set(violations) - pending, "\n".join(sorted(set(violations) - pending))
    fixed = set(PENDING) - {v.partition(":")[0] for v in pending}
    assert not fixed, f"fixed: remove {sorted(fixed)} from PENDING"


#: benchmark modules that still break a rule because they have not moved into the suite's
#: layout yet; like PENDING, each must still break a rule, so an entry goes when its module
#: moves or is simplified
BENCHMARKS_PENDING: dict[str, str] = {}


def _of_module(violation: str, module: str) -> bool:
    return violation.startswith((f"module {module}:", f"function {module}."))


def test_benchmarks_follow_the_same_rules():
    """Every study and the harness: bounded modules and functions, no import circle."""
    violations = complexity_violations(BENCHMARKS)
    excused = {v for v in violations for m in BENCHMARKS_PENDING if _of_module(v, m)}
    assert not set(violations) - excused, "\n".join(sorted(set(violations) - excused))
    fixed = {m for m in BENCHMARKS_PENDING if not any(_of_module(v, m) for v in violations)}
    assert not fixed, f"fixed: remove {sorted(fixed)} from BENCHMARKS_PENDING"
    cycles = find_cycles(import_graph(BENCHMARKS))
    assert not cycles, f"import circles in benchmarks/: {cycles}"


def test_examples_follow_the_same_rules():
    """The gallery's scripts: bounded modules and functions, like the library they teach."""
    assert complexity_violations(EXAMPLES) == []


def test_the_library_imports_no_benchmark():
    """The studies import the library, never the reverse (not even lazily)."""
    for name, path in _modules().items():
        for node in _import_nodes(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names.append(getattr(node, "module", None) or "")
            assert not any(n.split(".")[0] == "benchmarks" for n in names), name


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
    for private in ("_perturbed", "_has_fresh_gradient", "broadcast_result", "_release_cache"):
        assert private not in source, private
    assert 'hasattr(base, "curvature")' not in (PACKAGE / "optim" / "sam.py").read_text()
