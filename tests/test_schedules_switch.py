"""The paper's switch rule, pinned exactly: :class:`AlignmentSwitch` against a hand computation.

Each test drives the schedule the way the wrapper does (``decide(t)`` then, on a refresh,
``observe(t, χ)``) over a scripted χ sequence, and compares the EMA and the switch step
with values computed here by hand. Each of these deliberate bugs fails at least one test:
the EMA weights swapped (β on the new χ), ``min_steps`` off by one, a forced switch one
step late.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest

from subspace_optim import AlignmentSwitch, Decision, resolve_schedule

#: a scripted χ sequence: low, a jump, then steady near 0.9
CHIS = [0.5, 0.6, 0.95, 0.97, 0.9, 0.93, 0.91, 0.93, 0.9, 0.94, 0.95, 0.96]


def drive(s: AlignmentSwitch, chis: list[float]) -> tuple[list[Decision], list[float | None]]:
    """Run ``s`` over ``chis`` (one per step, used at the refresh steps); decisions and EMAs."""
    decisions, values = [], []
    for t, chi in enumerate(chis):
        d = s.decide(t)
        decisions.append(d)
        s.observe(t, chi if d.refresh else None)
        values.append(s.value)
    return decisions, values


def hand_ema(chis: list[float], beta: float) -> list[float]:
    out: list[float] = []
    for chi in chis:
        out.append(chi if not out else beta * out[-1] + (1 - beta) * chi)
    return out


def test_ema_matches_the_hand_computation_with_beta_on_the_old_value() -> None:
    beta = 0.8
    s = AlignmentSwitch(threshold=1.0, ema=beta, check_every=1, warn_after=None)
    _, values = drive(s, CHIS)
    expected = hand_ema(CHIS, beta)
    # by hand: m_1 = 0.8*0.5 + 0.2*0.6 = 0.52, m_2 = 0.8*0.52 + 0.2*0.95 = 0.606
    assert expected[:3] == pytest.approx([0.5, 0.52, 0.606])
    assert values == pytest.approx(expected, abs=1e-12)
    assert s.switched_at is None  # threshold 1.0 is never reached


def test_switch_step_is_the_step_after_the_first_measurement_at_the_threshold() -> None:
    beta = 0.5
    expected = hand_ema(CHIS, beta)  # 0.5, 0.55, 0.75, 0.86, 0.88, 0.905, ...
    first = next(t for t, m in enumerate(expected) if m >= 0.9)
    assert first == 5 and expected[4] < 0.9
    s = AlignmentSwitch(threshold=0.9, ema=beta, check_every=1)
    drive(s, CHIS[:first])
    assert s.switched_at is None and s.trigger_step is None
    s = AlignmentSwitch(threshold=0.9, ema=beta, check_every=1)
    decisions, values = drive(s, CHIS)
    # the measurement at step `first` triggers; a live loop projects from the next step
    assert s.switched_at == first + 1 and s.trigger_step == first and not s.forced
    assert values[first] == pytest.approx(expected[first])
    assert [d.project for d in decisions] == [t > first for t in range(len(CHIS))]
    assert decisions[first + 1] == Decision(refresh=True, project=True)  # a fresh basis


def test_ema_with_checks_every_third_step_uses_only_the_measured_steps() -> None:
    beta = 0.5
    s = AlignmentSwitch(threshold=0.9, ema=beta, check_every=3)
    decisions, values = drive(s, CHIS)
    measured = [CHIS[t] for t in (0, 3, 6, 9)]  # 0.5, 0.97, 0.91, 0.94
    ema = hand_ema(measured, beta)  # 0.5, 0.735, 0.8225, 0.88125: never 0.9
    assert [d.refresh for d in decisions] == [t % 3 == 0 for t in range(len(CHIS))]
    assert values[-1] == pytest.approx(ema[-1])
    assert s.switched_at is None


@pytest.mark.parametrize("min_steps, expected", [(0, 6), (6, 6), (7, 7), (9, 9)])
def test_min_steps_is_the_earliest_projected_step(min_steps: int, expected: int) -> None:
    # the EMA (β = 0.5) reaches 0.9 at step 5 and stays above it: the switch is at step 6,
    # or at min_steps when that is later, exactly
    s = AlignmentSwitch(threshold=0.9, ema=0.5, check_every=1, min_steps=min_steps)
    decisions, values = drive(s, CHIS)
    assert all(v >= 0.9 for v in values[5:10])
    assert s.switched_at == expected and s.trigger_step == expected - 1
    assert [d.project for d in decisions].index(True) == expected


@pytest.mark.parametrize("max_steps", [0, 1, 4, 7])
def test_a_forced_switch_projects_from_step_max_steps_exactly(max_steps: int) -> None:
    s = AlignmentSwitch(threshold=1.0, ema=0.5, check_every=1, max_steps=max_steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decisions, _ = drive(s, CHIS)
    assert s.switched_at == max_steps and s.forced
    assert s.trigger_step is None  # no measurement triggered it
    assert [d.project for d in decisions] == [t >= max_steps for t in range(len(CHIS))]
    assert decisions[max_steps].refresh  # the first projected step has a fresh basis
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and f"switch forced at step {max_steps}" in messages[0]


def test_no_forcing_when_the_threshold_is_reached_first() -> None:
    s = AlignmentSwitch(threshold=0.9, ema=0.5, check_every=1, max_steps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drive(s, CHIS)
    assert s.switched_at == 6 and not s.forced


def test_checks_that_keep_failing_warn_once() -> None:
    s = AlignmentSwitch(threshold=0.99, ema=0.9, check_every=2, warn_after=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drive(s, [0.5] * 12)  # measured at steps 0, 2, ..., 10: six failed checks
    assert s.failed_checks == 6 and s.switched_at is None
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "3 χ_k measurements" in msg and "step 4" in msg and "max_steps" in msg


def test_warning_can_be_disabled_and_state_round_trips() -> None:
    s = AlignmentSwitch(threshold=0.99, check_every=1, warn_after=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drive(s, [0.5] * 80)
    fresh = AlignmentSwitch(threshold=0.99, check_every=1, warn_after=None)
    fresh.load_state_dict(s.state_dict())
    assert fresh.state_dict() == s.state_dict()
    assert fresh.failed_checks == 80 and fresh.value == pytest.approx(0.5)


def test_defaults_do_not_solve_every_step_and_warn_when_stuck() -> None:
    s = resolve_schedule("switch")
    assert isinstance(s, AlignmentSwitch)
    assert s.threshold == 0.95 and s.ema == 0.9 and s.check_every == 10
    assert s.max_steps is None and s.warn_after == 50
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drive(s, [0.3] * 500)  # 50 measurements
    assert len(caught) == 1 and "50 χ_k measurements" in str(caught[0].message)


def test_nan_measurements_are_ignored() -> None:
    s = AlignmentSwitch(threshold=0.9, ema=0.5, check_every=1)
    drive(s, [0.8, math.nan, 1.0])
    assert s.value == pytest.approx(0.9) and s.switched_at == 3


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"ema": 1.0}, "ema"),
        ({"check_every": 0}, "check_every"),
        ({"warn_after": 0}, "warn_after"),
        ({"max_steps": -1}, "max_steps"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        AlignmentSwitch(**kwargs)


@pytest.mark.parametrize(
    "kwargs, cut, switched_at, forced",
    [
        # the EMA (β = 0.5) reaches 0.9 at step 5: projection from step 6, refresh every 3
        ({"threshold": 0.9, "ema": 0.5, "check_every": 1, "every": 3}, 8, 6, False),
        # never reached: forced at step 4, refresh every 2 (the checks ran every 3rd step)
        ({"threshold": 1.0, "ema": 0.5, "check_every": 3, "every": 2, "max_steps": 4}, 7, 4, True),
        # cut before the switch: the restored EMA alone must bring the switch at step 6
        ({"threshold": 0.9, "ema": 0.5, "check_every": 1, "every": 2}, 3, 6, False),
    ],
    ids=["after-triggered-switch", "after-forced-switch", "before-the-switch"],
)
def test_state_round_trips_after_a_switch_and_decides_identically(
    kwargs: dict, cut: int, switched_at: int, forced: bool
) -> None:
    """A schedule saved at step ``cut`` and loaded into a fresh one: the same state (with
    ``switched_at`` set on both sides once the switch happened), and from there the same
    decisions, EMA, switch step and trigger step as the schedule that ran on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the forced switch warns (tested above)
        s = AlignmentSwitch(**kwargs)
        first, _ = drive(s, CHIS[:cut])
        state = s.state_dict()
        fresh = AlignmentSwitch(**kwargs)
        fresh.load_state_dict(state)
        assert fresh.state_dict() == state
        if cut > switched_at:
            assert state["switched_at"] == switched_at and fresh.switched_at == switched_at
            assert fresh.forced is forced and fresh.trigger_step == s.trigger_step
        else:
            assert state["switched_at"] is None and fresh.value == s.value is not None
        rest = []
        for t in range(cut, len(CHIS)):
            d, e = s.decide(t), fresh.decide(t)
            assert d == e, f"step {t}"
            rest.append(d)
            s.observe(t, CHIS[t] if d.refresh else None)
            fresh.observe(t, CHIS[t] if e.refresh else None)
            assert fresh.value == s.value
    assert fresh.state_dict() == s.state_dict()
    assert fresh.switched_at == switched_at and fresh.forced is forced
    decisions = first + rest
    assert [d.project for d in decisions] == [t >= switched_at for t in range(len(CHIS))]
    every = kwargs["every"]
    projected_refreshes = [t for t, d in enumerate(decisions) if d.project and d.refresh]
    assert projected_refreshes == list(range(switched_at, len(CHIS), every))


# ---------------------------------------------------------------- mutation kills (issue 26)
# Every and AtSteps were tested only by their doctests, which the mutation run does not use.
def test_every_refreshes_on_its_period_from_start_and_projects_from_start() -> None:
    from subspace_optim import Every

    s = Every(3, start=2)
    got = [(s.decide(t).refresh, s.decide(t).project) for t in range(9)]
    assert got == [
        (False, False),
        (False, False),
        (True, True),
        (False, True),
        (False, True),
        (True, True),
        (False, True),
        (False, True),
        (True, True),
    ]
    assert all(Every().decide(t) == Decision(refresh=True, project=True) for t in range(4))
    assert repr(s) == "Every(3, start=2)"


def test_at_steps_sorts_and_deduplicates_and_projects_from_the_first() -> None:
    from subspace_optim import AtSteps

    s = AtSteps([5, 2, 5, 9])
    assert s.steps == frozenset({2, 5, 9}) and s.first == 2
    got = [(s.decide(t).refresh, s.decide(t).project) for t in range(1, 11)]
    want = [(t in (2, 5, 9), t >= 2) for t in range(1, 11)]
    assert got == want
    assert repr(s) == "AtSteps([2, 5, 9])"
    assert AtSteps([0]).decide(0) == Decision(refresh=True, project=True)
    with pytest.raises(ValueError, match="at least one step"):
        AtSteps([])
    with pytest.raises(ValueError):
        AtSteps([3, -1])
    with pytest.raises(TypeError):
        AtSteps([1.5])


def test_load_state_dict_of_an_empty_state_is_the_fresh_schedule() -> None:
    s = AlignmentSwitch(threshold=0.9, ema=0.5, check_every=1)
    drive(s, [0.95, 0.99])
    s.load_state_dict({})
    assert (s.value, s.switched_at, s.forced, s.failed_checks) == (None, None, False, 0)
    assert s.state_dict() == AlignmentSwitch().state_dict()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, r"^threshold must be > 0"),
        ({"threshold": "high"}, r"^threshold must be a number"),
        ({"ema": -0.5}, r"^ema must be >= 0"),
        ({"check_every": 0}, r"^check_every must be >= 1"),
        ({"every": 0}, r"^every must be >= 1"),
        ({"min_steps": -1}, r"^min_steps must be >= 0"),
        ({"max_steps": -1}, r"^max_steps must be >= 0"),
        ({"min_steps": 50, "max_steps": 10}, r"^max_steps=10 is before min_steps=50"),
    ],
)
def test_each_refusal_names_its_argument_and_its_bound(kwargs: dict, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        AlignmentSwitch(**kwargs)


def test_documented_defaults_and_an_ema_of_zero() -> None:
    s = AlignmentSwitch()
    assert (s.threshold, s.ema, s.check_every, s.every, s.min_steps, s.max_steps) == (
        0.95,
        0.9,
        10,
        1,
        0,
        None,
    )
    assert AlignmentSwitch(ema=0.0).ema == 0.0  # no smoothing is allowed


def test_refreshes_after_the_switch_count_from_the_switch_step() -> None:
    s = AlignmentSwitch(threshold=0.9, ema=0.0, check_every=1, every=3)
    drive(s, [0.5, 0.5, 0.5, 0.95])  # switch at step 4
    assert s.switched_at == 4
    assert [s.decide(t).refresh for t in range(4, 11)] == [
        True,
        False,
        False,
        True,
        False,
        False,
        True,
    ]


def _points_at_the_caller(filename: str) -> None:
    """stacklevel=2: the warning names the caller's line, not schedules.py. Under mutmut a
    trampoline sits between the two, so there it can only check the second half."""
    assert not filename.endswith("schedules.py")
    if "MUTANT_UNDER_TEST" not in os.environ:
        assert filename == __file__


def test_the_forced_switch_warning_says_what_was_reached_and_points_at_the_caller() -> None:
    s = AlignmentSwitch(threshold=0.99, max_steps=3, check_every=1)
    with pytest.warns(UserWarning, match=r"not reached \(no measurement\)") as caught:
        s.decide(3)
    _points_at_the_caller(caught[0].filename)
    s = AlignmentSwitch(threshold=0.99, ema=0.0, max_steps=3, check_every=1)
    s.observe(0, 0.5)
    with pytest.warns(UserWarning, match=r"not reached \(an EMA of 0\.5\)"):
        s.decide(3)


def test_the_stuck_warning_says_what_to_change_and_points_at_the_caller() -> None:
    s = AlignmentSwitch(threshold=0.99, ema=0.0, check_every=1, warn_after=2)
    s.observe(0, 0.5)
    with pytest.warns(UserWarning, match=r"or raise check_every to measure less often$") as caught:
        s.observe(1, 0.5)
    _points_at_the_caller(caught[0].filename)


def test_every_at_steps_and_resolve_schedule_refusals_and_names() -> None:
    from subspace_optim import AtSteps, Every

    for build, message in [
        (lambda: Every(0), r"^n must be >= 1"),
        (lambda: Every(1, start=-1), r"^start must be >= 0"),
        (lambda: AtSteps([-1]), r"^step must be >= 0"),
        (lambda: AtSteps([]), r"^AtSteps needs at least one step$"),
        (lambda: AlignmentSwitch(warn_after=0), r"^warn_after must be >= 1"),
        (lambda: resolve_schedule("bogus"), r"^unknown refresh schedule 'bogus'"),
    ]:
        with pytest.raises(ValueError, match=message):
            build()
    assert repr(resolve_schedule(None)) == repr(resolve_schedule("every")) == "Every(1, start=0)"
    assert isinstance(resolve_schedule("switch"), AlignmentSwitch)


def test_a_threshold_reached_before_min_steps_is_no_failed_check() -> None:
    """Measurements whose EMA reaches the threshold but come before ``min_steps`` wait for
    it: they do not count towards ``warn_after``, so no warning tells the user to lower a
    threshold that was reached; the switch comes at ``min_steps``."""
    s = AlignmentSwitch(threshold=0.9, ema=0.0, check_every=1, min_steps=5, warn_after=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in range(5):
            s.decide(t)
            s.observe(t, 0.99)
    assert s.failed_checks == 0 and s.switched_at == 5
