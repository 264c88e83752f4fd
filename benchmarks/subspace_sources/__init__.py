"""Which subspace matters: Hessian, GGN and gradient-covariance bases; see :mod:`.run`
(``python -m benchmarks.subspace_sources``)."""
