"""The runtime core (``codex_trio/_core.py``), proven: a stateful model of its whole life, and an example per promise.

The machine
-----------
:class:`CoreMachine` drives a :class:`RuntimeCore` exactly as the engine does (events in, actions out, time passed
in as a number it advances) against a fake codex that takes and answers ``turn/start``, ``turn/steer`` and
``turn/interrupt`` in any order, and notifies in any order codex may: ``turn/started`` of turns nobody here started,
``turn/completed`` (completed, failed, interrupted) before the answer that names the turn, items of turns it never
announced, fatal and retried ``error``, warnings, deltas, and all of it again about another thread. Callers ask for
inputs of every kind (source ids from a small pool, so duplicates happen), some cancelled before they are taken; the
store makes batches durable, fails to, or takes its time; sessions come up (new generation, thread) and go down
(with a request that never left us, or not); callers interrupt; time passes deadlines; the runtime stops (also
while a batch is being written) or aborts, and is opened again on the store it left (a new life: pending input
delivered, in-doubt input reconciled first). Both delivery modes.

A model of admission, of the queue and of the store predicts what the core must answer, write and send. Checked at
every step:

* every request that was taken is answered exactly once, with the status the model predicts (duplicate, skipped,
  submitted/queued, failed, stopped); one withdrawn before it was taken is never answered nor written;
* a failed write or a withdrawn request leaves no trace: the dedup window is exactly the model's, and an id is a
  duplicate only while it is in it (a window of 0 keeps none);
* inputs reach codex from the head of the model's queue: acceptance order, except that an input put back (never
  sent when its session died, a refused steer, in-doubt input codex never got) goes again first; one unanswered
  ``Send`` per session; ``queue`` mode never starts a turn while one is open; ``steer`` mode steers only into the
  newest open, steerable turn that is not being interrupted; nothing is sent while in-doubt input is undecided;
* an accepted input settles exactly once (the core's own assertion, and the model's), ``completed`` only when codex
  completed its turn, at once when codex ends its turn, and persisted unless it is a notice or ``stopped``; after
  ``stop`` everything is settled, nothing more is sent, and the next life gets exactly what was left;
* another thread's notifications change nothing; a restart notice is the first input of its session, at most one;
* no open turn is past its deadline; every open turn has a finite one (until the session was failed): exactly
  ``turn_timeout`` after it opened until it is interrupted, then within ``interrupt_timeout`` of the interrupt (or
  of codex accepting it); a turn ends once and, while remembered, never opens again;
* queued input never waits for nothing (no wedge); the core's remembered structures stay within their bounds
  (made small here, so that they are reached; the real ones are tested by examples).

Then examples, one per promise of the core's docstring and per regression the redesign fixed, grouped by topic.

Known core bugs are pinned by ``xfail(strict=True)`` tests (``reason="core bug: ..."``). Where the machine would trip
over one, its name is in :data:`CORE_BUGS` and the machine follows the core's current behaviour there (or does what
the core should have done, said where); remove the name once the core is fixed, as the xfail mark.

Size: the machine takes a few seconds; ``CI=true`` in the environment selects a larger run (about a minute or two).
"""

from __future__ import annotations

import math
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, TypeVar

import attrs
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from codex_trio import _core, _protocol as p
from codex_trio._core import (
    Action,
    AdmitRequest,
    Answer,
    CoreStatistics,
    DeliveryMode,
    FailSession,
    Hold,
    HoldEnded,
    Interrupt,
    InterruptAnswer,
    Publish,
    RuntimeCore,
    Send,
    Settle,
    Submission,
    SubmissionKind,
    Write,
    outcome_of,
)
from codex_trio._events import (
    AgentMessageDelta,
    CodexError,
    CodexRetrying,
    CodexWarning,
    Event,
    ItemCompleted,
    ItemStarted,
    TurnCompleted,
    TurnStarted,
)
from codex_trio._items import ThreadItem, parse_item
from codex_trio._settlement import Outcome, Settlement, ThreadLost, TurnOutcome
from codex_trio._turn_options import TurnOptions

_T = TypeVar("_T")
_E = TypeVar("_E")

THREAD: Final = "thread-1"
FOREIGN: Final = "thread-elsewhere"
TURN_TIMEOUT: Final = 100.0
INTERRUPT_TIMEOUT: Final = 10.0

#: Core bugs the machine steps around (each pinned by an xfail test below); see the module docstring.
CORE_BUGS: Final[frozenset[str]] = frozenset()


# == helpers =========================================================================================================


def of(actions: Iterable[Action], kind: type[_T]) -> list[_T]:
    return [a for a in actions if isinstance(a, kind)]


def one(actions: Iterable[Action], kind: type[_T]) -> _T:
    found = of(actions, kind)
    assert len(found) == 1, f"expected one {kind.__name__}, got {found!r}"
    return found[0]


def published(actions: Iterable[Action], kind: type[_E]) -> list[_E]:
    return [a.event for a in of(actions, Publish) if isinstance(a.event, kind)]


def settled(actions: Iterable[Action]) -> list[Settlement]:
    return [a.settlement for a in of(actions, Settle)]


def turn_params(
    turn_id: str,
    status: str = "inProgress",
    *,
    thread: str = THREAD,
    error: str | None = None,
    items: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """``turn/started`` and ``turn/completed`` params."""
    turn: dict[str, Any] = {"id": turn_id, "status": status, "items": list(items)}
    if error is not None:
        turn["error"] = {"message": error}
    return {"threadId": thread, "turn": turn}


def agent_message(text: str, item_id: str = "msg-1") -> dict[str, Any]:
    return {"type": "agentMessage", "id": item_id, "text": text}


def agent_item(text: str, item_id: str = "msg-1") -> ThreadItem:
    """What the core makes of :func:`agent_message`: the typed record."""
    return parse_item(agent_message(text, item_id))


def item_params(turn_id: str, item: dict[str, Any], *, thread: str = THREAD) -> dict[str, Any]:
    return {"threadId": thread, "turnId": turn_id, "item": item}


def error_params(
    message: str, *, turn_id: str | None = None, will_retry: bool = False, thread: str | None = THREAD
) -> dict[str, Any]:
    params: dict[str, Any] = {"error": {"message": message}, "willRetry": will_retry}
    if thread is not None:
        params["threadId"] = thread
    if turn_id is not None:
        params["turnId"] = turn_id
    return params


class Driver:
    """Feeds a core as the engine does, one event at a time; each call returns the actions it produced."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("turn_timeout", TURN_TIMEOUT)
        kwargs.setdefault("interrupt_timeout", INTERRUPT_TIMEOUT)
        kwargs.setdefault("runtime_id", "rt")
        self.core = RuntimeCore(**kwargs)
        self.now = 0.0

    def take(self) -> list[Action]:
        return self.core.take_actions()

    def request(self, source_id: str = "", kind: SubmissionKind = "channel", text: str = "hi") -> AdmitRequest:
        """A request, not yet answered (its answer and any Write are left for :meth:`take`)."""
        request = AdmitRequest(source_id, kind, text)
        self.core.request(request)
        return request

    def accept(
        self, source_id: str = "", kind: SubmissionKind = "channel", text: str = "hi"
    ) -> tuple[Submission, list[Action]]:
        """Request an input and make its batch durable: the accepted submission and every action on the way."""
        request = self.request(source_id, kind, text)
        actions = self.take()
        for write in of(actions, Write):
            self.core.written(write.batch)
            actions += self.take()
        answer = one([a for a in of(actions, Answer) if a.request is request], Answer)
        assert answer.status in ("submitted", "queued") and answer.submission is not None, answer
        return answer.submission, actions

    def up(self, generation: int | None = None, thread: str = THREAD) -> list[Action]:
        self.core.session_ready(self.core.generation + 1 if generation is None else generation, thread)
        return self.take()

    def lost(self, reason: str = "app-server exited", *, unsent: Iterable[int] = ()) -> list[Action]:
        self.core.session_lost(self.core.generation, reason, unsent=set(unsent))
        return self.take()

    def answer(
        self, send: Send, turn_id: str | None = None, *, refused: str | None = None, broken: str | None = None
    ) -> list[Action]:
        self.core.delivery_answered(send.token, self.now, turn_id=turn_id, refused=refused, broken=broken)
        return self.take()

    def notify(self, method: str, params: Any) -> list[Action]:
        self.core.notification(method, params, self.now)
        return self.take()

    def started(self, turn_id: str) -> list[Action]:
        return self.notify("turn/started", turn_params(turn_id))

    def completed(self, turn_id: str, status: str = "completed", **kwargs: Any) -> list[Action]:
        return self.notify("turn/completed", turn_params(turn_id, status, **kwargs))

    def tick(self, now: float) -> list[Action]:
        self.now = now
        self.core.tick(now)
        return self.take()

    def interrupt(self, requester: object) -> list[Action]:
        self.core.interrupt(requester, self.now)
        return self.take()

    def interrupt_answered(self, interrupt: Interrupt, *, accepted: bool, error: str | None = None) -> list[Action]:
        self.core.interrupt_answered(interrupt.token, self.now, accepted=accepted, error=error)
        return self.take()

    def running(self, source_id: str = "a", turn_id: str = "t1", text: str = "hi") -> Submission:
        """Accept an input and have codex take it into ``turn_id`` (session up first if none is)."""
        if not self.core.has_session:
            self.up()
        sub, actions = self.accept(source_id, text=text)
        send = one(actions, Send)
        assert send.submission is sub
        self.answer(send, turn_id)
        return sub


# == the machine =====================================================================================================

#: Source ids: a few that recur (so that duplicates happen, and ids age out of small windows), none, or a fresh one.
POOL: Final = ("a", "b", "", "fresh", "fresh")
KINDS: Final[tuple[SubmissionKind, ...]] = ("channel", "channel", "system", "trigger", "notice")
STATUSES: Final = ("completed", "failed", "interrupted")
#: Notifications of another thread, all of which the core must ignore.
FOREIGN_METHODS: Final = (
    "turn/started",
    "turn/completed",
    "item/completed",
    "error",
    "item/agentMessage/delta",
    "thread/status/changed",
)
#: codex's moves and how often it makes them: answering what the core sent is what drives the core most.
CODEX_MOVE_WEIGHTS: Final = {
    "take": 1,
    "answer": 3,
    "interrupt": 1,
    "started": 1,
    "item": 1,
    "completed": 2,
    "error": 1,
}
CODEX_MOVES: Final = tuple(move for move, weight in CODEX_MOVE_WEIGHTS.items() for _ in range(weight))
#: What reconciliation may learn of an in-doubt input codex has (None: codex has it, its outcome is unknown).
RECONCILED: Final[tuple[Outcome | None, ...]] = (None, "completed", "failed")
#: The options a channel input may carry: none (it may join any turn), or one of two settings (it joins only a turn
#: started with the same ones; otherwise it waits for the running turn to end and starts its own).
OPTIONS_A: Final = TurnOptions(model="model-a")
OPTIONS_B: Final = TurnOptions(model="model-b", effort="high")
OPTION_CHOICES: Final[tuple[TurnOptions | None, ...]] = (None, None, OPTIONS_A, OPTIONS_A, OPTIONS_B)
#: Small bounds for the machine, so that it reaches them (the real ones are tested by examples).
MACHINE_BOUNDS: Final = {"_REMEMBERED_ENDED": 4, "_REMEMBERED_EARLY": 2, "_MAX_ITEMS_PER_TURN": 3}

RequestState = Literal["waiting", "withdrawn", "writing", "answered"]


@attrs.define(eq=False)
class ModelRequest:
    """A request as the model sees it; ``expect`` is the status its answer must have."""

    request: AdmitRequest
    state: RequestState = "waiting"
    expect: str | None = None
    seq: int | None = None
    answer: Answer | None = None


@attrs.define(eq=False)
class ModelBatch:
    members: list[ModelRequest]
    deferred: list[ModelRequest]
    write: Write | None = None


@attrs.define(eq=False)
class CodexTurn:
    """A turn as the fake codex has it."""

    id: str
    inputs: list[int] = attrs.field(factory=list)
    #: how codex ended it (once it did)
    status: str | None = None
    started_sent: bool = False
    #: codex told the core that it ended (turn/completed, or a fatal error naming it)
    terminal_sent: bool = False
    items: int = 0
    #: the options of the turn/start that started it (None for a turn nobody here started)
    options: TurnOptions | None = None


@attrs.define(eq=False)
class Flight:
    """The one ``Send`` codex has not answered yet."""

    send: Send
    #: the codex turn that has the input (codex took the request; its answer is on the way)
    committed: str | None = None
    #: codex will refuse it (a steer into a turn codex no longer runs)
    refusing: bool = False
    broken: bool = False


@attrs.define(eq=False)
class ModelHold:
    """A thread operation's hold (``Runtime.new_thread`` and the like): inputs numbered up to ``after`` go first."""

    after: int
    token: int = 0
    #: the generation it was offered in (None: not offered, or that session ended)
    offered_gen: int | None = None


@attrs.define(eq=False)
class Requester:
    """A caller of ``interrupt()``."""

    n: int
    answers: list[bool] = attrs.field(factory=list)


class CoreMachine(RuleBasedStateMachine):
    """A RuntimeCore, a model of what it must do, and a fake codex that answers it in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.saved_bounds = {name: getattr(_core, name) for name in MACHINE_BOUNDS}
        for name, value in MACHINE_BOUNDS.items():
            setattr(_core, name, value)
        self.mode: DeliveryMode = "steer"
        self.window = 3
        self.now = 0.0
        self.next_seq = 1
        self.fresh_ids = 0
        self.accepted_ids: list[str] = []  # non-empty source ids, in the order they entered the window
        # -- the store, as the engine keeps it from the actions: accepted rows until a persisted settlement
        self.store: dict[int, tuple[str, SubmissionKind, str]] = {}
        self.store_options: dict[int, TurnOptions | None] = {}
        self.delivering: set[int] = set()
        self.lives = 0
        self.new_life()

    def new_life(self) -> None:
        """Forget everything but the store: a new core (a new host, or the same one started again)."""
        self.core = RuntimeCore(runtime_id="rt", turn_timeout=TURN_TIMEOUT, interrupt_timeout=INTERRUPT_TIMEOUT)
        # -- admission model
        self.reqs: list[ModelRequest] = []
        self.by_request: dict[int, ModelRequest] = {}
        self.waiting: list[ModelRequest] = []
        self.batch: ModelBatch | None = None
        self.woken = False
        # -- inputs
        self.subs: dict[int, Submission] = {}
        self.kinds: dict[int, SubmissionKind] = {}
        self.queue: list[int] = []
        self.in_doubt: set[int] = set()
        self.resent_in_doubt: set[int] = set()
        self.reconcile_expect: dict[int, Outcome] = {}
        self.sent: set[int] = set()
        self.max_first_sent = 0
        self.sub_gen: dict[int, int | None] = {}
        self.settlements: dict[int, Settlement] = {}
        self.codex_turn_of: dict[int, str] = {}
        self.thread_lost_info: ThreadLost | None = None
        self.thread_lost_count = 0
        # -- session, and codex's side of it
        self.gen = 0
        self.thread: str | None = None
        self.failing = False
        self.flight: Flight | None = None
        self.codex_turns: dict[str, CodexTurn] = {}
        self.turn_counter = 0
        self.session_sends: list[int] = []
        self.codex_moves = 0  # in this session
        self.eager_codex = False
        self.answered_into: dict[int, str] = {}
        self.exempt: set[int] = set()  # answered into a turn the core had already forgotten (bounded memory)
        self.opened_at: dict[str, float] = {}
        self.ended_turns: OrderedDict[str, None] = OrderedDict()
        self.interrupt_at: dict[str, float] = {}
        self.interrupts: dict[int, tuple[Interrupt, Requester | None]] = {}
        self.stale_tokens: list[int] = []
        self.requesters: list[Requester] = []
        self.requester: Requester | None = None  # the caller of the interrupt() being fed
        self.unanswered_interrupts: list[Requester] = []
        self.holds: list[ModelHold] = []
        self.moves = 0
        # -- stop
        self.stop_requested = False
        self.stopped = False

    def start_life(self, *, up: bool, eager: bool, resend: list[bool], known: list[Outcome | None]) -> None:
        """A core restored from the store: its queue, its in-doubt input, its dedup window. Mostly with a session up
        from the start (most of what there is to check needs one), reconciled first as the engine does."""
        self.lives += 1
        rows = [(seq, *row) for seq, row in sorted(self.store.items())]
        pending = [(*row, self.store_options.get(row[0]), ()) for row in rows if row[0] not in self.delivering]
        in_doubt = [(*row, False, self.store_options.get(row[0]), ()) for row in rows if row[0] in self.delivering]
        self.core = RuntimeCore(
            runtime_id="rt",
            delivery_mode=self.mode,
            dedup_window=self.window,
            turn_timeout=TURN_TIMEOUT,
            interrupt_timeout=INTERRUPT_TIMEOUT,
            next_seq=self.next_seq,
            seen=self.window_ids(),
            pending=pending,
            in_doubt=in_doubt,
        )
        assert self.core.next_seq == self.next_seq and self.core.seen_ids() == self.window_ids()
        for sub in self.core.queued() + self.core.in_doubt():
            assert sub.options == self.store_options.get(sub.seq), "restored input lost its options"
            self.subs[sub.seq] = sub
            self.kinds[sub.seq] = sub.kind
            self.sub_gen[sub.seq] = None
        self.queue = [seq for seq, *_ in pending]
        self.in_doubt = {seq for seq, *_ in in_doubt}
        self.max_first_sent = 0
        if up:
            if self.in_doubt:
                self.reconcile(resend, known)
            self.session_up(skip=1, fresh_thread=False, eager=eager)

    @initialize(
        mode=st.sampled_from(["steer", "queue"]),
        window=st.sampled_from([0, 1, 3, 1024]),
        first_seq=st.integers(1, 5),
        restored=st.lists(
            st.tuples(
                st.sampled_from(POOL),
                st.sampled_from(["channel", "system", "trigger"]),
                st.booleans(),
                st.sampled_from(OPTION_CHOICES),
            ),
            max_size=3,
        ),
        up=st.sampled_from([True, True, False]),
        eager=st.booleans(),
        resend=st.lists(st.booleans(), min_size=3, max_size=3),
        known=st.lists(st.sampled_from(RECONCILED), min_size=3, max_size=3),
    )
    def configure(
        self,
        mode: DeliveryMode,
        window: int,
        first_seq: int,
        restored: list[tuple[str, SubmissionKind, bool, TurnOptions | None]],
        up: bool,
        eager: bool,
        resend: list[bool],
        known: list[Outcome | None],
    ) -> None:
        """A fresh store, or one a previous host left: pending input, and in-doubt input (the oldest)."""
        self.mode, self.window = mode, window
        n_doubt = sum(1 for _, _, doubt, _ in restored if doubt)
        for n, (source_id, kind, _, options) in enumerate(restored):
            if source_id == "fresh":
                source_id = f"restored-{n}"
            if source_id and source_id in self.accepted_ids:
                source_id = ""
            if source_id:
                self.accepted_ids.append(source_id)
            seq = first_seq + n
            self.store[seq] = (source_id, kind, f"restored-{n}")
            self.store_options[seq] = options if kind == "channel" else None
            if n < n_doubt:
                self.delivering.add(seq)
        self.next_seq = first_seq + len(restored)
        self.start_life(up=up, eager=eager, resend=resend, known=known)

    @precondition(lambda self: self.stopped)
    @rule(
        mode=st.sampled_from(["steer", "queue"]),
        up=st.booleans(),
        eager=st.booleans(),
        resend=st.lists(st.booleans(), min_size=3, max_size=3),
        known=st.lists(st.sampled_from(RECONCILED), min_size=3, max_size=3),
    )
    def restart(
        self, mode: DeliveryMode, up: bool, eager: bool, resend: list[bool], known: list[Outcome | None]
    ) -> None:
        """The runtime is opened again on the same store: what the last one accepted and did not settle for good
        (queued, in flight, stopped) is delivered or reconciled now."""
        self.check_stopped()
        self.mode = mode
        self.new_life()
        self.start_life(up=up, eager=eager, resend=resend, known=known)

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is not None:
                return  # a step failed (teardown runs in Hypothesis' `finally`): report that, not what follows
            if not self.stop_requested:
                self.core.stop("stopped by test")
                self.model_stop()
                self.process()
            if self.batch is not None:  # the stop waits for it
                assert self.batch.write is not None
                self.core.written(self.batch.write.batch)
                self.model_written(ok=True)
                self.process()
            assert self.core.stopped
            self.check_stopped()
        finally:
            for name, value in self.saved_bounds.items():
                setattr(_core, name, value)

    # -- the admission model ---------------------------------------------------------------------------------------

    def window_ids(self) -> list[str]:
        """The ids the window must hold: the last ``window`` distinct accepted ids, oldest first."""
        out: list[str] = []
        for source_id in reversed(self.accepted_ids):
            if len(out) >= self.window:
                break
            if source_id not in out:
                out.append(source_id)
        return out[::-1]

    def form_batch(self) -> None:
        """What the core must do with the waiting requests when no batch is being written.

        The notice rule: a restart notice is skipped once anything else woke the thread, here or in this batch.
        What a batch accepts wakes the thread once it is durable (a failed write leaves no trace); between
        sessions, input queued for the next one wakes it too.
        """
        if self.batch is not None:
            return
        members: list[ModelRequest] = []
        deferred: list[ModelRequest] = []
        batch_ids: set[str] = set()
        woken = self.woken
        window = self.window_ids()
        for mr in self.waiting:
            if mr.state == "withdrawn":
                continue
            request = mr.request
            if request.kind == "notice":
                queued_for_next = (
                    self.thread is None and bool(self.queue) and "notice-between-sessions" not in CORE_BUGS
                )
                if woken or queued_for_next:
                    mr.expect = "skipped"
                    deferred.append(mr)
                    continue
            elif request.source_id and (request.source_id in window or request.source_id in batch_ids):
                mr.expect = "duplicate"
                deferred.append(mr)
                continue
            woken = True
            if "failed-write-wakes" in CORE_BUGS:
                self.woken = True  # at once, not once durable
            if request.source_id:
                batch_ids.add(request.source_id)
            mr.seq = self.next_seq
            self.next_seq += 1
            members.append(mr)
        self.waiting.clear()
        if not members:
            for mr in deferred:
                mr.state = "answered"
            return
        for mr in members + deferred:
            mr.state = "writing"
        self.batch = ModelBatch(members, deferred)
        if all(mr.request.kind == "notice" for mr in members):
            self.model_written(ok=True)  # nothing to make durable: accepted at once

    def model_written(self, *, ok: bool) -> None:
        batch = self.batch
        assert batch is not None
        self.batch = None
        status = "submitted" if self.thread is not None else "queued"
        for mr in batch.members:
            assert mr.seq is not None
            if ok or mr.request.kind == "notice":
                mr.expect = status
                self.queue.append(mr.seq)
                self.kinds[mr.seq] = mr.request.kind
                self.sub_gen[mr.seq] = None
                if ok and mr.request.source_id and self.window:
                    self.accepted_ids.append(mr.request.source_id)
                if ok and mr.request.kind != "notice":
                    self.store[mr.seq] = (mr.request.source_id, mr.request.kind, mr.request.text)
                    self.store_options[mr.seq] = mr.request.options
            else:
                mr.expect = "failed"
            mr.state = "answered"
        for mr in batch.deferred:
            mr.state = "answered"
        if "failed-write-wakes" not in CORE_BUGS and (ok or any(mr.request.kind == "notice" for mr in batch.members)):
            self.woken = True
        if self.stop_requested:
            self.model_abort()
        else:
            self.form_batch()

    def model_close_admission(self) -> None:
        for mr in self.waiting:
            if mr.state == "waiting":
                mr.state, mr.expect = "answered", "stopped"
        self.waiting.clear()

    def model_stop(self) -> None:
        self.stop_requested = True
        self.model_close_admission()
        if self.batch is None:
            self.model_abort()

    def model_abort(self) -> None:
        """Everything open settles (Settle actions, checked as they come); the session is gone."""
        self.stop_requested = self.stopped = True
        self.model_close_admission()
        if self.batch is not None:
            for mr in self.batch.members:
                mr.state, mr.expect = "answered", "stopped"
            for mr in self.batch.deferred:
                mr.state = "answered"
            self.batch = None
        self.end_session()

    def end_session(self) -> None:
        """The session is gone: its callers of interrupt() are answered False, its tokens are stale."""
        self.thread = None
        self.stale_tokens += list(self.interrupts)
        if self.flight is not None:
            self.stale_tokens.append(self.flight.send.token)
        self.unanswered_interrupts = [r for _, r in self.interrupts.values() if r is not None]
        self.interrupts = {}
        for hold in self.holds:
            if hold.offered_gen == self.gen:
                hold.offered_gen = None  # offered again once the next session is idle

    # -- feeding the core --------------------------------------------------------------------------------------------

    def process(self) -> list[Action]:
        actions = self.core.take_actions()
        for action in actions:
            handler: Callable[[Any], None] = getattr(self, f"on_{type(action).__name__}")
            handler(action)
        return actions

    def on_Write(self, write: Write) -> None:
        batch = self.batch
        assert batch is not None and batch.write is None, "a Write nobody asked for, or a second one at a time"
        batch.write = write
        expected = [
            (mr.seq, mr.request.source_id, mr.request.kind, mr.request.text)
            for mr in batch.members
            if mr.request.kind != "notice"
        ]
        assert [(s.seq, s.source_id, s.kind, s.text) for s in write.submissions] == expected
        assert [s.options for s in write.submissions] == [
            mr.request.options for mr in batch.members if mr.request.kind != "notice"
        ]

    def on_Answer(self, answer: Answer) -> None:
        mr = self.by_request[id(answer.request)]
        assert mr.answer is None, f"{mr.request} answered twice"
        assert answer.request.taken
        mr.answer = answer
        assert mr.state == "answered", f"{mr.request} answered too early ({mr.state}): {answer}"
        assert answer.status == mr.expect, f"{mr.request}: {answer.status}, expected {mr.expect}"
        if answer.status in ("submitted", "queued"):
            sub = answer.submission
            assert sub is not None and sub.seq == mr.seq
            assert (sub.source_id, sub.kind, sub.text, sub.options) == (
                mr.request.source_id,
                mr.request.kind,
                mr.request.text,
                mr.request.options,
            )
            self.subs[sub.seq] = sub
        else:
            assert answer.submission is None
        if answer.status == "failed":
            assert isinstance(answer.error, OSError)

    def on_Send(self, send: Send) -> None:
        seq = send.submission.seq
        assert self.thread is not None, "sent without a session"
        assert not self.stopped, "sent after stop"
        if "sends-while-stopping" not in CORE_BUGS:
            assert not self.stop_requested, "sent while stopping"
        assert not self.in_doubt, "sent before in-doubt input was reconciled"
        assert self.flight is None, "a second Send while one is unanswered"
        assert (send.generation, send.thread_id) == (self.gen, self.thread)
        assert self.queue and seq == self.queue[0], f"sent {seq}, but the queue's head is {self.queue[:1]}"
        assert send.submission is self.subs[seq] and send.submission.state == "sending"
        if self.holds:
            assert seq <= self.holds[0].after, f"sent {seq}, which was accepted after a pending hold"
            assert self.holds[0].offered_gen is None, "sent while a thread operation holds the thread"
        if seq not in self.sent and seq not in self.resent_in_doubt:
            assert seq > self.max_first_sent, "sent out of acceptance order"
            self.max_first_sent = seq
        self.queue.pop(0)
        session = self.core._session
        assert session is not None
        if self.mode == "queue":
            assert send.method == "turn/start" and not session.turns, "queue mode started a turn while one is open"
        elif send.method == "turn/steer":
            target = session.turns.get(send.expected_turn_id or "")
            assert target is not None and target.steerable and not target.interrupting, f"bad steer target {target}"
            assert send.expected_turn_id == next(
                t.id for t in reversed(session.turns.values()) if t.steerable and not t.interrupting
            )
            # The options rule: it joins a running turn only if it sets nothing, or what that turn was started with.
            codex_turn = self.codex_turns.get(send.expected_turn_id or "")
            turn_options = codex_turn.options if codex_turn is not None else None
            options = send.submission.options
            assert options is None or options == turn_options, f"steered {options} into a turn of {turn_options}"
        else:
            assert not any(t.steerable and not t.interrupting for t in session.turns.values())
            assert not any(t.interrupting for t in session.turns.values())
        if self.kinds[seq] == "notice" and "notice-between-sessions" not in CORE_BUGS:
            others = [s for s in self.session_sends if s != seq and s not in self.resent_in_doubt]
            assert not others, f"a restart notice sent after {others} woke the session"
        if seq not in self.session_sends:
            self.session_sends.append(seq)
        self.sent.add(seq)
        self.sub_gen[seq] = self.gen
        self.flight = Flight(send)
        if send.submission.durable:
            assert seq in self.store
            self.delivering.add(seq)  # the engine marks it in doubt before it sends it
        if self.eager_codex:
            self.codex_takes_input()  # codex acts on it at once; its answer comes when the rules say

    def on_Hold(self, hold: Hold) -> None:
        mh = hold.requester
        assert self.holds and mh is self.holds[0], "a hold offered out of order"
        assert mh.offered_gen is None, "a hold offered twice in one session"
        assert not self.stop_requested and self.thread is not None
        assert (hold.generation, hold.thread_id, hold.token) == (self.gen, self.thread, mh.token)
        assert not [seq for seq in self.queue if seq <= mh.after], "a hold offered before the input accepted first"
        if self.batch is not None:
            assert not [mr for mr in self.batch.members if mr.seq is not None and mr.seq <= mh.after]
        assert self.flight is None and not self.in_doubt
        session = self.core._session
        assert session is not None and not session.turns, "a hold offered while a turn is open"
        mh.offered_gen = self.gen

    def on_HoldEnded(self, ended: HoldEnded) -> None:
        assert self.stop_requested, "a hold ended while the runtime runs"
        self.holds.remove(ended.requester)

    def on_Interrupt(self, interrupt: Interrupt) -> None:
        assert self.thread is not None and not self.stopped
        assert (interrupt.generation, interrupt.thread_id) == (self.gen, self.thread)
        session = self.core._session
        assert session is not None and session.turns[interrupt.turn_id].interrupting
        assert interrupt.token not in self.interrupts
        self.interrupts[interrupt.token] = (interrupt, self.requester)
        self.interrupt_at[interrupt.turn_id] = self.now

    def on_InterruptAnswer(self, answer: InterruptAnswer) -> None:
        requester = answer.requester
        assert isinstance(requester, Requester)
        assert not requester.answers, f"interrupt caller {requester.n} answered twice"
        requester.answers.append(answer.interrupted)

    def on_Settle(self, settle: Settle) -> None:
        s = settle.settlement
        seq = s.seq
        assert seq in self.subs, f"settled {seq}, which was never accepted"
        assert seq not in self.settlements, f"{seq} settled twice"
        self.settlements[seq] = s
        sub = self.subs[seq]
        assert sub.state == "settled"
        assert s.source_id == sub.source_id
        assert s.thread_lost == self.thread_lost_info
        self.thread_lost_info = None
        if s.outcome == "stopped":
            assert self.stop_requested and not settle.persist
        else:
            assert settle.persist == (sub.kind != "notice")
            assert seq in self.sent or seq in self.in_doubt, f"{seq} settled {s.outcome} but was never sent"
        if settle.persist:
            self.store.pop(seq)
            self.delivering.discard(seq)
        if seq in self.queue:
            assert s.outcome == "stopped", f"queued {seq} settled {s.outcome}"
            self.queue.remove(seq)
        if seq in self.in_doubt:
            self.in_doubt.discard(seq)
            if s.outcome != "stopped":
                assert s.outcome == self.reconcile_expect[seq]
        elif s.outcome == "completed":
            turn = self.codex_turns.get(self.codex_turn_of.get(seq, ""))
            assert turn is not None and turn.status == "completed", f"{seq} completed, but codex did not say so"
            assert s.turn_id == turn.id
        assert s.generation == self.sub_gen.get(seq)
        if self.flight is not None and self.flight.send.submission.seq == seq:
            self.flight = None

    def on_Publish(self, publish: Publish) -> None:
        event = publish.event
        assert getattr(event, "generation", self.gen) == self.gen
        session = self.core._session
        if isinstance(event, TurnStarted):
            assert session is not None and event.turn_id in session.turns
            assert event.turn_id not in self.ended_turns, f"turn {event.turn_id} opened again after it ended"
            self.opened_at[event.turn_id] = self.now
        elif isinstance(event, TurnCompleted):
            assert session is not None and event.turn_id not in session.turns
            assert event.turn_id not in self.ended_turns, f"turn {event.turn_id} ended twice"
            self.ended_turns[event.turn_id] = None  # remembered as the core must: the newest, within the bound
            while len(self.ended_turns) > _core._REMEMBERED_ENDED:
                self.ended_turns.popitem(last=False)

    def on_FailSession(self, fail: FailSession) -> None:
        assert fail.generation == self.gen and self.thread is not None
        self.failing = True

    def snapshot(self) -> tuple[Any, ...]:
        """The core's whole state, for "this changed nothing" checks."""
        core = self.core
        session = core._session
        turns: tuple[Any, ...] = ()
        extra: tuple[Any, ...] = ()
        if session is not None:
            turns = tuple(
                (
                    t.id,
                    t.deadline,
                    tuple(s.seq for s in t.inputs),
                    len(t.items),
                    t.steerable,
                    t.interrupting,
                    t.override,
                )
                for t in session.turns.values()
            )
            extra = (
                tuple(session.ended.items()),
                tuple((k, len(v)) for k, v in session.early_items.items()),
                session.sending.token if session.sending else None,
                tuple(session.interrupts),
            )
        return (
            core.generation,
            core.stopped,
            core._woken,
            core._next_token,
            core.statistics(),
            tuple(core.seen_ids()),
            tuple((s.seq, s.state, s.generation, s.turn_id) for s in self.subs.values()),
            core.thread_id,
            turns,
            extra,
        )

    def notify(self, method: str, params: Any) -> list[Action]:
        self.core.notification(method, params, self.now)
        return self.process()

    def new_turn_id(self) -> str:
        self.turn_counter += 1
        return f"g{self.gen}-t{self.turn_counter}"

    # -- rules: admission --------------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.queue) + len(self.waiting) < 4)
    @rule(
        arrivals=st.lists(
            st.tuples(st.sampled_from(POOL), st.sampled_from(KINDS), st.sampled_from(OPTION_CHOICES)),
            min_size=1,
            max_size=3,
        ),
        write=st.sampled_from(["later", "ok", "ok", "ok", "fail"]),
    )
    def request(self, arrivals: list[tuple[str, SubmissionKind, TurnOptions | None]], write: str) -> None:
        """Callers ask for inputs to be accepted (several at once: those arriving during a write form a batch);
        the store makes the batch durable now, fails to, or takes its time (:meth:`finish_write`)."""
        for source_id, kind, options in arrivals:
            if source_id == "fresh":
                source_id = f"id-{self.fresh_ids}"
                self.fresh_ids += 1
            if kind == "notice":
                source_id = ""  # the runtime's restart notices have no source id
            # Only channel input carries options (``submit``); notices and system input never do.
            request = AdmitRequest(
                source_id, kind, f"input-{len(self.reqs)}", options=options if kind == "channel" else None
            )
            mr = ModelRequest(request)
            self.reqs.append(mr)
            self.by_request[id(request)] = mr
            self.core.request(request)
            if self.stop_requested:
                mr.state, mr.expect = "answered", "stopped"
            else:
                self.waiting.append(mr)
                self.form_batch()
            self.process()
        if write != "later" and self.batch is not None and not self.stopped:
            self.finish_write(ok=write == "ok")

    @precondition(lambda self: any(mr.state == "waiting" for mr in self.reqs))
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        """The caller was cancelled before the core took its request."""
        mr = data.draw(st.sampled_from([mr for mr in self.reqs if mr.state == "waiting"]))
        assert not mr.request.taken
        mr.request.withdrawn = True
        mr.state = "withdrawn"

    @precondition(lambda self: self.batch is not None and self.batch.write is not None and not self.stopped)
    @rule(ok=st.sampled_from([True, True, False]))
    def finish_write(self, ok: bool) -> None:
        assert self.batch is not None and self.batch.write is not None
        batch = self.batch.write.batch
        if ok:
            self.core.written(batch)
        else:
            self.core.write_failed(batch, OSError("disk full"))
        self.model_written(ok=ok)
        self.process()

    # -- rules: thread operations -------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.holds) < 2)
    @rule()
    def ask_hold(self) -> None:
        """A thread operation (new thread, fork, compaction) asks for its place in the input order."""
        mh = ModelHold(after=self.next_seq - 1)
        self.holds.append(mh)
        mh.token = self.core.hold(mh)
        self.process()
        if self.stop_requested:
            assert mh not in self.holds, "a hold asked for while stopping was not ended"

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data(), switch=st.booleans())
    def release_hold(self, data: st.DataObject, switch: bool) -> None:
        """The operation is done (or its caller was cancelled, offered or not): what waited behind it goes on. One
        that moved the runtime to another thread switches the session to it (codex then talks about that one)."""
        mh = data.draw(st.sampled_from(self.holds))
        self.holds.remove(mh)
        new_thread = None
        settled_turns = all(t.terminal_sent for t in self.codex_turns.values())
        if switch and mh.offered_gen == self.gen and self.thread is not None and settled_turns:
            self.moves += 1
            new_thread = f"{self.thread}-moved-{self.moves}"
        self.core.release(mh.token, thread_id=new_thread)
        if new_thread is not None:
            self.thread = new_thread
            self.codex_turns = {}
            self.ended_turns = OrderedDict()  # the old thread's turns are no longer news
        self.process()

    # -- rules: sessions ---------------------------------------------------------------------------------------------

    @precondition(lambda self: self.thread is None and not self.stopped)
    @rule(skip=st.integers(1, 2), fresh_thread=st.booleans(), eager=st.booleans())
    def session_up(self, skip: int, fresh_thread: bool, eager: bool) -> None:
        """A session is up (generation numbers may skip: a start can fail before it is up). Its codex is eager
        (takes each request as it is sent, so its notifications can overtake its answers) or not."""
        self.eager_codex = eager
        self.gen = self.core.generation + skip
        self.thread = f"thread-{self.gen}" if fresh_thread else THREAD
        self.failing = False
        self.flight = None
        self.codex_turns = {}
        self.session_sends = []
        self.codex_moves = 0
        self.answered_into = {}
        self.exempt = set()
        self.opened_at = {}
        self.ended_turns = OrderedDict()
        self.interrupt_at = {}
        self.woken = self.woken or bool(self.queue)  # what is queued for it wakes it (a notice: its notice)
        self.core.session_ready(self.gen, self.thread)
        self.process()

    @precondition(lambda self: self.thread is not None and (self.codex_moves >= 3 or self.failing))
    @rule(unsent=st.booleans())
    def session_down(self, unsent: bool) -> None:
        """The session ends (after codex did a few things in it, or once the core failed it). What it had in flight
        settles ``interrupted``; a request that certainly never left us (``unsent``) goes back to the queue."""
        flight = self.flight
        unsent_seqs: set[int] = set()
        if flight is not None and unsent and flight.committed is None and not flight.broken:
            seq = flight.send.submission.seq
            unsent_seqs.add(seq)  # the request never left us: it goes back to the head
            self.queue.insert(0, seq)
            self.sub_gen[seq] = None
            self.flight = None
        in_flight = [s.seq for t in self.core._session.turns.values() for s in t.inputs] if self.core._session else []
        self.woken = False
        self.end_session()
        self.core.session_lost(self.gen, "app-server exited", unsent=unsent_seqs)
        actions = self.process()
        assert self.flight is None, "the flight of a lost session did not settle"
        interrupted = {s.seq for s in settled(actions)}
        assert interrupted >= set(in_flight)
        assert all(s.outcome == "interrupted" for s in settled(actions))
        assert all(requester.answers == [False] for requester in self.unanswered_interrupts)

    def stale_events(self, data: st.DataObject) -> None:
        """A lost session's late news (its end again, answers to its requests) changes nothing."""
        before = self.snapshot()
        stale = data.draw(st.integers(0, self.gen - 1 if self.thread is not None else self.gen))
        self.core.session_lost(stale, "an old app-server exited", unsent=set(self.subs))
        if self.stale_tokens:
            token = data.draw(st.sampled_from(self.stale_tokens))
            self.core.delivery_answered(token, self.now, turn_id="g0-t0")
            self.core.delivery_answered(token, self.now, refused="late")
            self.core.interrupt_answered(token, self.now, accepted=True)
            self.core.interrupt_answered(token, self.now, accepted=False, error="late")
        assert self.process() == []
        assert self.snapshot() == before

    @precondition(lambda self: self.in_doubt and self.thread is None and not self.stopped)
    @rule(
        resend=st.lists(st.booleans(), min_size=3, max_size=3),
        known=st.lists(st.sampled_from(RECONCILED), min_size=3, max_size=3),
    )
    def reconcile(self, resend: list[bool], known: list[Outcome | None]) -> None:
        """codex is asked which in-doubt inputs it has (the engine does this before a session goes up): the n-th
        in-doubt input is sent again if ``resend[n]``, else it settles ``known[n]`` (None: codex has it, its
        outcome is unknown). The lists are reused in turn when more inputs are in doubt than they are long (several
        steered into one turn when the host died)."""
        seqs = sorted(self.in_doubt)
        again = {seq for n, seq in enumerate(seqs) if resend[n % len(resend)]}
        outcomes: dict[int, TurnOutcome] = {}
        for n, seq in enumerate(seqs):
            outcome = known[n % len(known)]
            if seq in again:
                continue
            if outcome is None:
                self.reconcile_expect[seq] = "interrupted"
            else:
                outcomes[seq] = TurnOutcome(outcome, "old-turn", "old text" if outcome == "completed" else None)
                self.reconcile_expect[seq] = outcome
        self.queue[:0] = sorted(again)
        self.resent_in_doubt |= again
        self.in_doubt -= again
        self.core.reconciled(again, outcomes)
        self.process()
        assert not self.in_doubt and not self.core.in_doubt()

    def thread_lost(self) -> None:
        self.thread_lost_count += 1
        info = ThreadLost("old", f"lost-{self.thread_lost_count}", "gone", 1, runtime_id="rt")
        self.thread_lost_info = info
        self.core.thread_lost(info)

    # -- rules: codex --------------------------------------------------------------------------------------------------

    @precondition(lambda self: self.thread is not None)
    @rule(data=st.data(), move=st.sampled_from(CODEX_MOVES))
    def codex(self, data: st.DataObject, move: str) -> None:
        """codex does something: takes the request in flight (its answer still on the way), answers it, answers an
        interrupt, or notifies (a turn started, an item, a turn's end, a fatal error). A move that cannot be made
        now (no request in flight) becomes one that can."""
        self.codex_moves += 1
        if move == "interrupt" and not self.interrupts:
            move = "answer"
        if move in ("take", "answer") and (self.flight is None or self.flight.broken):
            move = "completed" if self.codex_turns else "started"
        if move == "take" and self.flight is not None and self.flight.committed is not None:
            move = "answer"
        if move == "take":
            self.codex_takes_input()
        elif move == "answer":
            self.answer_delivery(data.draw(st.sampled_from(["accept", "accept", "accept", "refuse", "broken"])))
        elif move == "interrupt":
            self.answer_interrupt(data, data.draw(st.booleans()))
        elif move == "started":
            self.codex_turn_started(data, data.draw(st.booleans()))
        elif move == "item":
            self.codex_item(data, data.draw(st.booleans()), data.draw(st.sampled_from(["agentMessage", "reasoning"])))
        elif move == "completed":
            self.codex_turn_completed(data, data.draw(st.sampled_from(STATUSES)), data.draw(st.booleans()))
        else:
            self.codex_fatal_error(data)

    # -- codex's moves -----------------------------------------------------------------------------------------------

    def codex_takes_input(self) -> None:
        """codex has received the request and acted on it; its answer is still on the way."""
        flight = self.flight
        assert flight is not None
        seq = flight.send.submission.seq
        if flight.send.method == "turn/start":
            turn = CodexTurn(self.new_turn_id(), options=flight.send.submission.options)
            self.codex_turns[turn.id] = turn
        else:
            target = self.codex_turns.get(flight.send.expected_turn_id or "")
            if target is None or target.status is not None:
                flight.refusing = True
                return
            turn = target
        turn.inputs.append(seq)
        flight.committed = turn.id
        self.codex_turn_of[seq] = turn.id

    def answer_delivery(self, choice: str) -> None:
        flight = self.flight
        assert flight is not None
        send = flight.send
        seq = send.submission.seq
        if choice == "accept" and flight.committed is None and not flight.refusing:
            self.codex_takes_input()
        if choice == "accept" and flight.committed is None:
            choice = "refuse"  # codex does not run the turn it was asked to steer into
        if choice == "refuse" and flight.committed is not None:
            choice = "accept"  # codex has it: it cannot refuse it any more
        if choice == "broken":
            flight.broken = True
            self.core.delivery_answered(send.token, self.now, broken="turn/start timed out")
            actions = self.process()
            assert one(actions, FailSession).generation == self.gen
            return
        self.flight = None
        if choice == "accept":
            turn_id = flight.committed
            assert turn_id is not None
            session = self.core._session
            assert session is not None
            if self.codex_turns[turn_id].terminal_sent and turn_id not in session.ended:
                self.exempt.add(seq)  # its end fell out of the core's bounded memory
            self.answered_into[seq] = turn_id
            self.core.delivery_answered(send.token, self.now, turn_id=turn_id)
            actions = self.process()
            if turn_id in session.ended:
                assert seq in {s.seq for s in settled(actions)}, "answer into an ended turn did not settle"
        elif send.method == "turn/steer":
            self.queue.insert(0, seq)  # a refused steer goes back to the head, for a turn/start
            self.core.delivery_answered(send.token, self.now, refused="no active turn to steer")
            actions = self.process()
            assert seq not in self.settlements
        else:
            self.core.delivery_answered(send.token, self.now, refused="invalid input")
            actions = self.process()
            (failed,) = [s for s in settled(actions) if s.seq == seq]
            assert failed.outcome == "failed" and failed.error == "turn/start rejected: invalid input"

    def codex_turn_started(self, data: st.DataObject, stray: bool) -> None:
        """turn/started: of a turn codex runs for us (maybe before it answered the turn/start), or of a turn
        nobody here started (another client's, or one that never completes)."""
        quiet = [t for t in self.codex_turns.values() if t.status is None and not t.started_sent]
        if stray or not quiet:
            turn = CodexTurn(self.new_turn_id())
            self.codex_turns[turn.id] = turn
        else:
            turn = data.draw(st.sampled_from(quiet))
        turn.started_sent = True
        assert self.thread is not None
        self.notify("turn/started", turn_params(turn.id, thread=self.thread))
        if "turn-started-no-pump" in CORE_BUGS:
            self.core._pump()  # what the core should have done (its input may now steer into this turn)
            self.process()

    def codex_item(self, data: st.DataObject, completed: bool, item_type: str) -> None:
        """Items (a few at a time): of a turn codex runs or ran, or of one we never hear of again."""
        known: bool = data.draw(st.booleans())
        if known and self.codex_turns:
            turn_id = data.draw(st.sampled_from(sorted(self.codex_turns)))
        else:
            turn_id = self.new_turn_id()
        turn = self.codex_turns.get(turn_id)
        for _ in range(data.draw(st.integers(1, 4))):
            n = 0
            if turn is not None:
                turn.items += 1
                n = turn.items
            item = {"type": item_type, "id": f"item-{n}", "text": f"{turn_id} says {n}"}
            method = "item/completed" if completed else "item/started"
            actions = self.notify(method, item_params(turn_id, item, thread=self.thread or ""))
            kind: type[Event] = ItemCompleted if completed else ItemStarted
            assert [type(a.event) for a in of(actions, Publish)] == [kind] and len(actions) == 1

    def codex_turn_completed(self, data: st.DataObject, status: str, with_items: bool) -> None:
        """turn/completed: of a running turn, again of an ended one (after a fatal error), or of one codex never
        announced (before the answer to the turn/start that put our input into it, or not ours at all)."""
        active = sorted(t for t, turn in self.codex_turns.items() if turn.status is None)
        which = data.draw(st.sampled_from(["active", "active", "active", "fresh", "any"]))
        if which == "active" and active:
            turn = self.codex_turns[data.draw(st.sampled_from(active))]
        elif which == "any" and self.codex_turns:
            turn = self.codex_turns[data.draw(st.sampled_from(sorted(self.codex_turns)))]
        else:
            turn = CodexTurn(self.new_turn_id())
            self.codex_turns[turn.id] = turn
        if turn.status is None:
            turn.status = status
        turn.terminal_sent = True
        items = [agent_message(f"{turn.id} final", "final")] if with_items else []
        error = "model error" if turn.status == "failed" else None
        assert self.thread is not None
        self.notify("turn/completed", turn_params(turn.id, turn.status, thread=self.thread, error=error, items=items))

    def codex_retrying(self, data: st.DataObject, attempt: int) -> None:
        turn_id = data.draw(st.sampled_from([None, *sorted(self.codex_turns)]))
        before = self.snapshot()
        actions = self.notify(
            "error", error_params(f"Reconnecting... {attempt}/5", turn_id=turn_id, will_retry=True, thread=self.thread)
        )
        assert [a.event for a in of(actions, Publish)] == [
            CodexRetrying(turn_id, f"Reconnecting... {attempt}/5", attempt, 5, self.gen, runtime_id="rt")
        ]
        assert len(actions) == 1 and self.snapshot() == before

    def codex_fatal_error(self, data: st.DataObject) -> None:
        """``error`` with willRetry false: codex gave up on the turn (its turn/completed may follow, or not)."""
        turn_id = data.draw(st.sampled_from([None, *sorted(self.codex_turns)]))
        if turn_id is not None:
            turn = self.codex_turns[turn_id]
            if turn.status is None:
                turn.status = "failed"
            turn.terminal_sent = True
        actions = self.notify("error", error_params("stream disconnected", turn_id=turn_id, thread=self.thread))
        assert len(published(actions, CodexError)) == 1

    def codex_chatter(self, delta: bool) -> None:
        """Deltas and warnings are published and change nothing."""
        before = self.snapshot()
        if delta:
            params = {"threadId": self.thread, "turnId": "t", "itemId": "m", "delta": "x"}
            assert self.core.delta(params) == AgentMessageDelta(
                "t", "m", "x", self.gen, runtime_id="rt"
            )  # the engine's fast path
            actions = self.notify("item/agentMessage/delta", params)
            assert published(actions, AgentMessageDelta) == [
                AgentMessageDelta("t", "m", "x", self.gen, runtime_id="rt")
            ]
        else:
            actions = self.notify("warning", {"message": "unknown model"})
            assert published(actions, CodexWarning) == [CodexWarning("unknown model", self.gen, runtime_id="rt")]
        assert len(actions) == 1 and self.snapshot() == before

    def foreign_notification(self, data: st.DataObject) -> None:
        """The same notifications about another thread (or none of ours at all) change nothing."""
        method = data.draw(st.sampled_from(FOREIGN_METHODS))
        turn_id = data.draw(st.sampled_from([*sorted(self.codex_turns), *self.core.open_turns(), "g0-unknown"]))
        params: dict[str, Any]
        if method in ("turn/started", "turn/completed"):
            params = turn_params(turn_id, "completed" if method == "turn/completed" else "inProgress", thread=FOREIGN)
        elif method == "item/completed":
            params = item_params(turn_id, agent_message("not ours"), thread=FOREIGN)
        elif method == "error":
            params = error_params("not ours", turn_id=turn_id, thread=FOREIGN)
        else:
            params = {"threadId": FOREIGN, "turnId": turn_id, "delta": "x"}
        before = self.snapshot()
        assert self.notify(method, params) == []
        assert self.notify(method, [params]) == []  # not even an object
        assert self.core.delta(params) is None
        assert self.snapshot() == before

    @precondition(lambda self: self.thread is not None)
    @rule(data=st.data(), what=st.sampled_from(["retrying", "chatter", "foreign", "stale", "thread_lost"]))
    def noise(self, data: st.DataObject, what: str) -> None:
        """What changes nothing but an event (codex retrying, deltas, warnings), nothing at all (other threads'
        notifications, a lost session's late news), or only the next settlement (a lost thread)."""
        if what == "retrying" and self.thread is not None:
            self.codex_retrying(data, data.draw(st.integers(1, 5)))
        elif what == "chatter" and self.thread is not None:
            self.codex_chatter(data.draw(st.booleans()))
        elif what == "stale" and self.gen > 0:
            self.stale_events(data)
        elif what == "thread_lost":
            self.thread_lost()
        else:
            self.foreign_notification(data)

    # -- rules: interrupts and time ----------------------------------------------------------------------------------

    @precondition(lambda self: bool(self.core.open_turns()))
    @rule()
    def user_interrupt(self) -> None:
        requester = Requester(len(self.requesters))
        self.requesters.append(requester)
        session = self.core._session
        target = None
        if session is not None:
            target = next((t for t in reversed(session.turns.values()) if not t.interrupting), None)
        deadline = target.deadline if target is not None else None
        self.requester = requester
        try:
            self.core.interrupt(requester, self.now)
            actions = self.process()
        finally:
            self.requester = None
        if target is None:
            assert requester.answers == [False] and of(actions, Interrupt) == []
        else:
            assert one(actions, Interrupt).turn_id == target.id and requester.answers == []
            assert deadline is not None and target.deadline == max(deadline, self.now + INTERRUPT_TIMEOUT)

    def answer_interrupt(self, data: st.DataObject, accept: bool) -> None:
        """codex accepts an interrupt of a turn it runs (or refuses anyway); it refuses one of a turn it does not."""
        token = data.draw(st.sampled_from(sorted(self.interrupts)))
        interrupt, requester = self.interrupts.pop(token)
        turn = self.codex_turns.get(interrupt.turn_id)
        accepted = accept and turn is not None and turn.status is None
        if accepted:
            self.interrupt_at[interrupt.turn_id] = self.now
        self.core.interrupt_answered(
            token, self.now, accepted=accepted, error=None if accepted else "no active turn to interrupt"
        )
        self.process()
        if requester is not None:
            assert requester.answers == [accepted]
        session = self.core._session
        assert session is not None
        if not accepted:
            assert interrupt.turn_id not in session.turns
        elif interrupt.turn_id in session.turns:  # codex must end it within interrupt_timeout of saying it will
            assert session.turns[interrupt.turn_id].deadline == self.now + INTERRUPT_TIMEOUT

    @precondition(lambda self: bool(self.core.open_turns()))
    @rule(step=st.sampled_from(["deadline", "deadline", "turn", "interrupt", "second"]))
    def tick(self, step: str) -> None:
        """Time passes (to the next deadline, or by a step) and the core is told, as the engine does at once."""
        if step == "deadline":
            deadline = self.core.next_deadline()
            if math.isinf(deadline):
                return
            self.now = max(self.now, deadline)
        else:
            self.now += {"turn": TURN_TIMEOUT, "interrupt": INTERRUPT_TIMEOUT, "second": 1.0}[step]
        self.core.tick(self.now)
        self.process()

    # -- rules: stop -------------------------------------------------------------------------------------------------

    @precondition(lambda self: not self.stopped and len(self.reqs) >= 3)
    @rule(how=st.sampled_from(["stop", "stop", "abort"]))
    def stop(self, how: str) -> None:
        """The runtime stops (waiting for a batch being written), or aborts (not waiting). Not before a few
        requests came: a life that stops at once checks little."""
        if how == "abort":
            self.core.abort("aborted by test")
            self.model_abort()
            self.process()
        elif not self.stop_requested:
            self.core.stop("stopped by test")
            self.model_stop()
            self.process()
            assert self.core.stopped == (self.batch is None)

    # -- invariants --------------------------------------------------------------------------------------------------

    @invariant()
    def requests_are_answered_once(self) -> None:
        for mr in self.reqs:
            assert (mr.answer is not None) == (mr.state == "answered"), f"{mr.request}: {mr.state}, {mr.answer}"
            assert mr.request.taken == (mr.state not in ("waiting", "withdrawn"))
        # the core holds waiting requests (withdrawn ones too, until it gets to them) while a batch is written
        assert self.core.statistics().waiting_requests == len(self.waiting)

    @invariant()
    def queue_and_window_match_the_model(self) -> None:
        core = self.core
        assert [s.seq for s in core.queued()] == self.queue
        assert all(s.state == "queued" for s in core.queued())
        assert sorted(s.seq for s in core.in_doubt()) == sorted(self.in_doubt)
        assert core.next_seq == self.next_seq
        assert core.seen_ids() == self.window_ids()
        assert len(core.seen_ids()) <= self.window
        for source_id in ("a", "b", ""):
            assert core.is_duplicate(source_id) == (source_id in self.window_ids())
        assert core.writing == (self.batch is not None)

    @invariant()
    def one_delivery_at_a_time(self) -> None:
        session = self.core._session
        sending = session.sending if session is not None else None
        if self.flight is None:
            assert sending is None
        else:
            assert sending is not None and sending.token == self.flight.send.token

    @invariant()
    def holds_never_wait_for_nothing(self) -> None:
        session = self.core._session
        if not self.holds or session is None or self.stop_requested or session.sending or self.in_doubt:
            return
        first = self.holds[0]
        if [seq for seq in self.queue if seq <= first.after] or first.offered_gen == self.gen:
            return
        writing_before = self.batch is not None and any(
            mr.seq is not None and mr.seq <= first.after for mr in self.batch.members
        )
        assert session.turns or writing_before, "wedged: a hold waits for nothing"

    @invariant()
    def queued_input_never_waits_for_nothing(self) -> None:
        core = self.core
        session = core._session
        if self.holds and not [seq for seq in self.queue if seq <= self.holds[0].after]:
            return  # what is queued waits behind a hold (checked above)
        if session is None or self.stop_requested or session.sending or not core.queued() or core.in_doubt():
            return
        turns = list(session.turns.values())
        if self.mode == "queue":
            assert turns, "wedged: input queued, a session up, nothing in flight, no turn open"
            return
        target = next((t for t in reversed(turns) if t.steerable and not t.interrupting), None)
        if target is None:
            assert any(t.interrupting for t in turns), "wedged: nothing to wait for"
            return
        # Waiting beside a steerable turn only because the head's options differ from that turn's: it waits for the
        # turn to end (which its deadline bounds) and then starts its own.
        codex_turn = self.codex_turns.get(target.id)
        head = core.queued()[0].options
        assert head is not None and head != (codex_turn.options if codex_turn is not None else None), (
            "wedged: a steerable turn is open and the head may join it"
        )

    @invariant()
    def open_turns_have_deadlines(self) -> None:
        session = self.core._session
        if session is None:
            return
        assert self.core.next_deadline() > self.now, "a turn is past its deadline after a tick"
        if session.turns and not self.failing:
            assert math.isfinite(self.core.next_deadline())
        for turn in session.turns.values():
            opened = self.opened_at[turn.id]
            if math.isinf(turn.deadline):
                assert self.failing and turn.interrupting
            elif not turn.interrupting:
                assert turn.deadline == opened + TURN_TIMEOUT
            else:
                bound = max(opened + TURN_TIMEOUT, self.interrupt_at[turn.id] + INTERRUPT_TIMEOUT)
                assert turn.deadline <= bound

    @invariant()
    def ended_turns_settle_their_inputs(self) -> None:
        """Once codex told the core a turn ended, every input the core knows is in it is settled."""
        for seq, turn_id in self.answered_into.items():
            turn = self.codex_turns.get(turn_id)
            if turn is not None and turn.terminal_sent and seq not in self.exempt:
                assert seq in self.settlements, f"{seq} is in ended turn {turn_id} but not settled"

    @invariant()
    def memory_is_bounded(self) -> None:
        session = self.core._session
        if session is None:
            return
        assert list(session.ended) == list(self.ended_turns)
        assert len(session.ended) <= _core._REMEMBERED_ENDED
        assert len(session.early_items) <= _core._REMEMBERED_EARLY
        for items in [*session.early_items.values(), *(t.items for t in session.turns.values())]:
            assert len(items) <= _core._MAX_ITEMS_PER_TURN

    @invariant()
    def stopped_means_settled(self) -> None:
        assert self.core.stopped == self.stopped
        if self.stopped:
            self.check_stopped()

    def check_stopped(self) -> None:
        assert set(self.settlements) == set(self.subs), "every accepted input settles exactly once"
        assert not self.queue and not self.in_doubt and self.flight is None
        assert all(mr.state in ("answered", "withdrawn") for mr in self.reqs)
        assert all(len(r.answers) == 1 for r in self.requesters)
        stats = self.core.statistics()
        assert (stats.queued, stats.in_flight, stats.waiting_requests, stats.writing) == (0, 0, 0, 0)
        assert not self.holds and stats.holds == 0, "a thread operation still waits after the stop"


#: CI (``CI=true``, as CI services set it) runs the machine about eight times longer; here it takes seconds.
_CI: Final = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CoreMachine.TestCase.settings = settings(
    max_examples=500 if _CI else 80,
    stateful_step_count=80 if _CI else 50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCoreMachine = CoreMachine.TestCase


# == examples: admission =============================================================================================


def test_a_negative_dedup_window_is_refused() -> None:
    with pytest.raises(ValueError, match="dedup_window"):
        RuntimeCore(dedup_window=-1)


def test_a_new_core_is_empty() -> None:
    core = RuntimeCore()
    assert (core.generation, core.next_seq) == (0, 1)
    assert not (core.stopped or core.has_session or core.writing) and core.thread_id is None
    assert core.queued() == core.in_doubt() == []
    assert core.open_turns() == core.seen_ids() == []
    assert core.next_deadline() == math.inf
    assert core.take_actions() == []
    assert core.statistics() == CoreStatistics(0, 0, (), 0, 0, 0, 1)


def test_a_request_is_written_then_answered() -> None:
    d = Driver(next_seq=41)
    request = d.request("a", text="one")
    write = one(d.take(), Write)
    assert request.taken
    assert [(s.seq, s.source_id, s.kind, s.text, s.state) for s in write.submissions] == [
        (41, "a", "channel", "one", "writing")
    ]
    assert d.core.writing and not d.core.is_duplicate("a")  # in the window only once durable
    d.core.written(write.batch)
    assert d.take() == [Answer(request, "queued", write.submissions[0])]  # no session up: "queued"
    assert d.core.is_duplicate("a") and d.core.seen_ids() == ["a"] and d.core.next_seq == 42
    assert [(s.seq, s.state) for s in d.core.queued()] == [(41, "queued")]


def test_an_input_accepted_while_a_session_is_up_is_submitted() -> None:
    d = Driver()
    d.up()
    _, actions = d.accept("a")
    assert one(actions, Answer).status == "submitted"


def test_concurrent_requests_form_one_batch() -> None:
    d = Driver()
    first = d.request("a")
    write1 = one(d.take(), Write)
    # Three callers arrive while batch 1 is being written: they wait, then go together (group commit).
    b, c, b_again = d.request("b"), d.request("c"), d.request("b")
    assert d.take() == [] and not b.taken
    assert d.core.statistics().waiting_requests == 3
    d.core.written(write1.batch)
    actions = d.take()
    write2 = one(actions, Write)
    assert [(s.seq, s.source_id) for s in write2.submissions] == [(2, "b"), (3, "c")]
    assert [a.request for a in of(actions, Answer)] == [first]  # the duplicate's answer waits for its batch
    assert b.taken and c.taken and b_again.taken
    d.core.written(write2.batch)
    assert [(a.request, a.status) for a in of(d.take(), Answer)] == [
        (b, "queued"),
        (c, "queued"),
        (b_again, "duplicate"),
    ]
    assert [s.seq for s in d.core.queued()] == [1, 2, 3]


def test_a_duplicate_alone_is_answered_at_once() -> None:
    d = Driver()
    d.accept("a")
    request = d.request("a")
    assert d.take() == [Answer(request, "duplicate")]
    assert d.core.next_seq == 2  # a refused duplicate takes no sequence number


def test_a_failed_write_leaves_no_trace() -> None:
    d = Driver()
    request = d.request("a")
    write = one(d.take(), Write)
    error = OSError("disk full")
    d.core.write_failed(write.batch, error)
    assert d.take() == [Answer(request, "failed", error=error)]
    assert not d.core.is_duplicate("a") and d.core.seen_ids() == [] and d.core.queued() == []
    retry, _ = d.accept("a")  # the id is still usable
    assert (retry.seq, retry.source_id) == (2, "a")


def test_a_request_withdrawn_before_it_is_taken_leaves_no_trace() -> None:
    d = Driver()
    d.request("a")
    write1 = one(d.take(), Write)
    withdrawn, kept = d.request("b"), d.request("c")
    withdrawn.withdrawn = True  # its caller was cancelled while it waited
    d.core.written(write1.batch)
    actions = d.take()
    assert [(s.seq, s.source_id) for s in one(actions, Write).submissions] == [(2, "c")]
    assert all(a.request is not withdrawn for a in of(actions, Answer))
    assert not withdrawn.taken and kept.taken
    assert d.core.statistics().waiting_requests == 0
    d.core.written(one(actions, Write).batch)
    d.take()
    assert not d.core.is_duplicate("b")
    again, _ = d.accept("b")
    assert again.seq == 3


def test_empty_source_ids_are_never_duplicates() -> None:
    d = Driver()
    first, _ = d.accept("")
    second, _ = d.accept("")
    assert first.seq != second.seq
    assert not d.core.is_duplicate("") and d.core.seen_ids() == []


def test_the_dedup_window_evicts_the_oldest_id() -> None:
    d = Driver(dedup_window=2)
    for source_id in "abc":
        d.accept(source_id)
    assert d.core.seen_ids() == ["b", "c"]
    assert not d.core.is_duplicate("a")
    again, _ = d.accept("a")  # outside the window: accepted again
    assert again.seq == 4 and d.core.seen_ids() == ["c", "a"]
    request = d.request("c")
    assert d.take() == [Answer(request, "duplicate")]


def test_a_zero_dedup_window_disables_dedup() -> None:
    d = Driver(dedup_window=0)
    d.accept("a")
    again, _ = d.accept("a")
    assert again.seq == 2 and not d.core.is_duplicate("a") and d.core.seen_ids() == []


def test_the_restored_window_respects_its_bound() -> None:
    core = RuntimeCore(dedup_window=2, seen=["a", "b", "c"])
    assert core.seen_ids() == ["b", "c"]


def test_restored_pending_input_goes_first_and_next_seq_never_goes_down() -> None:
    d = Driver(next_seq=2, seen=["y"], pending=[(7, "", "trigger", "go"), (5, "y", "channel", "hi")])
    assert [(s.seq, s.source_id, s.kind, s.text, s.state) for s in d.core.queued()] == [
        (5, "y", "channel", "hi", "queued"),
        (7, "", "trigger", "go", "queued"),
    ]
    assert d.core.next_seq == 8
    request = d.request("y")
    assert d.take() == [Answer(request, "duplicate")]  # redelivered after a host restart
    new, _ = d.accept("z")
    assert new.seq == 8
    assert RuntimeCore(next_seq=100, pending=[(5, "a", "channel", "x")]).next_seq == 100
    send = one(d.up(), Send)
    assert send.submission.seq == 5


def test_client_id_is_the_source_id_or_made_from_the_seq() -> None:
    assert Submission(3, "chan-1", "channel", "x").client_id == "chan-1"
    assert Submission(3, "", "system", "x").client_id == "codex-trio-seq:3"


def test_a_restart_notice_is_never_written_nor_persisted() -> None:
    d = Driver()
    d.up()
    request = d.request(kind="notice", text="you were restarted")
    actions = d.take()
    assert of(actions, Write) == []  # a notice belongs to a session: nothing to make durable
    answer = one(actions, Answer)
    assert answer.request is request and answer.status == "submitted"
    send = one(actions, Send)
    assert send.submission is answer.submission
    d.answer(send, "t1")
    settle = one(d.completed("t1"), Settle)
    assert settle.persist is False and settle.settlement.outcome == "completed"


def test_a_failed_write_still_accepts_the_notice_in_its_batch() -> None:
    d = Driver()
    d.up()
    d.request("a")
    write1 = one(d.take(), Write)
    d.lost()  # a new session is coming: its notice may be asked for
    notice, b = d.request(kind="notice"), d.request("b")
    d.core.write_failed(write1.batch, OSError("disk full"))
    actions = d.take()
    write2 = one(actions, Write)
    assert [s.source_id for s in write2.submissions] == ["b"]  # the notice is not written
    d.core.write_failed(write2.batch, OSError("disk full"))
    answers = {a.request.kind: a for a in of(d.take(), Answer)}
    assert answers["channel"].status == "failed"
    assert answers["notice"].request is notice and answers["notice"].status == "queued"
    assert [s.kind for s in d.core.queued()] == ["notice"]
    assert b.taken


def test_requests_after_stop_are_answered_stopped() -> None:
    d = Driver()
    d.core.stop()
    d.take()
    request = d.request("a")
    assert d.take() == [Answer(request, "stopped")]
    assert request.taken and not d.core.is_duplicate("a")


# == examples: delivery ==============================================================================================


def test_inputs_reach_codex_in_order_one_at_a_time() -> None:
    d = Driver()
    d.up()
    a, actions = d.accept("a")
    send_a = one(actions, Send)
    assert (send_a.method, send_a.thread_id, send_a.generation, send_a.expected_turn_id) == (
        "turn/start",
        THREAD,
        1,
        None,
    )
    assert send_a.submission is a and (a.state, a.generation) == ("sending", 1)
    b, actions = d.accept("b")
    assert of(actions, Send) == []  # a turn/steer needs the turn id the turn/start answers with
    actions = d.answer(send_a, "t1")
    assert published(actions, TurnStarted) == [TurnStarted("t1", 1, runtime_id="rt")]
    send_b = one(actions, Send)
    assert (send_b.method, send_b.expected_turn_id, send_b.submission) == ("turn/steer", "t1", b)
    d.answer(send_b, "t1")
    assert d.core.open_turns() == ["t1"]
    assert [(s.state, s.turn_id) for s in (a, b)] == [("sent", "t1"), ("sent", "t1")]
    d.notify("item/completed", item_params("t1", agent_message("done")))
    actions = d.completed("t1")
    assert settled(actions) == [
        Settlement(sub.seq, sub.source_id, "completed", "t1", "done", (agent_item("done"),), None, 1) for sub in (a, b)
    ]
    assert all(s.persist for s in of(actions, Settle))
    assert published(actions, TurnCompleted) == [TurnCompleted("t1", "completed", "done", None, 1, runtime_id="rt")]
    assert d.core.open_turns() == [] and d.core.next_deadline() == math.inf


def test_queue_mode_gives_each_input_its_own_turn() -> None:
    d = Driver(delivery_mode="queue")
    d.up()
    _, actions = d.accept("a")
    d.answer(one(actions, Send), "t1")
    b, actions = d.accept("b")
    assert of(actions, Send) == []  # no turn/steer, and no turn/start while t1 is open
    send_b = one(d.completed("t1"), Send)
    assert (send_b.method, send_b.submission) == ("turn/start", b)


def test_turn_completed_before_the_turn_start_answer() -> None:
    d = Driver(delivery_mode="queue")
    d.up()
    a, actions = d.accept("a")
    send = one(actions, Send)
    b, _ = d.accept("b")
    d.notify("item/completed", item_params("t1", agent_message("early")))  # a turn we do not know yet
    actions = d.completed("t1")
    assert settled(actions) == [] and of(actions, Send) == []
    assert published(actions, TurnCompleted) == [TurnCompleted("t1", "completed", "early", None, 1, runtime_id="rt")]
    actions = d.answer(send, "t1")  # now codex says which turn it was
    (settlement,) = settled(actions)
    assert (settlement.seq, settlement.outcome, settlement.turn_id, settlement.text) == (
        a.seq,
        "completed",
        "t1",
        "early",
    )
    assert d.core.open_turns() == [] and published(actions, TurnStarted) == []
    assert one(actions, Send).submission is b  # nothing left open: the queue moves on at once


def test_turn_completed_before_the_steer_answer() -> None:
    d = Driver()
    a = d.running("a", "t1")
    b, actions = d.accept("b")
    steer = one(actions, Send)
    assert [s.seq for s in settled(d.completed("t1"))] == [a.seq]
    (settlement,) = settled(d.answer(steer, "t1"))
    assert (settlement.seq, settlement.outcome, settlement.turn_id) == (b.seq, "completed", "t1")
    assert d.core.open_turns() == []


def test_items_that_arrive_before_the_turn_is_known_count() -> None:
    d = Driver()
    d.up()
    a, actions = d.accept("a")
    d.notify("item/completed", item_params("t1", agent_message("first", "m1")))
    d.started("t1")
    d.notify("item/completed", item_params("t1", agent_message("second", "m2")))
    d.answer(one(actions, Send), "t1")
    (settlement,) = settled(d.completed("t1"))
    assert (settlement.seq, settlement.text) == (a.seq, "second")
    assert settlement.items == (agent_item("first", "m1"), agent_item("second", "m2"))


def test_the_turns_own_items_are_used_when_none_were_notified() -> None:
    d = Driver()
    a = d.running("a", "t1")
    (settlement,) = settled(d.completed("t1", items=[agent_message("from turn/completed")]))
    assert (settlement.seq, settlement.text) == (a.seq, "from turn/completed")


def test_a_refused_steer_sends_the_same_input_again_with_turn_start() -> None:
    d = Driver()
    d.running("a", "t1")
    b, actions = d.accept("b")
    steer = one(actions, Send)
    c, _ = d.accept("c")
    assert steer.method == "turn/steer"
    actions = d.answer(steer, refused="no active turn to steer into")
    retry = one(actions, Send)
    assert (retry.method, retry.submission, retry.expected_turn_id) == ("turn/start", b, None)  # before c
    assert settled(actions) == []
    send_c = one(d.answer(retry, "t2"), Send)
    assert (b.state, b.turn_id) == ("sent", "t2")
    assert (send_c.submission, send_c.method, send_c.expected_turn_id) == (c, "turn/steer", "t2")
    assert d.core.open_turns() == ["t1", "t2"]  # t1 until codex says it ended; it is not steered into again


def test_a_refused_turn_start_fails_the_input_and_the_next_one_goes() -> None:
    d = Driver()
    d.up()
    a, actions = d.accept("a")
    b, _ = d.accept("b")
    actions = d.answer(one(actions, Send), refused="input too large")
    (settlement,) = settled(actions)
    assert settlement == Settlement(
        a.seq, "a", "failed", None, error="turn/start rejected: input too large", generation=1
    )
    assert one(actions, Send).submission is b


def test_an_unreadable_answer_fails_the_session() -> None:
    d = Driver()
    d.up()
    a, actions = d.accept("a")
    b, _ = d.accept("b")
    assert d.answer(one(actions, Send), broken="turn/start timed out") == [FailSession(1, "turn/start timed out")]
    assert d.core.statistics().in_flight == 1 and [s.seq for s in d.core.queued()] == [b.seq]
    (settlement,) = settled(d.lost("app-server killed"))
    assert (settlement.seq, settlement.outcome, settlement.error) == (a.seq, "interrupted", "app-server killed")


def test_the_first_end_of_a_turn_wins() -> None:
    d = Driver()
    a = d.running("a", "t1")
    b, actions = d.accept("b")
    steer = one(actions, Send)
    actions = d.notify("error", error_params("model overloaded", turn_id="t1"))
    assert [(s.seq, s.outcome, s.error) for s in settled(actions)] == [(a.seq, "failed", "model overloaded")]
    assert d.completed("t1", "completed") == []  # the turn/completed that follows a fatal error changes nothing
    (settlement,) = settled(d.answer(steer, "t1"))
    assert (settlement.seq, settlement.outcome, settlement.error) == (b.seq, "failed", "model overloaded")


@pytest.mark.parametrize(
    ("status", "error", "outcome", "message"),
    [
        ("completed", None, "completed", None),
        ("failed", "model error", "failed", "model error"),
        ("failed", None, "failed", "turn ended with status failed"),
        ("interrupted", None, "interrupted", "turn was interrupted"),
    ],
)
def test_turn_completed_statuses(status: str, error: str | None, outcome: Outcome, message: str | None) -> None:
    d = Driver()
    a = d.running("a", "t1")
    (settlement,) = settled(d.completed("t1", status, error=error))
    assert (settlement.seq, settlement.outcome, settlement.error) == (a.seq, outcome, message)


# == examples: notifications =========================================================================================


def test_a_fatal_error_ends_the_turn_and_queue_mode_moves_on_at_once() -> None:
    d = Driver(delivery_mode="queue")
    a = d.running("a", "t1")
    b, actions = d.accept("b")
    assert of(actions, Send) == []
    actions = d.notify("error", error_params("usage limit reached", turn_id="t1"))
    assert published(actions, CodexError) == [CodexError("t1", "usage limit reached", 1, runtime_id="rt")]
    assert [(s.seq, s.outcome, s.error) for s in settled(actions)] == [(a.seq, "failed", "usage limit reached")]
    assert published(actions, TurnCompleted) == [
        TurnCompleted("t1", "failed", None, "usage limit reached", 1, runtime_id="rt")
    ]
    assert one(actions, Send).submission is b  # no waiting for a turn/completed that may never come


def test_a_fatal_error_without_a_turn_id_ends_the_newest_turn() -> None:
    d = Driver()
    d.up()
    d.started("t0")
    a = d.running("a", "t1")
    actions = d.notify("error", error_params("stream disconnected"))
    assert published(actions, CodexError) == [CodexError("t1", "stream disconnected", 1, runtime_id="rt")]
    assert [s.seq for s in settled(actions)] == [a.seq]
    assert d.core.open_turns() == ["t0"]


def test_a_fatal_error_with_no_turn_open_is_only_published() -> None:
    d = Driver()
    d.up()
    assert d.notify("error", error_params("login required")) == [
        Publish(CodexError(None, "login required", 1, runtime_id="rt"))
    ]


def test_a_fatal_error_before_the_turn_start_answer_fails_the_input_on_the_answer() -> None:
    d = Driver()
    d.up()
    a, actions = d.accept("a")
    d.notify("item/completed", item_params("t1", agent_message("partial")))
    d.notify("error", error_params("model overloaded", turn_id="t1"))
    (settlement,) = settled(d.answer(one(actions, Send), "t1"))
    assert (settlement.seq, settlement.outcome, settlement.error, settlement.text) == (
        a.seq,
        "failed",
        "model overloaded",
        "partial",
    )


@pytest.mark.parametrize(
    ("message", "attempt", "max_attempts"),
    [
        ("Reconnecting... 2/5", 2, 5),
        ("Reconnecting... 10 / 12 (stream disconnected before completion)", 10, 12),
        ("stream disconnected before completion", None, None),
    ],
)
def test_a_retried_error_is_published_with_its_attempt_and_changes_nothing(
    message: str, attempt: int | None, max_attempts: int | None
) -> None:
    d = Driver()
    a = d.running("a", "t1")
    actions = d.notify("error", error_params(message, turn_id="t1", will_retry=True))
    assert actions == [Publish(CodexRetrying("t1", message, attempt, max_attempts, 1, runtime_id="rt"))]
    assert d.core.open_turns() == ["t1"] and a.state == "sent"


def retry(
    d: Driver, at: float, message: str = "Reconnecting... waiting for network", turn_id: str | None = "t1"
) -> list[Action]:
    d.now = at
    return d.notify("error", error_params(message, turn_id=turn_id, will_retry=True))


def test_the_retry_limit_fails_the_turn_with_codex_words_and_interrupts_it() -> None:
    d = Driver(model_retry_limit=3)
    a = d.running("a", "t1")
    assert settled(retry(d, 3.0, "Reconnecting... 1/5")) == []
    assert settled(retry(d, 6.0, "Reconnecting... 2/5")) == []
    actions = retry(d, 10.0, "Reconnecting... 3/5")
    (settlement,) = settled(actions)
    assert (settlement.seq, settlement.outcome, settlement.turn_id) == (a.seq, "failed", "t1")
    assert settlement.error is not None and settlement.error.startswith("Reconnecting... 3/5 (codex could not reach")
    assert "3 retry notice(s) over 7s" in settlement.error and "model_retry_limit=3" in settlement.error
    assert of(actions, Settle)[0].persist
    interrupt = one(actions, Interrupt)
    assert interrupt.turn_id == "t1" and d.core.next_deadline() == 10.0 + INTERRUPT_TIMEOUT
    assert retry(d, 12.0, "Reconnecting... 4/5") == [
        Publish(CodexRetrying("t1", "Reconnecting... 4/5", 4, 5, 1, runtime_id="rt"))
    ]
    d.interrupt_answered(interrupt, accepted=True)
    actions = d.completed("t1", "interrupted")
    assert settled(actions) == []  # settled once, by the give-up
    assert published(actions, TurnCompleted) == [
        TurnCompleted("t1", "failed", None, settlement.error, 1, runtime_id="rt")
    ]


def test_the_retry_timeout_is_armed_by_the_second_notice_and_fires_on_the_tick() -> None:
    d = Driver(model_retry_timeout=20.0)
    a = d.running("a", "t1")
    retry(d, 3.0)
    assert d.core.next_deadline() == TURN_TIMEOUT  # one notice: a transient retry, nothing armed
    retry(d, 11.0)
    assert d.core.next_deadline() == 23.0  # 20 s after the first notice
    assert d.tick(22.9) == []
    actions = d.tick(23.0)
    (settlement,) = settled(actions)
    assert (settlement.seq, settlement.outcome) == (a.seq, "failed")
    assert settlement.error == (
        "Reconnecting... waiting for network (codex could not reach the model: 2 retry notice(s) over 20s; gave up "
        "at RuntimeConfig.model_retry_timeout=20 and interrupted the turn)"
    )
    assert one(actions, Interrupt).turn_id == "t1"
    assert d.tick(24.0) == []  # given up once


def test_a_notice_past_the_retry_timeout_gives_up_at_once() -> None:
    d = Driver(model_retry_timeout=5.0)
    d.running("a", "t1")
    retry(d, 1.0)
    actions = retry(d, 30.0)  # the engine ticked late, or codex's notices are far apart
    assert [s.outcome for s in settled(actions)] == ["failed"] and one(actions, Interrupt).turn_id == "t1"


def test_a_single_transient_retry_never_gives_up_before_the_deadline() -> None:
    d = Driver(model_retry_limit=2, model_retry_timeout=1.0)
    d.running("a", "t1")
    retry(d, 1.0, "Reconnecting... 1/5")
    assert d.core.next_deadline() == TURN_TIMEOUT
    assert d.tick(TURN_TIMEOUT - 1) == []


def test_progress_in_the_turn_restarts_the_retry_count_and_disarms_the_timeout() -> None:
    d = Driver(model_retry_limit=3, model_retry_timeout=20.0)
    d.running("a", "t1")
    retry(d, 1.0)
    retry(d, 2.0)
    assert d.core.next_deadline() == 21.0
    d.notify("item/started", item_params("t1", {"type": "reasoning", "id": "r1"}))  # the model answered again
    assert d.core.next_deadline() == TURN_TIMEOUT
    retry(d, 40.0)
    assert settled(retry(d, 41.0)) == []
    d.notify("item/started", item_params("other-turn", {"type": "reasoning", "id": "r2"}))  # not this turn's
    # a fatal error of another turn is no progress of this one
    d.notify("error", error_params("gone", will_retry=False, turn_id="t0"))
    (settlement,) = settled(retry(d, 42.0))
    assert settlement.error is not None and "3 retry notice(s) over 2s" in settlement.error


def test_a_retry_notice_without_a_turn_id_counts_for_the_newest_turn() -> None:
    d = Driver(model_retry_limit=2)
    d.up()
    d.started("t0")
    a = d.running("a", "t1")
    retry(d, 1.0, turn_id=None)
    (settlement,) = settled(retry(d, 2.0, turn_id=None))
    assert settlement.seq == a.seq and d.core.open_turns() == ["t0", "t1"]
    assert retry(d, 3.0, turn_id=None) == [
        Publish(CodexRetrying(None, "Reconnecting... waiting for network", None, None, 1, runtime_id="rt"))
    ]  # given up once: later notices are only published


def test_without_bounds_the_core_only_publishes_retries() -> None:
    d = Driver()
    a = d.running("a", "t1")
    for n in range(1, 50):
        assert of(retry(d, float(n)), Publish)
    assert d.core.next_deadline() == TURN_TIMEOUT and a.state == "sent"


def test_warnings_and_deltas_are_published() -> None:
    d = Driver()
    d.up()
    assert d.notify("warning", {"message": "unknown model"}) == [
        Publish(CodexWarning("unknown model", 1, runtime_id="rt"))
    ]
    assert d.notify("warning", {"message": 3}) == []
    delta = {"threadId": THREAD, "turnId": "t1", "itemId": "m1", "delta": "Hel"}
    assert d.notify("item/agentMessage/delta", delta) == [
        Publish(AgentMessageDelta("t1", "m1", "Hel", 1, runtime_id="rt"))
    ]
    started = d.notify("item/started", item_params("t1", agent_message("")))
    assert started == [Publish(ItemStarted("t1", "agentMessage", "msg-1", agent_item(""), 1, runtime_id="rt"))]


def test_the_delta_fast_path_returns_the_event_and_changes_nothing() -> None:
    d = Driver()
    params = {"threadId": THREAD, "turnId": "t1", "itemId": "m1", "delta": "Hel"}
    assert d.core.delta(params) is None  # no session
    d.running("a", "t1")
    stats = d.core.statistics()
    assert d.core.delta(params) == AgentMessageDelta("t1", "m1", "Hel", 1, runtime_id="rt")
    assert d.core.delta({"delta": "lo"}) == AgentMessageDelta(
        "", "", "lo", 1, runtime_id="rt"
    )  # what is missing is empty
    assert d.core.delta({**params, "threadId": FOREIGN}) is None
    assert d.core.delta([params]) is None
    assert d.take() == [] and d.core.statistics() == stats


FOREIGN_NOTIFICATIONS: Final[list[tuple[str, dict[str, Any]]]] = [
    ("turn/started", turn_params("t9", thread=FOREIGN)),
    ("turn/completed", turn_params("t1", "completed", thread=FOREIGN)),
    ("turn/completed", turn_params("t0", "completed", thread=FOREIGN)),
    ("item/completed", item_params("t1", agent_message("not ours"), thread=FOREIGN)),
    ("item/started", item_params("t1", agent_message("not ours"), thread=FOREIGN)),
    ("error", error_params("not ours", turn_id="t1", thread=FOREIGN)),
    ("error", error_params("not ours", thread=FOREIGN)),
    ("error", error_params("Reconnecting... 1/5", turn_id="t1", will_retry=True, thread=FOREIGN)),
    ("item/agentMessage/delta", {"threadId": FOREIGN, "turnId": "t1", "itemId": "m", "delta": "x"}),
    ("warning", {"threadId": FOREIGN, "message": "not ours"}),
]


@pytest.mark.parametrize(("method", "params"), FOREIGN_NOTIFICATIONS)
def test_another_threads_notifications_change_nothing(method: str, params: dict[str, Any]) -> None:
    d = Driver(delivery_mode="queue")
    d.up()
    _, actions = d.accept("a")
    send = one(actions, Send)
    d.notify(method, params)  # before the answer, too
    a = send.submission
    d.answer(send, "t1")
    d.accept("b")
    stats = d.core.statistics()
    assert d.notify(method, params) == []
    assert d.core.statistics() == stats and a.state == "sent"
    assert settled(d.completed("t0")) == []  # t0 was never ours: not remembered as ended by the foreign one
    assert [s.outcome for s in settled(d.completed("t1"))] == ["completed"]


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("turn/completed", {"threadId": THREAD}),
        ("turn/completed", {"threadId": THREAD, "turn": {"status": "completed"}}),
        ("turn/started", {"threadId": THREAD, "turn": "t1"}),
        ("item/completed", {"threadId": THREAD, "turnId": "t1", "item": {"id": "x"}}),
        ("error", {"threadId": THREAD, "turnId": "t1"}),
        ("turn/completed", ["not", "an", "object"]),
        ("turn/completed", None),
        ("thread/tokenUsage/updated", {"threadId": THREAD, "turnId": "t1"}),
    ],
)
def test_malformed_and_unknown_notifications_change_nothing(method: str, params: Any) -> None:
    d = Driver()
    a = d.running("a", "t1")
    stats = d.core.statistics()
    assert d.notify(method, params) == []
    assert d.core.statistics() == stats and a.state == "sent"


def test_notifications_without_a_session_change_nothing() -> None:
    d = Driver()
    d.accept("a")
    assert d.started("t1") == [] and d.completed("t1") == []
    assert d.notify("error", error_params("boom", turn_id="t1")) == []
    send = one(d.up(), Send)
    d.answer(send, "t1")  # t1 is not remembered as ended from before the session
    assert d.core.open_turns() == ["t1"]


def test_input_waiting_behind_an_interrupted_turn_steers_into_a_turn_that_starts() -> None:
    d = Driver()
    d.up()
    d.started("t1")
    one(d.interrupt(object()), Interrupt)
    a, actions = d.accept("a")
    assert of(actions, Send) == []  # not into a dying turn, and no turn/start beside it
    send = one(d.started("t2"), Send)
    assert (send.method, send.expected_turn_id, send.submission) == ("turn/steer", "t2", a)


# == examples: deadlines and interrupts ==============================================================================


def test_no_deadline_without_an_open_turn() -> None:
    d = Driver()
    d.up()
    d.accept("a")  # in flight, no turn yet
    assert d.core.next_deadline() == math.inf
    assert d.tick(1e9) == []


def test_a_stray_turn_gets_a_deadline_is_interrupted_and_does_not_wedge_queue_mode() -> None:
    d = Driver(delivery_mode="queue")
    d.up()
    d.now = 5.0
    assert published(d.started("stray"), TurnStarted) == [
        TurnStarted("stray", 1, runtime_id="rt")
    ]  # nobody here started it
    assert d.core.next_deadline() == 5.0 + TURN_TIMEOUT
    a, actions = d.accept("a")
    assert of(actions, Send) == []  # queue mode waits for the open turn
    assert d.tick(5.0 + TURN_TIMEOUT - 0.5) == []
    actions = d.tick(5.0 + TURN_TIMEOUT)
    interrupt = one(actions, Interrupt)
    assert (interrupt.turn_id, interrupt.thread_id, interrupt.generation) == ("stray", THREAD, 1)
    assert settled(actions) == []  # it carries nothing of ours
    assert d.core.next_deadline() == 5.0 + TURN_TIMEOUT + INTERRUPT_TIMEOUT
    actions = d.interrupt_answered(interrupt, accepted=False, error="no active turn to interrupt")
    message = f"turn stray exceeded its {TURN_TIMEOUT:g}s deadline and was interrupted"
    assert published(actions, TurnCompleted) == [TurnCompleted("stray", "failed", None, message, 1, runtime_id="rt")]
    assert one(actions, Send).submission is a


def test_a_stray_turn_that_ignores_its_interrupt_fails_the_session_and_the_next_one_delivers() -> None:
    d = Driver(delivery_mode="queue")
    d.up()
    d.started("stray")
    a, _ = d.accept("a")
    interrupt = one(d.tick(TURN_TIMEOUT), Interrupt)
    assert d.interrupt_answered(interrupt, accepted=True) == []
    (fail,) = d.tick(TURN_TIMEOUT + INTERRUPT_TIMEOUT)
    assert fail == FailSession(1, f"codex did not end turn stray within {INTERRUPT_TIMEOUT:g}s of turn/interrupt")
    assert d.lost("failed") == []
    assert one(d.up(), Send).submission is a


def test_a_turn_past_its_deadline_fails_its_inputs_and_is_interrupted() -> None:
    d = Driver()
    a = d.running("a", "t1")
    b, actions = d.accept("b")
    d.answer(one(actions, Send), "t1")
    assert d.tick(TURN_TIMEOUT - 0.5) == []
    actions = d.tick(TURN_TIMEOUT)
    message = f"turn t1 exceeded its {TURN_TIMEOUT:g}s deadline and was interrupted"
    assert [(s.seq, s.outcome, s.turn_id, s.error) for s in settled(actions)] == [
        (a.seq, "failed", "t1", message),
        (b.seq, "failed", "t1", message),
    ]
    assert all(s.persist for s in of(actions, Settle))
    interrupt = one(actions, Interrupt)
    assert interrupt.turn_id == "t1"
    c, actions = d.accept("c")
    assert of(actions, Send) == []  # no steer into a dying turn, no turn/start beside it
    d.interrupt_answered(interrupt, accepted=True)
    actions = d.completed("t1", "interrupted")
    assert settled(actions) == []  # already settled by the deadline, once
    assert published(actions, TurnCompleted) == [TurnCompleted("t1", "failed", None, message, 1, runtime_id="rt")]
    assert one(actions, Send).submission is c


def test_a_turn_that_outlives_its_interrupt_fails_the_session_once() -> None:
    d = Driver()
    a = d.running("a", "t1")
    interrupt = one(d.tick(TURN_TIMEOUT), Interrupt)
    d.now = TURN_TIMEOUT + 1
    assert d.interrupt_answered(interrupt, accepted=True) == []
    assert d.core.next_deadline() == TURN_TIMEOUT + 1 + INTERRUPT_TIMEOUT  # counted from codex's answer
    assert d.tick(TURN_TIMEOUT + INTERRUPT_TIMEOUT + 0.5) == []
    (fail,) = d.tick(TURN_TIMEOUT + 1 + INTERRUPT_TIMEOUT)
    assert isinstance(fail, FailSession) and fail.generation == 1
    assert d.core.next_deadline() == math.inf and d.tick(1e9) == []  # reported once
    assert d.lost("failed") == [] and a.state == "settled"


def test_an_unanswered_interrupt_fails_the_session() -> None:
    d = Driver()
    d.running("a", "t1")
    one(d.tick(TURN_TIMEOUT), Interrupt)
    assert of(d.tick(TURN_TIMEOUT + INTERRUPT_TIMEOUT), FailSession) != []


def test_an_interrupt_refused_ends_the_turn() -> None:
    d = Driver()
    a = d.running("a", "t1")
    caller = object()
    interrupt = one(d.interrupt(caller), Interrupt)
    assert interrupt.turn_id == "t1"
    actions = d.interrupt_answered(interrupt, accepted=False, error="no active turn to interrupt")
    assert InterruptAnswer(caller, False) in actions
    assert [(s.seq, s.outcome, s.error) for s in settled(actions)] == [
        (a.seq, "interrupted", "no active turn to interrupt")
    ]
    assert d.core.open_turns() == []
    assert d.completed("t1", "completed") == []  # its late end changes nothing


def test_an_accepted_interrupt_is_answered_and_codex_ends_the_turn() -> None:
    d = Driver()
    a = d.running("a", "t1")
    d.now = 5.0
    caller = object()
    interrupt = one(d.interrupt(caller), Interrupt)
    assert d.core.next_deadline() == TURN_TIMEOUT  # asking moves the deadline out (if need be), never in ...
    assert d.interrupt_answered(interrupt, accepted=True) == [InterruptAnswer(caller, True)]
    assert d.core.next_deadline() == 5.0 + INTERRUPT_TIMEOUT  # ... codex saying yes gives it interrupt_timeout
    second = object()
    assert d.interrupt(second) == [InterruptAnswer(second, False)]  # nothing left to interrupt
    (settlement,) = settled(d.completed("t1", "interrupted"))
    assert (settlement.seq, settlement.outcome) == (a.seq, "interrupted")


def test_an_interrupt_near_the_deadline_moves_it_out() -> None:
    d = Driver()
    d.running("a", "t1")
    d.now = TURN_TIMEOUT - 1
    one(d.interrupt(object()), Interrupt)
    assert d.core.next_deadline() == TURN_TIMEOUT - 1 + INTERRUPT_TIMEOUT


def test_an_interrupt_targets_the_newest_turn() -> None:
    d = Driver()
    d.up()
    d.started("t0")
    d.running("a", "t1")
    assert one(d.interrupt(object()), Interrupt).turn_id == "t1"
    assert one(d.interrupt(object()), Interrupt).turn_id == "t0"


def test_an_interrupt_without_a_turn_or_session_is_answered_false() -> None:
    d = Driver()
    caller = object()
    assert d.interrupt(caller) == [InterruptAnswer(caller, False)]
    d.up()
    d.accept("a")  # in flight, but no turn yet
    assert d.interrupt(caller) == [InterruptAnswer(caller, False)]


def test_an_interrupt_pending_when_the_session_ends_is_answered_false() -> None:
    d = Driver()
    d.running("a", "t1")
    caller = object()
    interrupt = one(d.interrupt(caller), Interrupt)
    assert InterruptAnswer(caller, False) in d.lost()
    d.up()
    assert d.interrupt_answered(interrupt, accepted=True) == []  # late: the caller was answered already


# == examples: sessions ==============================================================================================


def test_session_lost_interrupts_what_is_in_flight_and_keeps_the_queue() -> None:
    d = Driver()
    a = d.running("a", "t1")
    b, _ = d.accept("b")  # its turn/steer is in flight
    c, _ = d.accept("c")  # queued
    assert d.core.thread_id == THREAD
    actions = d.lost("app-server exited")
    assert settled(actions) == [
        Settlement(b.seq, "b", "interrupted", "t1", error="app-server exited", generation=1),
        Settlement(a.seq, "a", "interrupted", "t1", error="app-server exited", generation=1),
    ]
    assert all(s.persist for s in of(actions, Settle))
    assert [s.seq for s in d.core.queued()] == [c.seq] and c.state == "queued"
    assert not d.core.has_session and d.core.open_turns() == []
    assert d.core.thread_id is None
    send = one(d.up(thread="thread-2"), Send)  # nothing is re-run: the next session starts with the queue
    assert (send.submission, send.generation, send.method, send.thread_id) == (c, 2, "turn/start", "thread-2")


def test_an_unsent_delivery_goes_back_to_the_head_of_the_queue() -> None:
    d = Driver()
    d.up()
    a, actions = d.accept("a")
    send = one(actions, Send)
    b, _ = d.accept("b")
    assert d.lost(unsent={a.seq, 99}) == []  # its request never left us: nothing to settle
    assert [s.seq for s in d.core.queued()] == [a.seq, b.seq]
    assert (a.state, a.generation) == ("queued", None)
    again = one(d.up(), Send)
    assert (again.submission, again.generation) == (a, 2) and again.token != send.token
    assert d.answer(send, "t-old") == []  # the lost session's answer is stale


def test_a_stale_session_lost_changes_nothing() -> None:
    d = Driver()
    d.up()
    d.lost()
    a = d.running("a", "t1")
    d.core.session_lost(1, "the old app-server exited", unsent={a.seq})
    assert d.take() == [] and d.core.open_turns() == ["t1"] and a.state == "sent"


def test_late_answers_of_a_lost_session_change_nothing() -> None:
    d = Driver()
    d.running("a", "t1")
    _, actions = d.accept("b")
    steer = one(actions, Send)
    interrupt = one(d.interrupt(object()), Interrupt)
    c, _ = d.accept("c")
    d.lost()
    assert one(d.up(), Send).submission is c
    assert d.answer(steer, "t1") == [] and d.answer(steer, refused="late") == []
    assert d.interrupt_answered(interrupt, accepted=False) == []
    assert d.completed("t1") == [
        Publish(TurnCompleted("t1", "completed", None, None, 2, runtime_id="rt"))
    ]  # the new session's view
    assert c.state == "sending"


def test_ended_turns_are_remembered_per_session() -> None:
    d = Driver()
    d.up()
    d.completed("t1")
    d.lost()
    a, _ = d.accept("a")
    d.answer(one(d.up(), Send), "t1")  # the old session's t1 is not this one's
    assert d.core.open_turns() == ["t1"] and a.state == "sent"


def test_a_turn_that_ended_is_not_mistaken_for_another() -> None:
    d = Driver()
    d.up()
    d.completed("t-other")
    a, actions = d.accept("a")
    d.answer(one(actions, Send), "t1")
    assert a.state == "sent" and d.core.open_turns() == ["t1"]
    assert d.started("t-other") == []  # a late turn/started of an ended turn does not reopen it


def test_turn_started_then_the_answer_open_the_turn_once() -> None:
    d = Driver()
    d.up()
    a, actions = d.accept("a")
    assert published(d.started("t1"), TurnStarted) == [TurnStarted("t1", 1, runtime_id="rt")]
    assert published(d.answer(one(actions, Send), "t1"), TurnStarted) == []
    assert d.core.open_turns() == ["t1"] and a.turn_id == "t1"


def test_generations_only_grow() -> None:
    d = Driver()
    d.up(3)
    assert d.core.generation == 3
    d.lost()
    with pytest.raises(AssertionError, match="generations only grow"):
        d.core.session_ready(3, THREAD)


def test_a_lost_thread_is_reported_on_the_next_settlement_only() -> None:
    d = Driver()
    a = d.running("a", "t1")
    b, actions = d.accept("b")
    d.answer(one(actions, Send), "t1")
    lost = ThreadLost("t-old", THREAD, "the old thread could not be resumed", 1, runtime_id="rt")
    d.core.thread_lost(lost)
    first, second = settled(d.completed("t1"))
    assert (first.seq, first.thread_lost) == (a.seq, lost)
    assert (second.seq, second.thread_lost) == (b.seq, None)


# == examples: the restart notice ====================================================================================


def test_one_restart_notice_per_session() -> None:
    d = Driver()
    d.up()
    first = d.request(kind="notice")
    actions = d.take()
    assert one(actions, Answer).status == "submitted" and first.taken
    second = d.request(kind="notice")
    assert d.take() == [Answer(second, "skipped")]
    d.lost()  # the first was in flight: it settles interrupted
    d.up()
    third = d.request(kind="notice")
    answer = one(d.take(), Answer)
    assert (answer.request, answer.status) == (third, "submitted")


def test_a_restart_notice_is_skipped_once_other_input_woke_the_thread() -> None:
    d = Driver()
    d.up()
    d.accept("a")
    notice = d.request(kind="notice")
    assert d.take() == [Answer(notice, "skipped")]


def test_input_queued_for_a_new_session_wakes_its_thread() -> None:
    d = Driver()
    d.accept("a")  # during a restart: it will wake the next session
    d.up()
    notice = d.request(kind="notice")
    assert d.take() == [Answer(notice, "skipped")]


def test_a_restart_notice_in_the_restart_window_counts_for_the_next_session() -> None:
    d = Driver()
    d.up()
    d.lost()
    notice = d.request(kind="notice", text="you were restarted")
    answer = one(d.take(), Answer)
    assert (answer.request, answer.status) == (notice, "queued")
    assert one(d.up(), Send).submission is answer.submission
    again = d.request(kind="notice")
    assert d.take() == [Answer(again, "skipped")]


def test_a_restart_notice_and_input_in_one_batch() -> None:
    d = Driver()
    d.up()
    d.lost()
    d.request("a")
    write = one(d.take(), Write)  # woke the next session already
    notice, b = d.request(kind="notice"), d.request("b")
    d.core.written(write.batch)
    actions = d.take()
    assert [s.source_id for s in one(actions, Write).submissions] == [b.source_id]
    d.core.written(one(actions, Write).batch)
    assert Answer(notice, "skipped") in d.take()


def test_a_notice_left_queued_by_a_lost_session_counts_for_the_next_one() -> None:
    d = Driver()
    d.up()
    notice, _ = d.accept(kind="notice")
    d.lost(unsent={notice.seq})  # the app-server died before the notice left us: it is sent to the next one
    d.up()
    again = d.request(kind="notice")  # the application's notice for the new session
    assert d.take() == [Answer(again, "skipped")]


def test_a_second_notice_in_the_restart_window_is_skipped() -> None:
    d = Driver()
    d.up()
    notice, _ = d.accept(kind="notice")
    d.lost(unsent={notice.seq})  # the app-server died before the notice left us: it goes to the next session
    again = d.request(kind="notice")  # the application's notice for that restart, before the session is up
    assert d.take() == [Answer(again, "skipped")]  # else the next session gets two


def test_a_notice_in_the_restart_window_is_skipped_when_input_is_queued_for_the_next_session() -> None:
    d = Driver(pending=[(1, "a", "channel", "from before the restart")])
    notice = d.request(kind="notice")
    assert d.take() == [Answer(notice, "skipped")]  # as it is once the session is up (see the next test)


def test_a_notice_after_the_session_came_up_with_queued_input_is_skipped() -> None:
    d = Driver(pending=[(1, "a", "channel", "from before the restart")])
    d.up()
    notice = d.request(kind="notice")
    assert d.take() == [Answer(notice, "skipped")]


def test_a_failed_write_does_not_count_as_waking_the_thread() -> None:
    d = Driver()
    d.up()
    d.request("a")
    d.core.write_failed(one(d.take(), Write).batch, OSError("disk full"))
    d.take()
    d.request(kind="notice")
    assert one(d.take(), Answer).status == "submitted"


# == examples: reconciliation ========================================================================================


def test_reconciliation_gates_delivery_and_resent_inputs_go_first() -> None:
    d = Driver(
        seen=["x", "y", "z"],
        in_doubt=[(2, "y", "channel", "two", False), (1, "x", "channel", "one", True)],
        pending=[(3, "z", "channel", "three")],
    )
    assert [(s.seq, s.state) for s in d.core.in_doubt()] == [(1, "in_doubt"), (2, "in_doubt")]
    assert d.core.next_seq == 4
    assert d.up() == []  # a session is up, but nothing goes before the in-doubt input is decided
    new, actions = d.accept("n")
    assert of(actions, Send) == [] and new.seq == 4
    d.core.reconciled({2}, {1: TurnOutcome("completed", "old-turn", "done")})
    actions = d.take()
    assert settled(actions) == [Settlement(1, "x", "completed", "old-turn", "done")]
    assert one(actions, Settle).persist
    send = one(actions, Send)
    assert (send.submission.seq, send.method) == (2, "turn/start")  # codex never got it: sent again, first
    assert [s.seq for s in d.core.queued()] == [3, 4] and d.core.in_doubt() == []


def test_in_doubt_input_reconciled_before_the_session_goes_first() -> None:
    d = Driver(
        in_doubt=[(1, "x", "channel", "one", False), (2, "", "system", "two", False)],
        pending=[(3, "z", "trigger", "x")],
    )
    d.core.reconciled({1, 2}, {})
    assert d.take() == []
    assert [s.seq for s in d.core.queued()] == [1, 2, 3]
    assert one(d.up(), Send).submission.seq == 1


def test_in_doubt_input_codex_has_without_an_outcome_settles_interrupted() -> None:
    d = Driver(in_doubt=[(1, "x", "channel", "one", False)])
    d.core.reconciled(set(), {})
    (settlement,) = settled(d.take())
    assert (settlement.seq, settlement.outcome, settlement.generation) == (1, "interrupted", None)
    assert settlement.error is not None and "not sent again" in settlement.error


# == examples: stop ==================================================================================================


def test_stop_settles_everything_open_without_persisting() -> None:
    d = Driver()
    a = d.running("a", "t1")
    b, _ = d.accept("b")  # its turn/steer is in flight
    c, _ = d.accept("c")  # queued
    caller = object()
    d.interrupt(caller)
    d.core.stop("shutting down")
    actions = d.take()
    assert d.core.stopped
    assert settled(actions) == [
        Settlement(c.seq, "c", "stopped", None, error="shutting down"),
        Settlement(b.seq, "b", "stopped", None, error="shutting down", generation=1),
        Settlement(a.seq, "a", "stopped", "t1", error="shutting down", generation=1),
    ]
    assert not any(s.persist for s in of(actions, Settle))  # the next start delivers (or reconciles) them
    assert InterruptAnswer(caller, False) in actions
    assert not d.core.has_session and d.core.statistics() == CoreStatistics(0, 0, (), 0, 0, 3, 4)


def test_stop_settles_undecided_in_doubt_input_stopped() -> None:
    d = Driver(in_doubt=[(1, "x", "channel", "one", False)])
    d.core.stop()
    (settle,) = d.take()
    assert settle == Settle(Settlement(1, "x", "stopped", error="runtime stopped"), persist=False)
    assert d.core.in_doubt() == []


def test_stop_waits_for_the_batch_being_written() -> None:
    d = Driver()
    d.up()
    first = d.request("a")
    write = one(d.take(), Write)
    waiting, withdrawn = d.request("b"), d.request("c")
    withdrawn.withdrawn = True
    d.core.stop("shutting down")
    assert d.take() == [Answer(waiting, "stopped")]
    assert not d.core.stopped and d.core.writing
    late = d.request("d")
    assert d.take() == [Answer(late, "stopped")]
    d.core.written(write.batch)
    actions = d.take()
    answer = one(actions, Answer)
    assert (answer.request, answer.status) == (first, "submitted")  # its caller is answered first ...
    assert of(actions, Send) == []
    assert of(actions, Settle) == [Settle(Settlement(1, "a", "stopped", error="shutting down"), persist=False)]
    assert d.core.stopped and d.core.is_duplicate("a")  # ... it is durable: the next start delivers it
    assert not withdrawn.taken


def test_stop_waits_for_a_batch_that_then_fails() -> None:
    d = Driver()
    first = d.request("a")
    write = one(d.take(), Write)
    d.core.stop()
    assert d.take() == []
    error = OSError("disk full")
    d.core.write_failed(write.batch, error)
    assert d.take() == [Answer(first, "failed", error=error)]
    assert d.core.stopped


def test_nothing_is_sent_after_stop_while_a_batch_is_being_written() -> None:
    d = Driver()
    d.up()
    _, actions = d.accept("a")
    d.accept("b")  # queued behind a's turn/start
    d.request("c")
    one(d.take(), Write)
    d.core.stop()
    d.take()
    assert of(d.answer(one(actions, Send), "t1"), Send) == []


def test_close_admission_answers_waiting_requests_and_lets_the_batch_complete() -> None:
    d = Driver()
    d.up()
    first = d.request("a")
    write = one(d.take(), Write)
    waiting = d.request("b")
    d.core.close_admission()
    assert d.take() == [Answer(waiting, "stopped")]
    d.core.written(write.batch)
    actions = d.take()
    assert one(actions, Answer).request is first and one(actions, Send).submission.source_id == "a"
    assert not d.core.stopped  # closing admission is not stopping: what is accepted is still delivered
    late = d.request("c")
    assert d.take() == [Answer(late, "stopped")]


def test_abort_does_not_wait_for_the_batch_being_written() -> None:
    d = Driver()
    request = d.request("a")
    write = one(d.take(), Write)
    d.core.abort("host shutting down")
    # The abort() docstring says "failed"; the core answers "stopped" (see the report: it is the docstring that is
    # stale, "stopped" says what happened: the write's outcome is unknown, the next start may deliver it).
    assert d.take() == [Answer(request, "stopped")]
    assert d.core.stopped and not d.core.writing
    assert write.submissions[0].state == "settled"


def test_stop_twice_and_late_events_after_stop_change_nothing() -> None:
    d = Driver()
    d.running("a", "t1")
    _, actions = d.accept("b")
    d.core.stop()
    d.take()
    d.core.stop()
    assert d.take() == []
    assert d.completed("t1") == [] and d.tick(1e9) == [] and d.answer(one(actions, Send), "t1") == []
    d.core.session_lost(1, "late")
    d.core.reconciled({1}, {})
    assert d.take() == []
    caller = object()
    assert d.interrupt(caller) == [InterruptAnswer(caller, False)]


# == examples: bounds, exactly once, statistics ======================================================================


def test_ended_turns_are_remembered_within_a_bound() -> None:
    bound = _core._REMEMBERED_ENDED
    d = Driver(delivery_mode="queue")
    d.up()
    a, actions = d.accept("a")
    for n in range(bound + 1):
        d.completed(f"t{n}")
    session = d.core._session
    assert session is not None and len(session.ended) == bound and "t0" not in session.ended
    (settlement,) = settled(d.answer(one(actions, Send), f"t{bound}"))  # remembered: settles at once
    assert settlement.seq == a.seq
    b_send = one(d.accept("b")[1], Send)
    d.answer(b_send, "t0")  # forgotten: it is open again (and its deadline still ends it)
    assert d.core.open_turns() == ["t0"]


def test_early_items_are_remembered_for_a_few_turns() -> None:
    bound = _core._REMEMBERED_EARLY
    d = Driver()
    d.up()
    for n in range(bound + 1):
        d.notify("item/completed", item_params(f"t{n}", agent_message(f"m{n}")))
    session = d.core._session
    assert session is not None and list(session.early_items) == [f"t{n}" for n in range(1, bound + 1)]
    d.completed("t1")
    assert "t1" not in session.early_items
    d.notify("item/completed", item_params("t1", agent_message("late")))  # of an ended turn: not kept
    assert "t1" not in session.early_items


def test_a_turn_keeps_its_newest_items() -> None:
    bound = _core._MAX_ITEMS_PER_TURN
    d = Driver()
    d.running("a", "t1")
    for n in range(bound + 5):
        d.notify("item/completed", item_params("t1", agent_message(f"m{n}", f"i{n}")))
    (settlement,) = settled(d.completed("t1"))
    assert len(settlement.items) == bound
    assert (settlement.items[0].id, settlement.items[-1].id) == ("i5", f"i{bound + 4}")
    assert settlement.text == f"m{bound + 4}"


def test_outcome_of_a_finished_turn() -> None:
    turn = p.Turn("t1", "completed", [p.Item("agentMessage", "m1", agent_message("done", "m1"))])
    assert outcome_of(turn, turn.items) == TurnOutcome("completed", "t1", "done", (agent_item("done", "m1"),))
    failed = p.Turn("t2", "failed", error=p.TurnError("quota"))
    assert outcome_of(failed, []) == TurnOutcome("failed", "t2", None, (), "quota")


def test_settling_twice_is_an_assertion() -> None:
    d = Driver()
    a = d.running("a", "t1")
    d.completed("t1")
    with pytest.raises(AssertionError, match="settled twice"):
        d.core._settle(a, TurnOutcome("completed", "t1"), persist=True)


def test_statistics_count_what_is_open() -> None:
    d = Driver()
    d.running("a", "t1")
    d.accept("b")  # its turn/steer is in flight
    d.accept("c")  # queued
    d.request("d")  # being written
    d.take()
    d.request("e")  # waiting for that batch
    assert d.core.statistics() == CoreStatistics(
        queued=1, in_flight=2, open_turns=("t1",), waiting_requests=1, writing=1, dedup_ids=3, next_seq=5
    )
