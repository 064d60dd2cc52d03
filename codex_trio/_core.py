"""The runtime core: admission, the queue and every turn, as one sans-IO state machine.

Theory of operation
-------------------
Everything the runtime knows about its inputs and codex's turns lives here, and only here: the dedup window and
the sequence numbers, the admission batches being made durable, the queue, the app-server session (its thread, its
open turns and their inputs, items and deadlines, the turns that already ended, the one delivery request in
flight), the one-shot restart notice, and the gate that keeps delivery shut until a dead host's in-doubt input is
reconciled. No Trio, no I/O, no clock: time is passed in.

The driver (``_engine.py``) feeds it *events* — an admission request, a batch made durable (or not), a session
up or lost, an RPC answer, a notification, a tick, an interrupt request, stop — and performs the *actions* it
returns from :meth:`RuntimeCore.take_actions`: write a batch, answer a caller, send ``turn/start`` or
``turn/steer``, send ``turn/interrupt``, settle an input, publish an event, end a session that codex stopped
honouring. One task owns the core, so no two writers ever race.

An input's life::

    request ─► (batch written) ─► queued ─► sending ─► in a turn ─► settled
       │               │             │          │            │
       │               └► failed     └──────────┴────────────┴──► settled (stopped / interrupted / failed)
       └► duplicate | skipped | stopped

Rules the Hypothesis machine in ``tests/unit/test_core.py`` holds it to:

* **Admission is atomic.** A request is checked (dedup, stop, notice rule), numbered and batched in one step; the
  batch's ids enter the dedup window only once the batch is durable. Only one batch is written at a time, and
  every request that arrives meanwhile joins the next one (group commit). A request withdrawn before it is taken
  leaves no trace; a failed write leaves no trace either.
* **FIFO.** Inputs reach codex in sequence order. One delivery request is in flight at a time: a ``turn/steer``
  needs the turn id the previous ``turn/start`` answered with.
* **Options never steer into another turn's settings.** An input steers into a running turn only when it carries no
  :class:`~codex_trio.TurnOptions` or exactly those the turn was started with (:func:`may_steer`); otherwise it waits
  at the queue's head for that turn to end and starts its own, and the inputs behind it wait too (FIFO first).
* **Structured output.** An input whose options carry an ``output_schema`` settles with its turn's final message
  parsed (``Settlement.output``); a completed turn whose final message is not JSON settles ``failed``.
* **Exactly once.** An accepted input settles once; a second settlement is a bug (``AssertionError``).
* **Every open turn has a deadline**, whoever started it. Past it, its inputs settle ``failed`` and the turn is
  interrupted; a turn that codex does not end within ``interrupt_timeout`` of the interrupt ends the session.
* **A turn gives up on an unreachable model.** codex retries the model by itself (``error`` with ``willRetry:
  true``) and, without network, never stops ("Reconnecting... waiting for network", ever further apart). After
  ``model_retry_limit`` retry notices, or ``model_retry_timeout`` seconds after the first of at least two, with no
  sign of progress in the turn meanwhile, its inputs settle ``failed`` with codex's last words and the turn is
  interrupted, as at the deadline. One retry notice alone never gives up before its deadline.
* **Only our thread counts.** A notification that names another ``threadId`` is ignored.
* **A turn ends once**: by ``turn/completed``, by a fatal ``error`` (``willRetry: false``), or by codex saying
  there is no such turn to interrupt. codex may report a turn's end before it answers the request that started
  it, or before it answers a ``turn/steer`` into it: ended turns are remembered (bounded) for that.
* **One restart notice per session**, skipped once anything else has woken the thread.
* **A hold keeps its place.** A thread operation's hold (:meth:`RuntimeCore.hold`) is offered only once every
  input numbered before it has been sent and settled its turn, nothing is in flight and no turn is open; nothing
  numbered after it is sent until it is released; a session that ends under it offers it again in the next one.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import attrs

from . import _protocol as p
from ._events import (
    AgentMessageDelta,
    CodexError,
    CodexRetrying,
    CodexWarning,
    CommandOutputDelta,
    Event,
    FileChangeOutputDelta,
    FileChangePatchUpdated,
    ItemCompleted,
    ItemStarted,
    McpToolCallProgress,
    PlanDelta,
    PlanStep,
    PlanUpdated,
    ReasoningSummaryDelta,
    ReasoningSummaryPartAdded,
    ReasoningTextDelta,
    TokenUsageUpdated,
    TurnCompleted,
    TurnDiffUpdated,
    TurnStarted,
)
from ._items import AgentMessageItem, ThreadItem, file_update, parse_item
from ._settlement import Settlement, ThreadLost, TurnOutcome
from ._turn_options import ImageInput, TurnOptions, parse_output
from ._usage import TokenUsage, parse_usage

__all__ = [
    "Action",
    "AdmitRequest",
    "Answer",
    "CoreStatistics",
    "DeliveryMode",
    "FailSession",
    "Hold",
    "HoldEnded",
    "Interrupt",
    "InterruptAnswer",
    "Publish",
    "RuntimeCore",
    "Send",
    "Settle",
    "Submission",
    "SubmissionKind",
    "Write",
    "may_steer",
]

SubmissionKind = Literal["channel", "system", "trigger", "notice"]
DeliveryMode = Literal["steer", "queue"]
AnswerStatus = Literal["submitted", "queued", "duplicate", "failed", "stopped", "skipped"]
_State = Literal["requested", "writing", "queued", "sending", "sent", "in_doubt", "settled"]

#: Ended turns remembered for answers and notifications that arrive after a turn's terminal.
_REMEMBERED_ENDED: Final = 256
#: Turns whose items arrived before we knew the turn (its ``turn/start`` answer still on the way).
_REMEMBERED_EARLY: Final = 8
#: Items kept per turn. A turn with more keeps its newest (the final agent message is what a settlement needs).
_MAX_ITEMS_PER_TURN: Final = 1024
_ATTEMPT = re.compile(r"(\d+)\s*/\s*(\d+)")


@attrs.define(eq=False)
class Submission:
    """An accepted input (or one being made durable). ``kind`` "notice" is a restart notice: never stored."""

    seq: int
    source_id: str
    kind: SubmissionKind
    text: str
    state: _State = "writing"
    generation: int | None = None
    turn_id: str | None = None
    #: in doubt after a host crash: it was being steered into a running turn when that host died
    steered: bool = False
    #: the settings of the turn it starts (checked at the door); see ``_pump`` for when it may steer instead
    options: TurnOptions | None = None
    images: tuple[ImageInput, ...] = ()

    @property
    def durable(self) -> bool:
        return self.kind != "notice"

    @property
    def client_id(self) -> str:
        """The ``clientUserMessageId`` codex records with the user message: how a later host tells whether codex
        has this input. The source id when there is one, else one derived from the sequence number."""
        return self.source_id or f"codex-trio-seq:{self.seq}"


@attrs.define(eq=False)
class AdmitRequest:
    """One caller's request to accept an input. The caller may set ``withdrawn`` (it was cancelled) until the
    core sets ``taken``; from then on the request will be answered, whatever happens to the caller."""

    source_id: str
    kind: SubmissionKind
    text: str
    taken: bool = False
    withdrawn: bool = False
    #: for the driver: how to reach the caller once answered
    reply: Any = None
    options: TurnOptions | None = None
    images: tuple[ImageInput, ...] = ()


# -- actions -----------------------------------------------------------------------------------------------------


@attrs.frozen
class Write:
    """Make these submissions durable, in one transaction; then call :meth:`RuntimeCore.written` or
    :meth:`RuntimeCore.write_failed` with ``batch``."""

    batch: int
    submissions: tuple[Submission, ...]


@attrs.frozen
class Answer:
    """Tell the caller of ``request`` what became of it. ``submission`` is set for accepted inputs."""

    request: AdmitRequest
    status: AnswerStatus
    submission: Submission | None = None
    #: why a ``failed`` request was not accepted (the store's exception, as raised)
    error: BaseException | None = None


@attrs.frozen
class Send:
    """Mark ``submission`` in doubt in the store, then send it (``turn/start``, or ``turn/steer`` into
    ``expected_turn_id``); report with :meth:`RuntimeCore.delivery_answered`."""

    token: int
    generation: int
    method: Literal["turn/start", "turn/steer"]
    submission: Submission
    thread_id: str
    expected_turn_id: str | None = None


@attrs.frozen
class Interrupt:
    """Send ``turn/interrupt`` for ``turn_id``; report with :meth:`RuntimeCore.interrupt_answered`."""

    token: int
    generation: int
    thread_id: str
    turn_id: str


@attrs.frozen
class InterruptAnswer:
    """Answer a caller of :meth:`RuntimeCore.interrupt`: True when codex accepted the interrupt."""

    requester: Any
    interrupted: bool


@attrs.frozen
class Settle:
    """``settlement`` is final. ``persist``: record it in the store (which also drops the pending row), with the
    runtime's cumulative token usage (``usage``, when there is any) in the same write."""

    settlement: Settlement
    persist: bool
    usage: TokenUsage | None = None


@attrs.frozen
class Publish:
    event: Event


@attrs.frozen
class FailSession:
    """The session of ``generation`` no longer behaves (a turn that outlives its interrupt, an answer we cannot
    read, an RPC that timed out): end it, as a crash would; the supervisor restarts it."""

    generation: int
    reason: str


#: A restored queued input: ``(seq, source_id, kind, text)``, or with its ``options`` and ``images`` after them.
_PendingRow: TypeAlias = (
    tuple[int, str, SubmissionKind, str]
    | tuple[int, str, SubmissionKind, str, TurnOptions | None, tuple[ImageInput, ...]]
)
#: A restored in-doubt input: ``(seq, source_id, kind, text, steered)``, or with ``options`` and ``images``.
_InDoubtRow: TypeAlias = (
    tuple[int, str, SubmissionKind, str, bool]
    | tuple[int, str, SubmissionKind, str, bool, TurnOptions | None, tuple[ImageInput, ...]]
)


@attrs.frozen
class Hold:
    """Every input accepted before hold ``token`` was asked for has settled, and session ``generation`` on
    ``thread_id`` is idle (no turn open, nothing being sent): the requester may now work on the thread (start a
    fresh one, fork, compact). Nothing is sent until :meth:`RuntimeCore.release`."""

    token: int
    generation: int
    thread_id: str
    requester: Any


@attrs.frozen
class HoldEnded:
    """The hold ``requester`` asked for will never be offered (the runtime stops)."""

    requester: Any
    reason: str


Action: TypeAlias = (
    Write | Answer | Send | Interrupt | InterruptAnswer | Settle | Publish | FailSession | Hold | HoldEnded
)


@attrs.frozen
class CoreStatistics:
    queued: int
    in_flight: int
    open_turns: tuple[str, ...]
    waiting_requests: int
    writing: int
    dedup_ids: int
    next_seq: int
    #: thread operations waiting for their place in the input order, or under way (``Runtime.new_thread``, ...)
    holds: int = 0


# -- session state -----------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Turn:
    id: str
    deadline: float
    inputs: list[Submission] = attrs.field(factory=list)
    items: list[ThreadItem] = attrs.field(factory=list)
    #: the sum of the ``last`` usage of the turn's ``thread/tokenUsage/updated`` notifications so far
    usage: TokenUsage | None = None
    steerable: bool = True
    interrupting: bool = False
    #: the outcome its inputs already got (our deadline), reported instead of codex's
    override: TurnOutcome | None = None
    #: the options of the input that started it (None: none, or a turn we did not start)
    options: TurnOptions | None = None
    #: codex's retry notices since the turn last made progress, the first one's time and the last one's words
    retries: int = 0
    retrying_since: float = 0.0
    retry_message: str = ""
    #: when the retry timeout gives up on the model (``inf``: not armed)
    give_up_at: float = float("inf")


@attrs.define(eq=False)
class _Flight:
    token: int
    submission: Submission
    method: Literal["turn/start", "turn/steer"]
    target: str | None


@attrs.define(eq=False)
class _Barrier:
    """A hold's place in the input order: inputs numbered up to ``after_seq`` go first, later ones wait."""

    token: int
    after_seq: int
    requester: Any
    #: the generation whose session it was offered in (None: not offered, or that session ended)
    held: int | None = None


@attrs.define(eq=False)
class _Session:
    generation: int
    thread_id: str
    turns: dict[str, _Turn] = attrs.field(factory=dict)
    ended: OrderedDict[str, TurnOutcome] = attrs.field(factory=OrderedDict)
    early_items: OrderedDict[str, list[ThreadItem]] = attrs.field(factory=OrderedDict)
    early_usage: OrderedDict[str, TokenUsage] = attrs.field(factory=OrderedDict)
    sending: _Flight | None = None
    #: interrupt token -> (turn id, requester or None for a deadline)
    interrupts: dict[int, tuple[str, Any]] = attrs.field(factory=dict)


class RuntimeCore:
    """See the module docstring. Pure: no I/O, no clock, no Trio."""

    def __init__(
        self,
        *,
        runtime_id: str = "",
        usage: TokenUsage | None = None,
        delivery_mode: DeliveryMode = "steer",
        dedup_window: int = 1024,
        turn_timeout: float = 600.0,
        interrupt_timeout: float = 60.0,
        model_retry_limit: int | None = None,
        model_retry_timeout: float | None = None,
        next_seq: int = 1,
        seen: Iterable[str] = (),
        pending: Iterable[_PendingRow] = (),
        in_doubt: Iterable[_InDoubtRow] = (),
    ) -> None:
        if dedup_window < 0:
            raise ValueError("dedup_window must be >= 0")
        #: named by every event the core publishes
        self.runtime_id = runtime_id
        #: the runtime's cumulative token usage (restored from the store, then every model call of our thread)
        self.usage = usage
        self.delivery_mode: DeliveryMode = delivery_mode
        self.dedup_window = dedup_window
        self.turn_timeout = turn_timeout
        self.interrupt_timeout = interrupt_timeout
        #: give up on a turn whose model codex cannot reach (None: never, the deadline still applies)
        self.model_retry_limit = model_retry_limit
        self.model_retry_timeout = model_retry_timeout
        self._seen: OrderedDict[str, None] = OrderedDict()
        for source_id in seen:
            self._remember(source_id)
        self._next_seq = next_seq
        self._requests: deque[AdmitRequest] = deque()
        self._writing: dict[int, tuple[list[tuple[AdmitRequest, Submission]], list[Answer]]] = {}
        self._next_batch = 1
        self._queue: deque[Submission] = deque()
        for row in sorted(pending, key=lambda row: row[0]):
            seq, source_id, kind, text = row[:4]
            options, images = row[4:] if len(row) == 6 else (None, ())
            self._queue.append(Submission(seq, source_id, kind, text, "queued", options=options, images=images))
            self._next_seq = max(self._next_seq, seq + 1)
        self._in_doubt: dict[int, Submission] = {}
        for doubt in sorted(in_doubt, key=lambda row: row[0]):
            seq, source_id, kind, text, steered = doubt[:5]
            options, images = doubt[5:] if len(doubt) == 7 else (None, ())
            self._in_doubt[seq] = Submission(
                seq, source_id, kind, text, "in_doubt", steered=steered, options=options, images=images
            )
            self._next_seq = max(self._next_seq, seq + 1)
        self._session: _Session | None = None
        self._generation = 0
        self._next_token = 1
        self._barriers: deque[_Barrier] = deque()
        self._actions: list[Action] = []
        #: something already woke the thread of the current (or, between sessions, the next) session
        self._woken = False
        self._thread_lost: ThreadLost | None = None
        self._admission_closed = False
        self._stop_reason: str | None = None
        self.stopped = False

    # == outputs ==================================================================================================

    def take_actions(self) -> list[Action]:
        """The actions to perform, in order; the core forgets them."""
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float:
        """When :meth:`tick` must be called next (``inf``: no deadline pending)."""
        session = self._session
        if session is None or not session.turns:
            return float("inf")
        return min(min(turn.deadline, turn.give_up_at) for turn in session.turns.values())

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def thread_id(self) -> str | None:
        return self._session.thread_id if self._session is not None else None

    @property
    def has_session(self) -> bool:
        return self._session is not None

    @property
    def writing(self) -> bool:
        return bool(self._writing)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def in_doubt(self) -> list[Submission]:
        return [self._in_doubt[seq] for seq in sorted(self._in_doubt)]

    def queued(self) -> list[Submission]:
        return list(self._queue)

    def open_turns(self) -> list[str]:
        return list(self._session.turns) if self._session is not None else []

    def seen_ids(self) -> list[str]:
        return list(self._seen)

    def statistics(self) -> CoreStatistics:
        session = self._session
        in_flight = 0
        if session is not None:
            in_flight = sum(len(t.inputs) for t in session.turns.values()) + (session.sending is not None)
        return CoreStatistics(
            queued=len(self._queue),
            in_flight=in_flight,
            open_turns=tuple(self.open_turns()),
            waiting_requests=len(self._requests),
            writing=sum(len(members) for members, _ in self._writing.values()),
            dedup_ids=len(self._seen),
            next_seq=self._next_seq,
            holds=len(self._barriers),
        )

    # == admission ================================================================================================

    def request(self, request: AdmitRequest) -> None:
        """A caller asks for ``request`` to be accepted; it is answered with an :class:`Answer` action."""
        if self.stopped or self._admission_closed:
            request.taken = True
            self._actions.append(Answer(request, "stopped"))
            return
        self._requests.append(request)
        self._form_batch()

    def close_admission(self) -> None:
        """Stop taking requests (the runtime is stopping): new and waiting ones are answered ``stopped``; a batch
        being written still completes."""
        self._admission_closed = True
        while self._requests:
            request = self._requests.popleft()
            if not request.withdrawn:
                request.taken = True
                self._actions.append(Answer(request, "stopped"))

    def _form_batch(self) -> None:
        if self._writing:
            return  # one batch at a time: requests wait for it, then go together (group commit)
        members: list[tuple[AdmitRequest, Submission]] = []
        answers: list[Answer] = []
        batch_ids: set[str] = set()
        # Decided here, recorded only once the batch is accepted (a failed write must leave no trace). Between
        # sessions, whatever is already queued wakes the next session's thread.
        woken = self._woken or (self._session is None and bool(self._queue))
        while self._requests:
            request = self._requests.popleft()
            if request.withdrawn:
                continue
            request.taken = True
            if request.kind == "notice":
                if woken:
                    answers.append(Answer(request, "skipped"))
                    continue
            elif request.source_id and (request.source_id in self._seen or request.source_id in batch_ids):
                answers.append(Answer(request, "duplicate"))
                continue
            woken = True
            if request.source_id:
                batch_ids.add(request.source_id)
            sub = Submission(
                self._next_seq,
                request.source_id,
                request.kind,
                request.text,
                options=request.options,
                images=request.images,
            )
            self._next_seq += 1
            members.append((request, sub))
        if not members:
            self._actions.extend(answers)
            return
        batch = self._next_batch
        self._next_batch += 1
        self._writing[batch] = (members, answers)
        durable = tuple(sub for _, sub in members if sub.durable)
        if durable:
            self._actions.append(Write(batch, durable))
        else:
            self.written(batch)

    def written(self, batch: int) -> None:
        """The batch's durable submissions are in the store: they are accepted."""
        members, answers = self._writing.pop(batch)
        status: AnswerStatus = "submitted" if self._session is not None else "queued"
        if members:
            self._woken = True
        for request, sub in members:
            if sub.source_id:
                self._remember(sub.source_id)
            sub.state = "queued"
            self._queue.append(sub)
            self._actions.append(Answer(request, status, sub))
        self._actions.extend(answers)
        self._after_write()

    def write_failed(self, batch: int, error: BaseException) -> None:
        """The store refused the batch: nothing of it was recorded, so its ids stay unused (no trace)."""
        members, answers = self._writing.pop(batch)
        for request, sub in members:
            if sub.durable:
                sub.state = "settled"
                self._actions.append(Answer(request, "failed", error=error))
            else:
                sub.state = "queued"
                self._woken = True  # an accepted notice wakes the thread, even when the batch's write failed
                self._queue.append(sub)
                self._actions.append(Answer(request, "submitted" if self._session else "queued", sub))
        self._actions.extend(answers)
        self._after_write()

    def _after_write(self) -> None:
        if self._stop_reason is not None:
            # Accepted (and durable, so the next start delivers them), but this runtime stops now.
            self.stop(self._stop_reason)
            return
        self._form_batch()
        self._pump()

    def _remember(self, source_id: str) -> None:
        if not source_id or self.dedup_window == 0:
            return
        self._seen[source_id] = None
        while len(self._seen) > self.dedup_window:
            self._seen.popitem(last=False)

    def is_duplicate(self, source_id: str) -> bool:
        return bool(source_id) and source_id in self._seen

    # == sessions =================================================================================================

    def session_ready(self, generation: int, thread_id: str) -> None:
        """Session ``generation`` is up on ``thread_id`` (handshake done, thread started or resumed)."""
        assert generation > self._generation, "generations only grow"
        if self._session is not None:  # the driver always ends a session first; never drop its inputs silently
            self.session_lost(self._session.generation, "superseded by a new session")
        self._generation = generation
        self._session = _Session(generation, thread_id)
        # Input queued while no session was up wakes the new session's thread; a queued notice is its notice.
        self._woken = self._woken or bool(self._queue)
        self._pump()

    def thread_lost(self, info: ThreadLost) -> None:
        """The thread was lost (resume failed, a fresh one started): the next settlement carries ``info``."""
        self._thread_lost = info

    def reconciled(self, resend: Collection[int], outcomes: Mapping[int, TurnOutcome]) -> None:
        """A dead host's in-doubt input is decided: ``resend`` never reached codex (it goes first, in order);
        the rest settle with ``outcomes`` (or ``interrupted`` when codex has it but no outcome is known)."""
        for seq in sorted(self._in_doubt, reverse=True):
            sub = self._in_doubt.pop(seq)
            if seq in resend:
                sub.state = "queued"
                self._queue.appendleft(sub)
                continue
            outcome = outcomes.get(seq)
            if outcome is None:
                outcome = TurnOutcome(
                    "interrupted",
                    None,
                    error="the previous host stopped while this input was in flight; codex has it, so it is not "
                    "sent again",
                )
            self._settle(sub, outcome, persist=True)
        self._pump()

    def session_lost(self, generation: int, reason: str, *, unsent: Collection[int] = ()) -> None:
        """Session ``generation`` ended. What it had in flight settles ``interrupted`` (it may have had effects), except
        a delivery whose request certainly never left us (``unsent`` seqs): that one goes back to the queue's head."""
        session = self._session
        if session is None or session.generation != generation:
            return
        self._session = None
        self._woken = False
        for barrier in self._barriers:
            if barrier.held == generation:
                barrier.held = None  # offered again once the next session is idle
        flight = session.sending
        if flight is not None:
            sub = flight.submission
            if sub.seq in unsent:
                sub.state = "queued"
                sub.generation = None
                self._queue.appendleft(sub)
            else:
                self._settle(sub, TurnOutcome("interrupted", flight.target, error=reason), persist=True)
        for turn in session.turns.values():
            for sub in turn.inputs:
                self._settle(sub, TurnOutcome("interrupted", turn.id, error=reason, usage=turn.usage), persist=True)
        for token, (_turn_id, requester) in session.interrupts.items():
            del token
            if requester is not None:
                self._actions.append(InterruptAnswer(requester, False))

    def stop(self, reason: str = "runtime stopped") -> None:
        """Settle everything still open ``stopped``. Nothing is persisted: with a durable store, queued input is
        delivered, and input in flight reconciled, by the next start.

        A batch being written is waited for first (its callers are answered, then its inputs settle ``stopped``):
        :attr:`stopped` turns True once it is in. Call :meth:`abort` when nothing can be waited for.
        """
        self.close_admission()
        if self._writing:
            self._stop_reason = reason
            return
        self.abort(reason)

    def abort(self, reason: str = "runtime stopped") -> None:
        """Stop now, without waiting for a batch being written: its callers are answered ``stopped`` (the write's
        outcome is unknown to us; with a durable store its inputs may still be delivered by the next start)."""
        self.close_admission()
        for batch in list(self._writing):
            members, answers = self._writing.pop(batch)
            for request, sub in members:
                sub.state = "settled"
                self._actions.append(Answer(request, "stopped"))
            self._actions.extend(answers)
        self.stopped = True
        self._stop_queue(reason)
        while self._barriers:
            self._actions.append(HoldEnded(self._barriers.popleft().requester, reason))
        session, self._session = self._session, None
        if session is not None:
            if session.sending is not None:
                self._settle(session.sending.submission, TurnOutcome("stopped", None, error=reason), persist=False)
            for turn in session.turns.values():
                for sub in turn.inputs:
                    self._settle(sub, TurnOutcome("stopped", turn.id, error=reason, usage=turn.usage), persist=False)
            for _turn_id, requester in session.interrupts.values():
                if requester is not None:
                    self._actions.append(InterruptAnswer(requester, False))
        for sub in list(self._in_doubt.values()):
            self._settle(sub, TurnOutcome("stopped", None, error=reason), persist=False)
        self._in_doubt.clear()

    def _stop_queue(self, reason: str) -> None:
        while self._queue:
            self._settle(self._queue.popleft(), TurnOutcome("stopped", None, error=reason), persist=False)

    # == delivery =================================================================================================

    def _pump(self) -> None:
        """Send the queue's head if nothing is in flight and the turn state allows it."""
        session = self._session
        if session is None or session.sending is not None or self._in_doubt:
            return
        if self.stopped or self._stop_reason is not None:
            return  # stopping (maybe waiting for a batch being written): nothing more is sent
        if self._barriers and not (self._queue and self._queue[0].seq <= self._barriers[0].after_seq):
            self._offer_hold(session, self._barriers[0])
            return  # what follows a hold waits for its release
        if not self._queue:
            return
        target: _Turn | None = None
        if session.turns:
            if self.delivery_mode == "queue":
                return  # each input gets its own turn: wait for the open one to end
            for turn in reversed(session.turns.values()):
                if turn.steerable and not turn.interrupting:
                    target = turn
                    break
            if target is None and any(turn.interrupting for turn in session.turns.values()):
                return  # a turn/start now would be refused; a steer would join a dying turn
            if target is not None and not may_steer(self._queue[0].options, target.options):
                # A running turn's model, effort, sandbox, cwd and output schema cannot change: an input with other
                # options waits for it to end and starts its own turn. Everything behind it waits too (FIFO).
                return
        sub = self._queue.popleft()
        sub.state = "sending"
        sub.generation = session.generation
        token = self._token()
        if target is not None:
            session.sending = _Flight(token, sub, "turn/steer", target.id)
            self._actions.append(Send(token, session.generation, "turn/steer", sub, session.thread_id, target.id))
        else:
            session.sending = _Flight(token, sub, "turn/start", None)
            self._actions.append(Send(token, session.generation, "turn/start", sub, session.thread_id))

    # == holds: thread operations in the input order =================================================================

    def hold(self, requester: Any) -> int:
        """Ask for the thread to be handed over once everything accepted so far has settled and no turn is open
        (a :class:`Hold` action, offered again in the next session if this one ends first); input accepted later
        waits until :meth:`release`. Returns the hold's token (0: the runtime stops, :class:`HoldEnded` follows)."""
        if self.stopped or self._admission_closed:
            self._actions.append(HoldEnded(requester, self._stop_reason or "runtime stopped"))
            return 0
        token = self._token()
        # Inputs already numbered (queued, or in a batch being written) are before it; requests still waiting
        # for a batch get later numbers, so they are after it.
        self._barriers.append(_Barrier(token, self._next_seq - 1, requester))
        self._pump()
        return token

    def release(self, token: int, *, thread_id: str | None = None) -> None:
        """Hold ``token`` is done (or withdrawn). ``thread_id``: the session now works on that thread (a fresh or
        forked one), if the hold was offered in the session that is up."""
        barrier = next((b for b in self._barriers if b.token == token), None)
        if barrier is None:
            return
        self._barriers.remove(barrier)
        session = self._session
        if thread_id is not None and session is not None and barrier.held == session.generation:
            session.thread_id = thread_id
            session.ended.clear()
            session.early_items.clear()
        self._pump()

    def _offer_hold(self, session: _Session, barrier: _Barrier) -> None:
        if barrier.held is not None or session.turns:
            return  # offered already, or a turn still runs (its end pumps again)
        for members, _ in self._writing.values():
            if any(sub.seq <= barrier.after_seq for _, sub in members):
                return  # an input before the hold is still being made durable
        barrier.held = session.generation
        self._actions.append(Hold(barrier.token, session.generation, session.thread_id, barrier.requester))

    def delivery_answered(
        self,
        token: int,
        now: float,
        *,
        turn_id: str | None = None,
        refused: str | None = None,
        broken: str | None = None,
    ) -> None:
        """codex answered the :class:`Send` ``token``: accepted into ``turn_id``, ``refused`` (an RPC error, with
        its message), or ``broken`` (no usable answer: a timeout or an answer we cannot read; ends the session).
        A lost connection is not an answer: :meth:`session_lost` follows."""
        session = self._session
        flight = session.sending if session is not None else None
        if session is None or flight is None or flight.token != token:
            return  # from a session that has ended
        sub = flight.submission
        if broken is not None:
            self._actions.append(FailSession(session.generation, broken))
            return
        session.sending = None
        if refused is not None:
            if flight.method == "turn/steer":
                # The turn ended between our look and codex's: start a new turn with this input instead.
                turn = session.turns.get(flight.target or "")
                if turn is not None:
                    turn.steerable = False
                sub.state = "queued"
                self._queue.appendleft(sub)
            else:
                self._settle(sub, TurnOutcome("failed", None, error=f"turn/start rejected: {refused}"), persist=True)
            self._pump()
            return
        turn_id = turn_id or flight.target
        assert turn_id is not None
        sub.state = "sent"
        sub.turn_id = turn_id
        ended = session.ended.get(turn_id)
        if ended is not None:
            self._settle(sub, ended, persist=True)  # its turn/completed overtook this answer
        else:
            turn = self._open_turn(session, turn_id, now)
            if flight.method == "turn/start":
                turn.options = sub.options
            turn.inputs.append(sub)
        self._pump()

    def _open_turn(self, session: _Session, turn_id: str, now: float) -> _Turn:
        turn = session.turns.get(turn_id)
        if turn is None:
            turn = session.turns[turn_id] = _Turn(turn_id, now + self.turn_timeout)
            turn.items.extend(session.early_items.pop(turn_id, ()))
            turn.usage = session.early_usage.pop(turn_id, None)
            if turn.usage is not None:  # counted for the runtime now that the turn is one of this session's
                self.usage = turn.usage if self.usage is None else self.usage + turn.usage
            self._publish(TurnStarted(turn_id, session.generation, runtime_id=self.runtime_id))
        return turn

    # == interrupts and deadlines =================================================================================

    def interrupt(self, requester: Any, now: float) -> None:
        """A caller asks to interrupt the active turn; answered with :class:`InterruptAnswer` (False: no turn)."""
        session = self._session
        if session is None:
            self._actions.append(InterruptAnswer(requester, False))
            return
        for turn in reversed(session.turns.values()):
            if not turn.interrupting:
                turn.deadline = max(turn.deadline, now + self.interrupt_timeout)
                self._interrupt(session, turn, requester)
                return
        self._actions.append(InterruptAnswer(requester, False))

    def _interrupt(self, session: _Session, turn: _Turn, requester: Any) -> None:
        turn.interrupting = True
        turn.steerable = False
        token = self._token()
        session.interrupts[token] = (turn.id, requester)
        self._actions.append(Interrupt(token, session.generation, session.thread_id, turn.id))

    def interrupt_answered(self, token: int, now: float, *, accepted: bool, error: str | None = None) -> None:
        """codex answered the :class:`Interrupt` ``token``. Refused means codex has no such turn running (it ended
        and we missed its end, or it never really started): the turn ends here, as interrupted."""
        session = self._session
        if session is None or token not in session.interrupts:
            return
        turn_id, requester = session.interrupts.pop(token)
        if requester is not None:
            self._actions.append(InterruptAnswer(requester, accepted))
        turn = session.turns.get(turn_id)
        if turn is None:
            return
        if accepted:
            # codex ends it with turn/completed (interrupted); if it does not, the session is broken.
            turn.deadline = now + self.interrupt_timeout
            return
        self._end_turn(session, turn_id, TurnOutcome("interrupted", turn_id, error=error or "turn was interrupted"))
        self._pump()

    def tick(self, now: float) -> None:
        """Time passed: open turns past their deadline, or past their retry timeout, are failed and interrupted; a
        turn that outlived its interrupt ends the session."""
        session = self._session
        if session is None:
            return
        for turn in list(session.turns.values()):
            if turn.give_up_at <= now and not turn.interrupting:
                self._give_up_on_model(session, turn, now, f"model_retry_timeout={self.model_retry_timeout:g}")
                continue
            if turn.deadline > now:
                continue
            if turn.interrupting:
                self._actions.append(
                    FailSession(
                        session.generation,
                        f"codex did not end turn {turn.id} within {self.interrupt_timeout:g}s of turn/interrupt",
                    )
                )
                turn.deadline = float("inf")  # reported once; the session ends
                continue
            message = f"turn {turn.id} exceeded its {self.turn_timeout:g}s deadline and was interrupted"
            self._fail_and_interrupt(session, turn, now, message)

    def _fail_and_interrupt(self, session: _Session, turn: _Turn, now: float, message: str) -> None:
        """Settle the turn's inputs ``failed`` now, then interrupt it (its end, later, changes nothing for them)."""
        turn.override = TurnOutcome("failed", turn.id, error=message, usage=turn.usage)
        for sub in turn.inputs:
            self._settle(sub, turn.override, persist=True)
        turn.inputs.clear()
        turn.deadline = now + self.interrupt_timeout
        turn.give_up_at = float("inf")
        self._interrupt(session, turn, None)

    def _retrying(self, session: _Session, turn_id: str | None, message: str, now: float) -> None:
        """codex retries the model for ``turn_id``: count the notice; give up past ``model_retry_limit``, arm the
        ``model_retry_timeout`` from the second notice on (one transient retry is normal)."""
        if turn_id is None and session.turns:
            turn_id = next(reversed(session.turns))
        turn = session.turns.get(turn_id or "")
        if turn is None or turn.interrupting:
            return
        if turn.retries == 0:
            turn.retrying_since = now
        turn.retries += 1
        turn.retry_message = message
        limit, timeout = self.model_retry_limit, self.model_retry_timeout
        if limit is not None and turn.retries >= limit:
            self._give_up_on_model(session, turn, now, f"model_retry_limit={limit}")
        elif timeout is not None and turn.retries >= 2:
            turn.give_up_at = turn.retrying_since + timeout
            if turn.give_up_at <= now:
                self._give_up_on_model(session, turn, now, f"model_retry_timeout={timeout:g}")

    def _give_up_on_model(self, session: _Session, turn: _Turn, now: float, bound: str) -> None:
        elapsed = now - turn.retrying_since
        message = (
            f"{turn.retry_message} (codex could not reach the model: {turn.retries} retry notice(s) over "
            f"{elapsed:.0f}s; gave up at RuntimeConfig.{bound} and interrupted the turn)"
        )
        self._fail_and_interrupt(session, turn, now, message)

    def _progressed(self, session: _Session, params: dict[str, Any]) -> None:
        """Anything but an error about a retrying turn means codex reached the model again: the count restarts."""
        turn_id = params.get("turnId")
        turn = session.turns.get(turn_id) if isinstance(turn_id, str) else None
        if turn is not None and turn.retries and not turn.interrupting:
            turn.retries = 0
            turn.give_up_at = float("inf")

    # == notifications ============================================================================================

    def notification(self, method: str, params: Any, now: float) -> None:
        """A notification from the app-server of the current session."""
        session = self._ours(params)
        if session is None:
            return  # no session, not an object, or another thread's: none of our turns
        if method != "error":
            self._progressed(session, params)
        handler = self._handlers.get(method)
        if handler is not None:
            handler(self, session, params, now)
        elif method in STREAM_METHODS:
            event = self._streamed(session, method, params)
            if event is not None:
                self._actions.append(Publish(event))

    def delta(self, params: Any) -> AgentMessageDelta | None:
        """The event for an ``item/agentMessage/delta`` notification, or None if it is not ours to publish.

        The hottest notification by far (one per streamed chunk), so it gets a path of its own: it changes no
        state, so it returns its event instead of queuing a :class:`Publish` action.
        """
        session = self._session
        if session is None or type(params) is not dict:
            return None
        thread_id = params.get("threadId")
        if thread_id is not None and thread_id != session.thread_id:
            return None
        try:
            # Positional: a keyword argument would cost this, the hottest call, about a fifth more.
            return AgentMessageDelta(
                params["turnId"], params["itemId"], params["delta"], session.generation, self.runtime_id
            )
        except KeyError:
            return AgentMessageDelta(
                str(params.get("turnId", "")),
                str(params.get("itemId", "")),
                str(params.get("delta", "")),
                session.generation,
                runtime_id=self.runtime_id,
            )

    def stream(self, method: str, params: Any) -> Event | None:
        """The event for a notification in :data:`STREAM_METHODS` (reasoning, command output, plan, progress,
        diff), or None if it is not ours or not readable. Like :meth:`delta`, these change no state, so the driver
        may skip them when nobody listens."""
        session = self._ours(params)
        return None if session is None else self._streamed(session, method, params)

    def _ours(self, params: Any) -> _Session | None:
        """The current session, if ``params`` is a notification's object about its thread (codex names the thread
        in nearly all of them; one that names none is taken as ours)."""
        session = self._session
        if session is None or type(params) is not dict:
            return None
        thread_id = params.get("threadId")
        if thread_id is not None and thread_id != session.thread_id:
            return None
        return session

    def _streamed(self, session: _Session, method: str, params: dict[str, Any]) -> Event | None:
        build = _STREAMED.get(method)
        if build is None:
            return None
        try:
            return build(params, session.generation, self.runtime_id)
        except (KeyError, TypeError, ValueError):
            return None  # malformed: nothing to show

    def _on_delta(self, session: _Session, params: dict[str, Any], now: float) -> None:
        event = self.delta(params)
        if event is not None:
            self._actions.append(Publish(event))

    def _on_item(self, session: _Session, params: dict[str, Any], now: float, *, completed: bool) -> None:
        parsed = _structure(params, p.ItemNotification)
        if parsed is None:
            return
        item = parse_item(parsed.item.raw)
        if completed:
            turn = session.turns.get(parsed.turn_id)
            if turn is not None:
                _append_item(turn.items, item)
            elif parsed.turn_id not in session.ended:
                early = session.early_items.setdefault(parsed.turn_id, [])
                session.early_items.move_to_end(parsed.turn_id)
                _append_item(early, item)
                while len(session.early_items) > _REMEMBERED_EARLY:
                    session.early_items.popitem(last=False)
            self._publish(
                ItemCompleted(parsed.turn_id, item.type, item.id, item, session.generation, runtime_id=self.runtime_id)
            )
        else:
            self._publish(
                ItemStarted(parsed.turn_id, item.type, item.id, item, session.generation, runtime_id=self.runtime_id)
            )

    def _on_token_usage(self, session: _Session, params: dict[str, Any], now: float) -> None:
        turn_id = params.get("turnId")
        usage = params.get("tokenUsage")
        if not isinstance(turn_id, str) or not isinstance(usage, dict):
            return
        try:
            total, last = parse_usage(usage.get("total")), parse_usage(usage.get("last"))
        except ValueError:
            return
        window = usage.get("modelContextWindow")
        # One notification per model call; ``last`` is that call. Summed per turn (the settlement's usage) and per
        # runtime (statistics, the store): codex's own ``total`` restarts with each app-server. A notification
        # about a turn this session has not opened is held until the turn opens (its turn/start answer may be on
        # the way) and counted then: after thread/resume codex repeats the thread's last one, naming a turn of an
        # earlier session, and counting that would add the last model call twice (seen on 0.171 under load).
        turn = session.turns.get(turn_id)
        if turn is not None:
            turn.usage = last if turn.usage is None else turn.usage + last
            self.usage = last if self.usage is None else self.usage + last
        elif turn_id in session.ended:
            self.usage = last if self.usage is None else self.usage + last  # a late one of a turn of ours
        else:
            before = session.early_usage.get(turn_id)
            session.early_usage[turn_id] = last if before is None else before + last
            session.early_usage.move_to_end(turn_id)
            while len(session.early_usage) > _REMEMBERED_EARLY:
                session.early_usage.popitem(last=False)
        self._publish(
            TokenUsageUpdated(
                turn_id,
                total,
                last,
                window if isinstance(window, int) and not isinstance(window, bool) else None,
                session.generation,
                runtime_id=self.runtime_id,
            )
        )

    def _on_item_started(self, session: _Session, params: dict[str, Any], now: float) -> None:
        self._on_item(session, params, now, completed=False)

    def _on_item_completed(self, session: _Session, params: dict[str, Any], now: float) -> None:
        self._on_item(session, params, now, completed=True)

    def _on_turn_started(self, session: _Session, params: dict[str, Any], now: float) -> None:
        parsed = _structure(params, p.TurnNotification)
        if parsed is None or parsed.turn.id in session.ended:
            return
        # Ours (its turn/start answer is on the way) or not: either way an open turn, with a deadline. Input waiting
        # behind a turn being interrupted may steer into this one.
        self._open_turn(session, parsed.turn.id, now)
        self._pump()

    def _on_turn_completed(self, session: _Session, params: dict[str, Any], now: float) -> None:
        parsed = _structure(params, p.TurnNotification)
        if parsed is None:
            return
        turn = parsed.turn
        items = session.turns[turn.id].items if turn.id in session.turns else session.early_items.pop(turn.id, [])
        self._end_turn(session, turn.id, _turn_outcome(turn, items or turn.items))
        self._pump()

    def _on_error(self, session: _Session, params: dict[str, Any], now: float) -> None:
        parsed = _structure(params, p.ErrorNotification)
        if parsed is None:
            return
        message = parsed.error.message or "codex reported an error"
        if parsed.will_retry:
            match = _ATTEMPT.search(message)
            attempt, of = (int(match.group(1)), int(match.group(2))) if match else (None, None)
            self._publish(
                CodexRetrying(parsed.turn_id, message, attempt, of, session.generation, runtime_id=self.runtime_id)
            )
            self._retrying(session, parsed.turn_id, message, now)
            return
        turn_id = parsed.turn_id
        if turn_id is None and session.turns:
            turn_id = next(reversed(session.turns))
        self._publish(CodexError(turn_id, message, session.generation, runtime_id=self.runtime_id))
        if turn_id is None:
            return
        # codex gave up on the turn: it is over for us, whether or not its turn/completed follows.
        items = session.turns[turn_id].items if turn_id in session.turns else session.early_items.pop(turn_id, [])
        self._end_turn(session, turn_id, _with_items(TurnOutcome("failed", turn_id, error=message), items))
        self._pump()

    def _on_warning(self, session: _Session, params: dict[str, Any], now: float) -> None:
        message = params.get("message")
        if isinstance(message, str):
            self._publish(CodexWarning(message, session.generation, runtime_id=self.runtime_id))

    _handlers: Final[Mapping[str, Callable[[RuntimeCore, _Session, dict[str, Any], float], None]]] = {
        "item/agentMessage/delta": _on_delta,
        "item/started": _on_item_started,
        "item/completed": _on_item_completed,
        "turn/started": _on_turn_started,
        "turn/completed": _on_turn_completed,
        "error": _on_error,
        "warning": _on_warning,
        "thread/tokenUsage/updated": _on_token_usage,
    }

    def _end_turn(self, session: _Session, turn_id: str, outcome: TurnOutcome) -> None:
        if turn_id in session.ended:
            return  # e.g. the turn/completed that follows a fatal error, or a deadline's interrupt
        turn = session.turns.pop(turn_id, None)
        session.ended[turn_id] = outcome
        while len(session.ended) > _REMEMBERED_ENDED:
            session.ended.popitem(last=False)
        if turn is not None and turn.usage is not None and outcome.usage is None:
            outcome = session.ended[turn_id] = attrs.evolve(outcome, usage=turn.usage)
        final = turn.override if turn is not None and turn.override is not None else outcome
        if turn is not None:
            for sub in turn.inputs:
                self._settle(sub, outcome, persist=True)
        self._publish(
            TurnCompleted(
                turn_id, final.outcome, final.text, final.error, session.generation, runtime_id=self.runtime_id
            )
        )

    # == settlement ===============================================================================================

    def _settle(self, sub: Submission, outcome: TurnOutcome, *, persist: bool) -> None:
        if sub.state == "settled":
            raise AssertionError(f"submission {sub.seq} settled twice")
        sub.state = "settled"
        thread_lost, self._thread_lost = self._thread_lost, None
        output = None
        schema = sub.options.output_schema if sub.options is not None else None
        if schema is not None and outcome.outcome == "completed":
            output, error = parse_output(outcome.text)
            if error is not None:
                outcome = attrs.evolve(outcome, outcome="failed", error=error)
        settlement = Settlement(
            sub.seq,
            sub.source_id,
            outcome.outcome,
            outcome.turn_id or sub.turn_id,
            outcome.text,
            outcome.items,
            outcome.error,
            sub.generation,
            thread_lost,
            output=output,
            usage=outcome.usage,
        )
        self._actions.append(Settle(settlement, persist and sub.durable, self.usage))

    def _publish(self, event: Event) -> None:
        self._actions.append(Publish(event))

    def _token(self) -> int:
        token = self._next_token
        self._next_token += 1
        return token


def may_steer(options: TurnOptions | None, turn_options: TurnOptions | None) -> bool:
    """Whether an input with ``options`` may join a running turn started with ``turn_options``: when it sets
    nothing, or exactly what that turn was started with (which codex keeps for the thread anyway)."""
    return options is None or options == turn_options


def _structure(params: dict[str, Any], cls: type[Any]) -> Any:
    try:
        return p.structure(params, cls)
    except Exception:
        return None  # malformed: not ours to act on


def _append_item(items: list[ThreadItem], item: ThreadItem) -> None:
    items.append(item)
    if len(items) > _MAX_ITEMS_PER_TURN:
        del items[0]


def _with_items(outcome: TurnOutcome, items: Sequence[ThreadItem]) -> TurnOutcome:
    if not items:
        return outcome
    return attrs.evolve(outcome, text=_last_agent_text(items), items=tuple(items))


def _last_agent_text(items: Sequence[ThreadItem]) -> str | None:
    for item in reversed(items):
        if isinstance(item, AgentMessageItem) and item.text:
            return item.text
    return None


def _typed(items: Sequence[ThreadItem | p.Item]) -> tuple[ThreadItem, ...]:
    """``turn.items`` of a ``turn/completed`` (wire models) or the items the core collected (already typed)."""
    return tuple(parse_item(dict(i.raw)) if isinstance(i, p.Item) else i for i in items)


def _turn_outcome(turn: p.Turn, items: Sequence[ThreadItem | p.Item]) -> TurnOutcome:
    raw = _typed(items)
    text = _last_agent_text(raw)
    if turn.status == "completed":
        return TurnOutcome("completed", turn.id, text, raw)
    if turn.status == "interrupted":
        return TurnOutcome("interrupted", turn.id, text, raw, "turn was interrupted")
    message = turn.error.message if turn.error is not None else f"turn ended with status {turn.status}"
    return TurnOutcome("failed", turn.id, text, raw, message or "codex turn failed")


def outcome_of(turn: p.Turn, items: Sequence[ThreadItem | p.Item]) -> TurnOutcome:
    """The outcome a finished ``turn`` gives its inputs (also used to reconcile a dead host's input)."""
    return _turn_outcome(turn, items)


# -- streamed notifications: stateless, one event each -----------------------------------------------------------
# Each builder reads the schema's required fields (a KeyError/TypeError/ValueError means malformed: dropped).


def _s(params: dict[str, Any], key: str) -> str:
    value = params[key]
    if not isinstance(value, str):
        raise TypeError(key)
    return value


def _i(params: dict[str, Any], key: str) -> int:
    value = params[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(key)
    return value


def _plan_steps(value: Any) -> tuple[PlanStep, ...]:
    if not isinstance(value, list):
        raise TypeError("plan")
    return tuple(PlanStep(_s(step, "step"), _s(step, "status")) for step in value)


def _explanation(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_Builder: TypeAlias = Callable[[dict[str, Any], int, str], Event]

_STREAMED: Final[Mapping[str, _Builder]] = {
    "item/reasoning/summaryTextDelta": lambda q, g, r: ReasoningSummaryDelta(
        _s(q, "turnId"), _s(q, "itemId"), _i(q, "summaryIndex"), _s(q, "delta"), g, r
    ),
    "item/reasoning/summaryPartAdded": lambda q, g, r: ReasoningSummaryPartAdded(
        _s(q, "turnId"), _s(q, "itemId"), _i(q, "summaryIndex"), g, r
    ),
    "item/reasoning/textDelta": lambda q, g, r: ReasoningTextDelta(
        _s(q, "turnId"), _s(q, "itemId"), _i(q, "contentIndex"), _s(q, "delta"), g, r
    ),
    "item/commandExecution/outputDelta": lambda q, g, r: CommandOutputDelta(
        _s(q, "turnId"), _s(q, "itemId"), _s(q, "delta"), g, r
    ),
    "item/fileChange/outputDelta": lambda q, g, r: FileChangeOutputDelta(
        _s(q, "turnId"), _s(q, "itemId"), _s(q, "delta"), g, r
    ),
    "item/fileChange/patchUpdated": lambda q, g, r: FileChangePatchUpdated(
        _s(q, "turnId"), _s(q, "itemId"), tuple(file_update(c) for c in q["changes"]), g, r
    ),
    "turn/plan/updated": lambda q, g, r: PlanUpdated(
        _s(q, "turnId"), _explanation(q.get("explanation")), _plan_steps(q["plan"]), g, r
    ),
    "item/plan/delta": lambda q, g, r: PlanDelta(_s(q, "turnId"), _s(q, "itemId"), _s(q, "delta"), g, r),
    "item/mcpToolCall/progress": lambda q, g, r: McpToolCallProgress(
        _s(q, "turnId"), _s(q, "itemId"), _s(q, "message"), g, r
    ),
    "turn/diff/updated": lambda q, g, r: TurnDiffUpdated(_s(q, "turnId"), _s(q, "diff"), g, r),
}
#: Notifications that only become an event (no state of the core changes): the driver may skip them unread.
STREAM_METHODS: Final = frozenset(_STREAMED)
