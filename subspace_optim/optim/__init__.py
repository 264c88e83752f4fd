"""Optimizers: the projection wrapper (and SAM)."""

from .projected import MODES, ON_FAULT, SubspaceProjectedOptimizer
from .sam import SAM

__all__ = ["MODES", "ON_FAULT", "SAM", "SubspaceProjectedOptimizer"]
