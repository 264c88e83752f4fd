"""Optimizers: the projection wrapper (and SAM)."""

from .eos import (
    EdgeOfStabilityWarning,
    LearningRatePick,
    SharpnessRecord,
    SharpnessTracker,
    choose_k,
    pick_learning_rate,
    stability_threshold,
)
from .projected import MODES, ON_FAULT, SubspaceProjectedOptimizer
from .protocol import CompositeOptimizer
from .sam import SAM

__all__ = [
    "MODES",
    "ON_FAULT",
    "SAM",
    "CompositeOptimizer",
    "EdgeOfStabilityWarning",
    "LearningRatePick",
    "SharpnessRecord",
    "SharpnessTracker",
    "SubspaceProjectedOptimizer",
    "choose_k",
    "pick_learning_rate",
    "stability_threshold",
]
