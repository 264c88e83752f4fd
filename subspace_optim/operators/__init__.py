"""Matrix-free linear operators over the flat parameter space."""

from .base import LinearOperator
from .dense import DenseOperator
from .distributed import DistributedHessianError, DistributedHessianOperator
from .hessian import HVP_METHODS, HessianOperator
from .protocol import Curvature

__all__ = [
    "HVP_METHODS",
    "Curvature",
    "DenseOperator",
    "DistributedHessianError",
    "DistributedHessianOperator",
    "HessianOperator",
    "LinearOperator",
]
