"""The attrs protocol models and their converter, on payloads shaped like real codex 0.169 frames.

The payloads are copied (ids shortened) from the project's notes on codex 0.169 (shared/reference/
codex-app-server.md, §3-§5). The schema side of the same models is checked against the real binary in
``tests/real/test_protocol_schema.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
import pytest
from hypothesis import given, settings, strategies as st

from codex_trio import _protocol as p

THREAD = "01a21063-5151-7182-bd65-57f544c5cb73"
TURN = "01a21063-9459-7000-8000-000000000001"

AGENT_MESSAGE: dict[str, Any] = {
    "type": "agentMessage",
    "id": "msg-1",
    "text": "Hello from the mock model, turn one.",
    "phase": None,
    "moderation": None,
    "memoryCitation": None,
    "delivery": None,
    "questions": None,
}
USER_MESSAGE: dict[str, Any] = {
    "type": "userMessage",
    "id": "01a2-user",
    "clientId": None,
    "content": [{"type": "text", "text": "Say hello", "text_elements": []}],
    "startedAtMs": 1795571356115,
    "completedAtMs": None,
}
TURN_COMPLETED: dict[str, Any] = {
    "threadId": THREAD,
    "turn": {
        "id": TURN,
        "items": [AGENT_MESSAGE],
        "itemsView": "summary",
        "status": "completed",
        "error": None,
        "startedAt": 1795571356,
        "completedAt": 1795571357,
        "durationMs": 154,
    },
}
THREAD_START_RESULT: dict[str, Any] = {
    "thread": {
        "id": THREAD,
        "sessionId": THREAD,
        "status": {"type": "idle"},
        "historyMode": "paginated",
        "modelProvider": "mock",
        "model": "mock-model",
        "cliVersion": "0.169.0",
        "source": "vscode",
        "turns": [],
    },
    "model": "mock-model",
    "modelProvider": "mock",
    "serviceTier": None,
    "disabledPluginIds": [],
    "approvalPolicy": "never",
    "sandbox": {"type": "readOnly", "networkAccess": False},
}


def with_unknown_fields(value: Any) -> Any:
    """``value`` with an extra field in every object, the way a newer codex might send it."""
    if isinstance(value, dict):
        return {**{k: with_unknown_fields(v) for k, v in value.items()}, "futureField": {"x": [1, None]}}
    if isinstance(value, list):
        return [with_unknown_fields(v) for v in value]
    return value


# -- unstructure: what we send ---------------------------------------------------------------------------------


def test_initialize_params_match_the_observed_handshake_frame() -> None:
    params = p.InitializeParams(
        p.ClientInfo("codex_probe", "0.0.1", "Codex probe (Python/Trio)"), p.InitializeCapabilities()
    )
    assert p.unstructure(params) == {
        "clientInfo": {"name": "codex_probe", "title": "Codex probe (Python/Trio)", "version": "0.0.1"},
        "capabilities": {"experimentalApi": True},
    }


def test_none_is_omitted_at_every_level_and_falsy_values_are_kept() -> None:
    params = p.InitializeParams(
        p.ClientInfo("n", "1"), p.InitializeCapabilities(experimental_api=False, opt_out_notification_methods=[])
    )
    assert p.unstructure(params) == {
        "clientInfo": {"name": "n", "version": "1"},
        "capabilities": {"experimentalApi": False, "optOutNotificationMethods": []},
    }
    assert p.unstructure(p.InitializeParams(p.ClientInfo("n", "1"))) == {"clientInfo": {"name": "n", "version": "1"}}


def test_opt_out_notification_methods_is_camel_case() -> None:
    caps = p.InitializeCapabilities(opt_out_notification_methods=["thread/started", "configWarning"])
    assert p.unstructure(caps) == {
        "experimentalApi": True,
        "optOutNotificationMethods": ["thread/started", "configWarning"],
    }


def test_thread_start_params() -> None:
    assert p.unstructure(p.ThreadStartParams()) == {}
    assert p.unstructure(p.ThreadStartParams("base", "dev", "/work")) == {
        "baseInstructions": "base",
        "developerInstructions": "dev",
        "cwd": "/work",
    }


def test_thread_resume_params_exclude_turns_by_default() -> None:
    assert p.unstructure(p.ThreadResumeParams(THREAD)) == {"threadId": THREAD, "excludeTurns": True}
    params = p.ThreadResumeParams(THREAD, cwd="/w", exclude_turns=None)
    assert p.unstructure(params) == {"threadId": THREAD, "cwd": "/w"}


def test_turn_start_params_match_the_observed_frame() -> None:
    assert p.unstructure(p.TurnStartParams(THREAD, [p.TextInput("Say hello")])) == {
        "threadId": THREAD,
        "input": [{"type": "text", "text": "Say hello", "text_elements": []}],  # text_elements stays snake_case
    }
    params = p.TurnStartParams(THREAD, [p.TextInput("hi")], client_user_message_id="src-1", cwd="/w")
    assert p.unstructure(params)["clientUserMessageId"] == "src-1"
    assert p.unstructure(params)["cwd"] == "/w"


def test_turn_steer_and_interrupt_params() -> None:
    steer = p.TurnSteerParams(THREAD, TURN, [p.TextInput("more")], "src-2")
    assert p.unstructure(steer) == {
        "threadId": THREAD,
        "expectedTurnId": TURN,
        "input": [{"type": "text", "text": "more", "text_elements": []}],
        "clientUserMessageId": "src-2",
    }
    assert "clientUserMessageId" not in p.unstructure(p.TurnSteerParams(THREAD, TURN, []))
    assert p.unstructure(p.TurnInterruptParams(THREAD, TURN)) == {"threadId": THREAD, "turnId": TURN}


def test_inject_items_are_sent_verbatim() -> None:
    # Raw Responses API items: their snake_case keys and nulls must reach codex untouched.
    items: list[Mapping[str, Any]] = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "TEAMMATE COMPLETION"}]},
        {"type": "function_call_output", "call_id": "call-1", "output": "done", "status": None},
    ]
    sent = p.unstructure(p.ThreadInjectItemsParams(THREAD, copy.deepcopy(items)))
    assert sent == {"threadId": THREAD, "items": items}


def test_skills_extra_roots_params() -> None:
    assert p.unstructure(p.SkillsExtraRootsSetParams(["/abs/dir"])) == {"extraRoots": ["/abs/dir"]}


def test_camel_case_conversion() -> None:
    assert p._camel("id") == "id"
    assert p._camel("thread_id") == "threadId"
    assert p._camel("client_user_message_id") == "clientUserMessageId"
    assert p._wire(p.TextInput, "text_elements") == "text_elements"
    assert p._wire(p.TurnStartParams, "thread_id") == "threadId"


# -- structure: what we parse ----------------------------------------------------------------------------------


def test_initialize_result() -> None:
    raw = {
        "userAgent": "codex_probe/0.169.0 (Debian 12.0.0; x86_64) xterm (codex_probe; 0.0.1)",
        "codexHome": "/tmp/home",
        "platformFamily": "unix",
        "platformOs": "linux",
    }
    result = p.structure(with_unknown_fields(raw), p.InitializeResult)
    assert result == p.InitializeResult(raw["userAgent"], "/tmp/home", "unix", "linux")


def test_thread_start_result_keeps_the_whole_answer() -> None:
    result = p.structure(THREAD_START_RESULT, p.ThreadStartResult)
    assert (result.thread_id, result.model) == (THREAD, "mock-model")
    assert result.raw == THREAD_START_RESULT


@pytest.mark.parametrize("raw", [{}, {"thread": None}, {"thread": {"status": {}}}, {"thread": {"id": 7}}, []])
def test_thread_start_result_without_a_thread_id_is_refused(raw: Any) -> None:
    with pytest.raises(ValueError, match=r"thread\.id"):
        p.structure(raw, p.ThreadStartResult)


def test_thread_start_result_model_is_optional() -> None:
    result = p.structure({"thread": {"id": THREAD}, "model": None}, p.ThreadStartResult)
    assert (result.thread_id, result.model) == (THREAD, None)


def test_turn_start_result_matches_the_observed_frame() -> None:
    raw: dict[str, Any] = {
        "turn": {
            "id": TURN,
            "rootTurnId": TURN,
            "items": [],
            "itemsView": "notLoaded",
            "status": "inProgress",
            "error": None,
            "startedAt": None,
            "completedAt": None,
            "durationMs": None,
        }
    }
    assert p.structure(raw, p.TurnStartResult) == p.TurnStartResult(p.Turn(TURN, "inProgress", [], None, None))


def test_turn_steer_result() -> None:
    assert p.structure({"turnId": TURN, "extra": 1}, p.TurnSteerResult) == p.TurnSteerResult(TURN)


def test_turn_completed_frame() -> None:
    note = p.structure(with_unknown_fields(TURN_COMPLETED), p.TurnNotification)
    assert note.thread_id == THREAD
    turn = note.turn
    assert (turn.id, turn.status, turn.error, turn.duration_ms) == (TURN, "completed", None, 154)
    (item,) = turn.items
    assert (item.type, item.id, item.text) == ("agentMessage", "msg-1", "Hello from the mock model, turn one.")
    assert item.raw["phase"] is None  # the raw item is kept whole, unknown fields included
    assert item.raw["futureField"] == {"x": [1, None]}


def test_turn_started_frame_with_only_the_required_fields() -> None:
    raw = {"threadId": THREAD, "turn": {"id": TURN, "items": [], "status": "inProgress"}}
    note = p.structure(raw, p.TurnNotification)
    assert note == p.TurnNotification(THREAD, p.Turn(TURN))


def test_interrupted_turn_frame() -> None:
    raw: dict[str, Any] = {
        "threadId": THREAD,
        "turn": {
            "id": TURN,
            "items": [],
            "itemsView": "notLoaded",
            "status": "interrupted",
            "error": None,
            "durationMs": 415,
        },
    }
    turn = p.structure(raw, p.TurnNotification).turn
    assert (turn.status, turn.items, turn.duration_ms) == ("interrupted", [], 415)


def test_failed_turn_keeps_its_error() -> None:
    info = {"responseStreamDisconnected": {"httpStatusCode": 502}}
    raw = copy.deepcopy(TURN_COMPLETED)
    raw["turn"].update(
        status="failed",
        items=[],
        error={
            "message": "stream disconnected",
            "additionalDetails": "502",
            "codexErrorInfo": info,
            "misalignment": None,
        },
    )
    turn = p.structure(raw, p.TurnNotification).turn
    assert turn.status == "failed"
    assert turn.error == p.TurnError("stream disconnected", "502", info)
    minimal = p.structure({"message": "boom"}, p.TurnError)
    assert minimal == p.TurnError("boom")


def test_item_notifications() -> None:
    started = {"item": USER_MESSAGE, "threadId": THREAD, "turnId": TURN, "startedAtMs": 1795571356115}
    note = p.structure(with_unknown_fields(started), p.ItemNotification)
    assert (note.thread_id, note.turn_id, note.item.type, note.item.id) == (THREAD, TURN, "userMessage", "01a2-user")
    assert note.item.text is None  # a user message has no top-level text
    assert note.item.raw["content"][0]["text_elements"] == []

    completed = {"item": AGENT_MESSAGE, "threadId": THREAD, "turnId": TURN, "completedAtMs": 1, "contentTokenCount": 0}
    item = p.structure(completed, p.ItemNotification).item
    assert item == p.Item("agentMessage", "msg-1", AGENT_MESSAGE)
    assert item.raw == AGENT_MESSAGE


def test_unknown_item_types_are_kept_raw() -> None:
    raw = {"type": "holographicProjection", "id": "h-1", "frames": [1, 2, 3], "nested": {"camelCase": None}}
    item = p.structure({"threadId": THREAD, "turnId": TURN, "item": raw}, p.ItemNotification).item
    assert (item.type, item.id, item.text) == ("holographicProjection", "h-1", None)
    assert item.raw == raw


def test_item_without_a_string_id_keeps_a_none_id() -> None:
    item = p.structure({"type": "reasoning", "id": 12, "text": 5}, p.Item)
    assert (item.type, item.id, item.text) == ("reasoning", None, None)
    assert item.raw["id"] == 12


@pytest.mark.parametrize("raw", [{"id": "x"}, {"type": 3}, "agentMessage", None, ["type"]])
def test_an_item_needs_a_string_type(raw: Any) -> None:
    with pytest.raises(ValueError, match="string 'type'"):
        p.structure(raw, p.Item)


def test_agent_message_delta() -> None:
    raw = {"threadId": THREAD, "turnId": TURN, "itemId": "msg-1", "delta": "Hello "}
    assert p.structure(raw, p.AgentMessageDelta) == p.AgentMessageDelta(THREAD, TURN, "msg-1", "Hello ")


def test_error_notification() -> None:
    raw = {
        "error": {"message": "Reconnecting... 1/5", "codexErrorInfo": None, "additionalDetails": None},
        "threadId": THREAD,
        "turnId": TURN,
        "willRetry": True,
    }
    note = p.structure(with_unknown_fields(raw), p.ErrorNotification)
    assert note == p.ErrorNotification(p.TurnError("Reconnecting... 1/5"), THREAD, TURN, True)
    assert p.structure({"error": {"message": "x"}}, p.ErrorNotification) == p.ErrorNotification(p.TurnError("x"))


def test_thread_status_changed() -> None:
    status = {"type": "active", "activeFlags": ["waitingOnApproval"]}
    note = p.structure({"threadId": THREAD, "status": status}, p.ThreadStatusChanged)
    assert (note.thread_id, note.kind, note.status) == (THREAD, "active", status)
    assert p.structure({"threadId": THREAD, "status": {"type": "idle"}}, p.ThreadStatusChanged).kind == "idle"
    assert p.structure({"threadId": THREAD, "status": {}}, p.ThreadStatusChanged).kind is None
    with pytest.raises(Exception):  # noqa: B017 - cattrs wraps the ValueError in its validation group
        p.structure({"threadId": THREAD, "status": "idle"}, p.ThreadStatusChanged)


@pytest.mark.parametrize(
    ("raw", "cls"),
    [
        ({"threadId": THREAD}, p.TurnNotification),
        ({"threadId": THREAD, "turn": {"status": "completed"}}, p.TurnNotification),
        ({"threadId": THREAD, "turn": "t"}, p.TurnNotification),
        ({"threadId": THREAD, "turnId": TURN}, p.ItemNotification),
        ({"turn_id": TURN}, p.TurnSteerResult),  # the wire form is camelCase only
        ({"codexHome": "/h"}, p.InitializeResult),
        ({}, p.ErrorNotification),
    ],
)
def test_missing_required_fields_are_refused(raw: Any, cls: type[Any]) -> None:
    with pytest.raises((cattrs.BaseValidationError, ValueError, TypeError, KeyError)):
        p.structure(raw, cls)


# -- round trips -----------------------------------------------------------------------------------------------

texts = st.text(max_size=8)
maybe_texts = st.none() | texts
text_inputs = st.builds(p.TextInput, texts)
json_scalars = st.none() | st.booleans() | st.integers() | texts
raw_items = st.dictionaries(texts, json_scalars, max_size=3).map(lambda d: {**d, "type": "message"})

PARAMS = st.one_of(
    st.builds(
        p.InitializeParams,
        st.builds(p.ClientInfo, texts, texts, maybe_texts),
        st.none() | st.builds(p.InitializeCapabilities, st.booleans(), st.none() | st.lists(texts, max_size=2)),
    ),
    st.builds(p.ThreadStartParams, maybe_texts, maybe_texts, maybe_texts),
    st.builds(p.ThreadResumeParams, texts, maybe_texts, maybe_texts, maybe_texts, st.booleans()),
    st.builds(p.TurnStartParams, texts, st.lists(text_inputs, max_size=2), maybe_texts, maybe_texts),
    st.builds(p.TurnSteerParams, texts, texts, st.lists(text_inputs, max_size=2), maybe_texts),
    st.builds(p.TurnInterruptParams, texts, texts),
    st.builds(p.ThreadInjectItemsParams, texts, st.lists(raw_items, max_size=2)),
    st.builds(p.SkillsExtraRootsSetParams, st.lists(texts, max_size=2)),
)


def wire_keys(value: Any) -> set[str]:
    return set(value) if isinstance(value, dict) else set()


@settings(max_examples=200, deadline=None)
@given(PARAMS)
def test_params_round_trip_through_the_wire_form(params: Any) -> None:
    wire = p.unstructure(params)
    assert None not in wire.values()
    expected_keys = {
        p._wire(type(params), a.name) for a in attrs.fields(type(params)) if getattr(params, a.name) is not None
    }
    assert set(wire) == expected_keys
    assert p.structure(wire, type(params)) == params


def test_parsed_turn_round_trips() -> None:
    turn = p.structure(TURN_COMPLETED, p.TurnNotification)
    wire = p.unstructure(turn)
    assert wire["threadId"] == THREAD
    assert wire["turn"]["items"] == [AGENT_MESSAGE]  # an item goes back out as the raw object it came from
    assert "error" not in wire["turn"]
    assert p.structure(wire, p.TurnNotification) == turn


def test_hand_built_item_keeps_type_and_id_on_the_wire() -> None:
    items = [p.Item("agentMessage", "msg-1"), p.Item("reasoning", None, {"summary": []})]
    assert p.unstructure(p.Turn(TURN, items=items))["items"] == [
        {"type": "agentMessage", "id": "msg-1"},
        {"type": "reasoning", "summary": []},
    ]


def test_server_request_methods_have_no_duplicates() -> None:
    assert len(set(p.SERVER_REQUEST_METHODS)) == len(p.SERVER_REQUEST_METHODS) == 10
