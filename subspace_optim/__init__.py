"""subspace-optim: Dom/Bulk-projected optimizers and fast dominant-subspace tools for PyTorch.

Wrap the optimizer you already have in one line::

    import subspace_optim as so
    opt = so.SubspaceProjectedOptimizer(base, so.HessianOperator(model, loss_fn, data), k=10,
                                        mode="bulk")

or, to train with damped dominant and amplified bulk updates from a cheap online subspace::

    opt = so.SubspaceProjectedOptimizer(base, so.UpdateHistory(k=4, window=16), mode=(0.5, 2.0))
"""

from .cost import RefreshCostEstimate, estimate_refresh_cost
from .diagnostics import StepStats, effective_lr_summary
from .eigensolvers import (
    LOBPCG,
    AutoEigensolver,
    BlockLanczos,
    EigenResult,
    Eigensolver,
    EigensolverError,
    Eigh,
    Lanczos,
    PowerIteration,
    SolveStatus,
    WarmRefresh,
    available_eigensolvers,
    register_eigensolver,
    resolve_eigensolver,
    top_k_eigenpairs,
)
from .operators import (
    Curvature,
    CurvatureCheckWarning,
    DataParallel,
    DenseOperator,
    DistributedCurvatureError,
    DistributedGGNOperator,
    DistributedGradientCovarianceOperator,
    DistributedHessianOperator,
    GGNOperator,
    GradientCovarianceOperator,
    HessianOperator,
    LinearOperator,
    OperatorSettings,
)
from .optim import (
    SAM,
    CompositeOptimizer,
    EdgeOfStabilityWarning,
    LearningRatePick,
    SharpnessRecord,
    SharpnessTracker,
    SubspaceProjectedOptimizer,
    choose_k,
    pick_learning_rate,
    stability_threshold,
)
from .schedules import AlignmentSwitch, AtSteps, Decision, Every, RefreshSchedule, resolve_schedule
from .sources import GradientSketch, SubspaceSource, UpdateHistory
from .subspace import (
    alignment,
    orthonormalize,
    principal_angles,
    project,
    project_out,
    subspace_distance,
)

__version__ = "0.1.0"

__all__ = [
    "LOBPCG",
    "SAM",
    "AlignmentSwitch",
    "AtSteps",
    "AutoEigensolver",
    "BlockLanczos",
    "CompositeOptimizer",
    "Curvature",
    "CurvatureCheckWarning",
    "DataParallel",
    "Decision",
    "DenseOperator",
    "DistributedCurvatureError",
    "DistributedGGNOperator",
    "DistributedGradientCovarianceOperator",
    "DistributedHessianOperator",
    "EdgeOfStabilityWarning",
    "EigenResult",
    "Eigensolver",
    "EigensolverError",
    "Eigh",
    "Every",
    "GGNOperator",
    "GradientCovarianceOperator",
    "GradientSketch",
    "HessianOperator",
    "Lanczos",
    "LearningRatePick",
    "LinearOperator",
    "OperatorSettings",
    "PowerIteration",
    "RefreshCostEstimate",
    "RefreshSchedule",
    "SharpnessRecord",
    "SharpnessTracker",
    "SolveStatus",
    "StepStats",
    "SubspaceProjectedOptimizer",
    "SubspaceSource",
    "UpdateHistory",
    "WarmRefresh",
    "__version__",
    "alignment",
    "available_eigensolvers",
    "choose_k",
    "effective_lr_summary",
    "estimate_refresh_cost",
    "orthonormalize",
    "pick_learning_rate",
    "principal_angles",
    "project",
    "project_out",
    "register_eigensolver",
    "resolve_eigensolver",
    "resolve_schedule",
    "stability_threshold",
    "subspace_distance",
    "top_k_eigenpairs",
]
