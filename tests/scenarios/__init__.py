"""The project's reliability catalogue: bad inputs, injected numerical faults, determinism and
a soak, each runnable on its own and reported as a typed outcome.

``tests/test_bad_input.py``, ``tests/test_reliability.py``, ``tests/test_soak.py`` and
``benchmarks/reliability/`` run the same cases, so the documented table is what the
tests check. Everything runs on a tiny float64 MLP (4-6-3, tanh, 51 parameters) in seconds.
It lives with the tests, not in the installed package; import it as ``scenarios`` with
``tests/`` on ``sys.path`` (pytest puts it there for the test files).

Example:
    >>> from scenarios import BAD_INPUTS, run_bad_input
    >>> outcome = run_bad_input(BAD_INPUTS[0])
    >>> outcome.ok, outcome.raised
    (True, 'ValueError')
"""

from .bad_input import BAD_INPUTS, BadInput, BadInputOutcome, Trial, run_bad_input
from .fault_cases import FAULT_COUNTERS, FAULTS, FaultCase, FaultOutcome, run_fault
from .longrun import (
    DETERMINISM_CONFIGS,
    ResumeOutcome,
    SoakOutcome,
    resume_check,
    setup_factory,
    soak,
    soak_resumed,
)
from .problem import checkpoint_bytes, digits_problem, load_bytes, mse, tiny_problem, train

__all__ = [
    "BAD_INPUTS",
    "DETERMINISM_CONFIGS",
    "FAULTS",
    "FAULT_COUNTERS",
    "BadInput",
    "BadInputOutcome",
    "FaultCase",
    "FaultOutcome",
    "ResumeOutcome",
    "SoakOutcome",
    "Trial",
    "checkpoint_bytes",
    "digits_problem",
    "load_bytes",
    "mse",
    "resume_check",
    "run_bad_input",
    "run_fault",
    "setup_factory",
    "soak",
    "soak_resumed",
    "tiny_problem",
    "train",
]
