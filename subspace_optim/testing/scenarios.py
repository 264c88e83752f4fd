"""Deprecated: the reliability catalogue moved to the repository's ``tests/scenarios/``.

It is the project's own test catalogue (bad inputs, injected faults, determinism, a soak),
so it no longer ships in the installed package. In a source checkout this module still
loads it from ``tests/scenarios/`` (with a :class:`DeprecationWarning`); in an installed
package it raises :class:`ImportError` saying where the catalogue went. The reusable parts
stay here: :mod:`subspace_optim.testing.faults`, :mod:`~subspace_optim.testing.checks` and
:mod:`~subspace_optim.testing.strategies`.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

_MOVED = (
    "subspace_optim.testing.scenarios moved to tests/scenarios/ in the source repository: it "
    "is the project's own test catalogue, not part of the installed package. Import it from "
    "there (`from scenarios import ...` with tests/ on sys.path); for your own tests use "
    "subspace_optim.testing.faults, .checks and .strategies"
)

warnings.warn(_MOVED, DeprecationWarning, stacklevel=2)

_INIT = Path(__file__).resolve().parents[2] / "tests" / "scenarios" / "__init__.py"
if not _INIT.is_file():
    raise ImportError(_MOVED)


def _load() -> object:
    loaded = sys.modules.get("scenarios")
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == _INIT:
        return loaded
    spec = importlib.util.spec_from_file_location(
        "scenarios", _INIT, submodule_search_locations=[str(_INIT.parent)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scenarios"] = module
    spec.loader.exec_module(module)
    return module


_catalogue = _load()
__all__ = list(_catalogue.__all__)  # type: ignore[attr-defined]
globals().update({name: getattr(_catalogue, name) for name in __all__})
