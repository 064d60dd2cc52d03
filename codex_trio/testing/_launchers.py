"""Launchers for tests: run a runtime against an in-process FakeAppServer over memory streams, or announce what
the production launcher starts.

:class:`FakeLauncher` lets a test kill "the child" (:meth:`FakeLauncher.kill`), drop the connection
(:meth:`FakeLauncher.drop_connection`), make the next launches or connects fail, or make a connect stall, all in
virtual time with ``autojump_clock`` — the fastest way to drive the supervisor and the engine through their
failure paths.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from .._config import RuntimeConfig
from .._errors import AppServerExited
from .._launcher import Launched, ProcessLauncher
from .._process import ChildSpec
from .._transport import MessageStream, memory_message_stream_pair
from .._watchdog import watcher_pid
from ._fake_app_server import FakeAppServer

__all__ = ["AnnouncingLauncher", "FakeLauncher"]


class AnnouncingLauncher(ProcessLauncher):
    """The production launcher, announcing each socket path and process group the moment it exists.

    For a test or a chaos driver that runs a host in another process and kills it at any moment: it must know
    what to look for (groups still alive, codex's files for that socket) even when the host dies right after the
    spawn. ``announce`` gets ``"SOCKET <path>"`` when the path is chosen and ``"SPAWNED <pgid> <generation>
    <watcher pid or None>"`` right after the spawn, before readiness."""

    def __init__(self, config: RuntimeConfig, announce: Callable[[str], Any]) -> None:
        super().__init__(config)
        self._announce = announce

    def _spec(self, socket_dir: Path) -> ChildSpec:
        spec = super()._spec(socket_dir)
        self._announce(f"SOCKET {spec.socket_path}")
        return spec

    @asynccontextmanager
    async def launch(self, generation: int) -> AsyncIterator[Launched]:
        async with super().launch(generation) as launched:
            self._announce(f"SPAWNED {launched.pgid} {generation} {watcher_pid()}")
            yield launched


class FakeLauncher:
    """A :class:`~codex_trio.Launcher` whose app-server is a :class:`FakeAppServer` in this process."""

    def __init__(self, fake: FakeAppServer | None = None) -> None:
        self.fake = fake or FakeAppServer()
        self.launches = 0
        self.live = 0
        #: exceptions the next launches raise, one each (as a failed spawn would)
        self.fail_next: list[BaseException] = []
        #: exceptions the next connects raise, one each (as a child that never became ready would)
        self.fail_connect_next: list[BaseException] = []
        #: when set, connect() waits for it first (a child that stalls during its start)
        self.stall_connect: trio.Event | None = None
        self._gone: trio.Event | None = None
        self._server_stream: MessageStream | None = None

    async def _serve(
        self, stream: MessageStream, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await self.fake.serve_stream(stream)

    @asynccontextmanager
    async def launch(self, generation: int) -> AsyncIterator[Launched]:
        await trio.lowlevel.checkpoint()
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.launches += 1
        number = self.launches
        gone = self._gone = trio.Event()
        client, server = memory_message_stream_pair()
        self.live += 1
        try:
            async with trio.open_nursery() as nursery:

                async def connect() -> MessageStream:
                    if self.stall_connect is not None:
                        await self.stall_connect.wait()
                    if self.fail_connect_next:
                        raise self.fail_connect_next.pop(0)
                    self._server_stream = server
                    await nursery.start(self._serve, server)
                    return client

                async def wait_gone() -> BaseException:
                    await gone.wait()
                    return AppServerExited(f"fake app-server #{number} was killed by SIGKILL", returncode=-9)

                try:
                    yield Launched(connect, wait_gone, description=f"fake app-server #{number}")
                finally:
                    # Shielded, and before the cancel: a Cancelled raised here would replace (and so swallow)
                    # whatever the session is ending with.
                    with trio.CancelScope(shield=True):
                        await client.aclose()
                        await server.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            self.live -= 1

    def kill(self) -> None:
        """Simulate SIGKILL of the child: it is gone, and so is every turn it was running."""
        if self._gone is not None:
            self._gone.set()
        self.fake.active_turns.clear()

    async def drop_connection(self) -> None:
        """Close the server side of the connection (the socket closes, the process stays)."""
        if self._server_stream is not None:
            await self._server_stream.aclose()
        self.fake.active_turns.clear()
