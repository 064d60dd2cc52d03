"""The Trio JSON-RPC connection: a reader task over a message stream, requests with deadlines, subscriptions.

The connection never raises out of its reader: when the stream closes or the peer misbehaves it records *why*
(:attr:`Connection.close_reason`, :attr:`Connection.close_error`), fails every pending request with one
:class:`~codex_trio.ConnectionLost`, ends every subscription, and returns. Whoever owns the session decides what a
closed connection means (the supervisor turns it into a restart).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import attrs
import trio

from ._errors import CodexTrioError, ConnectionLost, FrameTooLarge, ProtocolError, RequestTimeout, RpcError
from ._jsonrpc import (
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    ErrorResponse,
    IgnoredResponse,
    JsonRpcPeer,
    Notification,
    Response,
    ServerRequest,
)
from ._transport import MessageStream

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "Connection", "ServerRequestHandler", "Subscription"]

log = logging.getLogger("codex_trio.connection")

#: Long enough for thread/resume of a large history on a loaded machine, short enough that a hung server is
#: noticed. Turns are not requests (turn/start answers at once), so this does not bound turn length.
DEFAULT_REQUEST_TIMEOUT: Final = 60.0
#: A subscriber draining buffered notifications yields to the scheduler once per this many (see receive()).
_YIELD_EVERY: Final = 64

ServerRequestHandler = Callable[[ServerRequest], Awaitable[Any]]
"""Answers a server request: return the ``result``, or raise :class:`RpcError` (its code and message are sent)."""


@attrs.define(eq=False)
class _Waiter:
    event: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@attrs.define(eq=False)
class _Route:
    send: trio.MemorySendChannel[Any]
    methods: frozenset[str] | None
    lossless: bool
    dropped: int = 0


class Subscription:
    """A bounded stream of notifications. Close it (or leave its ``with`` block) to stop receiving.

    Lossy subscriptions never slow the reader: when the buffer is full a notification is dropped and counted in
    :attr:`dropped`. Lossless ones apply back-pressure to the reader instead (use them only for consumers that
    keep up, like the turn worker).
    """

    def __init__(self, route: _Route, receive: trio.MemoryReceiveChannel[Notification]) -> None:
        self._route = route
        self._receive = receive
        self._unyielded = 0

    @property
    def dropped(self) -> int:
        return self._route.dropped

    async def receive(self) -> Notification:
        """The next notification; raises ``trio.EndOfChannel`` once the connection is closed."""
        # Checked before taking a notification, so a cancellation never loses one (as in trio's own receive).
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            note = self._receive.receive_nowait()
        except trio.WouldBlock:
            return await self._receive.receive()
        # A notification was already buffered: skip the trip through the scheduler that a full checkpoint costs
        # for every message (it dominated ingest), but still yield every _YIELD_EVERY messages so that a busy
        # consumer cannot starve the other tasks.
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        return note

    def __aiter__(self) -> AsyncIterator[Notification]:
        return self

    async def __anext__(self) -> Notification:
        # receive(), inlined: this is the hot loop of every consumer (one coroutine call less per message).
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            note = self._receive.receive_nowait()
        except trio.WouldBlock:
            try:
                return await self._receive.receive()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        return note

    def close(self) -> None:
        self._receive.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@attrs.frozen
class ConnectionStatistics:
    requests_sent: int
    notifications_received: int
    server_requests_received: int
    ignored_responses: int
    pending_requests: int
    subscriptions: int
    dropped_notifications: int


class Connection:
    """A JSON-RPC connection to one app-server over one :class:`MessageStream`.

    Run :meth:`run` as a task (``await nursery.start(conn.run)``); it returns when the connection is closed.
    """

    def __init__(
        self,
        stream: MessageStream,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        server_request_handler: ServerRequestHandler | None = None,
    ) -> None:
        self._stream = stream
        self._peer = JsonRpcPeer()
        self._request_timeout = request_timeout
        self._handler = server_request_handler
        self._waiters: dict[int, _Waiter] = {}
        self._routes: list[_Route] = []
        self._route_snapshot: tuple[_Route, ...] = ()
        self._closed = trio.Event()
        self._close_reason: str | None = None
        self._close_error: CodexTrioError | None = None
        self._nursery: trio.Nursery | None = None
        self._notifications = 0
        self._server_requests = 0
        self._dropped_total = 0

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def close_error(self) -> CodexTrioError | None:
        """Why the connection closed, typed: ConnectionLost, ProtocolError or FrameTooLarge."""
        return self._close_error

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def set_server_request_handler(self, handler: ServerRequestHandler | None) -> None:
        self._handler = handler

    # -- the reader ----------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read frames until the stream closes; answer server requests in child tasks. Never raises for I/O."""
        error: CodexTrioError = ConnectionLost("connection closed")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await self._read_loop()
                except (ConnectionLost, ProtocolError, FrameTooLarge) as exc:
                    error = exc
                finally:
                    self._close(error)
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._close(error)
            await self._stream.aclose()  # shielded inside every transport's aclose

    async def _read_loop(self) -> None:
        receive = self._stream.receive_message
        dispatch = self._peer.receive
        while True:
            frame = await receive()
            incoming = dispatch(frame)
            if type(incoming) is Notification:
                self._notifications += 1
                # Routing inlined for the common case (a send that does not block): this runs per notification.
                # The snapshot is a tuple, so routes may come and go while a lossless send waits.
                for route in self._route_snapshot:
                    if route.methods is not None and incoming.method not in route.methods:
                        continue
                    try:
                        route.send.send_nowait(incoming)
                    except trio.WouldBlock:
                        await self._route_full(route, incoming)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._remove_route(route)
            elif type(incoming) is Response:
                self._wake(incoming.id, result=incoming.result)
            elif type(incoming) is ErrorResponse:
                self._wake(incoming.id, error=incoming.error)
            elif type(incoming) is ServerRequest:
                self._server_requests += 1
                assert self._nursery is not None
                self._nursery.start_soon(self._answer, incoming)
            elif type(incoming) is IgnoredResponse:
                log.debug("ignoring a response to unknown request id %r", incoming.id)

    async def _route_full(self, route: _Route, note: Notification) -> None:
        """A subscriber's buffer is full: a lossless one applies back-pressure, a lossy one drops and counts.

        Only this case awaits: awaiting send() for every message would cost a full trip through the scheduler
        per notification.
        """
        if route.lossless:
            try:
                await route.send.send(note)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._remove_route(route)
        else:
            route.dropped += 1
            self._dropped_total += 1

    def _wake(self, request_id: int, *, result: Any = None, error: BaseException | None = None) -> None:
        waiter = self._waiters.pop(request_id, None)
        if waiter is None:
            return
        waiter.result = result
        waiter.error = error
        waiter.event.set()

    async def _answer(self, request: ServerRequest) -> None:
        handler = self._handler
        if handler is None:
            frame = self._peer.error(
                request.id,
                METHOD_NOT_FOUND,
                f"codex_trio has no handler for server request {request.method!r}; it is declined",
            )
        else:
            try:
                result = await handler(request)
            except RpcError as exc:
                frame = self._peer.error(
                    request.id,
                    exc.code if exc.code is not None else INTERNAL_ERROR,
                    exc.rpc_message,
                    exc.data,
                )
            except Exception as exc:
                log.warning("server request handler for %s failed: %r", request.method, exc)
                frame = self._peer.error(request.id, INTERNAL_ERROR, f"{request.method} handler failed: {exc}")
            else:
                frame = self._peer.result(request.id, result)
        try:
            await self._stream.send_message(frame)
        except ConnectionLost:
            pass  # the reader reports the close; an unanswerable request dies with the connection

    # -- requests ------------------------------------------------------------------------------------------

    async def request(
        self, method: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send a request and wait for its result.

        Raises :class:`RpcError` (or a subclass) for an error answer, :class:`RequestTimeout` when no answer
        comes within ``timeout`` seconds (default: the connection's ``request_timeout``; ``math.inf`` waits
        forever), and :class:`ConnectionLost` when the connection closes first.
        """
        if self._close_error is not None:
            raise ConnectionLost(self._close_reason or "connection closed", request_sent=False)
        request_id, frame = self._peer.request(method, params)
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        deadline = self._request_timeout if timeout is None else timeout
        try:
            await self._send(frame)
            with trio.move_on_after(deadline if deadline != math.inf else math.inf) as scope:
                await waiter.event.wait()
            if scope.cancelled_caught:
                raise RequestTimeout(method, deadline)
        finally:
            if not waiter.event.is_set():
                self._waiters.pop(request_id, None)
                self._peer.forget(request_id)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        if self._close_error is not None:
            raise ConnectionLost(self._close_reason or "connection closed", request_sent=False)
        await self._send(self._peer.notification(method, params))

    async def _send(self, frame: str) -> None:
        try:
            await self._stream.send_message(frame)
        except ConnectionLost as exc:
            self._close(exc)
            raise ConnectionLost(self._close_reason or exc.reason, request_sent=False) from None

    # -- subscriptions -------------------------------------------------------------------------------------

    def subscribe(
        self, methods: Iterable[str] | None = None, *, buffer: int = 256, lossless: bool = False
    ) -> Subscription:
        """Receive notifications (all, or only ``methods``) through a bounded channel of ``buffer`` slots."""
        send, receive = trio.open_memory_channel[Notification](buffer)
        route = _Route(send, frozenset(methods) if methods is not None else None, lossless)
        if self.closed:
            send.close()
        else:
            self._routes.append(route)
            self._route_snapshot = tuple(self._routes)
        return Subscription(route, receive)

    def route_into(self, send: trio.MemorySendChannel[Any], methods: Iterable[str] | None = None) -> None:
        """Deliver notifications (all, or only ``methods``) into ``send``, a channel the caller owns, losslessly:
        a full channel applies back-pressure to the reader. ``send`` is closed when the connection closes (pass a
        clone to keep the original open). How a session feeds the runtime's one inbox without a pump task."""
        route = _Route(send, frozenset(methods) if methods is not None else None, True)
        if self.closed:
            send.close()
            return
        self._routes.append(route)
        self._route_snapshot = tuple(self._routes)

    def _remove_route(self, route: _Route) -> None:
        try:
            self._routes.remove(route)
        except ValueError:
            pass
        self._route_snapshot = tuple(self._routes)
        route.send.close()

    # -- closing -------------------------------------------------------------------------------------------

    def _close(self, error: CodexTrioError) -> None:
        if self._closed.is_set():
            return
        self._close_error = error
        self._close_reason = error.reason if isinstance(error, ConnectionLost) else str(error)
        lost = ConnectionLost(self._close_reason, request_sent=True)  # every waiter's frame went out
        self._peer.drain_pending()
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.error = lost
            waiter.event.set()
        for route in self._routes:
            route.send.close()
        self._routes.clear()
        self._route_snapshot = ()
        self._closed.set()

    async def aclose(self, reason: str = "connection closed by caller") -> None:
        """Close the connection: pending requests fail with ConnectionLost(reason); the reader returns."""
        self._close(ConnectionLost(reason))
        await self._stream.aclose()

    def statistics(self) -> ConnectionStatistics:
        peer = self._peer.statistics()
        return ConnectionStatistics(
            requests_sent=peer.requests_sent,
            notifications_received=self._notifications,
            server_requests_received=self._server_requests,
            ignored_responses=peer.ignored_responses,
            pending_requests=len(self._waiters),
            subscriptions=len(self._routes),
            dropped_notifications=self._dropped_total,
        )
