"""Typed runtime events and the bounded hub that fans them out to subscribers.

Every event names the runtime it is about (``runtime_id``), so one stream can carry several runtimes' events:
:func:`merge_events` subscribes one stream to several runtimes' hubs, and an :class:`EventHub` the app creates
can be shared by several runtimes (``open_runtime(config, events=hub)``). A hub the app created exists before
any runtime does, so a subscriber attached to it sees the first start (``starting`` -> ``ready``,
:class:`ThreadReady`), which ``runtime.events()`` cannot show: it exists only once ``open_runtime`` returned.

Each subscriber has its own bounded buffer of ``capacity`` events, and nothing grows past it:

* *Droppable* events (deltas and item progress) that find the buffer full are dropped and counted; the
  subscriber sees one :class:`Lagged` marker with the count before its next event.
* Every other event (status changes, turn terminals, settlements, token usage, plan updates, codex's errors and
  warnings) is never dropped silently. A subscriber that falls so far behind that they no longer fit (``capacity``
  more beyond a full buffer) is cut off: its buffer is freed, it leaves its hubs, and its next read raises
  :class:`EventStreamOverflow`. The runtime and the other subscribers go on; a stream that is created and never
  read costs at most its buffer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Protocol, TypeAlias

import attrs
import trio

from ._errors import EventStreamOverflow
from ._items import FileUpdate, ThreadItem
from ._settlement import Settlement, ThreadLost
from ._state import RuntimeStatus
from ._usage import TokenUsage

__all__ = [
    "AgentMessageDelta",
    "CodexError",
    "CodexRetrying",
    "CodexWarning",
    "CommandOutputDelta",
    "Event",
    "EventHub",
    "EventStream",
    "FileChangeOutputDelta",
    "FileChangePatchUpdated",
    "ItemCompleted",
    "ItemStarted",
    "Lagged",
    "McpToolCallProgress",
    "PlanDelta",
    "PlanStep",
    "PlanUpdated",
    "ReasoningSummaryDelta",
    "ReasoningSummaryPartAdded",
    "ReasoningTextDelta",
    "Restarting",
    "ServerRequestAnswered",
    "StatusChanged",
    "SubmissionSettled",
    "ThreadLost",
    "ThreadReady",
    "TokenUsageUpdated",
    "TurnCompleted",
    "TurnDiffUpdated",
    "TurnStarted",
    "merge_events",
]

# Every event ends with ``runtime_id``, the runtime it is about: required, and passed by keyword
# (``runtime_id=...``) everywhere but on the hot path (a keyword argument costs a delta ~200 ns); it is keyword-only
# where an earlier field has a default.


@attrs.frozen
class StatusChanged:
    status: RuntimeStatus
    previous: RuntimeStatus
    generation: int
    error: str | None = None
    runtime_id: str = attrs.field(kw_only=True)


@attrs.frozen
class ThreadReady:
    thread_id: str
    resumed: bool
    generation: int
    runtime_id: str


@attrs.frozen
class Restarting:
    attempt: int
    delay: float
    cause: str
    generation: int
    runtime_id: str


@attrs.frozen
class TurnStarted:
    turn_id: str
    generation: int
    runtime_id: str


@attrs.frozen
class TurnCompleted:
    turn_id: str
    status: str
    text: str | None
    error: str | None
    generation: int
    runtime_id: str


@attrs.frozen
class ItemStarted:
    """codex started an item (``item/started``); ``item`` is its typed record (``AgentMessageItem``, ...)."""

    turn_id: str
    item_type: str
    item_id: str | None
    item: ThreadItem = attrs.field(repr=False)
    generation: int = 0
    runtime_id: str = attrs.field(kw_only=True)


@attrs.frozen
class ItemCompleted:
    """codex completed an item (``item/completed``): its final state (a command's exit code and output, ...)."""

    turn_id: str
    item_type: str
    item_id: str | None
    item: ThreadItem = attrs.field(repr=False)
    generation: int = 0
    runtime_id: str = attrs.field(kw_only=True)


@attrs.frozen
class AgentMessageDelta:
    turn_id: str
    item_id: str
    delta: str
    generation: int
    runtime_id: str


@attrs.frozen
class ReasoningSummaryDelta:
    """A chunk of summary part ``summary_index`` of reasoning item ``item_id``."""

    turn_id: str
    item_id: str
    summary_index: int
    delta: str
    generation: int
    runtime_id: str


@attrs.frozen
class ReasoningSummaryPartAdded:
    """Reasoning item ``item_id`` began summary part ``summary_index`` (a new paragraph of its summary)."""

    turn_id: str
    item_id: str
    summary_index: int
    generation: int
    runtime_id: str


@attrs.frozen
class ReasoningTextDelta:
    """A chunk of raw reasoning content part ``content_index`` (sent when codex shows raw reasoning)."""

    turn_id: str
    item_id: str
    content_index: int
    delta: str
    generation: int
    runtime_id: str


@attrs.frozen
class CommandOutputDelta:
    """A chunk of a running command's output (``item/commandExecution/outputDelta``)."""

    turn_id: str
    item_id: str
    delta: str
    generation: int
    runtime_id: str


@attrs.frozen
class FileChangeOutputDelta:
    """A chunk of a patch's textual output (``item/fileChange/outputDelta``; codex 0.171 no longer sends it)."""

    turn_id: str
    item_id: str
    delta: str
    generation: int
    runtime_id: str


@attrs.frozen
class FileChangePatchUpdated:
    """The files a file-change item touches, as its patch streams in (``item/fileChange/patchUpdated``)."""

    turn_id: str
    item_id: str
    changes: tuple[FileUpdate, ...]
    generation: int
    runtime_id: str


@attrs.frozen
class PlanStep:
    """One step of the agent's plan. ``status``: ``pending``, ``inProgress`` or ``completed``."""

    step: str
    status: str


@attrs.frozen
class PlanUpdated:
    """The agent's plan for the turn, whole (``turn/plan/updated``): each update replaces the previous one."""

    turn_id: str
    explanation: str | None
    steps: tuple[PlanStep, ...]
    generation: int
    runtime_id: str


@attrs.frozen
class PlanDelta:
    """A chunk of a proposed plan item's text (``item/plan/delta``; experimental in codex)."""

    turn_id: str
    item_id: str
    delta: str
    generation: int
    runtime_id: str


@attrs.frozen
class McpToolCallProgress:
    """A progress message of a running MCP tool call (``item/mcpToolCall/progress``)."""

    turn_id: str
    item_id: str
    message: str
    generation: int
    runtime_id: str


@attrs.frozen
class TurnDiffUpdated:
    """The turn's unified diff across all its file changes so far (``turn/diff/updated``)."""

    turn_id: str
    diff: str
    generation: int
    runtime_id: str


@attrs.frozen
class TokenUsageUpdated:
    """codex counted a model call's tokens (``thread/tokenUsage/updated``).

    ``last``: that model call; ``total``: codex's running sum for the thread, which starts again from zero with
    each app-server (``Runtime.statistics().usage`` does not); ``model_context_window``: the model's context
    window, when codex knows it.
    """

    turn_id: str
    total: TokenUsage
    last: TokenUsage
    model_context_window: int | None
    generation: int
    runtime_id: str


@attrs.frozen
class SubmissionSettled:
    settlement: Settlement
    runtime_id: str


@attrs.frozen
class ServerRequestAnswered:
    method: str
    rejected: bool
    summary: str
    generation: int
    runtime_id: str


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
    runtime_id: str


@attrs.frozen
class CodexError:
    """codex gave up (an ``error`` notification with ``willRetry: false``); the turn it names ends ``failed``."""

    turn_id: str | None
    message: str
    generation: int
    runtime_id: str


@attrs.frozen
class CodexWarning:
    """A ``warning`` notification from codex (e.g. an unknown model's metadata)."""

    message: str
    generation: int
    runtime_id: str


@attrs.frozen
class Lagged:
    """This subscriber was too slow: ``dropped`` droppable events (deltas, item progress) were skipped.

    A marker of the stream, not of one runtime: ``runtime_id`` is ``""`` (a merged stream counts the drops of all
    its runtimes together).
    """

    dropped: int
    runtime_id: str = attrs.field(default="", kw_only=True)


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
    | ReasoningSummaryDelta
    | ReasoningSummaryPartAdded
    | ReasoningTextDelta
    | CommandOutputDelta
    | FileChangeOutputDelta
    | FileChangePatchUpdated
    | PlanUpdated
    | PlanDelta
    | McpToolCallProgress
    | TurnDiffUpdated
    | TokenUsageUpdated
    | SubmissionSettled
    | ServerRequestAnswered
    | CodexRetrying
    | CodexError
    | CodexWarning
    | Lagged
)

#: What a slow subscriber may miss (counted in a Lagged): streamed chunks and item progress. A state that no later
#: event restates (a plan, a usage figure, a diff, a terminal) is never in here.
_DROPPABLE = (
    AgentMessageDelta,
    ItemStarted,
    ItemCompleted,
    ReasoningSummaryDelta,
    ReasoningSummaryPartAdded,
    ReasoningTextDelta,
    CommandOutputDelta,
    FileChangeOutputDelta,
    FileChangePatchUpdated,
    PlanDelta,
    McpToolCallProgress,
)
#: A reader taking already-buffered events yields to the scheduler once per this many.
_YIELD_EVERY = 64


class EventStream:
    """One subscriber's view of one or more hubs' events. Use as ``async with runtime.events() as events``.

    It ends (``EndOfChannel``, or the end of ``async for``) once every hub it reads has closed and its buffer is
    drained.
    """

    def __init__(self, hubs: Sequence[EventHub], capacity: int) -> None:
        self._hubs = tuple(hubs)
        #: hubs of this stream not closed yet
        self._open = len(self._hubs)
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
        self._leave()
        self._end()

    def _leave(self) -> None:
        for hub in self._hubs:
            hub._remove(self)

    def _hub_closed(self) -> None:
        self._open -= 1
        if self._open <= 0:
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
        self._leave()
        self._buffer.clear()
        self._end()

    @property
    def buffered(self) -> int:
        return len(self._buffer)


class EventHub:
    """Where runtimes publish their events, and streams subscribe (each with a buffer of ``capacity``).

    Every runtime has one. An app may create one itself and pass it to one or several ``open_runtime(config,
    events=hub)`` calls: subscribers attached before then see everything, the first start included. A runtime
    never closes a hub it did not create: the app closes it (:meth:`close`, or ``async with hub``), which ends
    its streams once they are drained.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = max(1, capacity)
        self._subscribers: list[EventStream] = []
        self._closed = False

    def subscribe(self) -> EventStream:
        """A new stream of every event published from now on."""
        stream = EventStream((self,), self._capacity)
        if self._closed:
            stream._end()
        else:
            self._subscribers.append(stream)
        return stream

    async def __aenter__(self) -> EventHub:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

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
        """No more events: each stream ends once drained (a merged one, once all its hubs closed). Idempotent."""
        if self._closed:
            return
        self._closed = True
        subscribers, self._subscribers = self._subscribers, []
        for sub in subscribers:
            sub._hub_closed()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


class _HasHub(Protocol):
    @property
    def hub(self) -> EventHub: ...


def merge_events(*sources: EventHub | _HasHub, capacity: int | None = None) -> EventStream:
    """One stream of several runtimes' (or hubs') events, in the order they were published; each event names its
    runtime (``runtime_id``). ``async with merge_events(rt1, rt2) as events: async for event in events: ...``

    No task: the stream subscribes to each hub (a hub named twice, or shared by two runtimes, counts once), with
    one buffer of ``capacity`` (default: the largest of the hubs'), under the same rules as any stream (deltas
    dropped with a :class:`Lagged`, cut off past twice the buffer). It ends once every hub has closed (each
    runtime closes its own hub when it stops).
    """
    hubs: list[EventHub] = []
    for source in sources:
        hub = source if isinstance(source, EventHub) else getattr(source, "hub", None)
        if not isinstance(hub, EventHub):
            raise TypeError(f"merge_events() takes runtimes or EventHubs (got {type(source).__name__})")
        if all(hub is not seen for seen in hubs):
            hubs.append(hub)
    if not hubs:
        raise TypeError("merge_events() needs at least one runtime or EventHub")
    size = capacity if capacity is not None else max(hub._capacity for hub in hubs)
    stream = EventStream(hubs, max(1, size))
    for hub in hubs:
        if hub._closed:
            stream._hub_closed()
        else:
            hub._subscribers.append(stream)
    return stream
