"""The library's eigensolvers against scipy ``eigsh`` and the anchor libraries: see
:mod:`.run` (``python -m benchmarks.eigensolvers``)."""
