"""The reliability report (bad input, injected faults, determinism, accumulation, the soak):
see :mod:`.run` (``python -m benchmarks.reliability``)."""
