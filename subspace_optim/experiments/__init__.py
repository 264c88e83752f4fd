"""The paper's experiments: data, models and losses, and the runner behind the CLI.

:func:`run` reproduces the Dom / Bulk experiment on any model; ``subspace-optim reproduce``
calls it on the built-in setups (or on yours, with ``--setup module:function``).
"""

from .config import RunConfig
from .data import load_digits
from .families import FAMILIES, Family
from .models import half_sum_mse, mlp
from .results import ExperimentResult, FamilyResult, RunSummary
from .runner import run

__all__ = [
    "FAMILIES",
    "ExperimentResult",
    "Family",
    "FamilyResult",
    "RunConfig",
    "RunSummary",
    "half_sum_mse",
    "load_digits",
    "mlp",
    "run",
]
