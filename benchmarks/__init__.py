"""The project's measured studies, one package per study (see ``benchmarks/README.md``).

Run a study from the repository root as ``python -m benchmarks.<study> [--quick]``; the
shared machinery (machine line, load, tables, JSON, output folders, BLAS threads) is
:mod:`benchmarks.harness`.
"""
