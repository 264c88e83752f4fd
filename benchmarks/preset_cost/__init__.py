"""What each ``reproduce`` preset costs on this machine, at a few ``--examples N``:
``python -m benchmarks.preset_cost`` (issue 24).

For each preset and N it runs :func:`subspace_optim.experiments.run` with the preset's
settings, SGD only, a fixed switch at step 100 (χ_k measured every ``check_every`` steps of
the preset before it) and 30 steps of base / Dom / Bulk after it, and records the seconds
per step of each phase (the projected runs' first step, a cold start of the eigensolver,
separately). From those it estimates the preset's protocol on N examples: a switch near
step 2,000 (the presets force it there) and 200 steps of each run after it. The table
goes into README.md between the ``preset-cost`` markers, with the machine and its load.

Run (one torch thread)::

    OMP_NUM_THREADS=1 python -m benchmarks.preset_cost
    python -m benchmarks.preset_cost --render      # README block from the saved JSON
    python -m benchmarks.preset_cost --quick       # seconds, a temporary folder
"""
