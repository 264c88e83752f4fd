"""Pluggable eigensolvers behind one interface, and the registry that resolves names."""

from __future__ import annotations

from .auto import AutoEigensolver
from .base import EigenResult, Eigensolver, EigensolverError, SolveStatus
from .block_lanczos import BlockLanczos
from .eigh import Eigh
from .lanczos import Lanczos
from .lobpcg import LOBPCG
from .power import PowerIteration
from .registry import available_eigensolvers, register_eigensolver, resolve_eigensolver
from .scipy_adapters import ScipyEigsh, ScipyLOBPCG
from .top_k import top_k_eigenpairs
from .warm import WarmRefresh

__all__ = [
    "LOBPCG",
    "AutoEigensolver",
    "BlockLanczos",
    "EigenResult",
    "Eigensolver",
    "EigensolverError",
    "Eigh",
    "Lanczos",
    "PowerIteration",
    "ScipyEigsh",
    "ScipyLOBPCG",
    "SolveStatus",
    "WarmRefresh",
    "available_eigensolvers",
    "register_eigensolver",
    "resolve_eigensolver",
    "top_k_eigenpairs",
]
