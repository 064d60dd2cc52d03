"""Launchers: how one session gets an app-server to talk to.

The supervisor does not care whether the app-server is a child process it owns or an in-memory fake; it asks a
:class:`Launcher` for a :class:`Launched` session — a message stream plus a way to learn that the server went
away — once per generation. :class:`ProcessLauncher` is the production one: a fresh ``codex app-server`` child per
generation on a fresh socket path, reaped when the session ends.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import attrs
import trio

from ._config import RuntimeConfig, app_server_argv, child_env
from ._paths import allocate_socket_path, default_socket_dir, resolve_codex_bin
from ._process import ChildSpec, open_app_server
from ._transport import MessageStream, connect_unix_websocket

__all__ = ["Launched", "Launcher", "ProcessLauncher", "default_base_dir"]


@attrs.frozen
class Launched:
    """One live app-server for one session.

    ``wait_gone`` returns (never raises) the reason the server went away — e.g. the child's exit — and is
    cancelled when the session ends first.
    """

    stream: MessageStream
    wait_gone: Callable[[], Awaitable[BaseException]]
    pid: int | None = None
    pgid: int | None = None
    description: str = "app-server"


class Launcher(Protocol):
    def launch(self, nursery: trio.Nursery, generation: int) -> AbstractAsyncContextManager[Launched]:
        """Start (or reach) an app-server; leaving the context must release everything it started."""
        ...


def default_base_dir() -> Path:
    """``$XDG_STATE_HOME/codex-trio`` (default ``~/.local/state/codex-trio``): logs and spill files."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state_home) / "codex-trio"


class ProcessLauncher:
    """Spawn ``codex app-server --listen unix://SOCK`` per generation and connect a WebSocket to it."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        # Resolved once, up front: a missing binary is a configuration mistake to report before anything starts.
        self.codex_bin = resolve_codex_bin(config.codex_bin)
        self.socket_dir = config.socket_dir or default_socket_dir()
        self.log_dir = config.log_dir or (config.state_dir or default_base_dir()) / "logs"
        self.last_pgid: int | None = None
        #: every process group this launcher created, recorded at spawn (before readiness)
        self.pgids: list[int] = []

    @asynccontextmanager
    async def launch(self, nursery: trio.Nursery, generation: int) -> AsyncIterator[Launched]:
        config = self.config
        socket_path = allocate_socket_path(self.socket_dir, config.runtime_id)
        spec = ChildSpec(
            argv=app_server_argv(config, self.codex_bin, socket_path),
            env=child_env(config),
            cwd=config.cwd,
            socket_path=socket_path,
            log_dir=self.log_dir,
            runtime_id=config.runtime_id,
            ready_timeout=config.ready_timeout,
            grace_period=max(config.grace_period, 0.001),
        )
        stream: MessageStream | None = None
        try:
            async with open_app_server(spec, on_spawn=self.pgids.append) as child:
                self.last_pgid = child.pgid
                stream = await connect_unix_websocket(
                    nursery, child.connect_path(), max_message_size=config.max_message_size
                )

                async def wait_gone() -> BaseException:
                    await child.wait()
                    return child.exit_error()

                yield Launched(stream, wait_gone, child.pid, child.pgid, f"codex app-server pid {child.pid}")
        finally:
            # Closed after the reap: codex answers no WebSocket close frame (it just drops the socket, 1006), so
            # a polite close before the reap only waits out its timeout; on a dead peer it returns at once.
            if stream is not None:
                await stream.aclose()
