"""Launchers for tests: run a runtime against an in-process FakeAppServer over memory streams.

:class:`FakeLauncher` lets a test kill "the child" (:meth:`FakeLauncher.kill`), drop the connection
(:meth:`FakeLauncher.drop_connection`) or make the next launches fail, all in virtual time with
``autojump_clock`` — the fastest way to drive the supervisor and the turn worker through their failure paths.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .._errors import AppServerExited
from .._launcher import Launched
from .._transport import MessageStream, memory_message_stream_pair
from ._fake_app_server import FakeAppServer

__all__ = ["FakeLauncher"]


class FakeLauncher:
    """A :class:`~codex_trio._launcher.Launcher` whose app-server is a :class:`FakeAppServer` in this process."""

    def __init__(self, fake: FakeAppServer | None = None) -> None:
        self.fake = fake or FakeAppServer()
        self.launches = 0
        self.live = 0
        self.fail_next: list[BaseException] = []
        self._gone: trio.Event | None = None
        self._server_stream: MessageStream | None = None

    async def _serve(
        self, stream: MessageStream, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await self.fake.serve_stream(stream)

    @asynccontextmanager
    async def launch(self, nursery: trio.Nursery, generation: int) -> AsyncIterator[Launched]:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.launches += 1
        client, server = memory_message_stream_pair()
        gone = self._gone = trio.Event()
        self._server_stream = server
        scope = await nursery.start(self._serve, server)
        number = self.launches

        async def wait_gone() -> BaseException:
            await gone.wait()
            return AppServerExited(f"fake app-server #{number} was killed by SIGKILL", returncode=-9)

        self.live += 1
        try:
            yield Launched(client, wait_gone, description=f"fake app-server #{number}")
        finally:
            self.live -= 1
            scope.cancel()
            await client.aclose()

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
