"""What one Hessian-vector product costs per column, per back end: see :mod:`.run` (``python -m benchmarks.hvp``)."""
