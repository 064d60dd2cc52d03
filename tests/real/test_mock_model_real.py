"""The mock Responses API really drives the real ``codex app-server`` (stdio NDJSON, no network, no login)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from codex_trio.testing._mock_model import (
    ExecCommand,
    Fail,
    Hang,
    MockModelServer,
    Step,
    Text,
    write_codex_home,
)
from codex_trio.testing._real_codex import require_codex_bin

pytestmark = pytest.mark.real_codex

Message = dict[str, Any]


class NdjsonPeer:
    """Just enough of a client to speak to ``app-server --listen stdio://``; keeps every message it saw."""

    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._buffer = b""
        self._next_id = 1
        self.seen: list[Message] = []
        self._unread: list[Message] = []

    async def send(self, message: Message) -> None:
        await self._stdin.send_all(json.dumps(message).encode() + b"\n")

    async def _read_one(self) -> Message:
        while b"\n" not in self._buffer:
            chunk = await self._stdout.receive_some(1 << 16)
            if not chunk:
                raise EOFError(f"codex closed stdout; last messages: {self.seen[-5:]}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: Message = json.loads(line)
        self.seen.append(message)
        return message

    async def next_matching(self, predicate: Callable[[Message], bool]) -> Message:
        """The first message (buffered ones first) that matches; the others stay buffered, in order."""
        for i, message in enumerate(self._unread):
            if predicate(message):
                return self._unread.pop(i)
        while True:
            message = await self._read_one()
            if predicate(message):
                return message
            self._unread.append(message)

    async def request(self, method: str, params: Message) -> Any:
        request_id = self._next_id
        self._next_id += 1
        await self.send({"id": request_id, "method": method, "params": params})
        reply = await self.next_matching(lambda m: m.get("id") == request_id and "method" not in m)
        assert "error" not in reply, reply
        return reply["result"]

    async def notification(self, method: str) -> Message:
        message = await self.next_matching(lambda m: m.get("method") == method and "id" not in m)
        params: Message = message["params"]
        return params

    def drain_notifications(self, method: str) -> list[Message]:
        """Take every already-buffered notification of this method."""
        taken = [m for m in self._unread if m.get("method") == method and "id" not in m]
        self._unread = [m for m in self._unread if m not in taken]
        return [m["params"] for m in taken]


@asynccontextmanager
async def codex_app_server(tmp_path: Path, model: MockModelServer) -> AsyncIterator[NdjsonPeer]:
    """A real ``codex app-server`` on stdio with a fresh CODEX_HOME, handshaken, killed on exit."""
    codex_bin = require_codex_bin()
    home = write_codex_home(tmp_path / "codex-home", model.url)
    env = {**os.environ, "CODEX_HOME": str(home), "RUST_LOG": "warn"}
    stderr_path = tmp_path / "codex-stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            [codex_bin, "app-server", "--listen", "stdio://"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=str(tmp_path),
        )
    try:
        peer = NdjsonPeer(proc)
        await peer.request(
            "initialize",
            {
                "clientInfo": {"name": "codex_trio_tests", "title": "codex_trio tests", "version": "0.0.1"},
                "capabilities": {"experimentalApi": True},
            },
        )
        await peer.send({"method": "initialized"})
        yield peer
    except BaseException:
        print("--- codex stderr ---\n" + stderr_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    await pipe.aclose()


async def start_thread(peer: NdjsonPeer, cwd: Path) -> str:
    result = await peer.request("thread/start", {"cwd": str(cwd)})
    thread_id: str = result["thread"]["id"]
    assert result["thread"]["modelProvider"] == "mock"
    return thread_id


async def start_turn(peer: NdjsonPeer, thread_id: str, text: str) -> str:
    user_input = [{"type": "text", "text": text, "text_elements": []}]
    result = await peer.request("turn/start", {"threadId": thread_id, "input": user_input})
    turn_id: str = result["turn"]["id"]
    return turn_id


async def turn_completed(peer: NdjsonPeer, turn_id: str) -> Message:
    message = await peer.next_matching(
        lambda m: m.get("method") == "turn/completed" and m["params"]["turn"]["id"] == turn_id
    )
    turn: Message = message["params"]["turn"]
    return turn


async def wait_in_thread(wait: Callable[[float], bool]) -> None:
    # The mock lives in threads; abandon_on_cancel keeps the wait cancellable by the test's fail_after.
    assert await trio.to_thread.run_sync(wait, 30.0, abandon_on_cancel=True)


async def test_text_streams_deltas_then_hang_is_interrupted(tmp_path: Path) -> None:
    hang = Hang()
    chunks = ["Hello ", "from the ", "mock model, turn one."]
    script = [Text("Hello from the mock model, turn one.", deltas=chunks)]
    with trio.fail_after(60), MockModelServer(script) as model:
        async with codex_app_server(tmp_path, model) as peer:
            thread_id = await start_thread(peer, tmp_path)

            turn_id = await start_turn(peer, thread_id, "hi")
            turn = await turn_completed(peer, turn_id)
            assert turn["status"] == "completed", turn
            messages = [i for i in turn["items"] if i["type"] == "agentMessage"]
            assert [m["text"] for m in messages] == ["Hello from the mock model, turn one."]
            assert messages[0]["id"] == "msg-1"
            deltas = peer.drain_notifications("item/agentMessage/delta")
            assert [d["delta"] for d in deltas] == ["Hello ", "from the ", "mock model, turn one."]
            assert {d["itemId"] for d in deltas} == {"msg-1"}

            first = model.requests[0]
            assert first.path == "/v1/responses"
            assert first.body["stream"] is True
            assert first.headers["accept"] == "text/event-stream"
            assert first.input_messages()[-1] == ("user", "hi")
            assert "exec_command" in {t.get("name") for t in first.body["tools"]}

            model.enqueue(hang)
            turn_id = await start_turn(peer, thread_id, "please hang")
            await wait_in_thread(hang.wait_started)
            assert await peer.request("turn/interrupt", {"threadId": thread_id, "turnId": turn_id}) == {}
            turn = await turn_completed(peer, turn_id)
            assert turn["status"] == "interrupted", turn
            assert turn["items"] == []
            await wait_in_thread(hang.wait_disconnected)  # codex dropped the HTTP stream

            # The queue is empty now: the default step answers, and history carries turn one.
            turn_id = await start_turn(peer, thread_id, "again")
            turn = await turn_completed(peer, turn_id)
            assert turn["status"] == "completed", turn
            assert [i["text"] for i in turn["items"] if i["type"] == "agentMessage"] == ["mock reply 3"]
            texts = model.last_input_texts()
            assert "Hello from the mock model, turn one." in texts
            assert texts[-1] == "again"
        assert model.errors == []


async def test_exec_command_runs_and_its_output_reaches_the_model(tmp_path: Path) -> None:
    # a generous yield: codex returns as soon as the command exits, but a loaded machine can take over 1 s
    script: list[Step] = [ExecCommand("echo mock-exec-ok", workdir=str(tmp_path), yield_time_ms=15000), Text("ran it")]
    with trio.fail_after(60), MockModelServer(script) as model:
        async with codex_app_server(tmp_path, model) as peer:
            thread_id = await start_thread(peer, tmp_path)
            turn_id = await start_turn(peer, thread_id, "run something")
            turn = await turn_completed(peer, turn_id)
            assert turn["status"] == "completed", turn
            assert [i["text"] for i in turn["items"] if i["type"] == "agentMessage"] == ["ran it"]
        assert len(model.requests) == 2
        outputs = model.requests[1].function_call_outputs()
        assert list(outputs) == ["call-1"]
        assert "mock-exec-ok" in outputs["call-1"]
        executed = [
            m["params"]["item"]
            for m in peer.seen
            if m.get("method") == "item/completed" and m["params"]["item"]["type"] == "commandExecution"
        ]
        assert len(executed) == 1 and executed[0]["exitCode"] == 0, executed


@pytest.mark.parametrize("status", [400, 500])
async def test_fail_step_fails_the_turn(tmp_path: Path, status: int) -> None:
    with trio.fail_after(60), MockModelServer([Fail(status=status, message="mock says no")]) as model:
        async with codex_app_server(tmp_path, model) as peer:
            thread_id = await start_thread(peer, tmp_path)
            turn_id = await start_turn(peer, thread_id, "hi")
            turn = await turn_completed(peer, turn_id)
            assert turn["status"] == "failed", turn
            if status == 400:  # a 5xx is reported with codex's own "high demand" text instead
                assert "mock says no" in json.dumps(turn["error"])
            else:
                assert turn["error"]["codexErrorInfo"] == "internalServerError", turn
        assert len(model.requests) == 1  # request_max_retries = 0: no retry
