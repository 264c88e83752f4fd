"""Pieces of the language-model speed-up study (``benchmarks/lm_speedup.py``, issue 23):
``text`` (the corpus and its batches), ``gpt`` (the model), ``arms`` (the table of
optimizers compared), ``train`` (one run), ``oracle`` (the small Hessian-oracle table),
``metrics`` (what the report computes from the runs), ``report`` (tables, figures, page)."""
