"""Sans-IO turn ledger: dedup window, FIFO queue, delivery bookkeeping and exactly-once settlement.

Theory of operation
-------------------
Every input the runtime accepts becomes a :class:`Submission` with a runtime-wide sequence number. Its life:

    admit ──► queued ──► delivering ──► delivered(turn id) ──► settled
                │             │               │
                └─────────────┴───────────────┴──► settled (stopped / interrupted / failed)

* **Dedup** happens in :meth:`Ledger.admit`, synchronously: the source id is committed before the caller awaits
  anything and is never rolled back (a failed submission's id stays seen; retry with a new id). The window
  belongs to the ledger, which belongs to the runtime — not to one app-server session — so redelivery is caught
  across child restarts, and across host restarts when the window is restored from a durable store.
* **FIFO**: the turn worker takes submissions with :meth:`next_queued` strictly in acceptance order.
* **Generations**: each app-server session has a generation number; :meth:`begin_delivery` tags the submission
  with it, and every later event carries the generation it came from. Events from a dead generation are ignored,
  so a late response or notification can never touch the live session's submissions.
* **Exactly once**: :meth:`_settle` is the only place a submission gets its settlement and it refuses a second
  one. A turn's terminal can arrive *before* the ``turn/start`` response that names the turn (codex emits
  notifications out of order), or before the ``turn/steer`` response of an input that joined it, so turn
  terminals are remembered (bounded; the first terminal of a turn wins) and applied when a delivery into that
  turn is recorded later.
* **Session lost**: input that was delivering or delivered when the child died settles ``interrupted`` and is
  not re-run (it may have had side effects); queued input stays queued for the next session.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

import attrs

__all__ = [
    "Ledger",
    "Outcome",
    "Settlement",
    "Submission",
    "SubmissionKind",
    "TurnOutcome",
]

Outcome = Literal["completed", "failed", "interrupted", "stopped"]
SubmissionKind = Literal["channel", "system", "trigger"]
State = Literal["queued", "delivering", "delivered", "settled"]

_REMEMBERED_TERMINALS: Final = 256


@attrs.frozen
class TurnOutcome:
    """How a codex turn ended, as seen in ``turn/completed`` (or an ``error`` notification, or a deadline)."""

    outcome: Outcome
    turn_id: str | None
    text: str | None = None
    items: tuple[Any, ...] = ()
    error: str | None = None


@attrs.frozen
class Settlement:
    """The one final answer for one accepted input."""

    seq: int
    source_id: str
    outcome: Outcome
    turn_id: str | None = None
    text: str | None = None
    items: tuple[Any, ...] = ()
    error: str | None = None
    generation: int | None = None
    #: Set on the first settlement after a ``thread/resume`` failed and the runtime moved to a fresh thread, so
    #: the caller learns that the agent no longer has the earlier conversation in context (a ThreadLost event).
    thread_lost: Any = None


@attrs.define(eq=False)
class Submission:
    seq: int
    source_id: str
    kind: SubmissionKind
    text: str
    state: State = "queued"
    generation: int | None = None
    turn_id: str | None = None
    settlement: Settlement | None = None
    #: False until the acceptance is durable in the state store; the worker never sends a non-durable head, so
    #: nothing reaches codex that a host crash could make the runtime forget (and then accept again).
    durable: bool = True


class Ledger:
    """The turn ledger. Pure: no I/O, no clock, no Trio. One per runtime."""

    def __init__(self, *, dedup_window: int = 1024, next_seq: int = 1) -> None:
        if dedup_window < 0:
            raise ValueError("dedup_window must be >= 0")
        self.dedup_window = dedup_window
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._next_seq = next_seq
        self._queue: deque[Submission] = deque()
        self._open: dict[int, Submission] = {}  # every unsettled submission by seq
        self._by_turn: dict[str, list[Submission]] = {}
        self._terminals: OrderedDict[str, TurnOutcome] = OrderedDict()
        self.generation = 0
        self.stopped = False

    # -- admission -----------------------------------------------------------------------------------------

    def restore(self, dedup_ids: Iterable[str], pending: Iterable[tuple[int, str, SubmissionKind, str]]) -> None:
        """Load the durable window and the accepted-but-undelivered queue (in seq order) from a state store."""
        for source_id in dedup_ids:
            self._remember(source_id)
        for seq, source_id, kind, text in pending:
            sub = Submission(seq, source_id, kind, text)
            self._queue.append(sub)
            self._open[seq] = sub
            self._next_seq = max(self._next_seq, seq + 1)

    def requeue_in_doubt(self, pending: Iterable[tuple[int, str, SubmissionKind, str]]) -> list[Submission]:
        """Put submissions a dead host was delivering back at the head of the queue, in seq order.

        Only for those the caller has checked codex never received (they were sent before anything restored
        with :meth:`restore`, so they go first).
        """
        subs = [Submission(seq, source_id, kind, text) for seq, source_id, kind, text in sorted(pending)]
        for sub in reversed(subs):
            self._queue.appendleft(sub)
            self._open[sub.seq] = sub
            self._next_seq = max(self._next_seq, sub.seq + 1)
        return subs

    def is_duplicate(self, source_id: str) -> bool:
        return bool(source_id) and source_id in self._seen

    def admit(self, source_id: str, kind: SubmissionKind, text: str, *, durable: bool = True) -> Submission | None:
        """Accept an input (returns its Submission, queued) or recognise a duplicate (returns None).

        With ``durable=False`` the submission holds the queue until :meth:`mark_durable` (the caller is writing
        it to a state store). The caller must check :attr:`stopped` first; admitting after stop is a
        programming error.
        """
        assert not self.stopped, "admit() after stop()"
        if self.is_duplicate(source_id):
            return None
        if source_id:
            self._remember(source_id)
        sub = Submission(self._next_seq, source_id, kind, text, durable=durable)
        self._next_seq += 1
        self._queue.append(sub)
        self._open[sub.seq] = sub
        return sub

    def _remember(self, source_id: str) -> None:
        if not source_id or self.dedup_window == 0:
            return
        self._seen[source_id] = None
        self._seen.move_to_end(source_id)
        while len(self._seen) > self.dedup_window:
            self._seen.popitem(last=False)

    def reject(self, sub: Submission, error: str) -> Settlement:
        """Settle a queued submission ``failed`` without delivering it (e.g. the durable write failed)."""
        if sub.state == "queued":
            self._queue.remove(sub)
        return self._settle(sub, "failed", error=error)

    # -- delivery ------------------------------------------------------------------------------------------

    def start_generation(self) -> int:
        self.generation += 1
        return self.generation

    def next_queued(self) -> Submission | None:
        """The head of the queue, once it is durable (later submissions wait behind it: FIFO)."""
        if self._queue and self._queue[0].durable:
            return self._queue[0]
        return None

    def mark_durable(self, sub: Submission) -> None:
        sub.durable = True

    @property
    def queued(self) -> Sequence[Submission]:
        return tuple(self._queue)

    def begin_delivery(self, sub: Submission, generation: int) -> None:
        """The worker is about to send ``sub`` (it must be the head of the queue)."""
        assert self._queue and self._queue[0] is sub, "deliveries must follow acceptance order"
        assert generation == self.generation, "stale generation"
        self._queue.popleft()
        sub.state = "delivering"
        sub.generation = generation

    def delivered(self, sub: Submission, turn_id: str, generation: int) -> Settlement | None:
        """codex accepted ``sub`` into turn ``turn_id``. Returns a settlement if that turn already ended."""
        if generation != self.generation or sub.state != "delivering":
            return None
        sub.state = "delivered"
        sub.turn_id = turn_id
        # get, not pop: several inputs may join a turn (turn/steer) whose terminal overtook their answers.
        terminal = self._terminals.get(turn_id)
        if terminal is not None:
            return self._settle_with(sub, terminal)
        self._by_turn.setdefault(turn_id, []).append(sub)
        return None

    def undeliver(self, sub: Submission, generation: int) -> None:
        """The request carrying ``sub`` certainly never left us (the connection was already gone): it goes back
        to the head of the queue, to be delivered by the next session, instead of settling ``interrupted``."""
        if generation != self.generation or sub.state != "delivering":
            return
        sub.state = "queued"
        sub.generation = None
        self._queue.appendleft(sub)

    def delivery_failed(self, sub: Submission, error: str, generation: int) -> Settlement | None:
        """codex rejected the request that carried ``sub``: it settles ``failed`` and is not retried."""
        if generation != self.generation or sub.state != "delivering":
            return None
        return self._settle(sub, "failed", error=error)

    def turn_ended(self, terminal: TurnOutcome, generation: int) -> list[Settlement]:
        """A turn reached its terminal; every submission in it settles with that outcome."""
        if generation != self.generation or terminal.turn_id is None:
            return []
        # Remember every terminal (bounded), not only those of unknown turns: an input steered into this turn
        # may still be waiting for its turn/steer answer, and it must settle with this terminal when it comes.
        if terminal.turn_id not in self._terminals:
            self._terminals[terminal.turn_id] = terminal
            while len(self._terminals) > _REMEMBERED_TERMINALS:
                self._terminals.popitem(last=False)
        subs = self._by_turn.pop(terminal.turn_id, None)
        if subs is None:
            return []
        return [s for s in (self._settle_with(sub, terminal) for sub in subs) if s is not None]

    def session_lost(self, generation: int, reason: str) -> list[Settlement]:
        """The session of ``generation`` ended: what it had in flight settles ``interrupted``; the queue stays."""
        if generation != self.generation:
            return []
        settled = []
        for sub in list(self._open.values()):
            if sub.state in ("delivering", "delivered") and sub.generation == generation:
                settled.append(self._settle(sub, "interrupted", error=reason))
        self._by_turn.clear()
        self._terminals.clear()
        return settled

    def stop(self, reason: str = "runtime stopped") -> list[Settlement]:
        """Settle everything still open as ``stopped``; no further admission."""
        self.stopped = True
        settled = [self._settle(sub, "stopped", error=reason) for sub in list(self._open.values())]
        self._queue.clear()
        self._by_turn.clear()
        return settled

    # -- settlement ----------------------------------------------------------------------------------------

    def _settle_with(self, sub: Submission, terminal: TurnOutcome) -> Settlement | None:
        if sub.state == "settled":
            return None
        return self._settle(
            sub,
            terminal.outcome,
            turn_id=terminal.turn_id,
            text=terminal.text,
            items=terminal.items,
            error=terminal.error,
        )

    def _settle(
        self,
        sub: Submission,
        outcome: Outcome,
        *,
        turn_id: str | None = None,
        text: str | None = None,
        items: tuple[Any, ...] = (),
        error: str | None = None,
    ) -> Settlement:
        if sub.state == "settled" or sub.settlement is not None:
            raise AssertionError(f"submission {sub.seq} settled twice")
        settlement = Settlement(
            sub.seq, sub.source_id, outcome, turn_id or sub.turn_id, text, items, error, sub.generation
        )
        sub.state = "settled"
        sub.settlement = settlement
        self._open.pop(sub.seq, None)
        return settlement

    # -- introspection -------------------------------------------------------------------------------------

    def open_submissions(self) -> list[Submission]:
        return sorted(self._open.values(), key=lambda s: s.seq)

    def in_flight(self) -> list[Submission]:
        return [s for s in self.open_submissions() if s.state in ("delivering", "delivered")]

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def seen_ids(self) -> list[str]:
        return list(self._seen)
