"""The registry that resolves eigensolver names (``"lanczos"``, ``"warm"``, …) to solvers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .auto import AutoEigensolver
from .base import Eigensolver
from .block_lanczos import BlockLanczos
from .eigh import Eigh
from .lanczos import Lanczos
from .lobpcg import LOBPCG
from .power import PowerIteration
from .scipy_adapters import ScipyEigsh, ScipyLOBPCG
from .warm import WarmRefresh

__all__ = ["available_eigensolvers", "register_eigensolver", "resolve_eigensolver"]

_REGISTRY: dict[str, Callable[..., Eigensolver]] = {
    "auto": AutoEigensolver,
    "block_lanczos": BlockLanczos,
    "eigh": Eigh,
    "lanczos": Lanczos,
    "lobpcg": LOBPCG,
    "power": PowerIteration,
    "scipy_eigsh": ScipyEigsh,
    "scipy_lobpcg": ScipyLOBPCG,
    "warm": WarmRefresh,
}


def register_eigensolver(name: str, factory: Callable[..., Eigensolver]) -> None:
    """Make ``factory(**options)`` available under ``name`` wherever a solver name is accepted.

    Args:
        name: the name (case-insensitive); an existing name is replaced.
        factory: a callable, typically a class, that takes the solver options as keyword
            arguments and returns an :class:`Eigensolver`.

    Raises:
        ValueError: ``name`` is not a non-empty string.
        TypeError: ``factory`` is not callable.

    Example:
        >>> from subspace_optim import Lanczos, register_eigensolver, resolve_eigensolver
        >>> register_eigensolver("tight-lanczos", lambda **kw: Lanczos(tol=1e-8, **kw))
        >>> resolve_eigensolver("tight-lanczos")
        Lanczos(tol=1e-08, max_iter=200, which='LA')
    """
    if not isinstance(name, str) or not name:
        raise ValueError("eigensolver names are non-empty strings")
    if not callable(factory):
        raise TypeError("factory must be callable and return an Eigensolver")
    _REGISTRY[name.lower()] = factory


def available_eigensolvers() -> list[str]:
    """The names :func:`resolve_eigensolver` accepts, sorted.

    Returns:
        The registered names, lower case, in alphabetical order.

    Example:
        >>> from subspace_optim import available_eigensolvers
        >>> {"eigh", "lanczos", "lobpcg", "power", "warm"} <= set(available_eigensolvers())
        True
    """
    return sorted(_REGISTRY)


def resolve_eigensolver(spec: str | Eigensolver, **options: Any) -> Eigensolver:
    """Turn a name (``"lanczos"``, ``"lobpcg"``, ``"warm"``, …) or a solver into a solver.

    Args:
        spec: a registered name (case-insensitive) or an :class:`Eigensolver`, returned as is.
        **options: constructor arguments for a named solver (``tol=``, ``which=``, …);
            ``None`` values are ignored.

    Returns:
        The solver: ``spec`` itself, or a new one built by the registered factory.

    Raises:
        ValueError: an unknown name, or options given with an instance.
        TypeError: the factory does not accept the options, or returns something that is
            not an :class:`Eigensolver`.

    Example:
        >>> from subspace_optim import resolve_eigensolver
        >>> resolve_eigensolver("lanczos")
        Lanczos(tol=0.001, max_iter=200, which='LA')
        >>> resolve_eigensolver("lobpcg", tol=1e-6).tol
        1e-06
    """
    options = {key: value for key, value in options.items() if value is not None}
    if isinstance(spec, Eigensolver):
        if options:
            raise ValueError("options configure a solver given by name; set them on the instance")
        return spec
    if isinstance(spec, str) and spec.lower() in _REGISTRY:
        factory = _REGISTRY[spec.lower()]
        try:
            solver = factory(**options)
        except TypeError as exc:
            raise TypeError(
                f"eigensolver {spec!r} does not accept {sorted(options)}: {exc}"
            ) from exc
        if not isinstance(solver, Eigensolver):
            raise TypeError(f"the factory registered as {spec!r} returned {type(solver).__name__}")
        return solver
    raise ValueError(
        f"unknown eigensolver {spec!r}; valid names are {', '.join(map(repr, available_eigensolvers()))}, "
        "or pass an Eigensolver instance"
    )
