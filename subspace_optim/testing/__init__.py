"""Testing helpers, reusable in your own test suite.

* :mod:`~subspace_optim.testing.faults`: wrappers that inject NaN/Inf into a model, a loss
  or an operator on chosen calls, and eigensolvers that fail to converge, raise or return a
  basis that lost orthonormality;
* :mod:`~subspace_optim.testing.checks`: :class:`StateSnapshot` ("a failed call changed
  nothing"), finiteness and orthonormality checks;
* :mod:`~subspace_optim.testing.strategies`: hypothesis strategies (needs ``hypothesis``).

The project's own reliability catalogue lives in the repository's ``tests/scenarios/`` (it is
not installed).
"""

from .checks import StateSnapshot, all_finite, orthonormality_error
from .faults import SOLVER_FAULTS, FaultyLoss, FaultyModule, FaultyOperator, FaultySolver

__all__ = [
    "SOLVER_FAULTS",
    "FaultyLoss",
    "FaultyModule",
    "FaultyOperator",
    "FaultySolver",
    "StateSnapshot",
    "all_finite",
    "orthonormality_error",
]
