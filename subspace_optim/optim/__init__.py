"""Optimizers: the projection wrapper (and SAM)."""

from .projected import MODES, ON_FAULT, SubspaceProjectedOptimizer

__all__ = ["MODES", "ON_FAULT", "SubspaceProjectedOptimizer"]
