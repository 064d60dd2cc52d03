"""The mock Responses API, driven with http.client from plain threads (no codex involved)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from codex_trio import ConfigError, ProcessError
from codex_trio.testing import _real_codex
from codex_trio.testing._mock_model import (
    ExecCommand,
    Fail,
    Hang,
    MockModelServer,
    RawEvents,
    Text,
    Usage,
    codex_config_toml,
    write_codex_home,
)

TIMEOUT = 10.0

Event = tuple[str, dict[str, Any]]


@pytest.fixture
def model() -> Iterator[MockModelServer]:
    with MockModelServer() as server:
        yield server
    assert server.errors == []


def parse_sse(body: bytes) -> list[Event]:
    """``event:``/``data:`` blocks in order; comment lines (``: keepalive``) are skipped."""
    events: list[Event] = []
    for block in body.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])))
    return events


def post(
    model: MockModelServer,
    body: Any = None,
    path: str = "/v1/responses",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", model.port, timeout=TIMEOUT)
    try:
        payload = json.dumps(body if body is not None else {"model": "mock-model", "input": []}).encode()
        all_headers = {"content-type": "application/json", "accept": "text/event-stream", **(headers or {})}
        conn.request("POST", path, body=payload, headers=all_headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def post_events(model: MockModelServer, body: Any = None) -> list[Event]:
    status, headers, data = post(model, body)
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    return parse_sse(data)


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a daemon thread; the list receives its result (or exception)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_url_points_at_v1_on_loopback(model: MockModelServer) -> None:
    assert model.url == f"http://127.0.0.1:{model.port}/v1"


def test_text_with_explicit_deltas_gives_the_exact_events_in_order(model: MockModelServer) -> None:
    model.enqueue(Text("Hello world!", deltas=["Hello ", "world", "!"]))
    events = post_events(model)
    message = {"type": "message", "role": "assistant", "id": "msg-1"}
    usage = {  # DEFAULT_USAGE
        "input_tokens": 42,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 49,
    }
    assert events == [
        ("response.created", {"type": "response.created", "response": {"id": "resp-1"}}),
        (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "item": {**message, "content": [{"type": "output_text", "text": ""}]},
            },
        ),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hello "}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "world"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "!"}),
        (
            "response.output_item.done",
            {
                "type": "response.output_item.done",
                "item": {**message, "content": [{"type": "output_text", "text": "Hello world!"}]},
            },
        ),
        ("response.completed", {"type": "response.completed", "response": {"id": "resp-1", "usage": usage}}),
    ]


def deltas_of(events: list[Event]) -> list[str]:
    return [data["delta"] for name, data in events if name == "response.output_text.delta"]


def test_text_delta_count_and_default_word_chunks(model: MockModelServer) -> None:
    model.enqueue(Text("abcdefghij", deltas=3), Text("one two  three"), Text("silent", deltas=0))
    assert deltas_of(post_events(model)) == ["abcd", "efgh", "ij"]
    assert deltas_of(post_events(model)) == ["one ", "two  ", "three"]
    events = post_events(model)
    assert deltas_of(events) == []
    assert events[-2][1]["item"]["content"][0]["text"] == "silent"


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=60), n=st.integers(min_value=1, max_value=12))
def test_delta_chunks_always_add_up_to_the_text(text: str, n: int) -> None:
    assert "".join(Text(text).delta_chunks()) == text
    chunks = Text(text, deltas=n).delta_chunks()
    assert "".join(chunks) == text
    assert len(chunks) <= n


def test_exec_command_is_a_function_call_with_json_arguments(model: MockModelServer) -> None:
    model.enqueue(
        ExecCommand("touch /x/marker", sandbox_permissions="require_escalated", justification="why not", workdir="/x"),
        ExecCommand("ls"),
    )
    events = post_events(model)
    assert [name for name, _ in events] == [
        "response.created",
        "response.output_item.done",
        "response.completed",
    ]
    item = events[1][1]["item"]
    assert {k: v for k, v in item.items() if k != "arguments"} == {
        "type": "function_call",
        "call_id": "call-1",
        "name": "exec_command",
    }
    assert json.loads(item["arguments"]) == {
        "cmd": "touch /x/marker",
        "workdir": "/x",
        "yield_time_ms": 1000,
        "sandbox_permissions": "require_escalated",
        "justification": "why not",
    }
    item = post_events(model)[1][1]["item"]
    assert item["call_id"] == "call-2"
    assert json.loads(item["arguments"]) == {"cmd": "ls", "yield_time_ms": 1000}


def test_empty_queue_answers_with_the_default_step(model: MockModelServer) -> None:
    model.enqueue(Text("scripted"))
    texts = []
    for _ in range(3):
        events = post_events(model)
        texts.append(events[-2][1]["item"]["content"][0]["text"])
    assert texts == ["scripted", "mock reply 2", "mock reply 3"]
    assert model.pending_steps == 0


def test_default_step_is_configurable() -> None:
    with MockModelServer(default=lambda n: ExecCommand(f"echo {n}")) as server:
        item = post_events(server)[1][1]["item"]
        assert json.loads(item["arguments"])["cmd"] == "echo 1"
        server.set_default(Text("fixed"))
        assert post_events(server)[-2][1]["item"]["content"][0]["text"] == "fixed"


def test_requests_are_recorded_with_body_headers_and_input_texts(model: MockModelServer) -> None:
    body = {
        "model": "mock-model",
        "stream": True,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "base"}]},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}, {"type": "input_text", "text": " there"}],
            },
            {"type": "function_call", "call_id": "call-1", "name": "exec_command", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call-1", "output": "Process exited with code 0"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        ],
    }
    post_events(model, body)
    post_events(
        model,
        {
            "input": [
                {
                    "type": "message",
                    "role": "developer",
                    "content": [{"type": "input_text", "text": "TEAMMATE COMPLETION"}],
                }
            ]
        },
    )
    first, _ = model.wait_for_requests(2, timeout=TIMEOUT)
    assert (first.number, first.method, first.path) == (1, "POST", "/v1/responses")
    assert first.body == body
    assert first.headers["accept"] == "text/event-stream"
    assert first.input_texts() == ["base", "hi", " there", "ok"]
    assert first.input_messages() == [("developer", "base"), ("user", "hi there"), ("assistant", "ok")]
    assert first.function_call_outputs() == {"call-1": "Process exited with code 0"}
    assert isinstance(first.step, Text) and first.step.text == "mock reply 1"
    assert model.last_input_texts() == ["TEAMMATE COMPLETION"]


def test_requests_expose_the_model_reasoning_images_and_output_schema(model: MockModelServer) -> None:
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    image = "data:image/png;base64,AAAA"
    post_events(
        model,
        {
            "model": "gpt-x",
            "reasoning": {"effort": "high", "summary": "detailed"},
            "text": {
                "format": {"type": "json_schema", "strict": True, "schema": schema, "name": "codex_output_schema"}
            },
            "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "data:old"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "seen"}]},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": image}],
                },
            ],
        },
    )
    post_events(model, {"input": []})
    first, second = model.wait_for_requests(2, timeout=TIMEOUT)
    assert (first.model, first.reasoning_effort, first.reasoning_summary) == ("gpt-x", "high", "detailed")
    assert first.output_schema == schema
    assert first.input_images() == ["data:old", image]
    assert first.last_user_images() == [image]
    assert (second.model, second.reasoning, second.output_schema, second.input_images()) == (None, {}, None, [])
    assert second.last_user_images() == []


def test_text_json_answers_json() -> None:
    step = Text.json({"answer": [1, 2]}, deltas=2)
    assert json.loads(step.text) == {"answer": [1, 2]}
    assert "".join(step.delta_chunks()) == step.text


def test_wait_for_requests_blocks_until_they_arrive_and_times_out() -> None:
    with MockModelServer() as server:
        with pytest.raises(TimeoutError, match="got 0 request"):
            server.wait_for_requests(1, timeout=0.01)
        waiter, out = in_thread(lambda: server.wait_for_requests(2, timeout=TIMEOUT))
        post_events(server)
        post_events(server)
        waiter.join(TIMEOUT)
        assert [r.number for r in out[0]] == [1, 2]


def test_hang_blocks_until_released_then_finishes(model: MockModelServer) -> None:
    hang = Hang(then=Text("after the wait", deltas=1))
    model.enqueue(hang)
    client, out = in_thread(lambda: post_events(model))
    assert hang.wait_started(TIMEOUT)
    client.join(0.3)
    assert client.is_alive() and out == []  # still blocked: only keepalives so far
    model.release()
    client.join(TIMEOUT)
    events = out[0]
    assert [name for name, _ in events] == [
        "response.created",
        "response.output_item.added",
        "response.output_text.delta",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0][1]["response"]["id"] == "resp-1"
    assert events[2][1]["delta"] == "after the wait"
    assert hang.released and not hang.disconnected


def test_hang_sends_keepalive_comments_while_waiting(model: MockModelServer) -> None:
    hang = Hang()
    model.enqueue(hang)
    sock = socket.create_connection(("127.0.0.1", model.port), timeout=TIMEOUT)
    try:
        body = b"{}"
        sock.sendall(
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = b""
        while received.count(b": keepalive") < 2:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        assert b"HTTP/1.1 200" in received and b"event: response.created" in received
        assert b"response.completed" not in received
    finally:
        sock.close()
    assert hang.wait_disconnected(TIMEOUT)


def test_client_disconnect_during_hang_is_tolerated(model: MockModelServer, capsys: Any) -> None:
    hang = Hang()
    model.enqueue(hang)
    conn = http.client.HTTPConnection("127.0.0.1", model.port, timeout=TIMEOUT)
    conn.request("POST", "/v1/responses", body=b"{}", headers={"content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert hang.wait_started(TIMEOUT)
    conn.close()
    response.close()
    assert hang.wait_disconnected(TIMEOUT)
    # The server keeps serving, and no traceback was printed.
    assert post_events(model)[-1][0] == "response.completed"
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "BrokenPipe" not in captured.err


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_fail_answers_with_the_http_status(model: MockModelServer, status: int) -> None:
    model.enqueue(Fail(status=status, message="nope"))
    code, headers, data = post(model)
    assert code == status
    assert headers["content-type"] == "application/json"
    assert json.loads(data)["error"]["message"] == "nope"
    assert len(model.requests) == 1


def test_raw_events_are_sent_verbatim(model: MockModelServer) -> None:
    raw = [
        ("response.created", {"type": "response.created", "response": {"id": "x"}}),
        ("response.failed", {"type": "response.failed", "response": {"id": "x", "error": {"code": "oops"}}}),
    ]
    model.enqueue(RawEvents(raw))
    assert post_events(model) == raw


def test_unknown_path_is_404_and_not_recorded(model: MockModelServer) -> None:
    assert post(model, path="/v1/models")[0] == 404
    assert model.requests == []


def test_close_ends_a_hanging_stream_and_is_idempotent() -> None:
    server = MockModelServer([Hang()]).start()
    client, _ = in_thread(lambda: post(server))
    server.wait_for_requests(1, timeout=TIMEOUT)
    server.close()
    client.join(TIMEOUT)
    assert not client.is_alive()
    server.close()
    with pytest.raises(RuntimeError):
        _ = server.url


def test_write_codex_home_matches_the_reference_config(tmp_path: Path) -> None:
    home = write_codex_home(tmp_path / "a" / "home", "http://127.0.0.1:1234/v1")
    assert home == tmp_path / "a" / "home"
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    config = tomllib.loads((home / "config.toml").read_text())
    assert config == {
        "model": "mock-model",
        "model_provider": "mock",
        "approval_policy": "never",
        "sandbox_mode": "read-only",
        "model_providers": {
            "mock": {
                "name": "Mock provider",
                "base_url": "http://127.0.0.1:1234/v1",
                "wire_api": "responses",
                "request_max_retries": 0,
                "stream_max_retries": 0,
            }
        },
        "analytics": {"enabled": False},
        "features": {"plugins": False},
    }


def test_write_codex_home_tightens_an_existing_dir_and_takes_extra_toml(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    write_codex_home(
        tmp_path,
        "http://x/v1",
        approval_policy="on-request",
        sandbox_mode="danger-full-access",
        extra_toml='model_reasoning_effort = "low"\n[shell_environment_policy]\ninherit = "core"\n',
    )
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o700
    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["approval_policy"] == "on-request"
    assert config["sandbox_mode"] == "danger-full-access"
    assert config["model_reasoning_effort"] == "low"
    assert config["shell_environment_policy"] == {"inherit": "core"}
    assert config["features"] == {"plugins": False}


def test_extra_toml_that_clashes_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="extra_toml"):
        codex_config_toml("http://x/v1", extra_toml="[features]\nplugins = true\n")


@settings(max_examples=60, deadline=None)
@given(value=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
def test_config_values_are_toml_quoted(value: str) -> None:
    config = tomllib.loads(codex_config_toml(value, approval_policy=value, sandbox_mode=value))
    assert config["model_providers"]["mock"]["base_url"] == value
    assert config["approval_policy"] == value
    assert config["sandbox_mode"] == value


# --- finding the real binary (codex_trio.testing._real_codex) ---------------------------------------------


def fake_binary(path: Path, script: str) -> str:
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


def test_find_codex_bin_prefers_an_executable_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_binary(tmp_path / "my-codex", "echo hi")
    monkeypatch.setenv("CODEX_TRIO_CODEX_BIN", fake)
    assert _real_codex.find_codex_bin() == fake


def test_find_codex_bin_skips_a_non_executable_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_exec = tmp_path / "codex"
    not_exec.write_text("")
    monkeypatch.setenv("CODEX_TRIO_CODEX_BIN", str(not_exec))
    monkeypatch.setattr(_real_codex, "_native_candidates", lambda: [])
    on_path = fake_binary(tmp_path / "bin-dir-codex", "true")
    (tmp_path / "bin").mkdir()
    os.symlink(on_path, tmp_path / "bin" / "codex")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert _real_codex.find_codex_bin() == str(tmp_path / "bin" / "codex")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert _real_codex.find_codex_bin() is None


def test_find_codex_bin_finds_the_native_binary_under_codex_npm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    native_dir = tmp_path / ".codex-npm/node_modules/@openai/codex-linux-x64/vendor/x86_64-linux-musl/bin"
    native_dir.mkdir(parents=True)
    native = fake_binary(native_dir / "codex", "true")
    monkeypatch.delenv("CODEX_TRIO_CODEX_BIN", raising=False)
    monkeypatch.chdir(tmp_path)
    assert _real_codex.find_codex_bin() == native


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [(None, "skip"), ("", "skip"), ("0", "skip"), ("false", "skip"), ("true", "fail"), ("1", "fail")],
)
def test_require_codex_bin_skips_or_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: str
) -> None:
    monkeypatch.setattr(_real_codex, "find_codex_bin", lambda: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception
    with pytest.raises(expected, match=r"\./dev setup"):
        _real_codex.require_codex_bin()


def test_require_codex_bin_returns_what_it_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_real_codex, "find_codex_bin", lambda: "/some/codex")
    assert _real_codex.require_codex_bin() == "/some/codex"


def test_codex_version_runs_the_binary(tmp_path: Path) -> None:
    ok = fake_binary(tmp_path / "ok", "echo 'codex-cli 9.9.9'")
    assert _real_codex.codex_version(ok) == "codex-cli 9.9.9"
    with pytest.raises(ProcessError, match="exited with status 3"):
        _real_codex.codex_version(fake_binary(tmp_path / "bad", "echo broken >&2; exit 3"))
    with pytest.raises(ProcessError, match="could not run"):
        _real_codex.codex_version(str(tmp_path / "missing"))


def test_reasoning_streams_before_the_text_and_usage_is_the_steps(model: MockModelServer) -> None:
    usage = Usage(input_tokens=100, output_tokens=10, cached_input_tokens=20, reasoning_output_tokens=3)
    model.enqueue(
        Text("Done.", deltas=0, reasoning_summary=["Think it", "over"], reasoning_content=["raw"], usage=usage)
    )
    events = post_events(model)
    kinds = [kind for kind, _ in events]
    assert kinds == [
        "response.created",
        "response.output_item.added",  # the reasoning item
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
        "response.output_item.done",
        "response.output_item.added",  # the message
        "response.output_item.done",
        "response.completed",
    ]
    summary = [d["delta"] for k, d in events if k == "response.reasoning_summary_text.delta"]
    assert summary == ["Think ", "it", "over"]
    assert [d["summary_index"] for k, d in events if k == "response.reasoning_summary_text.delta"] == [0, 0, 1]
    done = events[8][1]["item"]
    assert done["summary"] == [{"type": "summary_text", "text": "Think it"}, {"type": "summary_text", "text": "over"}]
    assert done["content"] == [{"type": "reasoning_text", "text": "raw"}]
    assert events[-1][1]["response"]["usage"] == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 20},
        "output_tokens": 10,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 110,
    }


def test_usage_total_defaults_to_input_plus_output() -> None:
    assert Usage(3, 4).total == 7 and Usage(3, 4, total_tokens=9).total == 9
    with pytest.raises(TypeError, match="list of strings"):
        Text("x", reasoning_summary="not a list")
