"""One app-server session (one generation), from the spawn to the reap.

Task tree of a session::

    launcher.launch()            the child (or fake) and its stream; leaving reaps it, shielded
    └── session nursery N1       cancelled as soon as the first failure is recorded
        ├── exit watcher         the child went away -> failure (from the spawn on, so a start cannot hang)
        ├── connection reader    JSON-RPC frames; notifications go straight into the engine's inbox
        ├── close watcher        the connection closed -> failure (with the child's exit status if it died)
        ├── (start, in order)    connect -> handshake -> skill roots -> thread -> in-doubt reconciliation
        │                        -> "session up" to the engine; one overall deadline besides each step's own
        └── RPC tasks            the engine's turn/start, turn/steer, turn/interrupt for this generation

**The cause reported is the cause.** Every task reports a failure to :class:`_FirstFailure`, which keeps the
first and cancels N1; nothing that follows (the connection closing because we cancelled, the exit our own reap
causes) can replace it. Failures are classified: the ones a restart can cure (:func:`is_restartable`) end the
session; anything else is a bug in codex_trio and propagates, to be logged and raised out of ``open_runtime``
instead of looping through restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import trio

from ._config import RuntimeConfig
from ._connection import Connection, ServerRequestHandler
from ._core import Submission
from ._engine import Engine, LiveSession
from ._errors import (
    AppServerNotReady,
    ConnectionLost,
    LeaseLost,
    ProcessError,
    ProtocolError,
    RequestTimeout,
    RpcError,
    StateStoreError,
    TransportError,
)
from ._handshake import client_info, initialize
from ._launcher import Launched, Launcher
from ._recovery import reconcile
from ._state import StateStore
from ._threads import ThreadResolution, apply_skill_roots, resolve_thread

__all__ = ["SessionHost", "is_restartable", "run_session"]

log = logging.getLogger("codex_trio.runtime")

#: How long a closed connection waits for the child's exit, to report the exit rather than the close.
_EXIT_AFTER_CLOSE: Final = 0.25

#: What a restart can cure: the app-server or our line to it failed. A LeaseLost is excluded (see below).
_RESTARTABLE: Final = (TransportError, ProtocolError, ProcessError, RequestTimeout, RpcError, StateStoreError, OSError)


def is_restartable(exc: BaseException) -> bool:
    """True for failures of the app-server session that a restart can cure. ``LeaseLost`` is not one (another
    owner runs this runtime now; restarting would fight it), nor is any exception that is not ours (a bug)."""
    return isinstance(exc, _RESTARTABLE) and not isinstance(exc, LeaseLost)


class SessionHost(Protocol):
    """What a session needs from the runtime that runs it."""

    config: RuntimeConfig
    launcher: Launcher
    store: StateStore
    engine: Engine
    approvals: ServerRequestHandler

    @property
    def thread_id(self) -> str | None: ...

    async def thread_resolved(self, resolution: ThreadResolution, generation: int) -> None: ...

    async def session_ready(self, generation: int) -> None: ...

    async def session_failed(self, generation: int, cause: BaseException) -> None: ...


class _FirstFailure:
    """Keeps the first failure of a session and cancels the session's scope."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.cause: BaseException | None = None
        self._scope = scope

    def record(self, cause: BaseException) -> None:
        if self.cause is None:
            self.cause = cause
        self._scope.cancel()


async def _guarded(failure: _FirstFailure, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    try:
        await fn(*args)
    except Exception as exc:
        if not is_restartable(exc):
            raise  # a bug, or LeaseLost: not a session failure
        failure.record(exc)


async def run_session(host: SessionHost, generation: int) -> BaseException | None:
    """Run session ``generation`` until it fails (returns the cause) or is cancelled (returns None)."""
    cause: BaseException | None = None
    recorded = False
    try:
        async with host.launcher.launch(generation) as launched:
            live: LiveSession | None = None
            try:
                if launched.identity is not None:
                    # Durable from the spawn on: a host killed from here on leaves a child the next host can reap.
                    recorded = True
                    await _record_child(host, launched.identity)
                with trio.CancelScope() as scope:
                    failure = _FirstFailure(scope)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_watch_gone, failure, launched)
                        live = await _start(host, generation, launched, nursery, failure)
                        if live is not None:
                            await trio.sleep_forever()
                cause = failure.cause
            finally:
                if live is not None:
                    live.closed = True
                if cause is not None:
                    # The status says so before any input settles "interrupted" because of it.
                    await host.session_failed(generation, cause)
                # Before the reap: the engine settles what was in flight while the child is being stopped.
                await host.engine.session_down(generation, _describe(cause))
    except Exception as exc:
        if not is_restartable(exc):
            raise
        cause = cause or exc  # the launch itself failed (spawn, a bad socket directory, ...)
    finally:
        if recorded:
            await _record_child(host, None)  # reaped by now (shielded, in the launcher)
    return cause


async def _record_child(host: SessionHost, identity: str | None) -> None:
    with trio.CancelScope(shield=True):
        try:
            await host.store.set_child(host.config.runtime_id, identity)
        except LeaseLost:
            raise
        except Exception as exc:
            log.warning("[%s] failed to record the app-server child %r: %r", host.config.runtime_id, identity, exc)


async def _start(
    host: SessionHost, generation: int, launched: Launched, nursery: trio.Nursery, failure: _FirstFailure
) -> LiveSession | None:
    """Connect, handshake, resolve the thread, reconcile; hand the session to the engine. None if it failed."""
    config = host.config
    # Each step has its own deadline; this one bounds them all together, so no start can hang.
    budget = 2 * config.ready_timeout + 3 * config.handshake_timeout + 4 * config.request_timeout
    with trio.move_on_after(budget) as deadline:
        try:
            stream = await launched.connect()
            connection = Connection(
                stream, request_timeout=config.request_timeout, server_request_handler=host.approvals
            )
            await nursery.start(connection.run)
            # From the first frame on, so that nothing codex says during the start waits for a reader.
            connection.route_into(host.engine.session_inbox())
            nursery.start_soon(_watch_connection, failure, connection, launched)
            await initialize(
                connection,
                info=client_info(config.client_name),
                opt_out_notification_methods=config.opt_out_notification_methods,
                timeout=config.handshake_timeout,
            )
            await apply_skill_roots(connection, config)
            resolution = await resolve_thread(connection, config, host.thread_id)
            await host.thread_resolved(resolution, generation)
            in_doubt: list[Submission] = host.engine.core.in_doubt()
            if in_doubt:
                resend, outcomes = await reconcile(
                    connection, resolution.thread_id, in_doubt, runtime_id=config.runtime_id
                )
                await host.engine.reconciled(resend, outcomes)
        except Exception as exc:
            if not is_restartable(exc):
                raise
            failure.record(exc)
            return None
    if deadline.cancelled_caught:
        failure.record(AppServerNotReady(f"the app-server session did not start within {budget:g}s"))
        return None
    live = LiveSession(generation, connection, resolution.thread_id, nursery, failure.record)
    await host.engine.session_up(live)
    await host.session_ready(generation)
    return live


async def _watch_gone(failure: _FirstFailure, launched: Launched) -> None:
    failure.record(await launched.wait_gone())


async def _watch_connection(failure: _FirstFailure, connection: Connection, launched: Launched) -> None:
    await connection.wait_closed()
    cause: BaseException = connection.close_error or ConnectionLost("connection closed")
    if type(cause) is ConnectionLost:
        # A dying child closes its socket first; its exit status ("killed by SIGABRT") says more than the close
        # it caused (1006), and it is what a crash loop's last_error should show.
        with trio.move_on_after(_EXIT_AFTER_CLOSE):
            cause = await launched.wait_gone()
    failure.record(cause)


def _describe(cause: BaseException | None) -> str:
    if cause is None:
        return "app-server session ended"
    return describe(cause)


def describe(cause: BaseException) -> str:
    text = str(cause).strip() or type(cause).__name__
    return text.splitlines()[0] if len(text) > 500 else text
