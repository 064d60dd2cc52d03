"""The transports: NDJSON (stdio), ws:// over TCP, and WebSocket over a Unix socket when the peer misbehaves.

The misbehaving peers are raw sockets, so each failure is exactly the bytes codex (or something else on the
socket) could send. Every such test also proves that no descriptor is left open and nothing is left for the
garbage collector (run them with ``-W error::ResourceWarning`` too).
"""

from __future__ import annotations

import base64
import functools
import gc
import hashlib
import os
import re
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from codex_trio import ConnectionLost, FrameTooLarge, TransportError
from codex_trio._connection import Connection
from codex_trio._handshake import initialize
from codex_trio._transport import (
    NdjsonMessageStream,
    connect_tcp_websocket,
    connect_unix_websocket,
    memory_message_stream_pair,
)


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


# --- every socket closed by us: upgrade failures, stalls, peers that drop the connection ---------------------


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@contextmanager
def nothing_left_for_the_collector() -> Iterator[None]:
    """Fails when the block leaves a file descriptor open, or leaves a socket for the garbage collector to close.

    The descriptors are compared before any collection, so a socket closed only by the collector counts as
    leaked; then a collection must not find an unclosed one (its ResourceWarning is recorded, also when a
    dropped reference closed it during the block).
    """
    gc.collect()
    before = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        left = open_fds() - before
        gc.collect()
    assert left == set(), f"descriptors left open: {sorted(left)}"
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


_ANSWERS = {
    "http-400": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    "http-400-body": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nbad request",
    "garbage": b"\x00\xffnot http at all\r\n\r\n",
    "bad-accept": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n"
    ),
    "half-answer": b"HTTP/1.1 101 Switching Protocols\r\nUpgr",
}
#: Answer the upgrade properly, then send one text frame.
ACCEPT = b"<accept>"
_FRAME = b'\x81\x0b{"hello":1}'  # one unmasked text frame, as a server sends it


def accept_answer(request: bytes) -> bytes:
    key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", request)
    assert key is not None, request
    digest = hashlib.sha1(key.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + base64.b64encode(digest) + b"\r\n\r\n" + _FRAME
    )


class RawServer:
    """A Unix-socket server for one connection that reads the client's upgrade request, then misbehaves.

    ``answer`` is sent as is (None: nothing; :data:`ACCEPT`: a real 101 and one message); then the server drops
    the connection (``close_after``, like codex exiting: no close frame) or keeps it open, answers nothing (codex
    never answers a close frame) and records when the client closes its end: ``client_closed`` proves the
    client closed the socket itself rather than leaving it to the garbage collector.
    """

    def __init__(self, answer: bytes | None, *, close_after: bool) -> None:
        self.answer = answer
        self.close_after = close_after
        self.request = b""
        self.got_request = trio.Event()
        self.client_closed = trio.Event()

    async def serve(self, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with sock:
            await sock.bind(os.fspath(path))
            sock.listen(1)
            listener = trio.SocketListener(sock)
            task_status.started()
            stream = await listener.accept()
        async with stream:
            while b"\r\n\r\n" not in self.request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    self.client_closed.set()
                    return
                self.request += chunk
            self.got_request.set()
            if self.answer is not None:
                await stream.send_all(accept_answer(self.request) if self.answer is ACCEPT else self.answer)
            if self.close_after:
                return
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass
            self.client_closed.set()


def socket_path(tmp_path: Path) -> Path:
    path = tmp_path / "s.sock"
    assert len(os.fsencode(path)) <= 107, "pytest's tmp_path is too long for a Unix socket here"
    return path


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        pytest.param(behaviour, expected, id=behaviour)
        for behaviour, expected in [
            ("http-400", "answered HTTP 400 instead of 101"),
            ("http-400-body", "answered HTTP 400 instead of 101: bad request"),
            ("garbage", r"not a valid WebSocket upgrade response \(illegal status line"),
            ("bad-accept", "not a valid WebSocket upgrade response"),
            ("half-answer", "closed the connection during the WebSocket upgrade"),
            ("close", "closed the connection during the WebSocket upgrade"),
        ]
    ],
)
async def test_failed_upgrade_is_connection_lost_and_leaves_nothing_open(
    tmp_path: Path, behaviour: str, expected: str
) -> None:
    close_after = behaviour in ("half-answer", "close")
    server = RawServer(_ANSWERS.get(behaviour), close_after=close_after)
    path = socket_path(tmp_path)
    with nothing_left_for_the_collector(), trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, path)
            # The caller's nursery (where the reader task would live) ends normally: nothing failed inside it.
            async with trio.open_nursery() as caller:
                with pytest.raises(ConnectionLost, match=expected) as info:
                    await connect_unix_websocket(caller, path)
                assert str(path) in str(info.value)
            if not close_after:
                await server.client_closed.wait()
    assert server.request.startswith(b"GET / HTTP/1.1\r\n")


async def test_stalled_upgrade_is_cancellable_and_closes_its_socket(tmp_path: Path) -> None:
    server = RawServer(None, close_after=False)  # reads the request and never answers
    path = socket_path(tmp_path)
    with nothing_left_for_the_collector(), trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, path)
            async with trio.open_nursery() as caller:
                deadline = trio.CancelScope()  # the launcher's deadline, expiring once the upgrade is stuck

                async def connect() -> None:
                    with deadline:
                        await connect_unix_websocket(caller, path)
                        raise AssertionError("connected to a server that never answered")  # pragma: no cover

                caller.start_soon(connect)
                await server.got_request.wait()
                deadline.cancel()
            assert deadline.cancelled_caught
            await server.client_closed.wait()


async def test_failed_tcp_upgrade_is_connection_lost_and_leaves_nothing_open() -> None:
    async def reject(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                request += chunk
            await stream.send_all(_ANSWERS["http-400"])
            while await stream.receive_some(4096):
                pass

    with nothing_left_for_the_collector(), trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, reject, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as caller:
                with pytest.raises(ConnectionLost, match="answered HTTP 400"):
                    await connect_tcp_websocket(caller, f"ws://127.0.0.1:{port}/x?y=1")
            nursery.cancel_scope.cancel()


async def test_socket_is_closed_by_us_after_the_peer_dropped_it(tmp_path: Path) -> None:
    # trio-websocket's aclose() returns at once on a connection the peer closed, leaving its socket open.
    server = RawServer(ACCEPT, close_after=True)
    path = socket_path(tmp_path)
    with nothing_left_for_the_collector(), trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, path)
            async with trio.open_nursery() as caller:
                stream = await connect_unix_websocket(caller, path)
                assert await stream.receive_message() == '{"hello":1}'
                with pytest.raises(ConnectionLost, match=r"closed \(code 1006"):
                    await stream.receive_message()
                with pytest.raises(ConnectionLost):
                    await stream.send_message("{}")
                await stream.aclose()
                await stream.aclose()  # idempotent


async def test_aclose_on_a_silent_peer_is_bounded_and_closes_the_socket(tmp_path: Path) -> None:
    server = RawServer(ACCEPT, close_after=False)
    path = socket_path(tmp_path)
    with nothing_left_for_the_collector(), trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, path)
            async with trio.open_nursery() as caller:
                stream = await connect_unix_websocket(caller, path)
                assert await stream.receive_message() == '{"hello":1}'
                with trio.CancelScope() as scope:
                    scope.cancel()  # a cancelled caller: the close is shielded, and still happens
                    await stream.aclose()
                await server.client_closed.wait()
                with pytest.raises(ConnectionLost):
                    await stream.receive_message()


async def test_cancelling_the_readers_nursery_closes_the_socket(tmp_path: Path) -> None:
    # The runtime's usual teardown: the session nursery is cancelled, and nobody calls aclose().
    server = RawServer(ACCEPT, close_after=False)
    path = socket_path(tmp_path)
    with nothing_left_for_the_collector(), trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, path)
            async with trio.open_nursery() as caller:
                stream = await connect_unix_websocket(caller, path)
                assert await stream.receive_message() == '{"hello":1}'
                caller.cancel_scope.cancel()
            await server.client_closed.wait()
