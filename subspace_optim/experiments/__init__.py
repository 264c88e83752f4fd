"""The paper's experiments: data, models and losses, the runner, reports and the CLI's setups.

:func:`run` reproduces the Dom / Bulk experiment on any model; ``subspace-optim reproduce``
calls it on the built-in setups (or on yours, with ``--setup module:function`` returning a
:class:`Setup`), then :func:`write_report` writes the table, metrics and figures.
"""

from .config import RunConfig
from .data import DataUnavailableError, load_cifar10, load_digits, load_mnist
from .families import FAMILIES, Family
from .models import cnn, half_sum_mse, mlp
from .report import format_table, read_report, write_report
from .results import ExperimentResult, FamilyResult, RunSummary, VariantOutcome
from .runner import run
from .setups import SETUPS, Setup, SetupError, load_setup

__all__ = [
    "FAMILIES",
    "SETUPS",
    "DataUnavailableError",
    "ExperimentResult",
    "Family",
    "FamilyResult",
    "RunConfig",
    "RunSummary",
    "Setup",
    "SetupError",
    "VariantOutcome",
    "cnn",
    "format_table",
    "half_sum_mse",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "load_setup",
    "mlp",
    "read_report",
    "run",
    "write_report",
]
