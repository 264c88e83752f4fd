"""The cost of a Bulk-projected step on the paper's three setups at their sizes: see
:mod:`.run` (``python -m benchmarks.paper_scale``)."""
