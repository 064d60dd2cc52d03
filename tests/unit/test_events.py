"""EventHub / EventStream: bounded per-subscriber buffers, Lagged markers, close and unsubscribe."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from codex_trio._errors import EventStreamOverflow
from codex_trio._events import (
    AgentMessageDelta,
    CommandOutputDelta,
    Event,
    EventHub,
    EventStream,
    FileChangeOutputDelta,
    FileChangePatchUpdated,
    ItemCompleted,
    ItemStarted,
    Lagged,
    McpToolCallProgress,
    PlanDelta,
    PlanStep,
    PlanUpdated,
    ReasoningSummaryDelta,
    ReasoningSummaryPartAdded,
    ReasoningTextDelta,
    Restarting,
    ServerRequestAnswered,
    StatusChanged,
    SubmissionSettled,
    ThreadLost,
    ThreadReady,
    TokenUsageUpdated,
    TurnCompleted,
    TurnDiffUpdated,
    TurnStarted,
    merge_events,
)
from codex_trio._items import AgentMessageItem
from codex_trio._settlement import Settlement
from codex_trio._usage import TokenUsage

DROPPABLE: list[Event] = [
    AgentMessageDelta("t1", "msg-1", "Hello ", 1, runtime_id="rt"),
    ItemStarted("t1", "agentMessage", "msg-1", AgentMessageItem("msg-1", ""), 1, runtime_id="rt"),
    ItemCompleted("t1", "agentMessage", "msg-1", AgentMessageItem("msg-1", "hi"), 1, runtime_id="rt"),
]
DROPPABLE += [
    ReasoningSummaryDelta("t1", "rs-1", 0, "Thinking", 1, runtime_id="rt"),
    ReasoningSummaryPartAdded("t1", "rs-1", 1, 1, runtime_id="rt"),
    ReasoningTextDelta("t1", "rs-1", 0, "raw", 1, runtime_id="rt"),
    CommandOutputDelta("t1", "c1", "out", 1, runtime_id="rt"),
    FileChangeOutputDelta("t1", "f1", "out", 1, runtime_id="rt"),
    FileChangePatchUpdated("t1", "f1", (), 1, runtime_id="rt"),
    PlanDelta("t1", "p1", "1.", 1, runtime_id="rt"),
    McpToolCallProgress("t1", "m1", "50%", 1, runtime_id="rt"),
]
NEVER_DROPPED: list[Event] = [
    PlanUpdated("t1", None, (PlanStep("read", "pending"),), 1, runtime_id="rt"),
    TurnDiffUpdated("t1", "diff", 1, runtime_id="rt"),
    TokenUsageUpdated("t1", TokenUsage(1), TokenUsage(1), None, 1, runtime_id="rt"),
    StatusChanged("ready", "starting", 1, runtime_id="rt"),
    ThreadReady("th-1", False, 1, runtime_id="rt"),
    ThreadLost("th-0", "th-1", "thread/resume failed", 2, runtime_id="rt"),
    Restarting(1, 0.5, "child exited", 1, runtime_id="rt"),
    TurnStarted("t1", 1, runtime_id="rt"),
    TurnCompleted("t1", "completed", "hi", None, 1, runtime_id="rt"),
    SubmissionSettled(Settlement(1, "a", "completed", "t1", "hi"), runtime_id="rt"),
    ServerRequestAnswered("item/tool/call", True, "unsupported", 1, runtime_id="rt"),
]


def delta(n: int) -> AgentMessageDelta:
    return AgentMessageDelta("t1", "msg-1", f"d{n}", 1, runtime_id="rt")


def status(n: int) -> StatusChanged:
    # The error text tells them apart: statuses are few.
    return StatusChanged("ready", "starting", 1, f"s{n}", runtime_id="rt")


async def drain(stream: EventStream) -> list[Event]:
    """Everything the stream will still yield; the hub must be closed first, so this cannot block forever."""
    with trio.fail_after(5):
        return [event async for event in stream]


async def test_publish_reaches_every_subscriber_in_order() -> None:
    hub = EventHub(capacity=8)
    first, second = hub.subscribe(), hub.subscribe()
    assert hub.subscriber_count == 2
    events: list[Event] = [status(1), delta(1), TurnStarted("t1", 1, runtime_id="rt")]
    for event in events:
        hub.publish(event)
    hub.close()
    assert await drain(first) == events
    assert await drain(second) == events


async def test_a_subscriber_sees_only_events_after_it_subscribed() -> None:
    hub = EventHub()
    early = hub.subscribe()
    hub.publish(status(1))
    late = hub.subscribe()
    hub.publish(status(2))
    hub.close()
    assert await drain(early) == [status(1), status(2)]
    assert await drain(late) == [status(2)]


async def test_receive_waits_for_the_next_event() -> None:
    hub = EventHub()
    stream = hub.subscribe()
    received: list[Event] = []

    async def consumer() -> None:
        received.append(await stream.receive())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            assert received == []
            hub.publish(status(1))
    assert received == [status(1)]


@pytest.mark.parametrize("event", DROPPABLE, ids=lambda e: type(e).__name__)
async def test_droppable_events_are_dropped_when_full_with_a_lagged_marker_first(event: Event) -> None:
    hub = EventHub(capacity=3)
    stream = hub.subscribe()
    buffered = [delta(n) for n in range(3)]
    for e in buffered:
        hub.publish(e)
    hub.publish(event)
    hub.publish(delta(99))
    assert stream.dropped_total == 2
    hub.close()
    # The marker comes before the next event the subscriber reads (documented), then the buffer in order.
    assert await drain(stream) == [Lagged(2), *buffered]


@pytest.mark.parametrize("event", NEVER_DROPPED, ids=lambda e: type(e).__name__)
async def test_non_droppable_events_are_never_dropped(event: Event) -> None:
    hub = EventHub(capacity=4)
    stream = hub.subscribe()
    for n in range(4):
        hub.publish(delta(n))
    for _ in range(4):
        hub.publish(event)  # beyond capacity: kept, up to a second capacity
    hub.publish(delta(9))  # the buffer is over capacity, so this one goes
    hub.close()
    assert await drain(stream) == [Lagged(1), *(delta(n) for n in range(4)), *[event] * 4]
    assert stream.dropped_total == 1


@pytest.mark.parametrize("event", NEVER_DROPPED, ids=lambda e: type(e).__name__)
async def test_a_reader_too_far_behind_is_cut_off_with_a_typed_error(event: Event) -> None:
    hub = EventHub(capacity=2)
    stream = hub.subscribe()
    other = hub.subscribe()
    for _ in range(4):
        hub.publish(event)  # fills twice the capacity
    assert stream.buffered == 4
    hub.publish(event)  # one more undroppable event cannot be kept: the stream is cut off, its memory freed
    assert stream.buffered == 0 and hub.subscriber_count == 0
    with pytest.raises(EventStreamOverflow, match="overflowed"):
        await stream.receive()
    with pytest.raises(EventStreamOverflow):
        async for _ in stream:
            pass  # pragma: no cover
    # The others were cut off the same way (nobody read them), and the hub goes on publishing to new ones.
    assert other.buffered == 0
    late = hub.subscribe()
    hub.publish(event)
    assert await late.receive() == event


async def test_lagged_count_resets_and_dropped_total_accumulates() -> None:
    hub = EventHub(capacity=1)
    stream = hub.subscribe()
    with trio.fail_after(5):
        for n in range(4):
            hub.publish(delta(n))
        assert await stream.receive() == Lagged(3)
        assert await stream.receive() == delta(0)
        hub.publish(delta(10))
        hub.publish(delta(11))
        assert await stream.receive() == Lagged(1)
        assert await stream.receive() == delta(10)
    assert stream.dropped_total == 4


async def test_room_frees_up_as_the_subscriber_reads() -> None:
    hub = EventHub(capacity=2)
    stream = hub.subscribe()
    with trio.fail_after(5):
        hub.publish(delta(0))
        hub.publish(delta(1))
        assert await stream.receive() == delta(0)
        hub.publish(delta(2))  # fits again: nothing dropped
    hub.close()
    assert await drain(stream) == [delta(1), delta(2)]
    assert stream.dropped_total == 0


async def test_a_slow_subscriber_does_not_make_a_fast_one_lag() -> None:
    hub = EventHub(capacity=2)
    slow, fast = hub.subscribe(), hub.subscribe()
    received: list[Event] = []
    with trio.fail_after(5):
        for n in range(5):
            hub.publish(delta(n))
            received.append(await fast.receive())
    assert received == [delta(n) for n in range(5)]
    assert fast.dropped_total == 0
    assert slow.dropped_total == 3
    hub.close()
    assert await drain(slow) == [Lagged(3), delta(0), delta(1)]


async def test_hub_close_ends_streams_after_their_buffer() -> None:
    hub = EventHub()
    stream = hub.subscribe()
    hub.publish(status(1))
    hub.close()
    assert hub.subscriber_count == 0
    with trio.fail_after(5):
        assert await stream.receive() == status(1)
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()  # stays ended


async def test_hub_close_wakes_a_blocked_receiver() -> None:
    hub = EventHub()
    stream = hub.subscribe()
    ended = False

    async def consumer() -> None:
        nonlocal ended
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()
        ended = True

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            hub.close()
    assert ended


async def test_async_for_ends_when_the_hub_closes() -> None:
    hub = EventHub()
    got: list[Event] = []

    async def consumer(stream: EventStream) -> None:
        async with stream:
            async for event in stream:
                got.append(event)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer, hub.subscribe())
            await trio.testing.wait_all_tasks_blocked()
            hub.publish(status(1))
            hub.publish(status(2))
            hub.close()
    assert got == [status(1), status(2)]


async def test_subscribe_after_close_gives_an_ended_stream() -> None:
    hub = EventHub()
    hub.close()
    stream = hub.subscribe()
    assert hub.subscriber_count == 0
    hub.publish(status(1))
    assert await drain(stream) == []


async def test_publish_after_close_reaches_nobody() -> None:
    hub = EventHub()
    stream = hub.subscribe()
    hub.close()
    hub.publish(status(1))
    assert await drain(stream) == []


async def test_stream_close_unsubscribes() -> None:
    hub = EventHub()
    kept, closed = hub.subscribe(), hub.subscribe()
    closed.close()
    assert hub.subscriber_count == 1
    hub.publish(status(1))
    closed.close()  # idempotent
    assert hub.subscriber_count == 1
    with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
        await closed.receive()
    hub.close()
    assert await drain(kept) == [status(1)]


async def test_leaving_async_with_unsubscribes() -> None:
    hub = EventHub()
    async with hub.subscribe() as stream:
        assert hub.subscriber_count == 1
        hub.publish(status(1))
        with trio.fail_after(5):
            assert await stream.receive() == status(1)
    assert hub.subscriber_count == 0
    hub.publish(status(2))
    assert await drain(stream) == []


async def test_closing_one_stream_leaves_the_others() -> None:
    hub = EventHub()
    streams = [hub.subscribe() for _ in range(3)]
    streams[1].close()
    assert hub.subscriber_count == 2
    hub.publish(status(1))
    hub.close()
    assert await drain(streams[0]) == [status(1)]
    assert await drain(streams[2]) == [status(1)]


async def test_stream_close_wakes_a_receiver_in_another_task(autojump_clock: trio.abc.Clock) -> None:
    hub = EventHub()
    stream = hub.subscribe()

    async def consumer() -> None:
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()

    # autojump_clock: if the receiver hangs, this deadline fires at once instead of after a real minute.
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            stream.close()


async def test_stream_close_discards_what_was_buffered() -> None:
    hub = EventHub()
    stream = hub.subscribe()
    hub.publish(status(1))
    stream.close()
    with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
        await stream.receive()


# == merged streams and shared hubs ================================================================================


def rt_status(runtime_id: str, n: int) -> StatusChanged:
    return StatusChanged("ready", "starting", 1, f"{runtime_id}-{n}", runtime_id=runtime_id)


async def test_merge_events_interleaves_several_hubs_in_publish_order() -> None:
    one, two = EventHub(), EventHub()
    merged = merge_events(one, two)
    assert one.subscriber_count == two.subscriber_count == 1
    published = [rt_status("a", 1), rt_status("b", 1), rt_status("a", 2), rt_status("b", 2)]
    for event in published:
        (one if event.runtime_id == "a" else two).publish(event)
    one.close()
    assert [await merged.receive() for _ in published] == published
    with trio.move_on_after(0.1) as scope:  # one hub is still open: the stream waits for more
        await merged.receive()
    assert scope.cancelled_caught
    two.close()
    assert await drain(merged) == []


async def test_a_merged_stream_ends_only_when_every_hub_closed() -> None:
    one, two = EventHub(), EventHub()
    merged = merge_events(one, two)
    one.publish(rt_status("a", 1))
    one.close()
    two.publish(rt_status("b", 1))
    two.close()
    assert await drain(merged) == [rt_status("a", 1), rt_status("b", 1)]


async def test_merge_counts_a_shared_hub_once_and_accepts_closed_hubs() -> None:
    class Source:
        def __init__(self, hub: EventHub) -> None:
            self.hub = hub

    shared, closed = EventHub(), EventHub()
    closed.close()
    merged = merge_events(Source(shared), shared, Source(shared), closed)
    shared.publish(rt_status("a", 1))
    shared.close()
    assert await drain(merged) == [rt_status("a", 1)]
    assert await drain(merge_events(closed)) == []


async def test_merge_events_refuses_what_is_not_a_source() -> None:
    with pytest.raises(TypeError, match="at least one"):
        merge_events()
    with pytest.raises(TypeError, match="runtimes or EventHubs"):
        merge_events(object())  # type: ignore[arg-type]


async def test_a_merged_stream_keeps_the_bounded_rules_and_leaves_every_hub() -> None:
    one, two = EventHub(capacity=2), EventHub(capacity=2)
    merged = merge_events(one, two)
    for n in range(3):
        one.publish(delta(n))
    two.publish(rt_status("b", 1))
    assert await merged.receive() == Lagged(1)  # the delta that found the buffer full, said first
    assert [await merged.receive() for _ in range(3)] == [delta(0), delta(1), rt_status("b", 1)]
    for n in range(5):  # undroppable past twice the buffer: cut off
        two.publish(rt_status("b", n + 2))
    assert one.subscriber_count == two.subscriber_count == 0
    with pytest.raises(EventStreamOverflow):
        await merged.receive()


async def test_closing_a_merged_stream_leaves_every_hub() -> None:
    one, two = EventHub(), EventHub()
    async with merge_events(one, two):
        assert one.subscriber_count == two.subscriber_count == 1
    assert one.subscriber_count == two.subscriber_count == 0


async def test_hub_close_is_idempotent_and_an_async_context_manager() -> None:
    async with EventHub() as hub:
        stream = hub.subscribe()
    assert hub.closed
    hub.close()
    assert await drain(stream) == []
