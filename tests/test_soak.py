"""Long runs: projected training with a refresh at every step keeps memory, Python objects,
autograd graphs and step time flat.

The default run soaks 200 steps; the 2,000-step soak is marked ``slow``
(``pytest -m slow tests/test_soak.py``).
"""

from __future__ import annotations

import statistics

import pytest

from subspace_optim.testing.scenarios import soak


def _check_flat(outcome, *, max_time_ratio):
    assert outcome.params_finite
    assert outcome.loss_last < outcome.loss_first
    # the first window warms up (allocator pools, lazy imports); compare against the second
    base = 1
    assert outcome.graph_tensors[-1] <= outcome.graph_tensors[base], outcome.graph_tensors
    assert outcome.objects[-1] - outcome.objects[base] <= 20, outcome.objects
    assert outcome.rss_mb[-1] - outcome.rss_mb[base] <= 8.0, outcome.rss_mb
    # medians per window; a ratio, so a uniformly loaded machine does not matter
    assert outcome.step_ms[-1] <= max_time_ratio * min(outcome.step_ms[base:-1]), outcome.step_ms


def test_soak_200_steps_refresh_every_step():
    outcome = soak(200, windows=4)
    assert outcome.steps == 200
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
    half = len(outcome.step_ms) // 2
    assert statistics.median(outcome.step_ms[half:]) <= 1.5 * statistics.median(
        outcome.step_ms[1:half]
    )
