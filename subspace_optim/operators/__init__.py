"""Matrix-free linear operators over the flat parameter space."""

from ._selfcheck import CurvatureCheckWarning
from .base import LinearOperator
from .covariance import COVARIANCE_METHODS, GradientCovarianceOperator
from .dense import DenseOperator
from .distributed import (
    DistributedCurvatureError,
    DistributedGGNOperator,
    DistributedGradientCovarianceOperator,
    DistributedHessianOperator,
)
from .ggn import GGN_METHODS, SUPPORTED_GGN_LOSSES, GGNOperator
from .hessian import HVP_METHODS, HessianOperator
from .protocol import Curvature
from .settings import PRODUCT_METHODS, DataParallel, OperatorSettings

__all__ = [
    "COVARIANCE_METHODS",
    "GGN_METHODS",
    "HVP_METHODS",
    "PRODUCT_METHODS",
    "SUPPORTED_GGN_LOSSES",
    "Curvature",
    "CurvatureCheckWarning",
    "DataParallel",
    "DenseOperator",
    "DistributedCurvatureError",
    "DistributedGGNOperator",
    "DistributedGradientCovarianceOperator",
    "DistributedHessianOperator",
    "GGNOperator",
    "GradientCovarianceOperator",
    "HessianOperator",
    "LinearOperator",
    "OperatorSettings",
]
