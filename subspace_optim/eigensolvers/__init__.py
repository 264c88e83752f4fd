"""Pluggable eigensolvers behind one interface, and the registry that resolves names."""

from __future__ import annotations

from collections.abc import Callable

from .base import EigenResult, Eigensolver, EigensolverError
from .eigh import Eigh
from .lanczos import Lanczos
from .power import PowerIteration

__all__ = [
    "EigenResult",
    "Eigensolver",
    "EigensolverError",
    "Eigh",
    "Lanczos",
    "PowerIteration",
    "available_eigensolvers",
    "register_eigensolver",
    "resolve_eigensolver",
]

_REGISTRY: dict[str, Callable[[], Eigensolver]] = {
    "eigh": Eigh,
    "lanczos": Lanczos,
    "power": PowerIteration,
}


def register_eigensolver(name: str, factory: Callable[[], Eigensolver]) -> None:
    """Make ``factory()`` available under ``name`` wherever a solver name is accepted."""
    if not isinstance(name, str) or not name:
        raise ValueError("eigensolver names are non-empty strings")
    _REGISTRY[name.lower()] = factory


def available_eigensolvers() -> list[str]:
    """The names :func:`resolve_eigensolver` accepts."""
    return sorted(_REGISTRY)


def resolve_eigensolver(spec: str | Eigensolver) -> Eigensolver:
    """Turn a name (``"lanczos"``, ``"power"``, ``"eigh"``, …) or a solver into a solver.

    Example:
        >>> from subspace_optim import resolve_eigensolver
        >>> resolve_eigensolver("lanczos")
        Lanczos(tol=0.001, max_iter=200, which='LA')
    """
    if isinstance(spec, Eigensolver):
        return spec
    if isinstance(spec, str) and spec.lower() in _REGISTRY:
        return _REGISTRY[spec.lower()]()
    raise ValueError(
        f"unknown eigensolver {spec!r}; valid names are {', '.join(map(repr, available_eigensolvers()))}, "
        "or pass an Eigensolver instance"
    )
