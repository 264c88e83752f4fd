"""Peak memory of a full-dataset block product against ``chunk_size`` and block width: see
:mod:`.run` (``python -m benchmarks.memory``)."""
