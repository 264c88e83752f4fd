"""The language-model speed-up study (issue 23; ``python -m benchmarks.lm_speedup``):
``run`` (the study, its command line),
``text`` (the corpus and its batches), ``gpt`` (the model), ``arms`` (the table of
optimizers compared), ``train`` (one run), ``oracle`` (the small Hessian-oracle table),
``metrics`` (what the report computes from the runs), ``report`` (tables, figures, page)."""
