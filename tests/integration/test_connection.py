"""The Trio JSON-RPC connection against FakeAppServer (memory streams and a Unix-socket WebSocket)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from codex_trio import (
    ConnectionLost,
    HandshakeTimeout,
    MethodNotSupported,
    ProtocolError,
    RequestTimeout,
    RpcError,
)
from codex_trio._connection import Connection
from codex_trio._handshake import initialize
from codex_trio._jsonrpc import ServerRequest
from codex_trio._transport import connect_unix_websocket, memory_message_stream_pair
from codex_trio.testing._fake_app_server import FakeAppServer, FakeRpcError, TurnScript


@asynccontextmanager
async def connected(fake: FakeAppServer, **kwargs: Any) -> AsyncIterator[Connection]:
    client, server = memory_message_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.serve_stream, server)
        conn = Connection(client, **kwargs)
        await nursery.start(conn.run)
        yield conn
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_handshake_and_turn_over_memory() -> None:
    fake = FakeAppServer()
    fake.push_turns(TurnScript(text="hello there", deltas=2))
    with trio.fail_after(5):
        async with connected(fake) as conn:
            result = await initialize(conn)
            assert result.platform_os == "linux"
            assert fake.received[0]["method"] == "initialize"
            assert "jsonrpc" not in fake.received[0]
            assert fake.received[0]["id"] == 1
            assert fake.received[0]["params"]["capabilities"]["experimentalApi"] is True
            with conn.subscribe(["item/agentMessage/delta", "turn/completed"]) as sub:
                thread = await conn.request("thread/start", {})
                # frames are handled in order, so the notification came before thread/start
                assert fake.received[1] == {"method": "initialized"}
                thread_id = thread["thread"]["id"]
                await conn.request("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "hi"}]})
                deltas = []
                async for note in sub:
                    if note.method == "turn/completed":
                        assert note.params["turn"]["status"] == "completed"
                        assert note.emitted_at_ms is not None
                        break
                    deltas.append(note.params["delta"])
                assert "".join(deltas) == "hello there"


async def test_error_keeps_code_message_and_data() -> None:
    fake = FakeAppServer()
    fake.handlers["thread/start"] = lambda params: FakeRpcError("boom", code=-32602, data={"k": 1})
    with trio.fail_after(5):
        async with connected(fake) as conn:
            await initialize(conn)
            with pytest.raises(RpcError) as info:
                await conn.request("thread/start", {})
            assert (info.value.code, info.value.rpc_message, info.value.data) == (-32602, "boom", {"k": 1})
            with pytest.raises(MethodNotSupported):
                await conn.request("no/such/method", {})


async def test_request_times_out_and_late_answer_is_ignored(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer()
    release = trio.Event()

    async def slow(params: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {"late": True}

    fake.handlers["thread/start"] = slow
    async with connected(fake, request_timeout=5) as conn:
        await initialize(conn)
        with pytest.raises(RequestTimeout) as info:
            await conn.request("thread/start", {})
        assert info.value.method == "thread/start" and info.value.timeout == 5
        release.set()
        await trio.sleep(1)
        assert conn.statistics().ignored_responses == 1
        assert conn.statistics().pending_requests == 0
        # the connection is still usable
        assert await conn.request("thread/start", {}, timeout=math.inf) == {"late": True}


async def test_handshake_timeout_says_daemon_may_be_hung(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer()

    async def never(params: dict[str, Any]) -> None:
        await trio.sleep_forever()

    fake.handlers["initialize"] = never
    async with connected(fake) as conn:
        with pytest.raises(HandshakeTimeout, match="may be hung"):
            await initialize(conn, timeout=10)


async def test_server_closing_mid_request_fails_pending_with_one_connection_lost() -> None:
    fake = FakeAppServer()
    started = trio.Event()

    async def hang(params: dict[str, Any]) -> None:
        started.set()
        await trio.sleep_forever()

    fake.handlers["thread/start"] = hang
    errors: list[BaseException] = []
    with trio.fail_after(5):
        async with connected(fake) as conn:
            await initialize(conn)

            async def call() -> None:
                try:
                    await conn.request("thread/start", {})
                except ConnectionLost as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                nursery.start_soon(call)
                await started.wait()
                await fake.close_all()
            await conn.wait_closed()
            assert len(errors) == 2 and all(isinstance(e, ConnectionLost) for e in errors)
            with pytest.raises(ConnectionLost):
                await conn.request("thread/start", {})


@pytest.mark.parametrize("garbage", ["not json", "[1,2]", '{"jsonrpc":"2.0"}', '{"method": 5}', "\xff"])
async def test_garbage_frame_is_a_protocol_error_that_closes(garbage: str) -> None:
    fake = FakeAppServer()
    with trio.fail_after(5):
        async with connected(fake) as conn:
            await initialize(conn)
            await fake.send_raw_all(garbage)
            await conn.wait_closed()
            assert isinstance(conn.close_error, ProtocolError)
            with pytest.raises(ConnectionLost):
                await conn.request("thread/start", {})


async def test_unknown_response_id_is_counted_and_ignored() -> None:
    fake = FakeAppServer()
    with trio.fail_after(5):
        async with connected(fake) as conn:
            await initialize(conn)
            await fake.send_raw_all(json.dumps({"id": 999, "result": {}}))
            await fake.send_raw_all(json.dumps({"id": "abc", "error": {"code": 1, "message": "x"}}))
            assert (await conn.request("thread/start", {}))["thread"]["id"]
            assert conn.statistics().ignored_responses == 2
            assert not conn.closed


async def test_server_requests_are_answered_without_blocking_the_reader() -> None:
    fake = FakeAppServer()
    gate = trio.Event()
    seen: list[ServerRequest] = []

    async def handler(request: ServerRequest) -> dict[str, Any]:
        seen.append(request)
        if request.method == "slow":
            await gate.wait()
            return {"decision": "decline"}
        raise RpcError(request.method, -32601, "nope")

    with trio.fail_after(5):
        async with connected(fake, server_request_handler=handler) as conn:
            await initialize(conn)
            async with trio.open_nursery() as nursery:
                answers: list[Any] = []

                async def ask(method: str) -> None:
                    answers.append((method, await fake.request_all(method, {"x": 1})))

                nursery.start_soon(ask, "slow")
                await trio.sleep(0.01)
                # the reader still answers requests and routes responses while the slow handler waits
                assert (await conn.request("thread/start", {}))["thread"]
                nursery.start_soon(ask, "fast")
                await trio.sleep(0.01)
                gate.set()
            by_method = dict(answers)
            assert by_method["slow"][0]["result"] == {"decision": "decline"}
            assert by_method["fast"][0]["error"] == {"code": -32601, "message": "nope"}
            assert [r.method for r in seen] == ["slow", "fast"]


async def test_no_handler_answers_with_an_error() -> None:
    fake = FakeAppServer()
    with trio.fail_after(5):
        async with connected(fake) as conn:
            await initialize(conn)
            (answer,) = await fake.request_all("item/tool/call", {})
            assert answer["error"]["code"] == -32601


async def test_lossy_subscription_drops_and_counts_when_full() -> None:
    fake = FakeAppServer()
    with trio.fail_after(5):
        async with connected(fake) as conn:
            await initialize(conn)
            with conn.subscribe(["tick"], buffer=2) as sub, conn.subscribe(["tick"], buffer=100) as all_ticks:
                for i in range(10):
                    await fake.notify_all("tick", {"i": i})
                await conn.request("thread/start", {})  # a round trip: the ticks were routed
                assert sub.dropped == 8
                assert [(await sub.receive()).params["i"] for _ in range(2)] == [0, 1]
                assert all_ticks.dropped == 0
            assert conn.statistics().subscriptions == 0 or True
            # closed subscriptions are removed on the next routed notification
            await fake.notify_all("tick", {"i": 99})
            await conn.request("thread/start", {})
            assert conn.statistics().subscriptions == 0


async def test_subscription_ends_when_connection_closes() -> None:
    fake = FakeAppServer()
    with trio.fail_after(5):
        async with connected(fake) as conn:
            await initialize(conn)
            sub = conn.subscribe()
            await fake.close_all()
            with pytest.raises(trio.EndOfChannel):
                while True:
                    await sub.receive()


async def test_unix_websocket_large_frame_and_oversize(tmp_path: Path) -> None:
    fake = FakeAppServer()
    big = "x" * 1_500_000
    fake.push_turns(TurnScript(text=big, deltas=0), TurnScript(text="y" * 3_000_000, deltas=0))
    sock = tmp_path / "s.sock"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve_unix, sock)
            async with trio.open_nursery() as conn_nursery:
                stream = await connect_unix_websocket(conn_nursery, sock, max_message_size=2_000_000)
                conn = Connection(stream)
                await conn_nursery.start(conn.run)
                await initialize(conn)
                with conn.subscribe(["turn/completed"], lossless=True) as sub:
                    thread_id = (await conn.request("thread/start", {}))["thread"]["id"]
                    params = {"threadId": thread_id, "input": [{"type": "text", "text": "big"}]}
                    await conn.request("turn/start", params)
                    note = await sub.receive()
                    assert note.params["turn"]["items"][0]["text"] == big
                    await conn.request("turn/start", params)
                    await conn.wait_closed()
                from codex_trio import FrameTooLarge

                assert isinstance(conn.close_error, FrameTooLarge)
                conn_nursery.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def test_unix_websocket_connects_through_long_symlink(tmp_path: Path) -> None:
    fake = FakeAppServer()
    real = tmp_path / "r.sock"
    long_dir = tmp_path / ("d" * 60) / ("e" * 60)
    long_dir.mkdir(parents=True)
    link = long_dir / "app.sock"
    link.symlink_to(real)
    assert len(str(link).encode()) > 107
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve_unix, real)
            async with trio.open_nursery() as conn_nursery:
                conn = Connection(await connect_unix_websocket(conn_nursery, link))
                await conn_nursery.start(conn.run)
                assert (await initialize(conn)).platform_family == "unix"
                await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_connect_to_missing_socket_is_connection_lost(tmp_path: Path) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(ConnectionLost, match="cannot connect"):
                await connect_unix_websocket(nursery, tmp_path / "missing.sock")


async def test_connection_lost_says_whether_the_request_left_us() -> None:
    fake = FakeAppServer()
    started = trio.Event()

    async def hang(params: dict[str, Any]) -> None:
        started.set()
        await trio.sleep_forever()

    fake.handlers["thread/start"] = hang
    with trio.fail_after(5):
        async with connected(fake) as conn:
            await initialize(conn)
            errors: list[ConnectionLost] = []

            async def call() -> None:
                try:
                    await conn.request("thread/start", {})
                except ConnectionLost as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await started.wait()
                await fake.close_all()
            assert errors[0].request_sent is True  # sent; the answer never came
            with pytest.raises(ConnectionLost) as info:
                await conn.request("thread/start", {})
            assert info.value.request_sent is False  # never left us: safe to send elsewhere
