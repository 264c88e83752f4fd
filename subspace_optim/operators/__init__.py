"""Matrix-free linear operators over the flat parameter space."""

from .base import LinearOperator
from .dense import DenseOperator
from .hessian import HVP_METHODS, HessianOperator

__all__ = ["HVP_METHODS", "DenseOperator", "HessianOperator", "LinearOperator"]
