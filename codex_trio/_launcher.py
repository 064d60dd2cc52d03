"""Launchers: how one session gets an app-server to talk to.

The supervisor does not care whether the app-server is a child process it owns or an in-memory fake; it asks a
:class:`Launcher` for a :class:`Launched` session — a way to connect a message stream plus a way to learn that the
server went away — once per generation. :class:`ProcessLauncher` is the production one: a fresh ``codex
app-server`` child per generation on a fresh socket path, stopped and reaped when the session ends.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Final, Protocol, final

import attrs
import trio

from ._config import RuntimeConfig, app_server_argv, child_env
from ._errors import AppServerNotReady, ConnectionLost, ProcessError, TransportError
from ._paths import allocate_socket_path, default_socket_dir, ensure_owner_only_dir, resolve_codex_bin
from ._process import AppServerChild, ChildSpec, StartSlot, acquire_start_slot, spawn_app_server
from ._transport import MessageStream, connect_unix_websocket

__all__ = ["Launched", "Launcher", "ProcessLauncher", "default_base_dir"]


@attrs.frozen
class Launched:
    """One app-server for one session, from its spawn on.

    ``connect`` waits until the server accepts connections and opens the message stream (for the real child:
    readiness by ``connect()``, then the WebSocket upgrade). It is called at most once, and every step in it is
    bounded by the launcher's own deadlines: it raises (``AppServerNotReady``, ``AppServerExited``,
    ``ConnectionLost``, ...) rather than hang. The launcher owns the stream and closes it on exit.

    ``wait_gone`` returns (never raises) why the server went away, e.g. the child's exit. It may be awaited from the
    moment ``launch`` returns, concurrently with ``connect``, so a child that dies during its start is seen at once.

    ``identity`` is what a later host needs to find and reap this server if our host dies without reaping it
    (``"<pgid>:<start ticks>"`` for a child process, see ``_process.child_identity``); None when there is nothing
    to reap.
    """

    connect: Callable[[], Awaitable[MessageStream]]
    wait_gone: Callable[[], Awaitable[BaseException]]
    pid: int | None = None
    pgid: int | None = None
    identity: str | None = None
    description: str = "app-server"


class Launcher(Protocol):
    def launch(self, generation: int) -> AbstractAsyncContextManager[Launched]:
        """Start (or reach) one app-server for session ``generation``.

        Entering returns as soon as the server exists (a child: right after its spawn), bounded by a deadline.
        Leaving releases everything it started, whatever ends the session, shielded from cancellation: the stream is
        closed by us, and a child's process group is stopped (SIGTERM, a short wait, a second SIGTERM, the grace
        period, SIGKILL) and reaped.
        """
        ...


def default_base_dir() -> Path:
    """``$XDG_STATE_HOME/codex-trio`` (default ``~/.local/state/codex-trio``): logs and spill files."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state_home) / "codex-trio"


#: How many of the most recent process groups a :class:`ProcessLauncher` remembers (``pgids``).
PGID_HISTORY: Final = 64
#: After a connection failure during the upgrade, how long to wait for the child's exit to report that instead:
#: a dying child's socket closes a moment before its exit status is there to read.
_EXIT_AFTER_CLOSE: Final = 0.1


class ProcessLauncher:
    """Spawn ``codex app-server --listen unix://SOCK`` per generation; connect a WebSocket to it on demand.

    ``launch`` waits for a start slot (a limit per Trio run, see ``_process.start_limiter``), spawns, and returns
    at once. In the background the child is probed until its socket accepts a connection (``ready_timeout`` from
    the spawn), which frees the slot; ``connect()`` waits for that and performs the WebSocket upgrade within
    ``handshake_timeout``. Leaving the context stops the child's group (see ``AppServerChild.stop``), then closes
    the stream: codex answers no WebSocket close frame (it drops the socket, 1006), so a polite close before the
    stop would only wait out its timeout, while on a dead peer it returns at once.
    """

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        # Resolved once, up front: a missing binary is a configuration mistake to report before anything starts.
        self.codex_bin = resolve_codex_bin(config.codex_bin)
        self.socket_dir = config.socket_dir or default_socket_dir()
        self.log_dir = config.log_dir or (config.state_dir or default_base_dir()) / "logs"
        self.last_pgid: int | None = None
        #: the most recent process groups this launcher created, oldest first, recorded at spawn (before
        #: readiness). At most ``PGID_HISTORY``: a long-lived runtime restarts many times and must not grow
        #: without bound. A list rather than a deque(maxlen=...), so that it still compares equal to one.
        self.pgids: list[int] = []

    def _spec(self, socket_dir: Path) -> ChildSpec:
        config = self.config
        socket_path = allocate_socket_path(socket_dir, config.runtime_id)
        return ChildSpec(
            argv=app_server_argv(config, self.codex_bin, socket_path),
            env=child_env(config),
            cwd=config.cwd,
            socket_path=socket_path,
            log_dir=self.log_dir,
            runtime_id=config.runtime_id,
            ready_timeout=config.ready_timeout,
            grace_period=config.grace_period,
        )

    @asynccontextmanager
    async def launch(self, generation: int) -> AsyncIterator[Launched]:
        # The directory actually used may be a private subdirectory of the configured one (when that is shared).
        socket_dir = await trio.to_thread.run_sync(ensure_owner_only_dir, self.socket_dir)
        spec = self._spec(socket_dir)
        slot = await acquire_start_slot(spec.ready_timeout)
        try:
            child = await spawn_app_server(spec)
        except BaseException:
            slot.release()
            raise
        self.pgids.append(child.pgid)
        del self.pgids[:-PGID_HISTORY]
        self.last_pgid = child.pgid
        session = _ChildSession(child, slot, self.config)
        try:
            async with trio.open_nursery() as nursery:
                session.nursery = nursery
                # Readiness runs from the spawn on, whether or not connect() is called yet: the slot is freed
                # as soon as the child is connectable, and the stop knows when that was.
                nursery.start_soon(session.watch_start)
                try:
                    yield Launched(
                        session.connect,
                        session.wait_gone,
                        child.pid,
                        child.pgid,
                        child.identity,
                        f"codex app-server pid {child.pid} (generation {generation})",
                    )
                finally:
                    with trio.CancelScope(shield=True):
                        await session.close()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            _raise_sole(group)
        finally:
            # Only does anything if the nursery never ran its body: stop() is idempotent.
            await child.stop(self.config.grace_period)
            slot.release()


def _raise_sole(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the one exception in ``group`` as itself (the nursery wraps even the body's own exception), with
    its chain as it was; a real group of several failures is re-raised as it is."""
    if len(group.exceptions) != 1 or isinstance(group.exceptions[0], BaseExceptionGroup):
        raise group
    sole = group.exceptions[0]
    context = sole.__context__
    try:
        raise sole
    finally:
        sole.__context__ = context
        del sole, context


@final
class _ChildSession:
    """What one ``launch`` shares between its background start, ``connect`` and ``wait_gone``."""

    def __init__(self, child: AppServerChild, slot: StartSlot, config: RuntimeConfig) -> None:
        self.child = child
        self.slot = slot
        self.config = config
        self.nursery: trio.Nursery | None = None
        self.started = trio.Event()
        self.start_error: Exception | None = None
        self.stream: MessageStream | None = None
        self.connect_called = False
        self.closed = False

    async def watch_start(self) -> None:
        try:
            await self.child.wait_connectable(self.child.spawned_at + self.config.ready_timeout)
        except Exception as exc:  # kept for connect(); this task must not take the launch down
            self.start_error = exc
        finally:
            self.slot.release()
            self.started.set()

    async def connect(self) -> MessageStream:
        child = self.child
        if self.connect_called:
            raise ProcessError(
                f"connect() was already called for codex app-server pid {child.pid}: one connection per launch"
            )
        self.connect_called = True
        await self.started.wait()
        if self.start_error is not None:
            raise self.start_error
        if self.closed or self.nursery is None or child.connectable_at is None:
            raise ConnectionLost(f"codex app-server pid {child.pid}: the launch ended before connect()")
        timeout = self.config.handshake_timeout
        with trio.move_on_after(timeout):
            try:
                stream = await connect_unix_websocket(
                    self.nursery, child.connect_path(), max_message_size=self.config.max_message_size
                )
            except (TransportError, OSError) as exc:
                error = await self._explain(exc)
                if error is exc:
                    raise
                raise error from exc
            self.stream = stream
            return stream
        stalled = AppServerNotReady(
            f"codex app-server (pid {child.pid}) accepted a connection on {child.socket_path} but did not complete "
            f"the WebSocket upgrade within {timeout:g}s (handshake_timeout); it may be hung or overloaded"
        )
        raise await self._explain(stalled)

    async def _explain(self, error: BaseException) -> BaseException:
        """The child's exit if it died meanwhile (a better reason than a closed socket), else ``error``."""
        with trio.move_on_after(_EXIT_AFTER_CLOSE):
            await self.child.wait()
        if self.child.poll() is None:
            return error
        return await self.child.exit_reason(f" during the WebSocket upgrade on {self.child.socket_path}")

    async def wait_gone(self) -> BaseException:
        try:
            await self.child.wait()
            return await self.child.exit_reason()
        except Exception as exc:  # never raises: whatever broke is the reason
            return exc

    async def close(self) -> None:
        self.closed = True
        await self.child.stop(self.config.grace_period)
        if self.stream is not None:
            await self.stream.aclose()
