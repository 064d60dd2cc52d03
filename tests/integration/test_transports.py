"""The NDJSON (stdio) and ws:// TCP transports."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from codex_trio import ConnectionLost, FrameTooLarge, TransportError
from codex_trio._connection import Connection
from codex_trio._handshake import initialize
from codex_trio._transport import NdjsonMessageStream, connect_tcp_websocket, memory_message_stream_pair


async def test_ndjson_splits_lines_across_chunks_without_a_64k_ceiling() -> None:
    send, receive = trio.testing.memory_stream_pair()
    stream = NdjsonMessageStream(send, receive, max_line_size=1_000_000)
    big = b'{"method":"x","params":{"t":"' + b"a" * 300_000 + b'"}}'
    payload = b'{"a":1}\n\n' + big + b"\n" + b'{"b":2}'
    with trio.fail_after(5):
        for i in range(0, len(payload), 7_000):
            await send.send_all(payload[i : i + 7_000])
        await send.aclose()
        assert await stream.receive_message() == b'{"a":1}'
        assert await stream.receive_message() == big
        assert await stream.receive_message() == b'{"b":2}'  # a final line without its newline
        with pytest.raises(ConnectionLost):
            await stream.receive_message()


async def test_ndjson_line_over_the_limit_is_a_clear_error() -> None:
    send, receive = trio.testing.memory_stream_pair()
    stream = NdjsonMessageStream(send, receive, max_line_size=1000)
    with trio.fail_after(5):
        await send.send_all(b"x" * 5000)
        with pytest.raises(FrameTooLarge, match="NDJSON line"):
            await stream.receive_message()


async def test_ndjson_send_appends_newline() -> None:
    send, receive = trio.testing.memory_stream_pair()
    stream = NdjsonMessageStream(send, receive)
    with trio.fail_after(5):
        await stream.send_message('{"id":1}')
        assert await receive.receive_some() == b'{"id":1}\n'


async def test_tcp_websocket_to_fake_and_refused() -> None:
    from trio_websocket import serve_websocket

    from codex_trio._transport import WebSocketMessageStream
    from codex_trio.testing import FakeAppServer

    fake = FakeAppServer()

    async def handler(request: object) -> None:
        ws = await request.accept()  # type: ignore[attr-defined]
        await fake.serve_stream(WebSocketMessageStream(ws, "fake client", 1 << 20))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            port = server.port
            async with trio.open_nursery() as inner:
                conn = Connection(await connect_tcp_websocket(inner, f"ws://127.0.0.1:{port}/"))
                await inner.start(conn.run)
                assert (await initialize(conn)).platform_os == "linux"
                await conn.aclose()
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            with pytest.raises(ConnectionLost):
                await connect_tcp_websocket(nursery, f"ws://127.0.0.1:{port}/")
            with pytest.raises(TransportError):
                await connect_tcp_websocket(nursery, "http://127.0.0.1:1/")


async def test_memory_pair_closes_cleanly() -> None:
    client, server = memory_message_stream_pair()
    await server.aclose()
    with pytest.raises(ConnectionLost):
        await client.receive_message()
