"""subspace-optim: Dom/Bulk-projected optimizers and fast dominant-subspace tools for PyTorch.

Wrap the optimizer you already have in one line::

    import subspace_optim as so
    opt = so.SubspaceProjectedOptimizer(base, so.HessianOperator(model, loss_fn, data), k=10,
                                        mode="bulk")
"""

from .diagnostics import StepStats, effective_lr_summary
from .eigensolvers import (
    EigenResult,
    Eigensolver,
    EigensolverError,
    Eigh,
    Lanczos,
    PowerIteration,
    available_eigensolvers,
    register_eigensolver,
    resolve_eigensolver,
)
from .operators import (
    DenseOperator,
    DistributedHessianError,
    DistributedHessianOperator,
    HessianOperator,
    LinearOperator,
)
from .optim import SAM, SubspaceProjectedOptimizer
from .schedules import AlignmentSwitch, AtSteps, Decision, Every, RefreshSchedule, resolve_schedule
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
    "AlignmentSwitch",
    "AtSteps",
    "Decision",
    "DenseOperator",
    "DistributedHessianError",
    "DistributedHessianOperator",
    "EigenResult",
    "Eigensolver",
    "EigensolverError",
    "Eigh",
    "Every",
    "HessianOperator",
    "Lanczos",
    "LinearOperator",
    "PowerIteration",
    "RefreshSchedule",
    "SAM",
    "StepStats",
    "SubspaceProjectedOptimizer",
    "__version__",
    "alignment",
    "available_eigensolvers",
    "effective_lr_summary",
    "orthonormalize",
    "principal_angles",
    "project",
    "project_out",
    "register_eigensolver",
    "resolve_eigensolver",
    "resolve_schedule",
    "subspace_distance",
]
