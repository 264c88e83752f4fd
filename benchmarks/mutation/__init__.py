"""Mutation testing with mutmut and the page that reports it: see :mod:`.run`
(``python -m benchmarks.mutation``)."""
