"""Message streams: one interface, three ways to reach an app-server.

* :func:`connect_unix_websocket` — WebSocket over a Unix socket, the default (``codex app-server --listen unix://``);
* :class:`NdjsonMessageStream` — newline-delimited JSON over a child's stdin/stdout (``--listen stdio://``);
* :func:`connect_tcp_websocket` — ``ws://127.0.0.1:PORT`` for an app-server started elsewhere;

plus :func:`memory_message_stream_pair` for in-process tests. Every implementation reports a closed peer as
:class:`~codex_trio.ConnectionLost` and an oversize frame or line as :class:`~codex_trio.FrameTooLarge`, so the
connection above never sees a transport-specific exception.

Every socket we open is closed by us, never left to the garbage collector. trio-websocket alone does not manage
that: its ``aclose()`` returns at once on a connection the peer already closed (codex never sends a close frame,
it drops the socket), without closing the underlying stream; and a peer that answers the upgrade with an HTTP
error, with garbage, or by closing, makes its reader task crash the caller's nursery or leaves the upgrade waiting
forever. So the socket is wrapped in :class:`_OwnedStream` (closed once, by whoever gets there first: our
``aclose()``, trio-websocket, or the end of its reader task), and the upgrade runs in a task of ours that turns
every way it can fail into one :class:`~codex_trio.ConnectionLost`.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

import h11
import trio
import trio_websocket
import wsproto.utilities

from ._errors import ConnectionLost, FrameTooLarge, TransportError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "SUN_PATH_BUDGET",
    "MessageStream",
    "NdjsonMessageStream",
    "WebSocketMessageStream",
    "connect_tcp_websocket",
    "connect_unix_websocket",
    "memory_message_stream_pair",
    "unix_connect_path",
]

#: Real ``turn/completed`` frames exceed trio-websocket's 1 MiB default (codex-app-server.md §3), so we default
#: to 64 MiB: large enough for any agent message codex accepts as input (1,048,576 chars, up to 4 bytes each).
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 2**20
#: ``sun_path`` holds 108 bytes including the terminating NUL on Linux.
SUN_PATH_BUDGET: Final = 107
# trio-websocket defaults to a 1-message queue and 4 KiB reads, which caps ingest of many small notifications;
# a deeper queue and bigger reads let its reader task run ahead of ours.
_WS_QUEUE: Final = 256
_WS_RECEIVE_BYTES: Final = 64 * 1024
_NDJSON_READ: Final = 64 * 1024
_WS_CLOSE_WAIT: Final = 0.05
#: A reader draining queued WebSocket messages yields to the scheduler once per this many.
_WS_YIELD_EVERY: Final = 64


def _oversize_reason(limit: int) -> str:
    """trio-websocket's close reason (code 1009) when a received message is over ``limit``."""
    return f"Exceeded maximum message size: {limit} bytes"


class MessageStream(Protocol):
    """What the JSON-RPC connection needs from a transport: whole text messages in both directions."""

    description: str

    async def send_message(self, message: str) -> None:
        """Send one message. Raises ConnectionLost when the stream is closed."""

    async def receive_message(self) -> str | bytes:
        """Receive one whole message. Raises ConnectionLost on close, FrameTooLarge past the size limit."""
        ...

    async def aclose(self) -> None:
        """Close the stream; idempotent."""


# --- WebSocket ------------------------------------------------------------------------------------------------


def unix_connect_path(path: Path | str) -> str:
    """The path to hand to ``connect()`` for ``path``.

    codex 0.169 makes the requested socket path a symlink into ``/tmp/codex-daemon-<uid>/``; a path longer than
    ``sun_path`` cannot be passed to ``connect()`` directly, but its (short) link target can.
    """
    text = os.fspath(path)
    if len(os.fsencode(text)) <= SUN_PATH_BUDGET:
        return text
    try:
        target = os.readlink(text)
    except OSError as exc:
        raise TransportError(
            f"socket path is {len(os.fsencode(text))} bytes, over the {SUN_PATH_BUDGET}-byte sun_path limit, "
            f"and is not a symlink to a shorter path ({exc.strerror}): {text}"
        ) from None
    resolved = os.path.join(os.path.dirname(text), target)
    if len(os.fsencode(resolved)) > SUN_PATH_BUDGET:
        raise TransportError(f"socket path and its link target are both over the sun_path limit: {text}")
    return resolved


class _EagerSendChannel:
    """Stands in for trio-websocket's internal message channel so that its reader task queues a message without
    a checkpoint when the queue has room.

    trio-websocket awaits ``send()`` once per message, and every such checkpoint is a full trip through the
    scheduler: its reader then hands over exactly one message per scheduler batch, which capped ingest at the
    speed of the scheduler rather than of the parsing. With this, one ``receive_some`` chunk (hundreds of small
    notifications) is queued in one go; a full queue still waits (back-pressure is unchanged), and the reader
    task still checkpoints on every read from the socket.
    """

    def __init__(self, inner: trio.MemorySendChannel[str | bytes]) -> None:
        self._inner = inner

    async def send(self, value: str | bytes) -> None:
        try:
            self._inner.send_nowait(value)
        except trio.WouldBlock:
            await self._inner.send(value)

    def send_nowait(self, value: str | bytes) -> None:
        self._inner.send_nowait(value)

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _EagerSendChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _make_eager(ws: trio_websocket.WebSocketConnection) -> trio.MemoryReceiveChannel[str | bytes] | None:
    """Apply :class:`_EagerSendChannel` to ``ws``; returns its receive channel, or None when trio-websocket's
    internals are not what this was written against (0.12), in which case nothing is changed."""
    send = getattr(ws, "_send_channel", None)
    receive = getattr(ws, "_recv_channel", None)
    if not isinstance(send, trio.MemorySendChannel) or not isinstance(receive, trio.MemoryReceiveChannel):
        return None
    ws._send_channel = _EagerSendChannel(send)  # type: ignore[assignment]  # duck-typed stand-in
    return receive


#: What trio-websocket's reader task raises when the peer does not complete the upgrade: an HTTP answer other
#: than 101 (``ConnectionRejected``), bytes that are not HTTP (wsproto's errors, and h11's: trio-websocket then
#: tries to send wsproto's suggested HTTP error response, which a client may not send), or a dead socket.
_UPGRADE_FAILURES: Final = (
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    wsproto.utilities.ProtocolError,
    h11.ProtocolError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


class _OwnedStream(trio.abc.Stream):
    """The socket under a client WebSocket: closed exactly once, by us, and watched during the upgrade.

    trio-websocket closes its stream only on some paths (never after the peer dropped the connection), so we
    keep this handle and close it ourselves; a second close, from trio-websocket or from us, is a no-op. The
    close is shielded, because a socket left open by a cancelled ``aclose`` is exactly the leak this prevents.

    ``on_gone`` (set only while the upgrade is under way) is called when the stream ends: end of file, an I/O
    error, or a close. trio-websocket's upgrade would otherwise wait forever for a 101 response after its reader
    task has given up on such a stream.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._closed = False
        self.on_gone: Callable[[], None] | None = None

    def _gone(self) -> None:
        callback = self.on_gone
        if callback is not None:
            callback()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._gone()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._gone()
            raise
        if not data:
            self._gone()
        return data

    async def aclose(self) -> None:
        self._gone()
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


class WebSocketMessageStream:
    """A :class:`MessageStream` over a trio-websocket connection.

    ``transport`` is the stream under ``ws`` when we opened it: :meth:`aclose` closes it too, because
    trio-websocket's own ``aclose`` leaves it open when the peer closed first. Without it (a server-side
    connection handed over by trio-websocket's server, which owns its stream) only ``ws`` is closed.
    """

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        description: str,
        max_message_size: int,
        *,
        eager: bool = False,
        transport: trio.abc.AsyncResource | None = None,
    ) -> None:
        self._ws = ws
        self.description = description
        self._max = max_message_size
        self._transport = transport
        # With ``eager``, messages already queued by trio-websocket are taken without a full checkpoint each.
        self._queued = _make_eager(ws) if eager else None
        self._unyielded = 0

    async def send_message(self, message: str) -> None:
        try:
            await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            # Always ConnectionLost, as the protocol says: a 1009 close here is an oversize frame *received*
            # earlier (ours, reported once by receive_message) or refused by the peer, never this message.
            raise self._closed(exc) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"{self.description}: send failed: {exc}") from None

    async def receive_message(self) -> str | bytes:
        queued = self._queued
        if queued is not None:
            # Like get_message(), minus the scheduler trip per queued message; still cancellable here, and still
            # yielding now and then. A closed queue falls through to get_message() for its ConnectionClosed.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                message = queued.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                pass
            else:
                self._unyielded += 1
                if self._unyielded >= _WS_YIELD_EVERY:
                    self._unyielded = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return message
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: trio_websocket.ConnectionClosed) -> ConnectionLost | FrameTooLarge:
        # 1009 is FrameTooLarge when trio-websocket closed because a message to us was over *our* limit: its
        # close reason then names that limit. The same code from the peer (whose reason is what we see on that
        # side) says that one of ours was too big for it: then the connection is simply lost. A peer with the
        # very same limit is indistinguishable, and reported as too large a frame.
        reason = exc.reason
        if getattr(reason, "code", None) == 1009 and getattr(reason, "reason", None) == _oversize_reason(self._max):
            return FrameTooLarge(self._max + 1, self._max, "WebSocket message")
        return self._closed(exc)

    def _closed(self, exc: trio_websocket.ConnectionClosed) -> ConnectionLost:
        code = getattr(exc.reason, "code", None)
        text = getattr(exc.reason, "reason", None)
        return ConnectionLost(f"{self.description} closed (code {code}{': ' + text if text else ''})")

    async def aclose(self) -> None:
        """Close the WebSocket and its socket; idempotent, shielded, and never longer than a short bound.

        A polite close waits for the peer's close frame, and codex never sends one (it drops the socket: 1006),
        so that wait is cut short; then the socket is closed by us whatever state trio-websocket is in.
        """
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_WS_CLOSE_WAIT):
                await self._ws.aclose()
            if self._transport is not None:
                await self._transport.aclose()


async def connect_unix_websocket(
    nursery: trio.Nursery,
    path: Path | str,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> WebSocketMessageStream:
    """Open a WebSocket over the Unix socket at ``path``; its reader task runs in ``nursery``.

    Raises :class:`~codex_trio.ConnectionLost` when nothing accepts on ``path`` or the peer fails the upgrade
    (an HTTP error, bytes that are not HTTP, a close); the socket is closed before it is raised, and nothing is
    left in ``nursery``. A peer that accepts and then says nothing keeps the upgrade waiting: bound the call
    with a deadline (cancelling it closes the socket too). No extensions are offered (the original warned that
    codex once rejected permessage-deflate).
    """
    target = unix_connect_path(path)
    try:
        stream = await trio.open_unix_socket(target)
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to app-server socket {path}: {exc.strerror or exc}") from None
    description = f"app-server socket {path}"
    return await _wrap_client(nursery, stream, description, max_message_size)


async def connect_tcp_websocket(
    nursery: trio.Nursery, url: str, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> WebSocketMessageStream:
    """Open ``ws://HOST:PORT[/PATH]`` (an app-server started elsewhere with ``--listen ws://...``).

    Fails like :func:`connect_unix_websocket`. The TCP stream is opened here rather than by trio-websocket, so
    that every failure path closes it.
    """
    if not url.startswith("ws://"):
        raise TransportError(f"only ws:// URLs are supported (got {url!r})")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 80
    except ValueError as exc:
        raise TransportError(f"not a valid ws:// URL ({exc}): {url!r}") from None
    if not host:
        raise TransportError(f"the ws:// URL names no host: {url!r}")
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise ConnectionLost(f"cannot open {url}: {exc.strerror or exc}") from None
    host_header = parts.netloc.rpartition("@")[2]  # keeps the port and an IPv6 address's brackets
    return await _wrap_client(
        nursery, stream, f"app-server at {url}", max_message_size, host=host_header, resource=resource
    )


async def _wrap_client(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    description: str,
    max_message_size: int,
    *,
    host: str = "localhost",
    resource: str = "/",
) -> WebSocketMessageStream:
    """Run the WebSocket upgrade on ``stream``; its reader task ends up in ``nursery``.

    Whatever happens (an upgrade failure, a cancellation, a closed nursery), ``stream`` is closed before this
    raises.
    """
    owned = _OwnedStream(stream)
    try:
        ws: WebSocketMessageStream = await nursery.start(
            _run_client_websocket, owned, host, resource, description, max_message_size
        )
    except BaseException:
        await owned.aclose()
        raise
    return ws


async def _run_client_websocket(
    owned: _OwnedStream,
    host: str,
    resource: str,
    description: str,
    max_message_size: int,
    *,
    task_status: trio.TaskStatus[WebSocketMessageStream],
) -> None:
    """Upgrade ``owned`` to a WebSocket, report it, then host trio-websocket's reader task until it ends.

    trio-websocket's reader task does the upgrade, and fails it in ways its caller cannot catch: an HTTP error
    or garbage makes it raise into the nursery it was started in, and a peer that closes leaves
    ``wrap_client_stream`` waiting for a 101 forever. So it runs in a nursery of ours, where those exceptions
    become one :class:`ConnectionLost` (raised from ``nursery.start``, so the caller's nursery never sees
    them), and the end of the stream during the upgrade cancels the wait. Once the reader task ends, the socket
    is useless and is closed at once, whether or not the stream's owner ever calls ``aclose``.
    """
    upgraded = False
    try:
        async with trio.open_nursery() as reader_nursery:
            with trio.CancelScope() as upgrade:
                owned.on_gone = upgrade.cancel
                ws = await trio_websocket.wrap_client_stream(
                    reader_nursery,
                    owned,  # type: ignore[arg-type]  # annotated SocketStream, documented (and used) as any Stream
                    host,
                    resource,
                    message_queue_size=_WS_QUEUE,
                    max_message_size=max_message_size,
                    receive_buffer_size=_WS_RECEIVE_BYTES,
                )
            owned.on_gone = None
            if upgrade.cancelled_caught:
                reader_nursery.cancel_scope.cancel()
            else:
                upgraded = True
                stream = WebSocketMessageStream(ws, description, max_message_size, eager=True, transport=owned)
                task_status.started(stream)
    except BaseExceptionGroup as group:
        if upgraded:
            raise
        failures, rest = group.split(_UPGRADE_FAILURES)
        if failures is None or rest is not None:
            raise
        raise ConnectionLost(
            f"{description}: WebSocket upgrade failed: {_describe_failure(failures)}; "
            f"is something other than codex app-server listening there?"
        ) from None
    finally:
        owned.on_gone = None
        await owned.aclose()
    if not upgraded:
        raise ConnectionLost(f"{description}: the peer closed the connection during the WebSocket upgrade")


def _describe_failure(group: BaseExceptionGroup[BaseException]) -> str:
    """One line for the first failure in ``group``: what the peer answered, or what went wrong."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, trio_websocket.ConnectionRejected):
        body = (exc.body or b"")[:200].decode("utf-8", "replace").strip()
        return f"the server answered HTTP {exc.status_code} instead of 101{': ' + body if body else ''}"
    if isinstance(exc, (wsproto.utilities.ProtocolError, h11.ProtocolError)):
        # trio-websocket's failed attempt to answer bad input hides the input's own error in the context chain;
        # the innermost remote error says what the peer sent (h11: "illegal status line: ...").
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, (wsproto.utilities.RemoteProtocolError, h11.RemoteProtocolError)):
                exc = cause
            cause = cause.__context__
        return f"the answer is not a valid WebSocket upgrade response ({exc})"
    return f"{type(exc).__name__}: {exc}"


# --- NDJSON ---------------------------------------------------------------------------------------------------


class NdjsonMessageStream:
    """Newline-delimited JSON over a pair of byte streams (a child's stdin and stdout).

    Lines are split here from ``receive_some`` chunks — no 64 KiB ceiling like asyncio's ``readline`` — and a
    line longer than ``max_line_size`` fails clearly instead of growing without bound.
    """

    def __init__(
        self,
        send_stream: trio.abc.SendStream,
        receive_stream: trio.abc.ReceiveStream,
        *,
        max_line_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        description: str = "app-server stdio",
    ) -> None:
        self._send = send_stream
        self._receive = receive_stream
        self._max = max_line_size
        self.description = description
        self._buffer = bytearray()
        self._lines: deque[bytes] = deque()
        self._eof = False
        self._send_lock = trio.Lock()

    async def send_message(self, message: str) -> None:
        data = message.encode() + b"\n"
        async with self._send_lock:
            try:
                await self._send.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(f"{self.description}: cannot write: {exc}") from None

    async def receive_message(self) -> bytes:
        lines = self._lines
        while True:
            if lines:
                line = lines.popleft()
                if line and not line.isspace():  # blank lines are skipped (isspace: the set strip() removes)
                    return line
                continue
            # Only an unfinished line is left in the buffer.
            if len(self._buffer) > self._max:
                size = len(self._buffer)
                self._buffer.clear()
                raise FrameTooLarge(size, self._max, "NDJSON line")
            if self._eof:
                if self._buffer.strip():
                    # A final line without its newline is still a whole message.
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line
                raise ConnectionLost(f"{self.description} closed (end of output)")
            try:
                chunk = await self._receive.receive_some(_NDJSON_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(f"{self.description}: read failed: {exc}") from None
            if not chunk:
                self._eof = True
            elif b"\n" in chunk:
                # One split per chunk rather than a find and a slice per line: most chunks hold hundreds of
                # notifications, and this loop is the whole cost of the stdio transport.
                parts: list[bytes] = (chunk if type(chunk) is bytes else bytes(chunk)).split(b"\n")
                if self._buffer:
                    self._buffer += parts[0]
                    parts[0] = bytes(self._buffer)
                self._buffer = bytearray(parts.pop())
                lines.extend(parts)
            else:
                self._buffer += chunk

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for stream in (self._send, self._receive):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, OSError) as exc:
                    if getattr(exc, "errno", None) not in (None, errno.EPIPE):
                        raise


# --- in-memory ------------------------------------------------------------------------------------------------


class _MemoryMessageStream:
    def __init__(
        self,
        send: trio.MemorySendChannel[str | bytes],
        receive: trio.MemoryReceiveChannel[str | bytes],
        description: str,
    ) -> None:
        self._send = send
        self._receive = receive
        self.description = description

    async def send_message(self, message: str) -> None:
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionLost(f"{self.description} closed") from None

    async def receive_message(self) -> str | bytes:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionLost(f"{self.description} closed") from None

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_message_stream_pair(buffer: int = 256) -> tuple[MessageStream, MessageStream]:
    """Two connected in-memory message streams ``(client_side, server_side)`` for tests."""
    to_server_send, to_server_receive = trio.open_memory_channel[str | bytes](buffer)
    to_client_send, to_client_receive = trio.open_memory_channel[str | bytes](buffer)
    client = _MemoryMessageStream(to_server_send, to_client_receive, "memory app-server stream")
    server = _MemoryMessageStream(to_client_send, to_server_receive, "memory client stream")
    return client, server
