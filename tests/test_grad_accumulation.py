"""Gradient accumulation: four micro-batches, then one ``step()``, is one whole-batch step.

The loop users write when a batch does not fit in memory::

    opt.zero_grad()
    for x, y in micro_batches:          # 4 of them
        (loss_fn(model(x), y) / 4).backward()
    opt.step()

``.grad`` then holds the mean gradient of the whole batch, and the wrapper must step exactly
once with it: one refresh, one projection, one base step, nothing done per backward pass
(GaLore users report per-layer steps on every micro-batch). Every mode (Bulk, Dom, the
plain base and an interpolation ``(a, b)``) and every optimizer family of the
compatibility table runs a few steps both ways from the same start; SAM accumulates inside
its closure, and, in the two-call recipe, at ``θ`` and again at ``θ + ε``.

Tolerance: the model and data are float64, the curvature operator and the eigensolver
(``eigh``) are the same objects of the same data in both runs, so the only difference is
the order of the gradient's sums (four means of 2 examples, each divided by 4 and added,
against one mean of 8): a few ulps, ~1e-16 relative. The base updates (including Adam's
and RMSprop's division by ``sqrt(v) + eps``) and the projection onto a basis with
well-separated top eigenvalues pass it on without amplifying it much: over the whole table
the parameters after 3 steps differ by at most 2.6e-15 (measured). ``atol=1e-13`` leaves a
factor of ~40 of margin, and ``rtol=1e-12`` covers the larger parameters; both still fail
on any real difference (a micro-batch's gradient counted twice, or projected with a stale
basis at each backward, moves a parameter by ~1e-3).
"""

from __future__ import annotations

import pytest
import torch
from test_optimizer_matrix import BATCHES, INFOS, build, flat, mse, rows

MICRO = 4
STEPS = BATCHES[:3]  # 8 examples per step: 4 micro-batches of 2
#: Bulk, Dom, the base optimizer itself, and an interpolation a·P_kΔ + b·(Δ − P_kΔ)
MODES = ["bulk", "dominant", "none", (0.5, 2.0)]
TOL = {"rtol": 1e-12, "atol": 1e-13}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def micro_batches(batch: slice) -> list[torch.Tensor]:
    return list(torch.arange(16)[batch].chunk(MICRO))


def accumulate(opt, model, X, Y, batch: slice) -> torch.Tensor:
    """``zero_grad``, then ``loss / 4`` backward for each of the 4 micro-batches of ``batch``;
    returns the whole batch's loss."""
    opt.zero_grad()
    total = torch.zeros((), dtype=torch.float64)
    for part in micro_batches(batch):
        loss = mse(model(X[part]), Y[part]) / MICRO
        loss.backward()
        total += loss.detach()
    return total


def whole(opt, model, X, Y, batch: slice) -> torch.Tensor:
    opt.zero_grad()
    loss = mse(model(X[batch]), Y[batch])
    loss.backward()
    return loss.detach()


def run(info, mode, backward) -> tuple[list[torch.Tensor], object]:
    """3 steps, each ``backward(...)`` then ``step`` (with ``backward`` as the closure for
    SAM); the parameters after every step, and the optimizer."""
    model, X, Y, opt = build(info, mode)
    thetas = []
    for batch in STEPS:

        def closure(batch=batch):
            return backward(opt, model, X, Y, batch)

        closure()
        opt.step(closure if info.closure else None)
        thetas.append(flat(model))
    return thetas, opt


def check_same_run(accumulated, reference) -> None:
    (thetas, opt), (ref_thetas, ref) = accumulated, reference
    for t, (theta, expected) in enumerate(zip(thetas, ref_thetas)):
        torch.testing.assert_close(theta, expected, **TOL, msg=lambda m, t=t: f"step {t}: {m}")
    # one step, one refresh per step() call, not per micro-batch
    assert opt.subspace.step == ref.subspace.step == len(STEPS)
    assert opt.counters["refreshes"] == ref.counters["refreshes"] == len(STEPS)


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("info", rows())
def test_four_accumulated_micro_batches_step_like_the_whole_batch(info, mode):
    reference = run(info, mode, whole)
    moved = reference[0][-1] - flat(build(info, mode)[0])
    assert float(moved.abs().max()) > 1e-4  # the steps did something
    check_same_run(run(info, mode, accumulate), reference)


def two_call_sam_run(info, mode, backward) -> tuple[list[torch.Tensor], object]:
    """SAM without a closure, as a loop that accumulates writes it: the gradient at ``θ``,
    ``first_step``, the gradient at ``θ + ε``, ``unperturb``, then the wrapper's step."""
    model, X, Y, opt = build(info, mode)
    sam = opt.base
    thetas = []
    for batch in STEPS:
        backward(opt, model, X, Y, batch)
        sam.first_step(zero_grad=True)
        backward(opt, model, X, Y, batch)
        sam.unperturb()
        opt.step()
        thetas.append(flat(model))
    return thetas, opt


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("info", rows(closure=True))
def test_sam_two_call_recipe_accumulates_at_both_points(info, mode):
    reference = two_call_sam_run(info, mode, whole)
    check_same_run(two_call_sam_run(info, mode, accumulate), reference)


def test_the_table_covers_every_family():
    """The families above are the compatibility table's, SAM included."""
    names = {i.name for i in INFOS}
    assert {"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"} <= names
    assert any(i.closure for i in INFOS)
