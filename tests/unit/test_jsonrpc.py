"""The sans-IO JSON-RPC peer: encoding, classification, error mapping, and fuzzing with arbitrary frames."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from codex_trio import MethodNotSupported, ProtocolError, RpcError, ServerDraining
from codex_trio._jsonrpc import (
    ErrorResponse,
    IgnoredResponse,
    JsonRpcPeer,
    Notification,
    Response,
    ServerRequest,
    is_method_not_supported,
)


def test_request_ids_start_at_one_and_params_always_sent() -> None:
    peer = JsonRpcPeer()
    first_id, first = peer.request("thread/list")
    second_id, _ = peer.request("turn/start", {"a": 1})
    assert (first_id, second_id) == (1, 2)
    assert json.loads(first) == {"id": 1, "method": "thread/list", "params": {}}
    assert "jsonrpc" not in json.loads(first)
    assert json.loads(peer.notification("initialized")) == {"method": "initialized"}


def test_classification() -> None:
    peer = JsonRpcPeer()
    request_id, _ = peer.request("thread/start", {})
    assert peer.receive(json.dumps({"id": request_id, "result": {"ok": 1}})) == Response(1, "thread/start", {"ok": 1})
    assert isinstance(peer.receive(json.dumps({"id": request_id, "result": {}})), IgnoredResponse)
    note = peer.receive(b'{"jsonrpc":"2.0","method":"turn/started","params":{"x":1},"emittedAtMs":17}')
    assert note == Notification("turn/started", {"x": 1}, 17)
    assert peer.receive('{"method":"skills/changed"}') == Notification("skills/changed", {}, None)
    assert peer.receive('{"id":0,"method":"item/tool/call","params":{}}') == ServerRequest(0, "item/tool/call", {})
    assert peer.statistics().ignored_responses == 1


def test_string_ids_are_accepted_on_responses() -> None:
    peer = JsonRpcPeer()
    request_id, _ = peer.request("thread/start", {})
    incoming = peer.receive(json.dumps({"id": str(request_id), "result": 5}))
    assert incoming == Response(request_id, "thread/start", 5)


def test_errors_are_typed_and_keep_code_and_data() -> None:
    peer = JsonRpcPeer()
    peer.request("a", {})
    peer.request("b", {})
    peer.request("c", {})
    unknown = peer.receive(
        json.dumps({"id": 1, "error": {"code": -32600, "message": "Invalid request: unknown variant `a`, expected"}})
    )
    assert isinstance(unknown, ErrorResponse) and isinstance(unknown.error, MethodNotSupported)
    draining = peer.receive(
        json.dumps(
            {
                "id": 2,
                "error": {
                    "code": -32600,
                    "message": "Server is draining",
                    "data": {"reason": "serverShuttingDown"},
                },
            }
        )
    )
    assert isinstance(draining, ErrorResponse) and isinstance(draining.error, ServerDraining)
    plain = peer.receive(json.dumps({"id": 3, "error": {"code": -32602, "message": "too big", "data": {"n": 1}}}))
    assert isinstance(plain, ErrorResponse)
    assert type(plain.error) is RpcError
    assert (plain.error.code, plain.error.rpc_message, plain.error.data, plain.error.method) == (
        -32602,
        "too big",
        {"n": 1},
        "c",
    )


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (-32601, "whatever", True),
        (-32600, "Invalid request: unknown variant `x`", True),
        (-32600, "Method not found", True),
        (None, "no such method here", True),
        (-32600, "no active turn to interrupt", False),
    ],
)
def test_method_not_supported_detection(code: int | None, message: str, expected: bool) -> None:
    assert is_method_not_supported(code, message) is expected


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "nope",
        "[]",
        "1",
        "null",
        '"s"',
        "{}",
        '{"id":1}',
        '{"method":3}',
        '{"method":"x","params":[1]}',
        '{"id":true,"method":"x","params":{}}',
        b"\xff\xfe",
        "{" * 100000,
    ],
)
def test_garbage_raises_protocol_error(frame: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        JsonRpcPeer().receive(frame)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=5) | json_values,
        "method": st.text(max_size=10) | json_values,
        "params": json_values,
        "result": json_values,
        "error": json_values,
        "emittedAtMs": json_values,
        "jsonrpc": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(envelopes.map(json.dumps), json_values.map(json.dumps), st.binary(max_size=64), st.text(max_size=64)))
def test_fuzz_only_typed_outcomes(frame: Any) -> None:
    peer = JsonRpcPeer()
    for _ in range(3):
        peer.request("m", {})
    try:
        incoming = peer.receive(frame)
    except ProtocolError:
        return
    assert isinstance(incoming, (Response, ErrorResponse, IgnoredResponse, Notification, ServerRequest))
    if isinstance(incoming, ErrorResponse):
        assert isinstance(incoming.error, RpcError)
