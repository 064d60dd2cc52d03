"""Typed runtime events and the bounded hub that fans them out to subscribers.

Each subscriber has its own bounded buffer. When a slow subscriber's buffer is full, *droppable* events (deltas
and item progress) are dropped and counted, and the subscriber sees one :class:`Lagged` marker with the count
before its next event; status changes, turn terminals and settlements are never dropped (they are bounded by
the work the runtime accepted, so they cannot grow without bound on their own).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import attrs
import trio

from ._ledger import Settlement

__all__ = [
    "AgentMessageDelta",
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
    | Lagged
)

_DROPPABLE = (AgentMessageDelta, ItemStarted, ItemCompleted)


class EventStream:
    """One subscriber's view of the runtime's events. Use as ``async with runtime.events() as events``."""

    def __init__(self, hub: EventHub, capacity: int) -> None:
        self._hub = hub
        self._capacity = capacity
        self._buffer: deque[Event] = deque()
        self._wakeup = trio.Event()
        self._lagged = 0
        self.dropped_total = 0
        self._closed = False

    def _push(self, event: Event) -> None:
        if len(self._buffer) >= self._capacity and isinstance(event, _DROPPABLE):
            self._lagged += 1
            self.dropped_total += 1
            return
        self._buffer.append(event)
        self._wakeup.set()

    def _end(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def receive(self) -> Event:
        """The next event; raises ``trio.EndOfChannel`` once the runtime has stopped and the buffer is empty."""
        while True:
            if self._lagged:
                dropped, self._lagged = self._lagged, 0
                return Lagged(dropped)
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                raise trio.EndOfChannel
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        buffer = self._buffer
        if buffer and not self._lagged:  # the hot path of every consumer: one frame, no loop
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


class EventHub:
    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
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
        for sub in self._subscribers:
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
