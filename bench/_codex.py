"""The real codex binary for the benchmarks: runtime configs and a bare (no supervisor) app-server child."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from codex_trio._config import RuntimeConfig, app_server_argv, child_env
from codex_trio._connection import Connection
from codex_trio._handshake import initialize
from codex_trio._policy import RestartPolicy
from codex_trio._transport import connect_unix_websocket
from codex_trio._watchdog import remove_stale_daemon_files
from codex_trio.testing._real_codex import find_codex_bin


def codex_bin() -> str | None:
    return os.environ.get("CODEX_TRIO_CODEX_BIN") or find_codex_bin()


def real_config(tmp: Path, home: Path, runtime_id: str, **extra: Any) -> RuntimeConfig:
    bin_ = codex_bin()
    assert bin_ is not None
    (tmp / "work").mkdir(parents=True, exist_ok=True)
    return RuntimeConfig(
        runtime_id=runtime_id,
        codex_bin=bin_,
        codex_home=home,
        cwd=tmp / "work",
        sandbox_mode="read-only",
        socket_dir=tmp / "sockets",
        log_dir=tmp / "logs",
        spill_dir=tmp / "spill",
        state_dir=tmp / "state",
        **extra,
    )


def immediate_restart() -> RestartPolicy:
    return RestartPolicy.immediate(max_restarts=1000, within=60.0)


@asynccontextmanager
async def bare_app_server(config: RuntimeConfig, socket_path: Path) -> AsyncIterator[tuple[Connection, float]]:
    """Spawn codex exactly as the runtime would (same argv and env), without any supervision around it.

    Yields a handshaken Connection and the seconds from spawn to the first successful connect.
    """
    assert config.codex_bin is not None
    argv = app_server_argv(config, config.codex_bin, socket_path)
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if config.cwd is not None:
        config.cwd.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = await trio.lowlevel.open_process(
        argv,
        env=child_env(config),
        cwd=str(config.cwd) if config.cwd else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await connect_unix_websocket(nursery, socket_path)
                    break
                except Exception:
                    if proc.poll() is not None:
                        raise RuntimeError(f"codex exited with {proc.returncode} before binding") from None
                    await trio.sleep(0.005)
            connectable = time.perf_counter() - start
            conn = Connection(stream)
            await nursery.start(conn.run)
            await initialize(conn)
            yield conn, connectable
            await conn.aclose()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
            # The SIGKILL left codex's socket and lock in its daemon directory: a baseline leaves nothing either.
            remove_stale_daemon_files(socket_path)
            try:
                os.unlink(socket_path)
            except OSError:
                pass
