"""A host process for test_lifecycle_real.py: one runtime, driven line by line over stdin.

Usage: ``lifecycle_host.py SETUP_JSON`` where SETUP_JSON holds ``config`` (RuntimeConfig keyword arguments),
``db`` (a SqliteStateStore path; null for a MemoryStateStore), ``launcher`` (``"process"``, the default, or
``"fake"``: an in-process FakeAppServer, no child at all) and ``restart`` (RestartPolicy keyword arguments).

Commands (one per line on stdin) and what it prints (one flushed line each, so that whatever the test read was
printed before any kill):

    open WAIT             ``OWNER <pid> <host> <since> <thread id> <resumed>`` once ``open_runtime`` returned;
                          ``BUSY <pid> <host> <since>`` on RuntimeBusy; ``ERROR <type> <json message>``
                          otherwise. While it starts: ``SOCKET <path>`` for each socket path allocated and
                          ``SPAWNED <pgid> <generation> <watcher pid>`` right after each spawn (before readiness).
    submit ID TEXT...     ``ACK <id> <seq> <status>`` or ``REFUSED <id> <status>``
    close                 leaves the ``open_runtime`` block: ``CLOSED``
    watcher               ``WATCHER <pid of the orphan watcher, or None>``
    exit                  leaves everything and exits 0

From the runtime's event stream: ``TURN <turn id>`` (TurnStarted: codex answered ``turn/start``, or said the turn
started) and ``SETTLED <id> <outcome> <seq>`` for every settlement it sees. The first line is ``HELLO <pid>``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from typing import Any

import trio

from codex_trio import (
    ChannelInput,
    MemoryStateStore,
    RestartPolicy,
    RuntimeBusy,
    RuntimeConfig,
    SqliteStateStore,
    open_runtime,
)
from codex_trio._events import SubmissionSettled, TurnStarted
from codex_trio._runtime import Runtime
from codex_trio._watchdog import watcher_pid
from codex_trio.testing import FakeAppServer, FakeLauncher
from codex_trio.testing._launchers import AnnouncingLauncher


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(setup: dict[str, Any]) -> None:
    restart = RestartPolicy(**setup.get("restart", {"base_delay": 0.05, "max_delay": 0.5, "max_restarts": 50}))
    config = RuntimeConfig(**setup["config"], restart=restart)
    db = setup.get("db")
    # A generous busy timeout: hosts in these tests share one file on a machine the other tests load heavily.
    store: SqliteStateStore | MemoryStateStore = SqliteStateStore(db, busy_timeout=60) if db else MemoryStateStore()
    runtime: Runtime | None = None
    running = False
    close = trio.Event()
    closed = trio.Event()
    emit(f"HELLO {os.getpid()}")

    async def events(rt: Runtime) -> None:
        async with rt.events() as stream:
            async for event in stream:
                if isinstance(event, TurnStarted):
                    emit(f"TURN {event.turn_id}")
                elif isinstance(event, SubmissionSettled):
                    s = event.settlement
                    emit(f"SETTLED {s.source_id} {s.outcome} {s.seq}")

    async def run(wait: float) -> None:
        nonlocal runtime, running, close, closed
        running = True
        launcher: Any = (
            FakeLauncher(FakeAppServer()) if setup.get("launcher") == "fake" else AnnouncingLauncher(config, emit)
        )
        try:
            async with open_runtime(config, state=store, launcher=launcher, wait_for_owner=wait) as rt:
                owner = await store.owner(config.runtime_id)
                assert owner is not None and owner.pid == os.getpid(), owner
                emit(f"OWNER {owner.pid} {owner.host} {owner.since!r} {rt.thread_id} {rt.thread_resumed}")
                runtime = rt
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(events, rt)
                    await close.wait()
                    nursery.cancel_scope.cancel()
        except RuntimeBusy as busy:
            emit(f"BUSY {busy.pid} {busy.host} {busy.since!r}")
        except Exception as exc:
            emit(f"ERROR {type(exc).__name__} {json.dumps(str(exc))}")
        else:
            emit("CLOSED")
        finally:
            runtime = None
            running = False
            close, closed_now = trio.Event(), closed
            closed = trio.Event()
            closed_now.set()

    async def submit(rt: Runtime, source_id: str, text: str) -> None:
        admission = await rt.submit(ChannelInput(source_id, text))
        if admission.accepted:
            emit(f"ACK {source_id} {admission.seq} {admission.status}")
        else:
            emit(f"REFUSED {source_id} {admission.status}")

    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    try:
        async with trio.open_nursery() as nursery:
            while True:
                while b"\n" not in buffer:
                    chunk = await stdin.receive_some(4096)
                    if not chunk:
                        buffer += b"\nexit\n"
                        break
                    buffer += chunk
                raw, buffer = buffer.split(b"\n", 1)
                command, _, rest = raw.decode().strip().partition(" ")
                if not command:
                    continue
                if command == "open":
                    wait = math.inf if rest == "inf" else float(rest or 0)
                    nursery.start_soon(run, wait)
                elif command == "submit":
                    source_id, _, text = rest.partition(" ")
                    if runtime is None:
                        emit(f"REFUSED {source_id} no-runtime")
                    else:
                        nursery.start_soon(submit, runtime, source_id, text)
                elif command == "close":
                    if running:
                        done = closed
                        close.set()
                        await done.wait()
                    else:
                        emit("CLOSED")
                elif command == "watcher":
                    emit(f"WATCHER {watcher_pid()}")
                elif command == "exit":
                    if running:
                        done = closed
                        close.set()
                        await done.wait()
                    nursery.cancel_scope.cancel()
                    break
                else:
                    raise SystemExit(f"unknown command {command!r}")
    finally:
        await stdin.aclose()
        await store.aclose()
    emit(f"BYE {socket.gethostname()}")


if __name__ == "__main__":
    trio.run(main, json.loads(sys.argv[1]))
