"""The turn worker and the notification router of one app-server session.

The worker takes queued input from the runtime's ledger strictly in acceptance order and hands it to codex:
``turn/start``, or ``turn/steer`` into the active turn (``steer`` mode). The router reads the session's
notifications and turns ``turn/completed``, ``error`` and item notifications into ledger terminals (settlements)
and typed events. Both live in the session nursery and die with it; the ledger they write to belongs to the
runtime, so queued input outlives the session.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from . import _protocol as p
from ._config import RuntimeConfig
from ._connection import Connection
from ._errors import ConnectionLost, RequestTimeout, RpcError
from ._events import AgentMessageDelta, EventHub, ItemCompleted, ItemStarted, TurnCompleted, TurnStarted
from ._jsonrpc import Notification
from ._ledger import Ledger, Settlement, Submission, TurnOutcome
from ._state import StateStore
from ._util import best_effort_write

__all__ = ["Session", "SessionLost", "TurnWorker", "WorkSignal", "structure_or_none"]

log = logging.getLogger("codex_trio.runtime")

_REMEMBERED_ENDED_TURNS: Final = 256


class SessionLost(Exception):
    """Raised inside a session to end it; ``cause`` is why (the supervisor records it and restarts)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@attrs.define(eq=False)
class Session:
    """What one generation's turn worker and router share: the connection, the thread, the active turn."""

    generation: int
    connection: Connection
    thread_id: str
    nursery: trio.Nursery
    active_turn: str | None = None
    turn_idle: trio.Event = attrs.field(factory=trio.Event)
    items: dict[str, list[p.Item]] = attrs.field(factory=dict)
    inbound_seen: bool = False
    notice_sent: bool = False
    #: Turns we asked codex to interrupt (with the outcome to report instead of codex's, for a deadline). The
    #: worker delivers nothing while the active turn is in here: it waits for the turn's end.
    interrupting: dict[str, TurnOutcome | None] = attrs.field(factory=dict)
    #: Turns that reached their terminal, newest last (bounded). codex may send ``turn/completed`` before the
    #: ``turn/start`` answer is processed; such a turn must not become the active turn again.
    ended_turns: dict[str, None] = attrs.field(factory=dict)

    def turn_ended(self, turn_id: str) -> bool:
        return turn_id in self.ended_turns

    def mark_ended(self, turn_id: str) -> None:
        self.ended_turns[turn_id] = None
        while len(self.ended_turns) > _REMEMBERED_ENDED_TURNS:
            del self.ended_turns[next(iter(self.ended_turns))]


class WorkSignal:
    """Wakes the turn worker when input is queued (or becomes durable)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        self._event = trio.Event()
        await self._event.wait()


def structure_or_none(note: Notification, cls: type[Any]) -> Any:
    try:
        return p.structure(note.params, cls)
    except Exception as exc:
        log.debug("ignoring malformed %s notification: %r", note.method, exc)
        return None


class TurnWorker:
    """Delivery and turn collection for a runtime; one instance serves every session (generation)."""

    def __init__(
        self,
        *,
        config: RuntimeConfig,
        ledger: Ledger,
        hub: EventHub,
        state: StateStore,
        resolve: Callable[[list[Settlement]], None],
        work: WorkSignal,
    ) -> None:
        self.config = config
        self.runtime_id = config.runtime_id
        self._ledger = ledger
        self._hub = hub
        self._state = state
        self._resolve = resolve
        self._work = work

    async def deliver(self, session: Session) -> None:
        """Send queued input to codex in acceptance order: turn/start, or turn/steer into the active turn."""
        ledger = self._ledger
        steer = self.config.delivery_mode == "steer"
        while True:
            sub = ledger.next_queued()
            if sub is None:
                await self._work.wait()
                continue
            active = session.active_turn
            if active is not None and (not steer or active in session.interrupting):
                await session.turn_idle.wait()
                continue
            ledger.begin_delivery(sub, session.generation)
            if sub.kind != "system":
                session.inbound_seen = True
            # In doubt from here until codex answers: a host that dies now must not make the next one resend it.
            await best_effort_write(
                self.runtime_id, "mark delivering", self._state.delivering, self.runtime_id, sub.seq
            )
            if session.active_turn is not None and await self._steer(session, sub):
                continue
            await self._start_turn(session, sub)

    def _input(self, sub: Submission) -> list[p.TextInput]:
        return [p.TextInput(sub.text)]

    async def _steer(self, session: Session, sub: Submission) -> bool:
        expected = session.active_turn
        assert expected is not None
        params = p.TurnSteerParams(session.thread_id, expected, self._input(sub), sub.source_id or None)
        try:
            raw = await session.connection.request("turn/steer", p.unstructure(params))
        except RpcError as exc:
            # The turn ended between our look and codex's: start a new turn instead (the original's behaviour).
            log.info("[%s] turn/steer into %s refused (%s); starting a new turn", self.runtime_id, expected, exc)
            if session.active_turn == expected:
                session.active_turn = None
                session.turn_idle.set()
            return False
        except RequestTimeout as exc:
            raise SessionLost(exc) from None
        except ConnectionLost as exc:
            if exc.request_sent is False:
                self._ledger.undeliver(sub, session.generation)  # never left us: the next session sends it
            await trio.sleep_forever()  # the watcher ends the session
        turn_id = raw.get("turnId") if isinstance(raw, dict) else None
        await self._delivered(session, sub, turn_id if isinstance(turn_id, str) else expected)
        return True

    async def _start_turn(self, session: Session, sub: Submission) -> None:
        params = p.TurnStartParams(session.thread_id, self._input(sub), sub.source_id or None)
        try:
            raw = await session.connection.request("turn/start", p.unstructure(params))
            turn_id = p.structure(raw, p.TurnStartResult).turn.id
        except RpcError as exc:
            log.error("[%s] turn/start failed for input %r: %s", self.runtime_id, sub.source_id or sub.seq, exc)
            settled = self._ledger.delivery_failed(sub, f"turn/start rejected: {exc}", session.generation)
            self._resolve([settled] if settled else [])
            await self._state_delivered(sub)
            return
        except RequestTimeout as exc:
            raise SessionLost(exc) from None
        except ConnectionLost as exc:
            if exc.request_sent is False:
                self._ledger.undeliver(sub, session.generation)  # never left us: the next session sends it
            await trio.sleep_forever()
        except Exception as exc:  # a malformed answer: the turn may exist, but we cannot track it
            raise SessionLost(exc) from None
        if not session.turn_ended(turn_id) and session.active_turn != turn_id:
            session.active_turn = turn_id
            session.turn_idle = trio.Event()
        await self._delivered(session, sub, turn_id)
        if not session.turn_ended(turn_id):
            self._arm_deadline(session, turn_id)

    async def _delivered(self, session: Session, sub: Submission, turn_id: str) -> None:
        settled = self._ledger.delivered(sub, turn_id, session.generation)
        await self._state_delivered(sub)
        if settled is not None:
            self._resolve([settled])

    async def _state_delivered(self, sub: Submission) -> None:
        await best_effort_write(self.runtime_id, "persist delivery", self._state.delivered, self.runtime_id, sub.seq)

    def _arm_deadline(self, session: Session, turn_id: str) -> None:
        timeout = self.config.turn_timeout
        if timeout == math.inf:
            return

        async def deadline() -> None:
            await trio.sleep(timeout)
            if turn_id not in self._turns_open(session):
                return
            message = f"turn {turn_id} exceeded its {timeout:g}s deadline and was interrupted"
            outcome = TurnOutcome("failed", turn_id, error=message)
            # Its inputs settle now, but the turn stays active (new input kept away from it) until codex has
            # interrupted it: a turn/start before that would be refused, a turn/steer would join a dying turn.
            self._resolve(self._ledger.turn_ended(outcome, session.generation))
            session.interrupting[turn_id] = outcome
            try:
                await session.connection.request(
                    "turn/interrupt", p.unstructure(p.TurnInterruptParams(session.thread_id, turn_id))
                )
            except (RpcError, ConnectionLost, RequestTimeout):
                pass
            self._finish_turn(session, outcome)  # a no-op when its turn/completed came first

        session.nursery.start_soon(deadline)

    def _turns_open(self, session: Session) -> set[str]:
        return {s.turn_id for s in self._ledger.in_flight() if s.turn_id} | (
            {session.active_turn} if session.active_turn else set()
        )

    # -- notifications -------------------------------------------------------------------------------------

    async def route(self, session: Session, notifications: Any) -> None:
        """Turn notifications into ledger terminals and events."""
        gen = session.generation
        hub = self._hub
        async for note in notifications:
            method = note.method
            if method == "item/agentMessage/delta":
                if not hub.subscriber_count:
                    continue  # the hottest notification: build nothing nobody reads
                params = note.params
                try:
                    delta = AgentMessageDelta(params["turnId"], params["itemId"], params["delta"], gen)
                except KeyError:
                    delta = AgentMessageDelta(
                        str(params.get("turnId")), str(params.get("itemId")), str(params.get("delta", "")), gen
                    )
                hub.publish(delta)
            elif method == "item/completed" or method == "item/started":
                self._on_item(session, note)
            elif method == "turn/started":
                turn = structure_or_none(note, p.TurnNotification)
                if turn is not None:
                    if session.active_turn is None and not session.turn_ended(turn.turn.id):
                        session.active_turn = turn.turn.id
                        session.turn_idle = trio.Event()
                    self._hub.publish(TurnStarted(turn.turn.id, gen))
            elif method == "turn/completed":
                turn = structure_or_none(note, p.TurnNotification)
                if turn is not None:
                    self._finish_turn(session, self._outcome(session, turn.turn))
            elif method == "error":
                err = structure_or_none(note, p.ErrorNotification)
                if err is not None and err.will_retry is False:
                    turn_id = err.turn_id or session.active_turn
                    if turn_id is not None:
                        outcome = TurnOutcome("failed", turn_id, error=err.error.message)
                        self._resolve(self._ledger.turn_ended(outcome, gen))

    def _on_item(self, session: Session, note: Notification) -> None:
        parsed = structure_or_none(note, p.ItemNotification)
        if parsed is None:
            return
        if note.method == "item/completed":
            session.items.setdefault(parsed.turn_id, []).append(parsed.item)
            self._hub.publish(
                ItemCompleted(parsed.turn_id, parsed.item.type, parsed.item.id, parsed.item.raw, session.generation)
            )
        else:
            self._hub.publish(
                ItemStarted(parsed.turn_id, parsed.item.type, parsed.item.id, parsed.item.raw, session.generation)
            )

    def _outcome(self, session: Session, turn: p.Turn) -> TurnOutcome:
        items = tuple(session.items.pop(turn.id, []) or turn.items)
        text = None
        for item in reversed(items):
            if item.type == "agentMessage" and item.text:
                text = item.text
                break
        if turn.status == "completed":
            return TurnOutcome("completed", turn.id, text, tuple(i.raw for i in items))
        if turn.status == "interrupted":
            return TurnOutcome("interrupted", turn.id, text, tuple(i.raw for i in items), "turn was interrupted")
        message = turn.error.message if turn.error is not None else f"turn ended with status {turn.status}"
        return TurnOutcome("failed", turn.id, text, tuple(i.raw for i in items), message or "codex turn failed")

    def _finish_turn(self, session: Session, outcome: TurnOutcome) -> None:
        if outcome.turn_id is not None:
            if session.turn_ended(outcome.turn_id):
                return  # e.g. the turn/completed of a turn whose deadline already failed it
            session.mark_ended(outcome.turn_id)
            outcome = session.interrupting.pop(outcome.turn_id, None) or outcome
        if outcome.turn_id is not None and session.active_turn == outcome.turn_id:
            session.active_turn = None
            session.turn_idle.set()
        self._hub.publish(
            TurnCompleted(outcome.turn_id or "", outcome.outcome, outcome.text, outcome.error, session.generation)
        )
        self._resolve(self._ledger.turn_ended(outcome, session.generation))
