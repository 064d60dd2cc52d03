"""Typed runtime events and the bounded hub that fans them out to subscribers.

Each subscriber has its own bounded buffer of ``capacity`` events, and nothing grows past it:

* *Droppable* events (deltas and item progress) that find the buffer full are dropped and counted; the
  subscriber sees one :class:`Lagged` marker with the count before its next event.
* Every other event (status changes, turn terminals, settlements, codex's errors and warnings) is never dropped
  silently. A subscriber that falls so far behind that they no longer fit (``capacity`` more beyond a full buffer)
  is cut off: its buffer is freed, it leaves the hub, and its next read raises :class:`EventStreamOverflow`. The
  runtime and the other subscribers go on; a stream that is created and never read costs at most its buffer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import attrs
import trio

from ._errors import EventStreamOverflow
from ._settlement import Settlement

__all__ = [
    "AgentMessageDelta",
    "CodexError",
    "CodexRetrying",
    "CodexWarning",
    "Event",
    "EventHub",
    "EventStream",
    "ItemCompleted",
    "ItemStarted",
    "Lagged",
    "Restarting",
    "ServerRequestAnswered",
    "StatusChanged",
    "SubmissionSettled",
    "ThreadLost",
    "ThreadReady",
    "TurnCompleted",
    "TurnStarted",
]


@attrs.frozen
class StatusChanged:
    status: str
    previous: str
    generation: int
    error: str | None = None


@attrs.frozen
class ThreadReady:
    thread_id: str
    resumed: bool
    generation: int


@attrs.frozen
class ThreadLost:
    """``thread/resume`` failed; the runtime continues on a fresh thread (the old history is not in context)."""

    old_thread_id: str
    new_thread_id: str
    reason: str
    generation: int


@attrs.frozen
class Restarting:
    attempt: int
    delay: float
    cause: str
    generation: int


@attrs.frozen
class TurnStarted:
    turn_id: str
    generation: int


@attrs.frozen
class TurnCompleted:
    turn_id: str
    status: str
    text: str | None
    error: str | None
    generation: int


@attrs.frozen
class ItemStarted:
    turn_id: str
    item_type: str
    item_id: str | None
    item: Any = attrs.field(repr=False)
    generation: int = 0


@attrs.frozen
class ItemCompleted:
    turn_id: str
    item_type: str
    item_id: str | None
    item: Any = attrs.field(repr=False)
    generation: int = 0


@attrs.frozen
class AgentMessageDelta:
    turn_id: str
    item_id: str
    delta: str
    generation: int


@attrs.frozen
class SubmissionSettled:
    settlement: Settlement


@attrs.frozen
class ServerRequestAnswered:
    method: str
    rejected: bool
    summary: str
    generation: int


@attrs.frozen
class CodexRetrying:
    """codex hit an error it retries by itself (an ``error`` notification with ``willRetry: true``), e.g.
    "Reconnecting... 2/5" without network or login. ``attempt``/``max_attempts`` are read from the message when it
    says them. If codex gives up, a :class:`CodexError` follows and the turn's inputs settle ``failed``."""

    turn_id: str | None
    message: str
    attempt: int | None
    max_attempts: int | None
    generation: int


@attrs.frozen
class CodexError:
    """codex gave up (an ``error`` notification with ``willRetry: false``); the turn it names ends ``failed``."""

    turn_id: str | None
    message: str
    generation: int


@attrs.frozen
class CodexWarning:
    """A ``warning`` notification from codex (e.g. an unknown model's metadata)."""

    message: str
    generation: int


@attrs.frozen
class Lagged:
    """This subscriber was too slow: ``dropped`` droppable events (deltas, item progress) were skipped."""

    dropped: int


Event: TypeAlias = (
    StatusChanged
    | ThreadReady
    | ThreadLost
    | Restarting
    | TurnStarted
    | TurnCompleted
    | ItemStarted
    | ItemCompleted
    | AgentMessageDelta
    | SubmissionSettled
    | ServerRequestAnswered
    | CodexRetrying
    | CodexError
    | CodexWarning
    | Lagged
)

_DROPPABLE = (AgentMessageDelta, ItemStarted, ItemCompleted)
#: A reader taking already-buffered events yields to the scheduler once per this many.
_YIELD_EVERY = 64


class EventStream:
    """One subscriber's view of the runtime's events. Use as ``async with runtime.events() as events``."""

    def __init__(self, hub: EventHub, capacity: int) -> None:
        self._hub = hub
        self._capacity = capacity
        # Undroppable events may use a second ``capacity`` beyond a buffer that deltas filled.
        self._hard_limit = 2 * capacity
        self._buffer: deque[Event] = deque()
        self._wakeup: trio.Event | None = None
        self._lagged = 0
        self.dropped_total = 0
        self._closed = False
        self._overflowed = False
        self._unyielded = 0

    def _push(self, event: Event) -> None:
        buffer = self._buffer
        if len(buffer) >= self._capacity:
            if isinstance(event, _DROPPABLE):
                self._lagged += 1
                self.dropped_total += 1
                return
            if len(buffer) >= self._hard_limit:
                self._overflow()
                return
        buffer.append(event)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def _overflow(self) -> None:
        self._overflowed = True
        self._buffer.clear()
        self._hub._remove(self)
        self._end()

    def _end(self) -> None:
        self._closed = True
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def receive(self) -> Event:
        """The next event. Raises ``trio.EndOfChannel`` once the runtime has stopped and the buffer is empty, and
        :class:`EventStreamOverflow` if this reader fell too far behind (see the module docstring).

        Like the connection's subscriptions, an event that is already buffered is returned without a trip through
        the scheduler (a cancellation is still noticed first), with a real yield every ``_YIELD_EVERY`` events,
        so that a reader keeps up with a burst and still cannot starve the other tasks.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._overflowed:
                raise EventStreamOverflow(self._hard_limit)
            if self._lagged:
                dropped, self._lagged = self._lagged, 0
                return Lagged(dropped)
            if self._buffer:
                self._unyielded += 1
                if self._unyielded >= _YIELD_EVERY:
                    self._unyielded = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return self._buffer.popleft()
            if self._closed:
                raise trio.EndOfChannel
            self._unyielded = 0
            wakeup = self._wakeup = trio.Event()
            await wakeup.wait()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        buffer = self._buffer
        if buffer and not self._lagged and self._unyielded < _YIELD_EVERY - 1:
            # receive(), inlined for the hot path of every consumer: one frame, no loop
            await trio.lowlevel.checkpoint_if_cancelled()
            self._unyielded += 1
            return buffer.popleft()
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving; a task waiting in :meth:`receive` wakes up with ``EndOfChannel``."""
        self._hub._remove(self)
        self._buffer.clear()
        self._end()

    @property
    def buffered(self) -> int:
        return len(self._buffer)


class EventHub:
    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = max(1, capacity)
        self._subscribers: list[EventStream] = []
        self._closed = False

    def subscribe(self) -> EventStream:
        stream = EventStream(self, self._capacity)
        if self._closed:
            stream._end()
        else:
            self._subscribers.append(stream)
        return stream

    def publish(self, event: Event) -> None:
        # A snapshot: a subscriber may overflow (and leave) while we iterate.
        for sub in tuple(self._subscribers):
            sub._push(event)

    def _remove(self, stream: EventStream) -> None:
        try:
            self._subscribers.remove(stream)
        except ValueError:
            pass

    def close(self) -> None:
        self._closed = True
        for sub in self._subscribers:
            sub._end()
        self._subscribers.clear()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
