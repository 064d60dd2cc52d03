"""Tests of the sans-IO restart policy: backoff schedule, healthy reset, intensity, jitter, validation."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from codex_trio._errors import ConfigError, RuntimeGaveUp
from codex_trio._policy import RestartDecision, RestartPolicy, RestartStatistics, RestartTracker


def crash_loop(tracker: RestartTracker, failures: int, start: float = 0.0) -> list[RestartDecision]:
    """Sessions that fail as soon as they start; each restart happens exactly after its delay."""
    now = start
    decisions = []
    for i in range(failures):
        tracker.session_started(now)
        decision = tracker.session_failed(now, RuntimeError(f"crash {i}"))
        decisions.append(decision)
        if decision.give_up:
            break
        now += decision.delay
    return decisions


# --- backoff schedule ---------------------------------------------------------------------------------------


def test_default_schedule_is_exponential_and_capped() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=100))
    decisions = crash_loop(tracker, 8)
    assert [d.delay for d in decisions] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert [d.attempt for d in decisions] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert not any(d.give_up for d in decisions)
    assert tracker.attempt == 8


def test_default_policy_values() -> None:
    policy = RestartPolicy()
    assert (policy.base_delay, policy.factor, policy.max_delay, policy.jitter, policy.seed) == (
        1.0,
        2.0,
        30.0,
        0.0,
        None,
    )
    assert (policy.max_restarts, policy.within, policy.healthy_after) == (10, 300.0, 60.0)


def test_default_intensity_stops_a_hard_crash_loop_after_ten_restarts() -> None:
    # The docstring's claim: failures at t=0,1,3,...,151 are restarted; the 11th, at t=181, gives up.
    decisions = crash_loop(RestartTracker(RestartPolicy()), 20)
    assert len(decisions) == 11
    assert [d.give_up for d in decisions] == [False] * 10 + [True]
    assert sum(d.delay for d in decisions[:10]) == 181


def test_backoff_helper() -> None:
    policy = RestartPolicy(base_delay=0.5, factor=3.0, max_delay=10.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10.0]
    assert policy.backoff(10_000) == 10.0  # no OverflowError for huge attempt numbers
    assert RestartPolicy(base_delay=0.0, max_delay=0.0).backoff(10_000) == 0.0
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        policy.backoff(0)


def test_immediate_policy_never_waits_but_keeps_intensity() -> None:
    decisions = crash_loop(RestartTracker(RestartPolicy.immediate(max_restarts=3, within=10.0)), 10)
    assert [d.delay for d in decisions] == [0, 0, 0, 0]
    assert [d.give_up for d in decisions] == [False, False, False, True]


# --- healthy-period reset -----------------------------------------------------------------------------------


def test_healthy_session_resets_the_attempt_counter() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=100))
    assert [d.delay for d in crash_loop(tracker, 3)] == [1, 2, 4]  # t ends at 3 (+4 pending)
    tracker.session_started(7.0)
    tracker.session_ready(8.0)
    decision = tracker.session_failed(68.0, RuntimeError("after a healthy minute"))
    assert (decision.attempt, decision.delay) == (1, 1.0)
    assert tracker.attempt == 1
    # The counter grows again from there.
    tracker.session_started(69.0)
    assert tracker.session_failed(69.0, RuntimeError("x")).delay == 2.0


def test_session_ready_slightly_too_short_does_not_reset() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=100))
    crash_loop(tracker, 3)
    tracker.session_started(7.0)
    tracker.session_ready(8.0)
    decision = tracker.session_failed(67.75, RuntimeError("59.75 s ready"))
    assert (decision.attempt, decision.delay) == (4, 8.0)


def test_a_session_that_never_became_ready_is_not_healthy() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=100))
    crash_loop(tracker, 3)
    tracker.session_started(7.0)
    # ten minutes stuck in setup: no session_ready, so no reset
    assert tracker.session_failed(607.0, RuntimeError("setup hung")).attempt == 4


def test_healthy_period_is_measured_from_the_first_ready() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=100))
    crash_loop(tracker, 2)
    tracker.session_started(3.0)
    tracker.session_ready(3.0)
    tracker.session_ready(50.0)  # a repeated ready call does not restart the healthy clock
    assert tracker.session_failed(63.0, RuntimeError("x")).attempt == 1


def test_ready_of_a_previous_session_does_not_leak_into_the_next() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=100))
    tracker.session_started(0.0)
    tracker.session_ready(0.0)
    tracker.session_failed(1.0, RuntimeError("short-lived"))  # attempt 1
    tracker.session_started(2.0)  # never ready
    assert tracker.session_failed(100.0, RuntimeError("x")).attempt == 2


def test_healthy_after_zero_resets_on_every_ready_session() -> None:
    tracker = RestartTracker(RestartPolicy(healthy_after=0.0, max_restarts=100))
    for t in range(5):
        tracker.session_started(float(t))
        tracker.session_ready(float(t))
        assert tracker.session_failed(float(t), RuntimeError("x")).delay == 1.0


# --- restart intensity --------------------------------------------------------------------------------------


def test_intensity_allows_exactly_max_restarts_in_the_window() -> None:
    tracker = RestartTracker(RestartPolicy.immediate(max_restarts=3, within=10.0))
    for t in (0.0, 1.0, 2.0):
        tracker.session_started(t)
        assert not tracker.session_failed(t, RuntimeError(f"t={t}")).give_up
    tracker.session_started(9.5)
    decision = tracker.session_failed(9.5, RuntimeError("fourth within 10 s"))
    assert decision.give_up
    assert decision.delay == 0.0
    assert "max_restarts=3" in decision.reason
    assert tracker.statistics() == RestartStatistics(attempts=3, total_restarts=3, given_up=True, last_delay=0.0)


def test_a_restart_exactly_within_seconds_ago_no_longer_counts() -> None:
    tracker = RestartTracker(RestartPolicy.immediate(max_restarts=3, within=10.0))
    for t in (0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 20.0):
        tracker.session_started(t)
        assert not tracker.session_failed(t, RuntimeError(f"t={t}")).give_up, t
    tracker.session_started(20.5)
    assert tracker.session_failed(20.5, RuntimeError("x")).give_up  # 11, 12, 20 and this one


def test_restarts_spaced_beyond_the_window_never_give_up() -> None:
    tracker = RestartTracker(RestartPolicy.immediate(max_restarts=1, within=10.0))
    for i in range(50):
        tracker.session_started(11.0 * i)
        assert not tracker.session_failed(11.0 * i, RuntimeError("x")).give_up
    assert tracker.statistics().total_restarts == 50


def test_max_restarts_zero_never_restarts() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=0))
    tracker.session_started(0.0)
    cause = RuntimeError("first failure")
    decision = tracker.session_failed(0.0, cause)
    assert decision.give_up
    assert decision.causes == (cause,)
    assert "restarts are disabled" in decision.reason


def test_intensity_counts_restarts_across_healthy_resets() -> None:
    # Each session is healthy (so each delay is base_delay) but they die too often: intensity still trips.
    tracker = RestartTracker(RestartPolicy(max_restarts=2, within=1000.0, healthy_after=5.0))
    decisions = []
    for t in (0.0, 10.0, 20.0):
        tracker.session_started(t)
        tracker.session_ready(t)
        decisions.append(tracker.session_failed(t + 5.0, RuntimeError("x")))
    assert [(d.give_up, d.delay) for d in decisions] == [(False, 1.0), (False, 1.0), (True, 0.0)]


# --- give-up is final ---------------------------------------------------------------------------------------


def test_give_up_is_sticky() -> None:
    tracker = RestartTracker(RestartPolicy.immediate(max_restarts=1, within=10.0))
    first, second = crash_loop(tracker, 2)
    assert not first.give_up and second.give_up
    # A late second report of the same crash gets the very same answer and changes nothing.
    assert tracker.session_failed(1000.0, RuntimeError("late report")) is second
    assert tracker.causes == second.causes
    with pytest.raises(RuntimeGaveUp, match="already gave up") as excinfo:
        tracker.session_started(1000.0)
    assert excinfo.value.causes == list(second.causes)
    with pytest.raises(RuntimeGaveUp):
        tracker.session_ready(1000.0)
    assert tracker.given_up and tracker.statistics().given_up


def test_give_up_decision_converts_to_runtime_gave_up() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=0))
    cause = OSError("codex crashed")
    error = tracker.session_failed(0.0, cause).to_error()
    assert isinstance(error, RuntimeGaveUp)
    assert error.causes == [cause]
    assert "OSError: codex crashed" in str(error)


def test_a_restart_decision_is_not_an_error() -> None:
    decision = RestartTracker(RestartPolicy()).session_failed(0.0, RuntimeError("x"))
    with pytest.raises(ValueError, match="only a give-up decision"):
        decision.to_error()


# --- bookkeeping --------------------------------------------------------------------------------------------


def test_causes_are_bounded_and_oldest_first() -> None:
    tracker = RestartTracker(RestartPolicy.immediate(max_restarts=100), max_causes=3)
    errors = [RuntimeError(str(i)) for i in range(5)]
    for e in errors:
        decision = tracker.session_failed(0.0, e)
    assert tracker.causes == tuple(errors[2:])
    assert decision.causes == tuple(errors[2:])
    assert decision.cause is errors[4]
    with pytest.raises(ValueError, match="max_causes"):
        RestartTracker(RestartPolicy(), max_causes=0)


def test_statistics() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=100))
    assert tracker.statistics() == RestartStatistics(attempts=0, total_restarts=0, given_up=False, last_delay=None)
    crash_loop(tracker, 3)
    assert tracker.statistics() == RestartStatistics(attempts=3, total_restarts=3, given_up=False, last_delay=4.0)


def test_time_must_not_go_backwards() -> None:
    tracker = RestartTracker(RestartPolicy())
    tracker.session_started(5.0)
    with pytest.raises(ValueError, match="time went backwards"):
        tracker.session_failed(4.0, RuntimeError("x"))


# --- jitter -------------------------------------------------------------------------------------------------


def jittered_delays(seed: int | None, jitter: float = 0.5, n: int = 8) -> list[float]:
    policy = RestartPolicy(jitter=jitter, seed=seed, max_restarts=100)
    return [d.delay for d in crash_loop(RestartTracker(policy), n)]


def test_jitter_is_deterministic_with_a_seed() -> None:
    assert jittered_delays(seed=42) == jittered_delays(seed=42)
    assert jittered_delays(seed=42) != jittered_delays(seed=43)


def test_jitter_spreads_delays_within_bounds() -> None:
    delays = jittered_delays(seed=7, jitter=0.5)
    nominal = [1, 2, 4, 8, 16, 30, 30, 30]
    assert delays != nominal
    for delay, base in zip(delays, nominal, strict=True):
        assert base * 0.5 <= delay <= base * 1.5


def test_jitter_covers_both_sides_of_the_nominal_delay() -> None:
    # A constant nominal delay of 1 s, so every draw is 1 + U(-0.5, 0.5); seeded, so deterministic.
    policy = RestartPolicy(base_delay=1.0, max_delay=1.0, jitter=0.5, seed=1, max_restarts=1000)
    delays = [d.delay for d in crash_loop(RestartTracker(policy), 200)]
    assert min(delays) < 0.55
    assert max(delays) > 1.45
    assert 0.9 < sum(delays) / len(delays) < 1.1


@given(
    seed=st.integers(),
    jitter=st.floats(0.0, 1.0),
    base=st.floats(0.0, 100.0),
    factor=st.floats(1.0, 10.0),
)
@settings(max_examples=100, deadline=None)
def test_jitter_bounds_property(seed: int, jitter: float, base: float, factor: float) -> None:
    policy = RestartPolicy(
        base_delay=base, factor=factor, max_delay=base * 2, jitter=jitter, seed=seed, max_restarts=100
    )
    for decision in crash_loop(RestartTracker(policy), 10):
        assert 0.0 <= decision.delay <= policy.max_delay * (1 + jitter)
        assert_jitter_bounds(decision.delay, policy.backoff(decision.attempt), jitter)


def assert_jitter_bounds(delay: float, nominal: float, jitter: float) -> None:
    """``delay`` is ``nominal * (1 + u)`` for some ``|u| <= jitter`` (up to float rounding)."""
    slack = 1e-9 * nominal
    assert nominal * (1 - jitter) - slack <= delay <= nominal * (1 + jitter) + slack


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"base_delay": -1.0}, "base_delay", "RestartPolicy.base_delay must be >= 0 (got -1.0)"),
        ({"base_delay": math.nan}, "base_delay", "must be a finite number"),
        ({"base_delay": "1"}, "base_delay", "must be a number (got '1')"),
        ({"factor": 0.5}, "factor", "RestartPolicy.factor must be >= 1 (got 0.5)"),
        (
            {"base_delay": 1.0, "max_delay": 0.5},
            "max_delay",
            "RestartPolicy.max_delay must be >= base_delay (got 0.5 < 1.0)",
        ),
        ({"max_delay": math.inf}, "max_delay", "must be a finite number"),
        ({"jitter": 1.5}, "jitter", "RestartPolicy.jitter must be between 0 and 1 (got 1.5)"),
        ({"jitter": -0.1}, "jitter", "between 0 and 1"),
        ({"seed": 1.5}, "seed", "RestartPolicy.seed must be an int or None (got 1.5)"),
        ({"max_restarts": -1}, "max_restarts", "RestartPolicy.max_restarts must be >= 0"),
        ({"max_restarts": 2.0}, "max_restarts", "must be an int (got 2.0)"),
        ({"max_restarts": True}, "max_restarts", "must be an int (got True)"),
        ({"within": 0.0}, "within", "RestartPolicy.within must be > 0 seconds (got 0.0)"),
        ({"healthy_after": -1.0}, "healthy_after", "RestartPolicy.healthy_after must be >= 0"),
    ],
)
def test_validation_errors_name_field_value_and_rule(kwargs: dict[str, Any], field: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        RestartPolicy(**kwargs)
    assert expected in str(excinfo.value)
    assert excinfo.value.field == field
    assert isinstance(excinfo.value, ValueError)


def test_valid_edge_values_are_accepted() -> None:
    RestartPolicy(base_delay=0.0, max_delay=0.0, factor=1.0, jitter=1.0, seed=0, max_restarts=0)
    RestartPolicy(within=math.inf, healthy_after=math.inf)
    RestartPolicy(base_delay=2, max_delay=2)  # ints are fine


def test_policy_is_frozen() -> None:
    policy = RestartPolicy()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.max_restarts = 3  # type: ignore[misc]


# --- stateful model check -----------------------------------------------------------------------------------

policies = st.builds(
    lambda base, factor, extra, jitter, seed, max_restarts, within, healthy_after: RestartPolicy(
        base_delay=base,
        factor=factor,
        max_delay=base + extra,
        jitter=jitter,
        seed=seed,
        max_restarts=max_restarts,
        within=within,
        healthy_after=healthy_after,
    ),
    base=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    factor=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    extra=st.sampled_from([0.0, 1.0, 8.0, 30.0]),
    jitter=st.sampled_from([0.0, 0.0, 0.25, 1.0]),
    seed=st.integers(0, 1000),
    max_restarts=st.integers(0, 5),
    within=st.sampled_from([1.0, 5.0, 20.0, 60.0]),
    healthy_after=st.sampled_from([0.0, 2.0, 10.0, 60.0]),
)


class RestartTrackerMachine(RuleBasedStateMachine):
    """Drives a tracker with random events and checks it against a plain, list-based model.

    Times are multiples of 0.25 so the window and healthy-period boundaries are hit exactly.
    """

    policy: RestartPolicy
    tracker: RestartTracker

    @initialize(policy=policies)
    def setup(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.tracker = RestartTracker(policy)
        self.now = 0.0
        self.ready_at: float | None = None
        self.attempt = 0
        self.grants: list[float] = []
        self.gave_up: RestartDecision | None = None

    @rule(dt=st.one_of(st.integers(0, 400).map(lambda n: n / 4), st.sampled_from(["within", "healthy"])))
    def advance(self, dt: float | str) -> None:
        if dt == "within":
            dt = self.policy.within
        elif dt == "healthy":
            dt = self.policy.healthy_after
        assert isinstance(dt, float)
        self.now += dt

    @rule()
    def started(self) -> None:
        if self.gave_up is not None:
            with pytest.raises(RuntimeGaveUp):
                self.tracker.session_started(self.now)
            return
        self.tracker.session_started(self.now)
        self.ready_at = None

    @rule()
    def ready(self) -> None:
        if self.gave_up is not None:
            with pytest.raises(RuntimeGaveUp):
                self.tracker.session_ready(self.now)
            return
        self.tracker.session_ready(self.now)
        if self.ready_at is None:
            self.ready_at = self.now

    @rule()
    def failed(self) -> None:
        decision = self.tracker.session_failed(self.now, RuntimeError(f"t={self.now}"))
        if self.gave_up is not None:
            assert decision is self.gave_up, "give-up must be sticky"
            return
        policy = self.policy
        healthy = self.ready_at is not None and self.now - self.ready_at >= policy.healthy_after
        self.ready_at = None
        if healthy:
            self.attempt = 0
        in_window = [g for g in self.grants if self.now - g < policy.within]
        if len(in_window) + 1 > policy.max_restarts:
            assert decision.give_up
            self.gave_up = decision
            return
        assert not decision.give_up
        self.attempt += 1
        self.grants.append(self.now)
        assert decision.attempt == self.attempt
        assert 0.0 <= decision.delay <= policy.max_delay * (1 + policy.jitter)
        expected = min(policy.max_delay, policy.base_delay * policy.factor ** (self.attempt - 1))
        assert_jitter_bounds(decision.delay, expected, policy.jitter)
        if policy.jitter == 0:
            assert decision.delay == expected
            if healthy:
                assert decision.delay == policy.base_delay

    @invariant()
    def never_more_than_max_restarts_in_any_window(self) -> None:
        if not hasattr(self, "grants"):
            return
        for end in self.grants:
            count = sum(1 for g in self.grants if 0 <= end - g < self.policy.within)
            assert count <= self.policy.max_restarts

    @invariant()
    def observable_state_matches_model(self) -> None:
        if not hasattr(self, "tracker"):
            return
        assert self.tracker.attempt == self.attempt
        assert self.tracker.given_up == (self.gave_up is not None)
        assert self.tracker.statistics().total_restarts == len(self.grants)


RestartTrackerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRestartTracker = RestartTrackerMachine.TestCase
