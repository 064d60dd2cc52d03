"""The sans-IO turn ledger: unit tests of every method, and a stateful model of its whole life cycle."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import attrs
import pytest
from codex_trio._ledger import (
    _REMEMBERED_TERMINALS,
    Ledger,
    Outcome,
    Settlement,
    Submission,
    SubmissionKind,
    TurnOutcome,
)
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

ITEMS: tuple[Any, ...] = ({"type": "agentMessage", "id": "msg-1", "text": "hi"},)


def ready_ledger(**kwargs: Any) -> Ledger:
    ledger = Ledger(**kwargs)
    ledger.start_generation()
    return ledger


def admit(ledger: Ledger, source_id: str, text: str = "hello", kind: SubmissionKind = "channel") -> Submission:
    sub = ledger.admit(source_id, kind, text)
    assert sub is not None
    return sub


def deliver(ledger: Ledger, sub: Submission, turn_id: str) -> Settlement | None:
    ledger.begin_delivery(sub, ledger.generation)
    return ledger.delivered(sub, turn_id, ledger.generation)


def completed(turn_id: str, text: str = "done") -> TurnOutcome:
    return TurnOutcome("completed", turn_id, text, ITEMS)


# -- construction and admission ----------------------------------------------------------------------------


def test_new_ledger_is_empty() -> None:
    ledger = Ledger()
    assert ledger.generation == 0
    assert not ledger.stopped
    assert ledger.next_seq == 1
    assert ledger.next_queued() is None
    assert ledger.queued == ()
    assert ledger.open_submissions() == []
    assert ledger.in_flight() == []
    assert ledger.seen_ids() == []


def test_negative_dedup_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="dedup_window"):
        Ledger(dedup_window=-1)


def test_sequence_numbers_start_at_next_seq() -> None:
    ledger = Ledger(next_seq=41)
    assert admit(ledger, "a").seq == 41
    assert admit(ledger, "").seq == 42
    assert ledger.next_seq == 43


def test_admit_queues_in_acceptance_order() -> None:
    ledger = Ledger()
    a = admit(ledger, "a", "one", "channel")
    b = admit(ledger, "b", "two", "trigger")
    c = admit(ledger, "", "three", "system")
    assert [(s.seq, s.source_id, s.kind, s.text, s.state) for s in (a, b, c)] == [
        (1, "a", "channel", "one", "queued"),
        (2, "b", "trigger", "two", "queued"),
        (3, "", "system", "three", "queued"),
    ]
    assert ledger.queued == (a, b, c)
    assert ledger.next_queued() is a
    assert ledger.open_submissions() == [a, b, c]
    assert ledger.in_flight() == []
    assert all(s.generation is None and s.turn_id is None and s.settlement is None for s in (a, b, c))


def test_duplicate_is_refused_and_not_queued() -> None:
    ledger = Ledger()
    first = admit(ledger, "a")
    assert ledger.is_duplicate("a")
    assert ledger.admit("a", "channel", "again") is None
    assert ledger.queued == (first,)
    assert ledger.next_seq == 2  # a refused duplicate consumes no sequence number


def test_source_id_stays_seen_after_its_submission_failed() -> None:
    ledger = Ledger()
    sub = admit(ledger, "a")
    ledger.reject(sub, "store down")
    assert ledger.admit("a", "channel", "retry with the same id") is None


def test_empty_source_id_is_never_a_duplicate() -> None:
    ledger = Ledger()
    first = admit(ledger, "")
    second = admit(ledger, "")
    assert first.seq != second.seq
    assert not ledger.is_duplicate("")
    assert ledger.seen_ids() == []


def test_is_duplicate_only_for_seen_ids() -> None:
    ledger = Ledger()
    admit(ledger, "a")
    assert ledger.is_duplicate("a")
    assert not ledger.is_duplicate("b")


def test_dedup_window_evicts_the_oldest_id() -> None:
    ledger = Ledger(dedup_window=2)
    for source_id in ("a", "b", "c"):
        admit(ledger, source_id)
    assert ledger.seen_ids() == ["b", "c"]
    assert not ledger.is_duplicate("a")
    assert admit(ledger, "a").seq == 4  # outside the window: accepted again
    assert ledger.seen_ids() == ["c", "a"]
    assert ledger.admit("c", "channel", "x") is None


def test_zero_dedup_window_disables_dedup() -> None:
    ledger = Ledger(dedup_window=0)
    admit(ledger, "a")
    assert not ledger.is_duplicate("a")
    assert admit(ledger, "a").seq == 2
    assert ledger.seen_ids() == []


def test_admit_after_stop_is_a_programming_error() -> None:
    ledger = Ledger()
    ledger.stop()
    with pytest.raises(AssertionError):
        ledger.admit("a", "channel", "late")


# -- restore -------------------------------------------------------------------------------------------------


def test_restore_loads_window_and_pending_queue() -> None:
    ledger = Ledger()
    ledger.restore(["x", "y"], [(5, "y", "channel", "hi"), (7, "", "trigger", "go")])
    assert [(s.seq, s.source_id, s.kind, s.text, s.state) for s in ledger.queued] == [
        (5, "y", "channel", "hi", "queued"),
        (7, "", "trigger", "go", "queued"),
    ]
    assert [s.seq for s in ledger.open_submissions()] == [5, 7]
    assert ledger.next_seq == 8
    assert ledger.is_duplicate("x") and ledger.is_duplicate("y")
    assert ledger.admit("x", "channel", "redelivered after a host restart") is None
    assert admit(ledger, "z").seq == 8


def test_restore_respects_the_window_bound() -> None:
    ledger = Ledger(dedup_window=2)
    ledger.restore(["a", "b", "c"], [])
    assert ledger.seen_ids() == ["b", "c"]


def test_restore_never_lowers_next_seq() -> None:
    ledger = Ledger(next_seq=100)
    ledger.restore([], [(5, "a", "channel", "hi")])
    assert ledger.next_seq == 100
    assert admit(ledger, "b").seq == 100


def test_restored_submissions_are_delivered_first() -> None:
    ledger = Ledger(next_seq=10)
    ledger.restore([], [(3, "old", "channel", "from before the restart")])
    new = admit(ledger, "new")
    ledger.start_generation()
    head = ledger.next_queued()
    assert head is not None and head.seq == 3
    ledger.begin_delivery(head, ledger.generation)
    assert ledger.next_queued() is new


# -- reject --------------------------------------------------------------------------------------------------


def test_reject_a_queued_submission() -> None:
    ledger = Ledger()
    a, b, c = (admit(ledger, sid) for sid in "abc")
    settlement = ledger.reject(b, "state store write failed")
    assert settlement == Settlement(b.seq, "b", "failed", error="state store write failed")
    assert b.state == "settled" and b.settlement == settlement
    assert ledger.queued == (a, c)
    assert ledger.open_submissions() == [a, c]


def test_reject_a_submission_already_being_delivered() -> None:
    # The runtime's durable write can fail after the worker already picked the submission up.
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    ledger.begin_delivery(sub, 1)
    settlement = ledger.reject(sub, "store down")
    assert settlement == Settlement(sub.seq, "a", "failed", error="store down", generation=1)
    assert ledger.in_flight() == []
    assert ledger.delivered(sub, "t1", 1) is None  # the late turn/start answer changes nothing
    assert sub.settlement == settlement


def test_settling_twice_is_refused() -> None:
    ledger = Ledger()
    sub = admit(ledger, "a")
    ledger.reject(sub, "once")
    with pytest.raises(AssertionError, match="settled twice"):
        ledger.reject(sub, "twice")


# -- generations and begin_delivery --------------------------------------------------------------------------


def test_start_generation_counts_up() -> None:
    ledger = Ledger()
    assert ledger.start_generation() == 1
    assert ledger.start_generation() == 2
    assert ledger.generation == 2


def test_begin_delivery_takes_the_head() -> None:
    ledger = ready_ledger()
    a, b = admit(ledger, "a"), admit(ledger, "b")
    ledger.begin_delivery(a, 1)
    assert (a.state, a.generation) == ("delivering", 1)
    assert ledger.queued == (b,)
    assert ledger.in_flight() == [a]
    assert ledger.open_submissions() == [a, b]


def test_begin_delivery_out_of_order_is_refused() -> None:
    ledger = ready_ledger()
    admit(ledger, "a")
    b = admit(ledger, "b")
    with pytest.raises(AssertionError, match="acceptance order"):
        ledger.begin_delivery(b, 1)
    assert b.state == "queued"


def test_begin_delivery_with_a_stale_generation_is_refused() -> None:
    ledger = ready_ledger()
    ledger.start_generation()
    sub = admit(ledger, "a")
    with pytest.raises(AssertionError, match="stale generation"):
        ledger.begin_delivery(sub, 1)


def test_begin_delivery_of_an_empty_queue_is_refused() -> None:
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    ledger.begin_delivery(sub, 1)
    with pytest.raises(AssertionError):
        ledger.begin_delivery(sub, 1)  # a submission is delivered at most once


# -- delivered -----------------------------------------------------------------------------------------------


def test_delivered_records_the_turn() -> None:
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    assert deliver(ledger, sub, "t1") is None
    assert (sub.state, sub.turn_id, sub.generation) == ("delivered", "t1", 1)
    assert ledger.in_flight() == [sub]


def test_delivered_from_a_stale_generation_is_ignored() -> None:
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    ledger.begin_delivery(sub, 1)
    assert ledger.delivered(sub, "t1", 0) is None
    assert ledger.delivered(sub, "t1", 2) is None
    assert (sub.state, sub.turn_id) == ("delivering", None)


def test_delivered_ignores_a_submission_that_is_not_delivering() -> None:
    ledger = ready_ledger()
    queued = admit(ledger, "a")
    assert ledger.delivered(queued, "t1", 1) is None
    assert queued.state == "queued"
    assert deliver(ledger, queued, "t1") is None
    assert ledger.delivered(queued, "t2", 1) is None  # a second answer for the same input
    assert queued.turn_id == "t1"


def test_terminal_before_delivered_settles_on_delivery() -> None:
    # codex can send turn/completed before the turn/start response that names the turn.
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    ledger.begin_delivery(sub, 1)
    assert ledger.turn_ended(completed("t1", "early"), 1) == []
    assert sub.state == "delivering"
    settlement = ledger.delivered(sub, "t1", 1)
    assert settlement == Settlement(sub.seq, "a", "completed", "t1", "early", ITEMS, None, 1)
    assert sub.settlement == settlement
    assert ledger.open_submissions() == []


def test_remembered_terminal_of_another_turn_does_not_leak() -> None:
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    ledger.turn_ended(completed("t-other"), 1)
    assert deliver(ledger, sub, "t1") is None
    assert sub.state == "delivered"


# -- delivery_failed -----------------------------------------------------------------------------------------


def test_delivery_failed_settles_failed() -> None:
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    ledger.begin_delivery(sub, 1)
    settlement = ledger.delivery_failed(sub, "turn/start rejected", 1)
    assert settlement == Settlement(sub.seq, "a", "failed", None, None, (), "turn/start rejected", 1)
    assert ledger.open_submissions() == []


def test_delivery_failed_from_a_stale_generation_is_ignored() -> None:
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    ledger.begin_delivery(sub, 1)
    assert ledger.delivery_failed(sub, "late", 0) is None
    assert sub.state == "delivering"


def test_delivery_failed_ignores_a_submission_that_is_not_delivering() -> None:
    ledger = ready_ledger()
    queued = admit(ledger, "a")
    assert ledger.delivery_failed(queued, "x", 1) is None
    assert queued.state == "queued"
    deliver(ledger, queued, "t1")
    assert ledger.delivery_failed(queued, "x", 1) is None
    assert (queued.state, queued.settlement) == ("delivered", None)


# -- turn_ended ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "terminal",
    [
        TurnOutcome("completed", "t1", "answer", ITEMS),
        TurnOutcome("failed", "t1", None, (), "model error"),
        TurnOutcome("interrupted", "t1", "partial", ITEMS, "turn was interrupted"),
    ],
)
def test_turn_ended_settles_every_submission_of_the_turn(terminal: TurnOutcome) -> None:
    ledger = ready_ledger()
    first, steered, other = admit(ledger, "a"), admit(ledger, "b"), admit(ledger, "c")
    deliver(ledger, first, "t1")
    deliver(ledger, steered, "t1")  # turn/steer into the running turn
    deliver(ledger, other, "t2")
    settled = ledger.turn_ended(terminal, 1)
    assert sorted(settled, key=lambda s: s.seq) == [
        Settlement(sub.seq, sub.source_id, terminal.outcome, "t1", terminal.text, terminal.items, terminal.error, 1)
        for sub in (first, steered)
    ]
    assert ledger.in_flight() == [other]
    assert ledger.turn_ended(terminal, 1) == []  # a second terminal (error, then turn/completed) settles nothing


def test_turn_ended_without_a_turn_id_is_ignored() -> None:
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    deliver(ledger, sub, "t1")
    assert ledger.turn_ended(TurnOutcome("failed", None, error="?"), 1) == []
    assert sub.state == "delivered"


def test_turn_ended_from_a_stale_generation_is_ignored_and_not_remembered() -> None:
    ledger = ready_ledger()
    ledger.start_generation()
    known, later = admit(ledger, "a"), admit(ledger, "b")
    deliver(ledger, known, "t1")
    assert ledger.turn_ended(completed("t1"), 1) == []
    assert ledger.turn_ended(completed("t2"), 1) == []
    assert known.state == "delivered"
    assert deliver(ledger, later, "t2") is None
    assert later.state == "delivered"


def test_remembered_terminals_are_bounded() -> None:
    ledger = ready_ledger()
    for n in range(_REMEMBERED_TERMINALS + 1):
        ledger.turn_ended(completed(f"t{n}"), 1)
    oldest, newest = admit(ledger, "a"), admit(ledger, "b")
    assert deliver(ledger, oldest, "t0") is None  # forgotten: the oldest fell out
    settlement = deliver(ledger, newest, f"t{_REMEMBERED_TERMINALS}")
    assert settlement is not None and settlement.outcome == "completed"


def test_steer_answer_after_the_turn_ended_still_settles() -> None:
    # Notifications can overtake responses: turn/completed may arrive before the answer to turn/steer.
    ledger = ready_ledger()
    first, steered = admit(ledger, "a"), admit(ledger, "b")
    deliver(ledger, first, "t1")
    ledger.begin_delivery(steered, 1)  # turn/steer sent while t1 runs ...
    assert [s.seq for s in ledger.turn_ended(completed("t1"), 1)] == [first.seq]  # ... t1 completes ...
    settlement = ledger.delivered(steered, "t1", 1)  # ... then codex's answer to turn/steer arrives
    assert settlement is not None
    assert (settlement.outcome, settlement.turn_id) == ("completed", "t1")


def test_every_submission_delivered_into_an_early_ended_turn_settles() -> None:
    ledger = ready_ledger()
    first, second = admit(ledger, "a"), admit(ledger, "b")
    ledger.begin_delivery(first, 1)
    ledger.begin_delivery(second, 1)
    ledger.turn_ended(completed("t1"), 1)
    assert ledger.delivered(first, "t1", 1) == Settlement(first.seq, "a", "completed", "t1", "done", ITEMS, None, 1)
    assert ledger.delivered(second, "t1", 1) == Settlement(second.seq, "b", "completed", "t1", "done", ITEMS, None, 1)


def test_the_first_terminal_of_a_turn_wins() -> None:
    # An `error` notification (willRetry false) and then turn/completed both end the same turn.
    ledger = ready_ledger()
    first, steered = admit(ledger, "a"), admit(ledger, "b")
    deliver(ledger, first, "t1")
    ledger.begin_delivery(steered, 1)
    failed = TurnOutcome("failed", "t1", error="model error")
    assert [s.outcome for s in ledger.turn_ended(failed, 1)] == ["failed"]
    assert ledger.turn_ended(completed("t1"), 1) == []
    settlement = ledger.delivered(steered, "t1", 1)
    assert settlement is not None and (settlement.outcome, settlement.error) == ("failed", "model error")


# -- session_lost --------------------------------------------------------------------------------------------


def test_session_lost_interrupts_in_flight_and_keeps_the_queue() -> None:
    ledger = ready_ledger()
    delivered, delivering, q1, q2 = (admit(ledger, sid) for sid in "abcd")
    deliver(ledger, delivered, "t1")
    ledger.begin_delivery(delivering, 1)
    settled = ledger.session_lost(1, "app-server exited")
    assert sorted(settled, key=lambda s: s.seq) == [
        Settlement(delivered.seq, "a", "interrupted", "t1", error="app-server exited", generation=1),
        Settlement(delivering.seq, "b", "interrupted", None, error="app-server exited", generation=1),
    ]
    assert ledger.queued == (q1, q2)
    assert all(s.state == "queued" for s in (q1, q2))
    assert ledger.in_flight() == []
    # Nothing is re-run: the next generation starts with the still-queued input.
    ledger.start_generation()
    assert ledger.next_queued() is q1


def test_session_lost_from_a_stale_generation_is_ignored() -> None:
    ledger = ready_ledger()
    ledger.start_generation()
    sub = admit(ledger, "a")
    deliver(ledger, sub, "t1")
    assert ledger.session_lost(1, "old child") == []
    assert sub.state == "delivered"


def test_session_lost_forgets_early_terminals() -> None:
    ledger = ready_ledger()
    ledger.turn_ended(completed("t1"), 1)
    ledger.session_lost(1, "gone")
    ledger.start_generation()
    sub = admit(ledger, "a")
    assert deliver(ledger, sub, "t1") is None
    assert sub.state == "delivered"


def test_late_events_of_a_lost_session_change_nothing() -> None:
    ledger = ready_ledger()
    sub, nxt = admit(ledger, "a"), admit(ledger, "b")
    deliver(ledger, sub, "t1")
    (interrupted,) = ledger.session_lost(1, "gone")
    ledger.start_generation()
    ledger.begin_delivery(nxt, 2)
    assert ledger.turn_ended(completed("t1"), 1) == []
    assert ledger.delivered(nxt, "t1", 1) is None
    assert ledger.delivery_failed(nxt, "late", 1) is None
    assert sub.settlement == interrupted
    assert nxt.state == "delivering"


# -- stop ----------------------------------------------------------------------------------------------------


def test_stop_settles_everything_open() -> None:
    ledger = ready_ledger()
    delivered, delivering, queued = (admit(ledger, sid) for sid in "abc")
    done = admit(ledger, "d")
    deliver(ledger, delivered, "t1")
    ledger.begin_delivery(delivering, 1)
    ledger.reject(done, "failed earlier")
    settled = ledger.stop("shutting down")
    assert ledger.stopped
    assert sorted(settled, key=lambda s: s.seq) == [
        Settlement(delivered.seq, "a", "stopped", "t1", error="shutting down", generation=1),
        Settlement(delivering.seq, "b", "stopped", None, error="shutting down", generation=1),
        Settlement(queued.seq, "c", "stopped", None, error="shutting down", generation=None),
    ]
    assert ledger.queued == () and ledger.next_queued() is None
    assert ledger.open_submissions() == [] and ledger.in_flight() == []
    assert ledger.stop() == []


def test_stop_default_reason_and_late_events_after_stop() -> None:
    ledger = ready_ledger()
    sub = admit(ledger, "a")
    deliver(ledger, sub, "t1")
    (settlement,) = ledger.stop()
    assert settlement.error == "runtime stopped"
    assert ledger.turn_ended(completed("t1"), 1) == []
    assert ledger.delivered(sub, "t1", 1) is None
    assert ledger.session_lost(1, "late") == []
    assert sub.settlement == settlement


# -- introspection -------------------------------------------------------------------------------------------


def test_open_submissions_are_in_seq_order() -> None:
    ledger = ready_ledger()
    a, b, c = (admit(ledger, sid) for sid in "abc")
    deliver(ledger, a, "t1")
    ledger.reject(b, "x")
    assert ledger.open_submissions() == [a, c]
    assert ledger.in_flight() == [a]


# -- the stateful model --------------------------------------------------------------------------------------

POOL = ("a", "b", "c", "d", "")
KINDS: tuple[SubmissionKind, ...] = ("channel", "system", "trigger")
OUTCOMES: tuple[Outcome, ...] = ("completed", "failed", "interrupted")
State = Literal["queued", "delivering", "delivered", "settled"]


@attrs.define
class ModelTurn:
    subs: list[int]
    ended: TurnOutcome | None = None


def terminal_for(turn_id: str, outcome: Outcome) -> TurnOutcome:
    error = None if outcome == "completed" else f"{outcome} {turn_id}"
    return TurnOutcome(outcome, turn_id, f"text of {turn_id}", ({"type": "agentMessage", "turn": turn_id},), error)


class LedgerMachine(RuleBasedStateMachine):
    """Drives a Ledger the way the runtime (and a misbehaving codex) could, against a simple model.

    The model says what *should* happen; the invariants compare the ledger with it after every step. A turn's
    first terminal is its outcome for every submission delivered into it, whichever arrives first: the terminal
    or the turn/start (turn/steer) answer that names the turn.
    """

    def __init__(self) -> None:
        super().__init__()
        self.window = 1024
        self.ledger = Ledger(dedup_window=self.window)
        self.gen = self.ledger.start_generation()
        self.subs: dict[int, Submission] = {}
        self.state: dict[int, State] = {}
        self.sub_gen: dict[int, int | None] = {}
        self.sub_turn: dict[int, str | None] = {}
        self.queue: list[int] = []
        self.accepted_ids: list[str] = []  # non-empty source ids in acceptance order
        self.settlements: dict[int, Settlement] = {}
        self.begun: set[int] = set()
        self.turns: dict[str, ModelTurn] = {}  # this generation's turns that have submissions
        self.early: dict[str, TurnOutcome] = {}  # this generation's terminals of not-yet-known turns
        self.turn_counter = 0
        self.stopped = False

    @initialize(window=st.sampled_from([0, 1, 3, 1024]))
    def choose_window(self, window: int) -> None:
        self.window = window
        self.ledger = Ledger(dedup_window=window)
        self.gen = self.ledger.start_generation()

    # -- model helpers ---------------------------------------------------------------------------------------

    def window_ids(self) -> list[str]:
        """The ids the window should hold: the last `window` distinct accepted ids, oldest first."""
        out: list[str] = []
        for source_id in reversed(self.accepted_ids):
            if len(out) >= self.window:
                break
            if source_id not in out:
                out.append(source_id)
        return out[::-1]

    def in_state(self, *states: State) -> list[int]:
        return sorted(seq for seq, state in self.state.items() if state in states)

    def open_turns(self) -> list[str]:
        return sorted(t for t, turn in self.turns.items() if turn.ended is None)

    def ended_turns(self) -> list[str]:
        return sorted(t for t, turn in self.turns.items() if turn.ended is not None)

    def fresh_turn(self) -> str:
        self.turn_counter += 1
        return f"g{self.gen}-t{self.turn_counter}"

    def record(self, settlement: Settlement) -> None:
        assert settlement.seq not in self.settlements, f"submission {settlement.seq} settled twice"
        self.settlements[settlement.seq] = settlement
        self.state[settlement.seq] = "settled"

    def expect(self, seq: int, outcome: Outcome, error: str | None, terminal: TurnOutcome | None = None) -> Settlement:
        sub = self.subs[seq]
        if terminal is not None:
            return Settlement(
                seq, sub.source_id, outcome, terminal.turn_id, terminal.text, terminal.items, error, self.sub_gen[seq]
            )
        return Settlement(seq, sub.source_id, outcome, self.sub_turn[seq], error=error, generation=self.sub_gen[seq])

    def check_settled(self, got: Iterable[Settlement], expected: list[Settlement]) -> None:
        got = sorted(got, key=lambda s: s.seq)
        assert got == expected
        for settlement in got:
            self.record(settlement)

    def snapshot(self) -> tuple[Any, ...]:
        ledger = self.ledger
        return (
            ledger.generation,
            ledger.stopped,
            ledger.next_seq,
            tuple(ledger.seen_ids()),
            tuple(s.seq for s in ledger.queued),
            tuple((s.seq, s.state, s.generation, s.turn_id, s.settlement) for s in self.subs.values()),
            # Private, because a stale terminal that got remembered would only show much later, if at all.
            tuple(ledger._terminals.items()),
            tuple((t, tuple(s.seq for s in subs)) for t, subs in ledger._by_turn.items()),
        )

    # -- rules -----------------------------------------------------------------------------------------------

    @precondition(lambda self: not self.stopped)
    @rule(source_id=st.sampled_from(POOL), kind=st.sampled_from(KINDS), text=st.text(max_size=4))
    def admit(self, source_id: str, kind: SubmissionKind, text: str) -> None:
        expect_duplicate = source_id in self.window_ids()
        seq = self.ledger.next_seq
        sub = self.ledger.admit(source_id, kind, text)
        if expect_duplicate:
            assert sub is None
            assert self.ledger.next_seq == seq
            return
        assert sub is not None
        assert (sub.seq, sub.source_id, sub.kind, sub.text, sub.state) == (seq, source_id, kind, text, "queued")
        assert seq not in self.subs
        self.subs[seq] = sub
        self.state[seq] = "queued"
        self.sub_gen[seq] = None
        self.sub_turn[seq] = None
        self.queue.append(seq)
        if source_id:
            self.accepted_ids.append(source_id)

    @precondition(lambda self: not self.stopped and self.queue)
    @rule()
    def begin_delivery(self) -> None:
        head = self.ledger.next_queued()
        assert head is not None and head.seq == self.queue[0]
        assert head.seq not in self.begun, "delivered twice"
        self.ledger.begin_delivery(head, self.gen)
        self.begun.add(head.seq)
        self.queue.pop(0)
        self.state[head.seq] = "delivering"
        self.sub_gen[head.seq] = self.gen

    @precondition(lambda self: not self.stopped and self.in_state("delivering"))
    @rule(data=st.data())
    def delivered_into_new_turn(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.in_state("delivering")))
        turn_id = data.draw(st.sampled_from([self.fresh_turn(), *sorted(self.early)]))
        self.turns[turn_id] = ModelTurn([], self.early.pop(turn_id, None))
        self.deliver_into(seq, turn_id)

    @precondition(lambda self: not self.stopped and self.in_state("delivering") and self.turns)
    @rule(data=st.data())
    def delivered_by_steer(self, data: st.DataObject) -> None:
        # Into the running turn, or into one whose terminal overtook the turn/steer answer.
        seq = data.draw(st.sampled_from(self.in_state("delivering")))
        self.deliver_into(seq, data.draw(st.sampled_from(sorted(self.turns))))

    def deliver_into(self, seq: int, turn_id: str) -> None:
        result = self.ledger.delivered(self.subs[seq], turn_id, self.gen)
        turn = self.turns[turn_id]
        turn.subs.append(seq)
        self.sub_turn[seq] = turn_id
        if turn.ended is None:
            assert result is None
            self.state[seq] = "delivered"
        else:
            assert result is not None
            self.check_settled([result], [self.expect(seq, turn.ended.outcome, turn.ended.error, turn.ended)])

    @precondition(lambda self: not self.stopped and self.in_state("delivering"))
    @rule(data=st.data())
    def delivery_failed(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.in_state("delivering")))
        result = self.ledger.delivery_failed(self.subs[seq], "turn/start rejected", self.gen)
        assert result is not None
        self.check_settled([result], [self.expect(seq, "failed", "turn/start rejected")])

    @precondition(lambda self: not self.stopped and self.in_state("queued", "delivering"))
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.in_state("queued", "delivering")))
        result = self.ledger.reject(self.subs[seq], "state store write failed")
        if seq in self.queue:
            self.queue.remove(seq)
        self.check_settled([result], [self.expect(seq, "failed", "state store write failed")])

    @precondition(lambda self: not self.stopped and self.open_turns())
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def turn_ended_known(self, data: st.DataObject, outcome: Outcome) -> None:
        turn_id = data.draw(st.sampled_from(self.open_turns()))
        terminal = terminal_for(turn_id, outcome)
        turn = self.turns[turn_id]
        expected = [
            self.expect(seq, outcome, terminal.error, terminal)
            for seq in sorted(turn.subs)
            if self.state[seq] == "delivered"
        ]
        self.check_settled(self.ledger.turn_ended(terminal, self.gen), expected)
        turn.ended = terminal

    @precondition(lambda self: not self.stopped)
    @rule(outcome=st.sampled_from(OUTCOMES))
    def turn_ended_before_delivered(self, outcome: Outcome) -> None:
        terminal = terminal_for(self.fresh_turn(), outcome)
        assert self.ledger.turn_ended(terminal, self.gen) == []
        assert terminal.turn_id is not None
        self.early[terminal.turn_id] = terminal

    @precondition(lambda self: not self.stopped and self.ended_turns())
    @rule(data=st.data())
    def turn_ended_again(self, data: st.DataObject) -> None:
        # e.g. an `error` notification (willRetry false), then the turn/completed of the same turn
        # (the first terminal stays the turn's outcome: the model's turn keeps it)
        turn_id = data.draw(st.sampled_from(self.ended_turns()))
        assert self.ledger.turn_ended(TurnOutcome("failed", turn_id, error="late"), self.gen) == []

    @precondition(lambda self: not self.stopped)
    @rule()
    def session_lost_and_restart(self) -> None:
        queue_before = [s.seq for s in self.ledger.queued]
        expected = [self.expect(seq, "interrupted", "child died") for seq in self.in_state("delivering", "delivered")]
        self.check_settled(self.ledger.session_lost(self.gen, "child died"), expected)
        assert [s.seq for s in self.ledger.queued] == queue_before == self.queue
        self.turns.clear()
        self.early.clear()
        self.gen = self.ledger.start_generation()

    @rule(data=st.data(), call=st.sampled_from(["delivered", "delivery_failed", "turn_ended", "session_lost"]))
    def stale_generation_call(self, data: st.DataObject, call: str) -> None:
        stale = data.draw(st.integers(0, self.gen - 1))
        turn_ids = [self.fresh_turn(), *self.open_turns(), *self.early]
        turn_id = data.draw(st.sampled_from(turn_ids))
        # Prefer what the live session has in flight: that is what a stale call must not touch.
        candidates = self.in_state("delivering", "delivered") or sorted(self.subs)
        before = self.snapshot()
        if call == "delivered" and candidates:
            sub = self.subs[data.draw(st.sampled_from(candidates))]
            assert self.ledger.delivered(sub, turn_id, stale) is None
        elif call == "delivery_failed" and candidates:
            sub = self.subs[data.draw(st.sampled_from(candidates))]
            assert self.ledger.delivery_failed(sub, "stale", stale) is None
        elif call == "turn_ended":
            outcome = data.draw(st.sampled_from(OUTCOMES))
            assert self.ledger.turn_ended(terminal_for(turn_id, outcome), stale) == []
        else:
            assert self.ledger.session_lost(stale, "an old child died") == []
        assert self.snapshot() == before

    @precondition(lambda self: bool(self.settlements))
    @rule(data=st.data())
    def late_events_for_settled(self, data: st.DataObject) -> None:
        sub = self.subs[data.draw(st.sampled_from(sorted(self.settlements)))]
        turn_id = data.draw(st.sampled_from([self.fresh_turn(), *self.open_turns(), *self.early]))
        before = self.snapshot()
        assert self.ledger.delivered(sub, turn_id, self.gen) is None
        assert self.ledger.delivery_failed(sub, "late", self.gen) is None
        assert self.snapshot() == before

    @rule()
    def stop(self) -> None:
        open_seqs = [] if self.stopped else self.in_state("queued", "delivering", "delivered")
        expected = [self.expect(seq, "stopped", "stopped by test") for seq in open_seqs]
        self.check_settled(self.ledger.stop("stopped by test"), expected)
        self.stopped = True
        self.queue.clear()
        self.turns.clear()
        self.early.clear()

    # -- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def queue_is_acceptance_order(self) -> None:
        seqs = [s.seq for s in self.ledger.queued]
        assert seqs == self.queue
        assert seqs == sorted(seqs)
        head = self.ledger.next_queued()
        assert (head.seq if head else None) == (seqs[0] if seqs else None)

    @invariant()
    def submissions_match_the_model(self) -> None:
        assert self.ledger.generation == self.gen
        assert self.ledger.stopped == self.stopped
        for seq, sub in self.subs.items():
            assert (sub.state, sub.generation, sub.turn_id) == (self.state[seq], self.sub_gen[seq], self.sub_turn[seq])
            assert sub.settlement == self.settlements.get(seq)
        assert [s.seq for s in self.ledger.open_submissions()] == self.in_state("queued", "delivering", "delivered")
        assert [s.seq for s in self.ledger.in_flight()] == self.in_state("delivering", "delivered")
        if self.stopped:
            assert set(self.settlements) == set(self.subs)

    @invariant()
    def dedup_window_matches(self) -> None:
        assert self.ledger.seen_ids() == self.window_ids()
        # Independently of the model: between two acceptances of one id, at least `window` other ids were accepted.
        last_seen: dict[str, int] = {}
        for position, source_id in enumerate(self.accepted_ids):
            if source_id in last_seen:
                since = set(self.accepted_ids[last_seen[source_id] + 1 : position]) - {source_id}
                assert len(since) >= self.window, f"{source_id!r} accepted twice within the window"
            last_seen[source_id] = position

    def teardown(self) -> None:
        if not self.stopped:
            self.stop()
        assert set(self.settlements) == set(self.subs), "every accepted input settles exactly once"
        for seq, sub in self.subs.items():
            assert sub.settlement is not None and sub.settlement == self.settlements[seq]


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_undeliver_puts_an_unsent_submission_back_at_the_head() -> None:
    ledger = Ledger()
    gen = ledger.start_generation()
    first = ledger.admit("a", "channel", "one")
    second = ledger.admit("b", "channel", "two")
    assert first is not None and second is not None
    ledger.begin_delivery(first, gen)
    ledger.undeliver(first, gen)
    assert ledger.next_queued() is first and first.state == "queued"
    assert ledger.session_lost(gen, "gone") == []  # nothing in flight: nothing interrupted
    assert [s.seq for s in ledger.queued] == [first.seq, second.seq]
    ledger.begin_delivery(first, gen)
    ledger.undeliver(first, gen + 1)  # a stale generation changes nothing
    assert first.state == "delivering"
