"""The core's part of the typed stream (``codex_trio/_core.py``): each streamed notification of the 0.171 schema
becomes its event, naming the runtime; thread items are typed; token usage is summed per turn (the settlement's)
and per runtime (written with each settlement). The Driver and helpers are those of ``test_core.py``."""

from __future__ import annotations

from typing import Any

import pytest

from codex_trio._core import STREAM_METHODS, Publish, RuntimeCore, Send, Settle
from codex_trio._events import (
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
    TurnDiffUpdated,
)
from codex_trio._items import CommandExecutionItem, FileUpdate, ReasoningItem
from codex_trio._json import JsonObject
from codex_trio._usage import TokenUsage
from tests.unit.test_core import THREAD, Driver, agent_message, item_params, of, one, published, settled

BASE: dict[str, Any] = {"threadId": THREAD, "turnId": "t1", "itemId": "i1"}

STREAMED: list[tuple[str, dict[str, Any], Event]] = [
    (
        "item/reasoning/summaryTextDelta",
        {**BASE, "summaryIndex": 1, "delta": "Thinking "},
        ReasoningSummaryDelta("t1", "i1", 1, "Thinking ", 1, runtime_id="rt"),
    ),
    (
        "item/reasoning/summaryPartAdded",
        {**BASE, "summaryIndex": 2},
        ReasoningSummaryPartAdded("t1", "i1", 2, 1, runtime_id="rt"),
    ),
    (
        "item/reasoning/textDelta",
        {**BASE, "contentIndex": 0, "delta": "raw"},
        ReasoningTextDelta("t1", "i1", 0, "raw", 1, runtime_id="rt"),
    ),
    (
        "item/commandExecution/outputDelta",
        {**BASE, "delta": "hi\n"},
        CommandOutputDelta("t1", "i1", "hi\n", 1, runtime_id="rt"),
    ),
    (
        "item/fileChange/outputDelta",
        {**BASE, "delta": "patched"},
        FileChangeOutputDelta("t1", "i1", "patched", 1, runtime_id="rt"),
    ),
    (
        "item/fileChange/patchUpdated",
        {**BASE, "changes": [{"path": "a", "kind": {"type": "add"}, "diff": "+x"}]},
        FileChangePatchUpdated("t1", "i1", (FileUpdate("a", "add", "+x"),), 1, runtime_id="rt"),
    ),
    (
        "turn/plan/updated",
        {
            "threadId": THREAD,
            "turnId": "t1",
            "explanation": None,
            "plan": [{"step": "read", "status": "completed"}, {"step": "write", "status": "inProgress"}],
        },
        PlanUpdated("t1", None, (PlanStep("read", "completed"), PlanStep("write", "inProgress")), 1, runtime_id="rt"),
    ),
    ("item/plan/delta", {**BASE, "delta": "1. "}, PlanDelta("t1", "i1", "1. ", 1, runtime_id="rt")),
    (
        "item/mcpToolCall/progress",
        {**BASE, "message": "50%"},
        McpToolCallProgress("t1", "i1", "50%", 1, runtime_id="rt"),
    ),
    (
        "turn/diff/updated",
        {"threadId": THREAD, "turnId": "t1", "diff": "--- a\n+++ b\n"},
        TurnDiffUpdated("t1", "--- a\n+++ b\n", 1, runtime_id="rt"),
    ),
]


def test_every_streamed_method_is_covered_here() -> None:
    assert {method for method, _, _ in STREAMED} == STREAM_METHODS


@pytest.mark.parametrize(("method", "params", "event"), STREAMED, ids=[m for m, _, _ in STREAMED])
def test_a_streamed_notification_is_its_event_on_both_paths(method: str, params: dict[str, Any], event: Event) -> None:
    d = Driver()
    d.up()
    before = d.core.statistics()
    assert d.notify(method, params) == [Publish(event)]  # the core's own path (the Hypothesis machine's)
    assert d.core.stream(method, params) == event  # the engine's shortcut
    assert d.core.statistics() == before  # no state changed


@pytest.mark.parametrize(("method", "params", "event"), STREAMED, ids=[m for m, _, _ in STREAMED])
def test_a_streamed_notification_of_another_thread_or_malformed_is_dropped(
    method: str, params: dict[str, Any], event: Event
) -> None:
    d = Driver()
    assert d.core.stream(method, params) is None  # no session
    d.up()
    assert d.notify(method, {**params, "threadId": "another"}) == []
    for key in params:
        if key != "threadId":
            broken = {**params, key: 3 if isinstance(params[key], str) else "x"}
            if key == "explanation":
                continue  # optional: anything but a string is no explanation
            assert d.notify(method, broken) == [], key
            assert d.notify(method, {k: v for k, v in params.items() if k != key}) == [], key
    assert d.notify(method, []) == []


def test_items_are_typed_on_the_events_and_the_settlement() -> None:
    d = Driver()
    sub = d.running("a", "t1")
    command: JsonObject = {
        "type": "commandExecution",
        "id": "c1",
        "command": "ls",
        "cwd": "/w",
        "status": "inProgress",
        "commandActions": [],
    }
    (started,) = published(d.notify("item/started", item_params("t1", command)), ItemStarted)
    assert isinstance(started.item, CommandExecutionItem) and started.item.status == "inProgress"
    assert started.runtime_id == "rt"
    done: JsonObject = {**command, "status": "completed", "exitCode": 0, "aggregatedOutput": "x\n", "durationMs": 3}
    (completed,) = published(d.notify("item/completed", item_params("t1", done)), ItemCompleted)
    assert completed.item == CommandExecutionItem("c1", "ls", "/w", "completed", 0, "x\n", 3, done)
    d.notify("item/completed", item_params("t1", {"type": "reasoning", "id": "r1", "summary": ["s"]}))
    d.notify("item/completed", item_params("t1", agent_message("the end", "m1")))
    (settlement,) = settled(d.completed("t1"))
    assert settlement.seq == sub.seq and settlement.text == "the end"
    assert [type(i).__name__ for i in settlement.items] == ["CommandExecutionItem", "ReasoningItem", "AgentMessageItem"]
    assert settlement.items[1] == ReasoningItem("r1", ("s",), (), {"type": "reasoning", "id": "r1", "summary": ["s"]})


def usage(n: int, *, turn: str = "t1", total: int | None = None, thread: str = THREAD) -> dict[str, Any]:
    """A ``thread/tokenUsage/updated`` for one model call of ``n`` input and ``n // 10`` output tokens."""

    def breakdown(k: int) -> dict[str, int]:
        return {
            "inputTokens": k,
            "cachedInputTokens": k // 2,
            "outputTokens": k // 10,
            "reasoningOutputTokens": k // 100,
            "totalTokens": k + k // 10,
        }

    return {
        "threadId": thread,
        "turnId": turn,
        "tokenUsage": {"total": breakdown(total or n), "last": breakdown(n), "modelContextWindow": 1000},
    }


def used(n: int) -> TokenUsage:
    return TokenUsage(n, n // 2, n // 10, n // 100, n + n // 10)


def test_token_usage_is_an_event_and_sums_per_turn_and_per_runtime() -> None:
    d = Driver(usage=used(1000))  # what the store had: the runtime's usage before this start
    a = d.running("a", "t1")
    (event,) = published(d.notify("thread/tokenUsage/updated", usage(100)), TokenUsageUpdated)
    assert event == TokenUsageUpdated("t1", used(100), used(100), 1000, 1, runtime_id="rt")
    d.notify("thread/tokenUsage/updated", usage(200, total=300))  # a second model call of the same turn
    actions = d.completed("t1")
    (settlement,) = settled(actions)
    assert (settlement.seq, settlement.usage) == (a.seq, used(100) + used(200))
    assert one(actions, Settle).usage == used(1000) + used(100) + used(200)  # written with the settlement
    b = d.running("b", "t2")
    d.notify("thread/tokenUsage/updated", usage(50, turn="t2"))
    (second,) = settled(d.completed("t2"))
    assert (second.seq, second.usage) == (b.seq, used(50))
    assert d.core.usage == used(1000) + used(100) + used(200) + used(50)


def test_steered_inputs_share_their_turns_usage_and_a_turn_without_usage_has_none() -> None:
    d = Driver()
    d.running("a", "t1")
    _, actions = d.accept("b")
    d.answer(one(actions, Send), "t1")
    d.notify("thread/tokenUsage/updated", usage(100))
    first, second = settled(d.completed("t1"))
    assert first.usage == second.usage == used(100)
    d.running("c", "t2")
    (third,) = settled(d.completed("t2"))
    assert third.usage is None


def test_usage_before_the_turn_is_known_counts_and_other_threads_do_not() -> None:
    d = Driver()
    d.up()
    _, actions = d.accept("a")
    d.notify("thread/tokenUsage/updated", usage(100))  # the turn/start answer is still on the way
    d.notify("thread/tokenUsage/updated", usage(999, thread="another"))
    d.notify("thread/tokenUsage/updated", {"threadId": THREAD, "turnId": "t1", "tokenUsage": {"last": {}}})
    d.answer(one(actions, Send), "t1")
    (settlement,) = settled(d.completed("t1"))
    assert settlement.usage == used(100) and d.core.usage == used(100)


def test_the_usage_codex_repeats_after_a_resume_is_not_counted_again() -> None:
    """After ``thread/resume`` codex 0.171 repeats the thread's last usage notification, naming a turn of an earlier
    session (seen under load, once the session was up): the runtime's figure already holds it."""
    d = Driver(usage=used(1000))  # restored from the store, that last call included
    d.up()
    (event,) = published(d.notify("thread/tokenUsage/updated", usage(300, turn="old-turn")), TokenUsageUpdated)
    assert event.turn_id == "old-turn"  # still published: it is what codex said
    assert d.core.usage == used(1000)
    d.running("a", "t1")
    d.notify("thread/tokenUsage/updated", usage(5))
    (settlement,) = settled(d.completed("t1"))
    assert settlement.usage == used(5) and d.core.usage == used(1000) + used(5)


def test_interrupted_and_stopped_inputs_keep_the_usage_so_far() -> None:
    d = Driver()
    d.running("a", "t1")
    d.notify("thread/tokenUsage/updated", usage(100))
    (lost,) = settled(d.lost())
    assert (lost.outcome, lost.usage) == ("interrupted", used(100))
    d.running("b", "t2")
    d.notify("thread/tokenUsage/updated", usage(10, turn="t2"))
    d.core.stop()
    (stopped,) = settled(d.take())
    assert (stopped.outcome, stopped.usage) == ("stopped", used(10))


def test_every_event_of_the_core_names_its_runtime() -> None:
    core = RuntimeCore(runtime_id="rt-7")
    core.session_ready(1, THREAD)
    core.notification("thread/tokenUsage/updated", usage(1), 0.0)
    core.notification("warning", {"message": "m"}, 0.0)
    core.notification("turn/started", {"threadId": THREAD, "turn": {"id": "t1", "status": "inProgress"}}, 0.0)
    events = [a.event for a in of(core.take_actions(), Publish)]
    assert len(events) == 3 and {e.runtime_id for e in events} == {"rt-7"}
    delta = core.delta({"threadId": THREAD, "turnId": "t1", "itemId": "m", "delta": "x"})
    assert delta is not None and delta.runtime_id == "rt-7"
