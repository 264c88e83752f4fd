"""Full-batch GD at the Edge of Stability, and Dom-GD / Bulk-GD there: see :mod:`.run`
(``python -m benchmarks.eos``)."""
