"""Why the benchmarks cap NumPy/SciPy BLAS at one thread: see :mod:`.run` (``python -m benchmarks.blas_interference``)."""
