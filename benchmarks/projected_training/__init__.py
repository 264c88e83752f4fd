"""Dom/Bulk training side by side: the paper's protocol against this library's default.

On the digits setup (1000 examples, the 8,970-parameter MLP, the paper's ``0.5·Σ(f−y)²``
loss, SGD lr 0.1 batch 50, k = 10, switch at step 100, 150 projected steps) and on a small
CNN over digits as 1×8×8 images (500 examples, 40 projected steps: its HVPs are far dearer
on a CPU), plain SGD runs to the switch step; from that one snapshot, with the same mini-batches, run:

* ``sgd``: plain SGD;
* ``reference``: the paper's protocol: before every step a *cold* scipy ``eigsh`` with
  default settings (``which="LM"``, ``tol=0``, ``ncv=max(2k+1, 20)``) on double-backward
  full-batch HVPs written here as the paper's code did; the SGD update is then projected
  onto (Dom) or out of (Bulk) the k eigenvectors;
* ``default``: :class:`~subspace_optim.SubspaceProjectedOptimizer` around the same SGD with
  :class:`~subspace_optim.HessianOperator` over the training set, *every other argument left
  at its default*: whatever the library's default solver, refresh schedule and HVP back end
  are when the script runs (the table prints them);
* lever rows (Bulk only): the default with one choice changed (eigensolver: Lanczos, the
  warm block refresh, LOBPCG; the warm refresh's stopping rule: a residual target
  ``tol=3e-3`` (the former default) or ``1e-2`` instead of the angle target, or a looser
  angle ``sin_tol=0.06``; refreshing every other step; the operator's graph cache off, for
  the default solver and for Lanczos; each HVP back end; float64), to show what each lever
  is worth.

All runs of a setup advance in lockstep (step ``t`` of every run, then ``t + 1``, in an order
that rotates every step), so a change of load on the machine hits every row alike. NumPy's
and SciPy's BLAS run on one thread (``--blas-threads``; see :func:`benchmarks.harness.limit_blas_threads`), so
that ARPACK's idle BLAS threads do not take the cores from the next row. Each row reports the wall time of a whole projected step (mini-batch gradient, refresh,
projection and the library's per-step diagnostics), the Hessian-vector products per step,
the accuracy of the basis actually used (``sin θ_max`` against the exact top-k at the same
parameters, computed offline in float64 with scipy ``eigsh(which="LA", tol=1e-10)`` on a
sample of steps, excluded from the timings) and the final full-batch loss.

Run (about 8 minutes on a quiet 2-core CPU)::

    OMP_NUM_THREADS=2 python -m benchmarks.projected_training --docs docs/performance.md
    python -m benchmarks.projected_training --device cuda     # adds *_cuda results
    python -m benchmarks.projected_training --quick   # smoke test, into a temporary folder
"""
