"""Sans-IO restart policy of the supervisor: backoff, restart intensity and the healthy-period reset.

Theory of operation
-------------------
The supervisor runs one app-server *session* at a time. :class:`RestartTracker` is told what happens to each
session (``session_started``, ``session_ready``, ``session_failed``) with the current time, and answers
every failure with a :class:`RestartDecision`: restart after ``delay`` seconds, or give up. It never reads a
clock, sleeps or does I/O, so the Trio driver passes ``trio.current_time()`` and tests pass plain numbers.

Three mechanisms decide the answer, in this order:

1. **Healthy-period reset.** If the failed session had been ready for at least ``healthy_after`` seconds
   (measured from ``session_ready`` to the failure), the consecutive-attempt counter goes back to zero first:
   a session that worked for a while is not part of a crash loop, so its failure backs off from
   ``base_delay`` again.
2. **Restart intensity** (Erlang/OTP). Every granted restart is timestamped with the failure time. If granting
   this one would make more than ``max_restarts`` restarts within the last ``within`` seconds, the tracker
   gives up and the supervisor escalates (:class:`~codex_trio.RuntimeGaveUp`). The window is half-open: a
   restart granted exactly ``within`` seconds ago no longer counts. The intensity is independent of the reset
   above, so a session that keeps dying right after becoming healthy is still caught if it dies often enough.
3. **Exponential backoff.** Attempt ``n`` (1-based) waits ``min(max_delay, base_delay * factor**(n-1))``
   seconds, optionally spread by ``jitter`` (``delay * (1 + U(-jitter, +jitter))``) drawn from a
   ``random.Random(seed)`` owned by the tracker, so a seeded run is reproducible.

Giving up is final: later ``session_failed`` calls return the same give-up decision again (the child exit and
the socket close of one crash are often both reported), while ``session_started`` / ``session_ready`` raise
:class:`~codex_trio.RuntimeGaveUp`, because starting a session after giving up is a driver bug.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any

import attrs

from ._errors import ConfigError, RuntimeGaveUp

__all__ = ["RestartDecision", "RestartPolicy", "RestartStatistics", "RestartTracker"]


def _check_number(field: str, value: Any, *, allow_inf: bool = False) -> float:
    """Reject bools, non-numbers and NaN (and infinities unless allowed) with a message naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"RestartPolicy.{field} must be a number (got {value!r})", field=field, value=value)
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        allowed = "a number (inf allowed)" if allow_inf else "a finite number"
        raise ConfigError(f"RestartPolicy.{field} must be {allowed} (got {value!r})", field=field, value=value)
    return number


def _require(ok: bool, field: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"RestartPolicy.{field} must be {rule} (got {value!r})", field=field, value=value)


@attrs.frozen
class RestartPolicy:
    """How the supervisor restarts a failed app-server session; validated on construction (ConfigError).

    Backoff: attempt ``n`` waits ``min(max_delay, base_delay * factor**(n-1))`` seconds — with the defaults
    1, 2, 4, 8, 16, 30, 30, ... — spread by ``jitter`` (a fraction: ``delay * (1 + U(-jitter, +jitter))``,
    so never below 0 nor above ``max_delay * (1 + jitter)``), drawn from ``random.Random(seed)``.

    Intensity: at most ``max_restarts`` restarts within any sliding window of ``within`` seconds; one more and
    the supervisor gives up (OTP). ``max_restarts=0`` means never restart. The defaults, 10 restarts within
    300 s, were chosen to fit the backoff schedule: a session that dies at once every time is restarted after
    1, 2, 4, 8, 16, 30, 30, 30, 30 and 30 s (failures at t = 0, 1, 3, 7, 15, 31, 61, 91, 121, 151), and the
    failure at t = 181 is the 11th within 300 s, so a hard crash loop gives up after about three minutes.
    A window shorter than the sum of the capped delays could never fill up and would never give up (10 in
    60 s, for instance, only trips with near-zero backoff). Sessions that live a while before failing are
    spaced out enough by their own lifetime never to reach the limit.

    Healthy reset: once a session has been ready for ``healthy_after`` seconds, its failure counts as a first
    attempt again (waits ``base_delay``). ``healthy_after=0`` resets on every ready session (what the original
    TypeScript runtime did); ``inf`` never resets.
    """

    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.0
    seed: int | None = None
    max_restarts: int = 10
    within: float = 300.0
    healthy_after: float = 60.0

    def __attrs_post_init__(self) -> None:
        base = _check_number("base_delay", self.base_delay)
        _require(base >= 0, "base_delay", self.base_delay, ">= 0")
        factor = _check_number("factor", self.factor)
        _require(factor >= 1, "factor", self.factor, ">= 1")
        max_delay = _check_number("max_delay", self.max_delay)
        if max_delay < base:
            raise ConfigError(
                f"RestartPolicy.max_delay must be >= base_delay (got {self.max_delay!r} < {self.base_delay!r})",
                field="max_delay",
                value=self.max_delay,
            )
        jitter = _check_number("jitter", self.jitter)
        _require(0 <= jitter <= 1, "jitter", self.jitter, "between 0 and 1")
        _require(
            self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)),
            "seed",
            self.seed,
            "an int or None",
        )
        _require(
            isinstance(self.max_restarts, int) and not isinstance(self.max_restarts, bool),
            "max_restarts",
            self.max_restarts,
            "an int",
        )
        _require(self.max_restarts >= 0, "max_restarts", self.max_restarts, ">= 0 (0 means never restart)")
        within = _check_number("within", self.within, allow_inf=True)
        _require(within > 0, "within", self.within, "> 0 seconds")
        healthy_after = _check_number("healthy_after", self.healthy_after, allow_inf=True)
        _require(healthy_after >= 0, "healthy_after", self.healthy_after, ">= 0 seconds")

    @classmethod
    def immediate(cls, *, max_restarts: int = 10, within: float = 300.0) -> RestartPolicy:
        """Restart at once (all delays 0), keeping the intensity limit; for tests and benchmarks."""
        return cls(base_delay=0.0, factor=1.0, max_delay=0.0, max_restarts=max_restarts, within=within)

    def backoff(self, attempt: int) -> float:
        """The delay before restart ``attempt`` (1-based), without jitter."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1 (got {attempt})")
        if self.base_delay == 0:
            return 0.0
        try:
            raw = self.base_delay * self.factor ** (attempt - 1)
        except OverflowError:  # a huge attempt number: far past the cap anyway
            return float(self.max_delay)
        return float(min(self.max_delay, raw))


@attrs.frozen
class RestartDecision:
    """The answer to one session failure: restart after ``delay`` seconds, or give up.

    ``attempt`` is the consecutive attempt number (1 after a reset); on give-up it is the attempt that was
    refused and ``delay`` is 0. ``causes`` holds the recent failures, oldest first, ending with ``cause``.
    """

    give_up: bool
    attempt: int
    delay: float
    cause: BaseException
    causes: tuple[BaseException, ...]
    reason: str = ""

    def to_error(self) -> RuntimeGaveUp:
        """The :class:`RuntimeGaveUp` the supervisor raises for a give-up decision."""
        if not self.give_up:
            raise ValueError("to_error() called on a restart decision; only a give-up decision is an error")
        return RuntimeGaveUp(self.reason, self.causes)


@attrs.frozen
class RestartStatistics:
    """A snapshot of a tracker: attempt counter, restarts granted in total, give-up flag, last delay."""

    attempts: int
    total_restarts: int
    given_up: bool
    last_delay: float | None


class RestartTracker:
    """The restart state machine for one supervisor. Pure: every method takes the current time ``now``.

    ``now`` must never go backwards (the Trio clock is monotonic); a driver passing a decreasing time has a
    bug, reported as :class:`ValueError`.
    """

    def __init__(self, policy: RestartPolicy, *, max_causes: int = 10) -> None:
        if max_causes < 1:
            raise ValueError(f"max_causes must be >= 1 (got {max_causes})")
        self.policy = policy
        self._rng = random.Random(policy.seed)
        self._attempt = 0
        self._grants: deque[float] = deque()  # failure times of restarts granted within the window
        self._causes: deque[BaseException] = deque(maxlen=max_causes)
        self._ready_at: float | None = None
        self._last_now = -math.inf
        self._total_restarts = 0
        self._last_delay: float | None = None
        self._gave_up: RestartDecision | None = None

    @property
    def attempt(self) -> int:
        """Consecutive restart attempts since the start or the last healthy reset."""
        return self._attempt

    @property
    def causes(self) -> tuple[BaseException, ...]:
        """The most recent session failures (bounded), oldest first."""
        return tuple(self._causes)

    @property
    def given_up(self) -> bool:
        return self._gave_up is not None

    def statistics(self) -> RestartStatistics:
        return RestartStatistics(
            attempts=self._attempt,
            total_restarts=self._total_restarts,
            given_up=self.given_up,
            last_delay=self._last_delay,
        )

    def session_started(self, now: float) -> None:
        """A new session is starting (it is not ready yet)."""
        self._tick(now)
        self._refuse_after_give_up("start")
        self._ready_at = None

    def session_ready(self, now: float) -> None:
        """The current session finished its setup; the healthy period is measured from the first call."""
        self._tick(now)
        self._refuse_after_give_up("mark ready")
        if self._ready_at is None:
            self._ready_at = now

    def session_failed(self, now: float, cause: BaseException) -> RestartDecision:
        """The current session failed with ``cause``: decide whether and when to restart."""
        self._tick(now)
        if self._gave_up is not None:
            return self._gave_up  # sticky: a second report of the same crash must not restart anything
        policy = self.policy
        self._causes.append(cause)
        ready_at, self._ready_at = self._ready_at, None
        if ready_at is not None and now - ready_at >= policy.healthy_after:
            self._attempt = 0
        attempt = self._attempt + 1

        while self._grants and now - self._grants[0] >= policy.within:
            self._grants.popleft()
        if len(self._grants) + 1 > policy.max_restarts:
            if policy.max_restarts == 0:
                reason = "codex app-server session failed and restarts are disabled (max_restarts=0)"
            else:
                reason = (
                    f"codex app-server failed too often: {len(self._grants) + 1} restarts needed within "
                    f"{policy.within:g}s, over the limit of max_restarts={policy.max_restarts}; giving up"
                )
            self._gave_up = RestartDecision(
                give_up=True, attempt=attempt, delay=0.0, cause=cause, causes=self.causes, reason=reason
            )
            return self._gave_up

        self._attempt = attempt
        self._grants.append(now)
        delay = self._jittered(policy.backoff(attempt))
        self._total_restarts += 1
        self._last_delay = delay
        return RestartDecision(give_up=False, attempt=attempt, delay=delay, cause=cause, causes=self.causes)

    def _jittered(self, delay: float) -> float:
        jitter = self.policy.jitter
        if jitter == 0 or delay == 0:
            return delay
        spread = delay * (1 + self._rng.uniform(-jitter, jitter))
        # uniform() may round onto (or just past) an end point; clamp to the documented bounds.
        return min(max(0.0, spread), self.policy.max_delay * (1 + jitter))

    def _tick(self, now: float) -> None:
        if now < self._last_now:
            raise ValueError(f"time went backwards: now={now!r} after {self._last_now!r}")
        self._last_now = now

    def _refuse_after_give_up(self, what: str) -> None:
        if self._gave_up is not None:
            raise RuntimeGaveUp(
                f"cannot {what} a session: the restart policy already gave up ({self._gave_up.reason})",
                self._gave_up.causes,
            )
