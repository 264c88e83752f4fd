"""Deprecated: the reliability catalogue moved to the repository's ``tests/scenarios/``.

It is the project's own test catalogue (bad inputs, injected faults, determinism, a soak),
so it no longer ships in the installed package. Importing a name from this module still
works in a source checkout: the first such access loads ``tests/scenarios/`` and issues a
:class:`DeprecationWarning`; in an installed package it raises :class:`ImportError` saying
where the catalogue went. The reusable parts stay here:
:mod:`subspace_optim.testing.faults`, :mod:`~subspace_optim.testing.checks` and
:mod:`~subspace_optim.testing.strategies`.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

_MOVED = (
    "subspace_optim.testing.scenarios moved to tests/scenarios/ in the source repository: it "
    "is the project's own test catalogue, not part of the installed package. Import it from "
    "there (`from scenarios import ...` with tests/ on sys.path); for your own tests use "
    "subspace_optim.testing.faults, .checks and .strategies"
)
_INIT = Path(__file__).resolve().parents[2] / "tests" / "scenarios" / "__init__.py"
_loaded: list[ModuleType] = []


def _names() -> frozenset[str]:
    """The catalogue's ``__all__``, read from its source without importing it."""
    if not _INIT.is_file():
        return frozenset()
    for node in ast.parse(_INIT.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return frozenset(ast.literal_eval(node.value))
    return frozenset()


def _catalogue() -> ModuleType:
    """``tests/scenarios`` (loaded once, as the module ``scenarios``), with the warning."""
    if _loaded:
        return _loaded[0]
    warnings.warn(_MOVED, DeprecationWarning, stacklevel=3)
    if not _INIT.is_file():
        raise ImportError(_MOVED)
    module = sys.modules.get("scenarios")
    if module is None or Path(getattr(module, "__file__", "")).resolve() != _INIT:
        spec = importlib.util.spec_from_file_location(
            "scenarios", _INIT, submodule_search_locations=[str(_INIT.parent)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["scenarios"] = module
        spec.loader.exec_module(module)
    _loaded.append(module)
    return module


def __getattr__(name: str) -> object:
    if name in _names():
        return getattr(_catalogue(), name)
    if not _INIT.is_file() and not name.startswith("_"):
        raise ImportError(_MOVED)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
