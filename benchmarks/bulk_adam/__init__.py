"""Why Bulk-Adam stalls on digits: see :mod:`.run` (``python -m benchmarks.bulk_adam``)."""
