"""Typed thread items (``codex_trio/_items.py``) and token usage (``codex_trio/_usage.py``): parsing is exact for
the shapes of the pinned schema (samples as codex 0.171 sent them to us), and tolerant of everything else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from codex_trio._items import (
    AgentMessageItem,
    CommandExecutionItem,
    FileChangeItem,
    FileUpdate,
    McpToolCallItem,
    OtherItem,
    PlanItem,
    ReasoningItem,
    WebSearchItem,
    file_update,
    parse_item,
)
from codex_trio._json import JsonObject, JsonValue
from codex_trio._usage import TokenUsage, parse_usage, usage_from_json, usage_to_json

# Items as the real codex 0.171.0 sent them (tests/real/test_events_real.py sees the same ones), trimmed.
COMMAND: JsonObject = {
    "type": "commandExecution",
    "id": "call-1",
    "pluginId": None,
    "command": "/bin/bash -lc 'echo hi-there'",
    "cwd": "/tmp/work",
    "processId": "21407",
    "source": "unifiedExecStartup",
    "status": "completed",
    "commandActions": [{"type": "unknown", "command": "echo hi-there"}],
    "aggregatedOutput": "hi-there\n",
    "exitCode": 0,
    "durationMs": 12,
}
REASONING: JsonObject = {
    "type": "reasoning",
    "id": "rs-1",
    "summary": ["Thinking about it"],
    "content": ["raw thought"],
    "startedAtMs": 1,
    "completedAtMs": 2,
}
AGENT: JsonObject = {"type": "agentMessage", "id": "msg-2", "text": "Done.", "phase": None, "moderation": None}
FILE_CHANGE: JsonObject = {
    "type": "fileChange",
    "id": "fc-1",
    "status": "completed",
    "changes": [
        {"path": "a.txt", "kind": {"type": "add"}, "diff": "+a\n"},
        {"path": "b.txt", "kind": {"type": "update", "move_path": "c.txt"}, "diff": "-b\n+c\n"},
    ],
}
MCP: JsonObject = {
    "type": "mcpToolCall",
    "id": "mcp-1",
    "server": "docs",
    "tool": "search",
    "status": "failed",
    "arguments": {"q": "trio"},
    "result": None,
    "error": {"message": "server went away"},
    "durationMs": 5,
}


def test_each_kind_an_app_acts_on_has_its_record() -> None:
    assert parse_item(AGENT) == AgentMessageItem("msg-2", "Done.", None, AGENT)
    assert parse_item(REASONING) == ReasoningItem("rs-1", ("Thinking about it",), ("raw thought",), REASONING)
    assert parse_item(COMMAND) == CommandExecutionItem(
        "call-1", "/bin/bash -lc 'echo hi-there'", "/tmp/work", "completed", 0, "hi-there\n", 12, COMMAND
    )
    assert parse_item(FILE_CHANGE) == FileChangeItem(
        "fc-1",
        (FileUpdate("a.txt", "add", "+a\n"), FileUpdate("b.txt", "update", "-b\n+c\n", "c.txt")),
        "completed",
        FILE_CHANGE,
    )
    assert parse_item(MCP) == McpToolCallItem(
        "mcp-1", "docs", "search", "failed", {"q": "trio"}, None, "server went away", 5, MCP
    )
    search: JsonObject = {"type": "webSearch", "id": "ws-1", "query": "trio nursery", "action": None}
    assert parse_item(search) == WebSearchItem("ws-1", "trio nursery", search)
    plan: JsonObject = {"type": "plan", "id": "p-1", "text": "1. read\n2. write"}
    assert parse_item(plan) == PlanItem("p-1", "1. read\n2. write", plan)


def test_a_started_item_has_the_schema_defaults() -> None:
    started: JsonObject = {"type": "reasoning", "id": "rs-1"}  # summary and content default to []
    assert parse_item(started) == ReasoningItem("rs-1", (), (), started)
    running: JsonObject = {**COMMAND, "status": "inProgress", "exitCode": None, "aggregatedOutput": None}
    del running["durationMs"]
    item = parse_item(running)
    assert isinstance(item, CommandExecutionItem)
    assert (item.status, item.exit_code, item.aggregated_output, item.duration_ms) == ("inProgress", None, None, None)


def test_the_type_is_readable_on_every_record() -> None:
    kinds = [parse_item(raw).type for raw in (AGENT, REASONING, COMMAND, FILE_CHANGE, MCP)]
    assert kinds == ["agentMessage", "reasoning", "commandExecution", "fileChange", "mcpToolCall"]
    assert parse_item({"type": "contextCompaction", "id": "cc"}).type == "contextCompaction"


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "userMessage", "id": "u1", "content": []},  # a kind without a record of its own
        {"type": "somethingNewer", "id": "n1", "x": 1},  # a kind newer than the pinned codex
        {**AGENT, "text": 3},  # wrong type
        {**COMMAND, "exitCode": "0"},
        {**COMMAND, "exitCode": True},  # a bool is not an exit code
        {k: v for k, v in COMMAND.items() if k != "cwd"},  # a required field missing
        {**REASONING, "summary": ["ok", 2]},  # type: ignore[dict-item]  # mypy infers list[str | int]
        {**FILE_CHANGE, "changes": [{"path": "a", "kind": "add", "diff": ""}]},  # kind must be an object
        {**MCP, "error": "a string"},
        {**MCP, "result": [1]},
        {**AGENT, "id": 7},  # an id that is not a string
    ],
)
def test_anything_else_is_an_other_item_that_keeps_type_and_raw(raw: JsonObject) -> None:
    item = parse_item(raw)
    assert isinstance(item, OtherItem)
    assert item.type == raw["type"] and item.raw is raw
    assert item.id == (raw["id"] if isinstance(raw["id"], str) else None)


def test_an_item_without_a_type_is_an_other_item_with_an_empty_type() -> None:
    assert parse_item({"id": "x"}) == OtherItem("", "x", {"id": "x"})


def test_raw_is_kept_and_left_out_of_repr() -> None:
    item = parse_item(COMMAND)
    assert item.raw is COMMAND
    assert "commandActions" not in repr(item) and "hi-there" in repr(item)


_json: st.SearchStrategy[JsonValue] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)
_KINDS = ("agentMessage", "reasoning", "commandExecution", "fileChange", "mcpToolCall", "webSearch", "plan", "x")
_KEYS = ("id", "text", "summary", "content", "command", "cwd", "status", "exitCode", "changes", "server", "tool")


@settings(suppress_health_check=[HealthCheck.too_slow])  # two shared cores: generation can be slow, not wrong
@given(
    kind=st.sampled_from(_KINDS),
    fields=st.dictionaries(st.sampled_from(_KEYS), _json, max_size=8),
)
def test_parsing_never_raises(kind: str, fields: dict[str, JsonValue]) -> None:
    raw: JsonObject = {"type": kind, **fields}
    item = parse_item(raw)
    assert item.raw is raw and item.type == kind


def test_file_update_names_what_is_wrong() -> None:
    assert file_update({"path": "p", "kind": {"type": "delete"}, "diff": ""}) == FileUpdate("p", "delete", "")
    with pytest.raises(ValueError, match="diff"):
        file_update({"path": "p", "kind": {"type": "delete"}})


# -- token usage ------------------------------------------------------------------------------------------------------

BREAKDOWN: dict[str, Any] = {
    "totalTokens": 110,
    "inputTokens": 100,
    "cachedInputTokens": 20,
    "cacheWriteInputTokens": 0,
    "outputTokens": 10,
    "reasoningOutputTokens": 3,
}


def test_usage_parses_codexs_breakdown_and_adds_up() -> None:
    usage = parse_usage(BREAKDOWN)
    assert usage == TokenUsage(
        input_tokens=100, cached_input_tokens=20, output_tokens=10, reasoning_output_tokens=3, total_tokens=110
    )
    assert usage + usage == TokenUsage(200, 40, 20, 6, 220)
    assert TokenUsage() + usage == usage


@pytest.mark.parametrize("bad", [None, [], {**BREAKDOWN, "inputTokens": "1"}, {**BREAKDOWN, "outputTokens": True}])
def test_usage_that_is_not_a_breakdown_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_usage(bad)


def test_usage_round_trips_through_the_store_text() -> None:
    usage = parse_usage(BREAKDOWN)
    assert usage_from_json(usage_to_json(usage)) == usage
    assert json.loads(usage_to_json(usage))["cachedInputTokens"] == 20
    assert usage_from_json(None) is None and usage_from_json("") is None
    assert usage_from_json("not json") is None and usage_from_json('{"inputTokens": "x"}') is None
