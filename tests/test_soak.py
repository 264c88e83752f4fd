"""Long runs: projected training with a refresh at every step keeps memory, Python objects,
autograd graphs and step time flat.

The default run soaks 160 steps; the 2,000-step soak is marked ``slow``
(``pytest -m slow tests/test_soak.py``). The resumed soak (segments in fresh processes,
faults injected) runs 3 segments of 20 steps here; the reliability report runs 5,000 steps.
"""

from __future__ import annotations

import statistics

import pytest
from scenarios import soak, soak_resumed


def _check_flat(outcome, *, max_time_ratio):
    assert outcome.params_finite
    assert outcome.loss_last < outcome.loss_first
    # the first window warms up (allocator pools, lazy imports); compare against the second
    base = 1
    assert outcome.graph_tensors[-1] <= outcome.graph_tensors[base], outcome.graph_tensors
    assert outcome.objects[-1] - outcome.objects[base] <= 20, outcome.objects
    assert outcome.rss_mb[-1] - outcome.rss_mb[base] <= 8.0, outcome.rss_mb
    # the work per step is constant...
    assert len(set(outcome.matvecs_per_step)) == 1, outcome.matvecs_per_step
    # ...and so is its time: medians of this process's CPU time per window (wall time on a
    # shared machine also measures the other processes)
    cpu = outcome.step_cpu_ms
    assert cpu[-1] <= max_time_ratio * min(cpu[base:-1]), cpu


def test_soak_160_steps_refresh_every_step():
    outcome = soak(160, windows=4)
    assert outcome.steps == 160
    _check_flat(outcome, max_time_ratio=4.0)


def test_soak_notices_a_leak():
    """The measurement can fail: keeping each step's loss (with its graph) is seen."""
    kept = []
    outcome = soak(30, windows=3, on_step=kept.append)
    assert outcome.graph_tensors[-1] >= outcome.graph_tensors[1] + 10
    assert outcome.objects[-1] > outcome.objects[1] + 10
    with pytest.raises(AssertionError):
        _check_flat(outcome, max_time_ratio=4.0)


@pytest.mark.slow
def test_soak_2000_steps_refresh_every_step():
    outcome = soak(2000, windows=10)
    assert outcome.steps == 2000
    _check_flat(outcome, max_time_ratio=2.0)
    # no trend in step time: the later half is not slower than the earlier half
    cpu = outcome.step_cpu_ms
    half = len(cpu) // 2
    assert statistics.median(cpu[half:]) <= 1.5 * statistics.median(cpu[1:half]), cpu


def test_soak_resumed_in_new_processes_with_faults():
    """Three segments of 20 steps, each in a fresh process that loads the previous one's
    checkpoint; every 5th Hessian product is NaN and the loss raises once inside a refresh."""
    outcome = soak_resumed(
        60, segments=3, windows_per_segment=1, problem="tiny", nan_every=5, raise_at=25
    )
    assert (outcome.steps, outcome.segments, outcome.resumes) == (60, 3, 2)
    assert outcome.params_finite
    assert outcome.loss_last < outcome.loss_first
    # one block product per step: 12 of the 60 are NaN, each a fault the wrapper handled
    assert outcome.injected["nan_products"] == 12
    assert outcome.counters["faults"] == 12
    assert outcome.counters["refreshes"] == 60  # counters carried across the resumes
    assert outcome.counters["skipped_steps"] == 0
    assert outcome.injected["loss_raises"] == 1
    assert outcome.injected["raises_propagated"] == 1
    assert outcome.injected["params_untouched_after_raise"] == 1
    assert set(outcome.graph_tensors) == {0}
    assert max(outcome.tensors) - min(outcome.tensors) <= 10, outcome.tensors
