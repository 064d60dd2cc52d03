"""The typed stream on the real codex 0.171 binary, offline, with the scripted mock model.

Proves: a turn with reasoning, a command and text shows typed ItemStarted/ItemCompleted of the right classes,
reasoning summary and content deltas, command output deltas and one usage event per model call; the settlement's
usage is what the mock model reported for that turn's calls; ``statistics().usage`` adds up over turns and, on
SQLite, survives a restart; two runtimes merged into one stream keep their runtime ids apart; a subscriber of an
app's hub attached before ``open_runtime`` sees the first start (starting -> ready, ThreadReady).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from codex_trio import (
    AgentMessageItem,
    ChannelInput,
    CommandExecutionItem,
    CommandOutputDelta,
    Event,
    EventHub,
    EventStream,
    ItemCompleted,
    ItemStarted,
    ReasoningItem,
    ReasoningSummaryDelta,
    ReasoningTextDelta,
    RuntimeConfig,
    Settlement,
    SqliteStateStore,
    StatusChanged,
    SubmissionSettled,
    ThreadReady,
    TokenUsage,
    TokenUsageUpdated,
    merge_events,
    open_runtime,
)
from codex_trio._core import STREAM_METHODS
from codex_trio._runtime import Runtime
from codex_trio._state import StateStore
from codex_trio.testing import ExecCommand, MockModelServer, Text, Usage, write_codex_home
from codex_trio.testing._real_codex import require_codex_bin
from codex_trio.testing.pytest_plugin import short_dir

pytestmark = pytest.mark.real_codex

#: codex streams raw reasoning content only when told to show it; the summary it always streams.
REASONING_TOML = 'show_raw_agent_reasoning = true\nmodel_reasoning_summary = "detailed"'


def as_codex_counts(usage: Usage) -> TokenUsage:
    """What codex makes of a mock model call's usage (seen on the wire: the same numbers, renamed)."""
    return TokenUsage(
        usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_output_tokens, usage.total
    )


@asynccontextmanager
async def real_runtime(
    tmp_path: Path,
    model: MockModelServer,
    runtime_id: str = "events",
    *,
    state: StateStore | None = None,
    events: EventHub | None = None,
) -> AsyncIterator[Runtime]:
    home = write_codex_home(tmp_path / f"home-{runtime_id}", model.url, extra_toml=REASONING_TOML)
    work = tmp_path / f"work-{runtime_id}"
    work.mkdir(exist_ok=True)
    with short_dir() as sockets:
        config = RuntimeConfig(
            runtime_id=runtime_id,
            codex_bin=require_codex_bin(),
            codex_home=home,
            cwd=work,
            sandbox_mode="read-only",
            socket_dir=sockets,
            log_dir=tmp_path / f"logs-{runtime_id}",
            spill_dir=tmp_path / "spill",
        )
        async with open_runtime(config, state=state, events=events) as runtime:
            yield runtime


async def until_settled(stream: EventStream, count: int) -> list[Event]:
    """Every event up to the ``count``-th settlement."""
    seen: list[Event] = []
    settled = 0
    async for event in stream:
        seen.append(event)
        if isinstance(event, SubmissionSettled):
            settled += 1
            if settled == count:
                break
    return seen


async def test_a_turn_with_reasoning_a_command_and_text_is_typed_end_to_end(tmp_path: Path) -> None:
    first_call = Usage(input_tokens=100, output_tokens=10, cached_input_tokens=20, reasoning_output_tokens=3)
    second_call = Usage(input_tokens=200, output_tokens=5, cached_input_tokens=50, reasoning_output_tokens=1)
    next_turn = Usage(input_tokens=300, output_tokens=30)
    with MockModelServer() as model:
        model.enqueue(
            ExecCommand(
                # Output over a couple of seconds, and codex told to wait for the end (else it leaves a longer
                # command running and answers the model with the output so far): a command that exits at once may
                # end before codex's output reader streams anything (seen under load with one line and 0.5 s).
                "for i in 1 2 3 4; do echo hi-there; sleep 0.5; done",
                yield_time_ms=30_000,
                reasoning_summary=["Thinking about it"],
                reasoning_content=["raw thought"],
                usage=first_call,
            ),
            Text("Done.", reasoning_summary=["Summing up"], usage=second_call),
            Text("Again.", usage=next_turn),
        )
        state = SqliteStateStore(tmp_path / "agent.db")
        with trio.fail_after(120):
            async with real_runtime(tmp_path, model, state=state) as runtime:
                assert runtime.statistics().usage is None
                async with runtime.events() as stream:
                    admission = await runtime.submit(ChannelInput("chat:1", "run it"))
                    events = await until_settled(stream, 1)
                settlement = await admission.settled()
                assert (settlement.outcome, settlement.text) == ("completed", "Done.")

                started = [type(e.item) for e in events if isinstance(e, ItemStarted)]
                completed = {type(e.item): e.item for e in events if isinstance(e, ItemCompleted)}
                for kind in (ReasoningItem, CommandExecutionItem, AgentMessageItem):
                    assert kind in started and kind in completed, kind
                command = completed[CommandExecutionItem]
                assert isinstance(command, CommandExecutionItem)
                assert "echo hi-there" in command.command and command.status == "completed"
                assert command.exit_code == 0 and "hi-there" in (command.aggregated_output or "")
                reasoning = [
                    e.item for e in events if isinstance(e, ItemCompleted) and isinstance(e.item, ReasoningItem)
                ]
                assert [(r.summary, r.content) for r in reasoning] == [
                    (("Thinking about it",), ("raw thought",)),
                    (("Summing up",), ()),
                ]
                summary = "".join(e.delta for e in events if isinstance(e, ReasoningSummaryDelta))
                assert summary == "Thinking about itSumming up"
                assert "".join(e.delta for e in events if isinstance(e, ReasoningTextDelta)) == "raw thought"
                output = "".join(e.delta for e in events if isinstance(e, CommandOutputDelta))
                assert "hi-there" in output
                assert {e.item_id for e in events if isinstance(e, CommandOutputDelta)} == {command.id}
                usage_events = [e for e in events if isinstance(e, TokenUsageUpdated)]
                assert [e.last for e in usage_events] == [as_codex_counts(first_call), as_codex_counts(second_call)]
                assert usage_events[-1].total == as_codex_counts(first_call) + as_codex_counts(second_call)
                assert {e.turn_id for e in usage_events} == {settlement.turn_id}
                assert {e.runtime_id for e in events} <= {"events", ""}  # "" only for a Lagged marker

                # The settlement: typed items, and the usage of both of its turn's model calls.
                assert [type(i) for i in settlement.items if i.type != "userMessage"] == [
                    ReasoningItem,
                    CommandExecutionItem,
                    ReasoningItem,
                    AgentMessageItem,
                ]
                turn_usage = as_codex_counts(first_call) + as_codex_counts(second_call)
                assert settlement.usage == turn_usage
                assert runtime.statistics().usage == turn_usage

                second = await (await runtime.submit(ChannelInput("chat:2", "again"))).settled()
                assert second.usage == as_codex_counts(next_turn)
                cumulative = turn_usage + as_codex_counts(next_turn)
                assert runtime.statistics().usage == cumulative
            await state.aclose()

            # A restart on the same database: the cumulative figure is the store's, and goes on from there.
            model.enqueue(Text("Third.", usage=Usage(7, 1)))
            state = SqliteStateStore(tmp_path / "agent.db")
            async with real_runtime(tmp_path, model, state=state) as runtime:
                assert runtime.statistics().usage == cumulative
                third = await (await runtime.submit(ChannelInput("chat:3", "once more"))).settled()
                assert third.usage == as_codex_counts(Usage(7, 1))
                assert runtime.statistics().usage == cumulative + as_codex_counts(Usage(7, 1))
            await state.aclose()
        assert not model.errors


async def test_two_runtimes_one_stream_and_a_subscriber_before_the_first_start(tmp_path: Path) -> None:
    with MockModelServer() as model:
        hub = EventHub()
        early = hub.subscribe()  # before any runtime exists
        with trio.fail_after(120):
            async with (
                real_runtime(tmp_path, model, "rt-a", events=hub) as a,
                real_runtime(tmp_path, model, "rt-b") as b,
            ):
                # The first start of rt-a, which runtime.events() could not have shown.
                start: list[Event] = []
                while True:
                    start.append(event := await early.receive())
                    if isinstance(event, StatusChanged) and event.status == "ready":
                        break
                statuses = [(e.previous, e.status) for e in start if isinstance(e, StatusChanged)]
                assert statuses == [("declared", "starting"), ("starting", "ready")]
                (ready,) = [e for e in start if isinstance(e, ThreadReady)]
                assert (ready.thread_id, ready.resumed, ready.generation) == (a.thread_id, False, 1)
                assert {e.runtime_id for e in start} == {"rt-a"}

                async with merge_events(hub, b) as merged:
                    settle_a = await a.submit(ChannelInput("chat:a", "hello a"))
                    settle_b = await b.submit(ChannelInput("chat:b", "hello b"))
                    events = await until_settled(merged, 2)
                    settlements: dict[str, Settlement] = {
                        e.runtime_id: e.settlement for e in events if isinstance(e, SubmissionSettled)
                    }
                    assert set(settlements) == {"rt-a", "rt-b"}
                    assert settlements["rt-a"] == await settle_a.settled()
                    assert settlements["rt-b"] == await settle_b.settled()
                    turns = {(e.runtime_id, e.turn_id) for e in events if isinstance(e, TokenUsageUpdated)}
                    assert turns == {("rt-a", settlements["rt-a"].turn_id), ("rt-b", settlements["rt-b"].turn_id)}
            # Both runtimes stopped; the app's hub is the app's: still open, and the merged stream with it.
            assert not hub.closed and not b.hub.subscriber_count
            hub.close()
            stops = [e async for e in early]
            assert ("rt-a", "stopped") in {(e.runtime_id, e.status) for e in stops if isinstance(e, StatusChanged)}
        assert not model.errors


# What the parsers read of each item kind, and of each notification the core turns into an event: held to the
# schema the pinned codex generates, so that a renamed field fails here rather than turning items into OtherItem.
ITEM_FIELDS: dict[str, set[str]] = {
    "agentMessage": {"id", "text", "phase"},
    "reasoning": {"id", "summary", "content"},
    "commandExecution": {"id", "command", "cwd", "status", "exitCode", "aggregatedOutput", "durationMs"},
    "fileChange": {"id", "changes", "status"},
    "mcpToolCall": {"id", "server", "tool", "status", "arguments", "result", "error", "durationMs"},
    "webSearch": {"id", "query"},
    "plan": {"id", "text"},
}
NOTIFICATION_FIELDS: dict[str, set[str]] = {
    "item/reasoning/summaryTextDelta": {"turnId", "itemId", "summaryIndex", "delta"},
    "item/reasoning/summaryPartAdded": {"turnId", "itemId", "summaryIndex"},
    "item/reasoning/textDelta": {"turnId", "itemId", "contentIndex", "delta"},
    "item/commandExecution/outputDelta": {"turnId", "itemId", "delta"},
    "item/fileChange/outputDelta": {"turnId", "itemId", "delta"},
    "item/fileChange/patchUpdated": {"turnId", "itemId", "changes"},
    "turn/plan/updated": {"turnId", "explanation", "plan"},
    "item/plan/delta": {"turnId", "itemId", "delta"},
    "item/mcpToolCall/progress": {"turnId", "itemId", "message"},
    "turn/diff/updated": {"turnId", "diff"},
    "thread/tokenUsage/updated": {"turnId", "tokenUsage"},
}


def test_the_fields_read_are_the_pinned_schemas(tmp_path: Path) -> None:
    assert set(NOTIFICATION_FIELDS) == STREAM_METHODS | {"thread/tokenUsage/updated"}
    proc = subprocess.run(
        [require_codex_bin(), "app-server", "generate-json-schema", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "ServerNotification.json").read_text())
    definitions = doc["definitions"]
    methods = {}
    for variant in doc["oneOf"]:
        ref = variant["properties"]["params"]["$ref"].rsplit("/", 1)[-1]
        methods[variant["properties"]["method"]["enum"][0]] = definitions[ref]
    for method, fields in NOTIFICATION_FIELDS.items():
        assert fields <= set(methods[method]["properties"]), method
    kinds = {v["properties"]["type"]["enum"][0]: v for v in definitions["ThreadItem"]["oneOf"]}
    for kind, fields in ITEM_FIELDS.items():
        assert fields <= set(kinds[kind]["properties"]), kind
    usage = definitions["TokenUsageBreakdown"]["properties"]
    assert {"inputTokens", "cachedInputTokens", "outputTokens", "reasoningOutputTokens", "totalTokens"} <= set(usage)
    change = definitions["FileUpdateChange"]["properties"]
    assert {"path", "kind", "diff"} <= set(change)
