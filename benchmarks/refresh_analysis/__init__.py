"""What a per-step refresh must spend to keep the basis within sin θ: see :mod:`.run` (``python -m benchmarks.refresh_analysis``)."""
