"""Typed thread items: what codex did in a turn, as records an app can match on.

codex reports each step of a turn as a *thread item* (``item/started``, ``item/completed``, ``turn.items``): a JSON
object with a ``type``. The kinds an app acts on get a record of their own, with the fields of the pinned schema
(codex 0.171.0, ``ThreadItem`` in ``app-server generate-json-schema``), renamed to snake_case; every other kind,
and any kind a later codex adds, is an :class:`OtherItem` that keeps its ``type``. Every record keeps ``id`` and the
object as codex sent it (``raw``), so nothing is lost to the typing.

Parsing is tolerant: :func:`parse_item` never raises. A known kind whose fields do not have the schema's types (a
codex that changed them, a corrupt frame) becomes an :class:`OtherItem` too; optional fields that are missing
take their schema default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar, Final, TypeAlias

import attrs

from ._json import JsonObject, JsonValue

__all__ = [
    "AgentMessageItem",
    "CommandExecutionItem",
    "FileChangeItem",
    "FileUpdate",
    "McpToolCallItem",
    "OtherItem",
    "PlanItem",
    "ReasoningItem",
    "ThreadItem",
    "WebSearchItem",
    "parse_item",
]


@attrs.frozen
class AgentMessageItem:
    """A message of the agent (``agentMessage``). ``phase``: codex's ``MessagePhase`` when it sets one."""

    type: ClassVar[str] = "agentMessage"
    id: str
    text: str
    phase: str | None = None
    raw: JsonObject = attrs.field(factory=dict, repr=False)


@attrs.frozen
class ReasoningItem:
    """The model's reasoning (``reasoning``): its summary parts and, when codex shows raw reasoning, its content
    parts. Both are empty on ``item/started``; the deltas stream them (ReasoningSummaryDelta, ReasoningTextDelta)."""

    type: ClassVar[str] = "reasoning"
    id: str
    summary: tuple[str, ...] = ()
    content: tuple[str, ...] = ()
    raw: JsonObject = attrs.field(factory=dict, repr=False)


@attrs.frozen
class CommandExecutionItem:
    """A command codex ran (``commandExecution``). ``status``: ``inProgress``, ``completed``, ``failed`` or
    ``declined``; ``exit_code``, ``aggregated_output`` (stdout and stderr) and ``duration_ms`` once it ended."""

    type: ClassVar[str] = "commandExecution"
    id: str
    command: str
    cwd: str
    status: str
    exit_code: int | None = None
    aggregated_output: str | None = None
    duration_ms: int | None = None
    raw: JsonObject = attrs.field(factory=dict, repr=False)


@attrs.frozen
class FileUpdate:
    """One file of a :class:`FileChangeItem`. ``kind``: ``add``, ``delete`` or ``update`` (``move_path`` set when
    an update also renames the file)."""

    path: str
    kind: str
    diff: str
    move_path: str | None = None


@attrs.frozen
class FileChangeItem:
    """A patch codex applied or proposed (``fileChange``). ``status``: ``inProgress``, ``completed``, ``failed``
    or ``declined``."""

    type: ClassVar[str] = "fileChange"
    id: str
    changes: tuple[FileUpdate, ...]
    status: str
    raw: JsonObject = attrs.field(factory=dict, repr=False)


@attrs.frozen
class McpToolCallItem:
    """A call of an MCP server's tool (``mcpToolCall``). ``status``: ``inProgress``, ``completed`` or ``failed``;
    ``result`` is the tool's result object (``content``, ``structuredContent``) as sent, ``error`` its message."""

    type: ClassVar[str] = "mcpToolCall"
    id: str
    server: str
    tool: str
    status: str
    arguments: JsonValue = None
    result: JsonObject | None = None
    error: str | None = None
    duration_ms: int | None = None
    raw: JsonObject = attrs.field(factory=dict, repr=False)


@attrs.frozen
class WebSearchItem:
    """A web search the model made (``webSearch``)."""

    type: ClassVar[str] = "webSearch"
    id: str
    query: str
    raw: JsonObject = attrs.field(factory=dict, repr=False)


@attrs.frozen
class PlanItem:
    """A proposed plan (``plan``, plan mode); the turn's step list is the PlanUpdated event."""

    type: ClassVar[str] = "plan"
    id: str
    text: str
    raw: JsonObject = attrs.field(factory=dict, repr=False)


@attrs.frozen
class OtherItem:
    """Any other kind (``userMessage``, ``contextCompaction``, ``imageView``, ...), a kind newer than the pinned
    codex, or a known kind whose fields did not parse: ``type`` and ``raw`` as codex sent them."""

    type: str
    id: str | None
    raw: JsonObject = attrs.field(factory=dict, repr=False)


ThreadItem: TypeAlias = (
    AgentMessageItem
    | ReasoningItem
    | CommandExecutionItem
    | FileChangeItem
    | McpToolCallItem
    | WebSearchItem
    | PlanItem
    | OtherItem
)


class _Malformed(Exception):
    pass


def _str(raw: JsonObject, key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise _Malformed(key)
    return value


def _opt_str(raw: JsonObject, key: str) -> str | None:
    value = raw.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _Malformed(key)


def _opt_int(raw: JsonObject, key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Malformed(key)


def _strings(raw: JsonObject, key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if isinstance(v, str))
    raise _Malformed(key)


def _object(value: JsonValue, what: str) -> JsonObject:
    if not isinstance(value, dict):
        raise _Malformed(what)
    return value


def file_update(value: JsonValue) -> FileUpdate:
    """One ``FileUpdateChange`` (also in ``item/fileChange/patchUpdated``); raises ``ValueError`` if malformed."""
    try:
        raw = _object(value, "change")
        kind = _object(raw.get("kind"), "kind")
        return FileUpdate(_str(raw, "path"), _str(kind, "type"), _str(raw, "diff"), _opt_str(kind, "move_path"))
    except _Malformed as exc:
        raise ValueError(f"a file change without a valid {exc}") from None


def _agent_message(raw: JsonObject, id: str) -> ThreadItem:
    return AgentMessageItem(id, _str(raw, "text"), _opt_str(raw, "phase"), raw)


def _reasoning(raw: JsonObject, id: str) -> ThreadItem:
    return ReasoningItem(id, _strings(raw, "summary"), _strings(raw, "content"), raw)


def _command(raw: JsonObject, id: str) -> ThreadItem:
    return CommandExecutionItem(
        id,
        _str(raw, "command"),
        _str(raw, "cwd"),
        _str(raw, "status"),
        _opt_int(raw, "exitCode"),
        _opt_str(raw, "aggregatedOutput"),
        _opt_int(raw, "durationMs"),
        raw,
    )


def _file_change(raw: JsonObject, id: str) -> ThreadItem:
    changes = raw.get("changes")
    if not isinstance(changes, list):
        raise _Malformed("changes")
    try:
        updates = tuple(file_update(change) for change in changes)
    except ValueError:
        raise _Malformed("changes") from None
    return FileChangeItem(id, updates, _str(raw, "status"), raw)


def _mcp(raw: JsonObject, id: str) -> ThreadItem:
    result = raw.get("result")
    error = raw.get("error")
    message = _str(_object(error, "error"), "message") if error is not None else None
    return McpToolCallItem(
        id,
        _str(raw, "server"),
        _str(raw, "tool"),
        _str(raw, "status"),
        raw.get("arguments"),
        _object(result, "result") if result is not None else None,
        message,
        _opt_int(raw, "durationMs"),
        raw,
    )


def _web_search(raw: JsonObject, id: str) -> ThreadItem:
    return WebSearchItem(id, _str(raw, "query"), raw)


def _plan(raw: JsonObject, id: str) -> ThreadItem:
    return PlanItem(id, _str(raw, "text"), raw)


_PARSERS: Final[Mapping[str, Callable[[JsonObject, str], ThreadItem]]] = {
    "agentMessage": _agent_message,
    "reasoning": _reasoning,
    "commandExecution": _command,
    "fileChange": _file_change,
    "mcpToolCall": _mcp,
    "webSearch": _web_search,
    "plan": _plan,
}


def parse_item(raw: JsonObject) -> ThreadItem:
    """The record for one thread item as codex sent it. Never raises: see the module docstring."""
    kind = raw.get("type")
    item_id = raw.get("id")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is not None and isinstance(item_id, str):
        try:
            return parser(raw, item_id)
        except _Malformed:
            pass
    return OtherItem(kind if isinstance(kind, str) else "", item_id if isinstance(item_id, str) else None, raw)
