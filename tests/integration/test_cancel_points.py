"""Cancelling the embedding scope at a point Hypothesis picks leaves no process and no socket of ours behind.

The app-server is the fake run as a real child process (through a ``codex`` shim script) under the production
:class:`ProcessLauncher`, so spawn, readiness polling, the WebSocket, the reap and the backoff are all real. The
strategy draws a phase of the runtime's life and a point inside it:

* ``spawn`` — a delay from the moment ``open_runtime`` is entered (before, during or just after the spawn);
* ``readiness`` — the child binds only after ``FAKE_APP_SERVER_BIND_DELAY``; cancel after it was spawned;
* ``handshake`` — cancel from inside the transport when the k-th frame of the session passes (initialize,
  initialized, thread/start, thread/name/set and their answers), so the point is exact, not a guess in time;
* ``turn`` — a hanging turn is in flight;
* ``backoff`` — the child was SIGKILLed and the supervisor sleeps ``base_delay`` before the next spawn (a long
  delay reaches into the next generation's spawn).

Every process the shim ever started records its pid (== its process group, since each child is a session
leader), so the checks see even a child that was cancelled before the launcher learned its pgid.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import attrs
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings, strategies as st

from codex_trio._config import RuntimeConfig
from codex_trio._launcher import Launched, ProcessLauncher
from codex_trio._policy import RestartPolicy
from codex_trio._process import live_pids_in_group
from codex_trio._render import ChannelInput
from codex_trio._runtime import Admission, Runtime, open_runtime
from codex_trio._settlement import Settlement
from codex_trio._transport import MessageStream
from codex_trio.testing.pytest_plugin import short_dir

Phase = Literal["spawn", "readiness", "handshake", "turn", "backoff"]

#: The fake waits this long before it binds, in the ``readiness`` phase only (the others start at once).
BIND_DELAY = 0.3
#: The supervisor's backoff after the SIGKILL of the ``backoff`` phase.
BACKOFF = 0.5


@attrs.frozen
class CancelPoint:
    """Where to cancel: ``delay`` seconds after the phase's signal, or at the ``frame``-th handshake frame."""

    phase: Phase
    delay: float = 0.0
    frame: int = 0


cancel_points = st.one_of(
    st.builds(CancelPoint, st.just("spawn"), st.floats(0.0, 0.08)),
    st.builds(CancelPoint, st.just("readiness"), st.floats(0.0, BIND_DELAY + 0.1)),
    st.builds(CancelPoint, st.just("handshake"), frame=st.integers(1, 8)),
    st.builds(CancelPoint, st.just("turn"), st.floats(0.0, 0.2)),
    st.builds(CancelPoint, st.just("backoff"), st.floats(0.0, BACKOFF + 0.3)),
)


class _CountingStream:
    """Passes frames through and calls ``on_frame`` after each one sent or received."""

    def __init__(self, inner: MessageStream, on_frame: Callable[[], None]) -> None:
        self._inner = inner
        self._on_frame = on_frame
        self.description = inner.description

    async def send_message(self, message: str) -> None:
        await self._inner.send_message(message)
        self._on_frame()

    async def receive_message(self) -> str | bytes:
        message = await self._inner.receive_message()
        self._on_frame()
        return message

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ObservedLauncher:
    """The real ProcessLauncher, with the session's frames counted (to cancel at an exact handshake step)."""

    def __init__(self, inner: ProcessLauncher, on_frame: Callable[[], None]) -> None:
        self.inner = inner
        self._on_frame = on_frame

    @asynccontextmanager
    async def launch(self, generation: int) -> AsyncIterator[Launched]:
        async with self.inner.launch(generation) as launched:
            inner_connect = launched.connect

            async def connect() -> MessageStream:
                return _CountingStream(await inner_connect(), self._on_frame)

            yield attrs.evolve(launched, connect=connect)


@attrs.define
class _Outcome:
    raised: BaseException | None = None
    cancelled_caught: bool = False
    reached_ready: bool = False
    runtime: Runtime | None = None
    admission: Admission | None = None
    pgids: list[int] = attrs.field(factory=list)


def _write_shim(workdir: Path, pid_log: Path) -> str:
    # `exec` keeps the shim's pid for the fake, and the child is a session leader: pid == pgid.
    shim = workdir / "codex"
    shim.write_text(
        f'#!/bin/sh\necho $$ >> {pid_log}\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n'
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return str(shim)


def _spawned_pgids(pid_log: Path) -> list[int]:
    try:
        return [int(line) for line in pid_log.read_text().split()]
    except FileNotFoundError:
        return []


def _our_children() -> list[int]:
    """Pids whose parent is this process, alive or unreaped zombies. Catches a child that was spawned but
    cancelled before its shim could even record its pid."""
    me = os.getpid()
    children = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rfind(b")") + 2 :].split()[1]) == me:
            children.append(int(name))
    return children


async def _wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.005)


async def _run_example(point: CancelPoint, workdir: Path, socket_dir: Path) -> _Outcome:
    pid_log = workdir / "pids"
    env = {
        "FAKE_APP_SERVER_STATE": str(workdir / "fake-state.json"),
        "FAKE_APP_SERVER_SCRIPT": str(workdir / "script.json"),
    }
    (workdir / "script.json").write_text('{"default": {"hang": true}}')
    if point.phase == "readiness":
        env["FAKE_APP_SERVER_BIND_DELAY"] = str(BIND_DELAY)
    cfg = RuntimeConfig(
        runtime_id="cancel",
        codex_bin=_write_shim(workdir, pid_log),
        extra_env=env,
        socket_dir=socket_dir,
        log_dir=workdir / "logs",
        restart=RestartPolicy(base_delay=BACKOFF, max_delay=BACKOFF, max_restarts=50),
    )
    frames = 0
    host = trio.CancelScope()

    def on_frame() -> None:
        nonlocal frames
        frames += 1
        if point.phase == "handshake" and frames == point.frame:
            host.cancel()

    launcher = ProcessLauncher(cfg)
    outcome = _Outcome()
    phase_started = trio.Event()

    async def embedding_app() -> None:
        try:
            with host:
                if point.phase in ("spawn", "readiness"):
                    phase_started.set()
                async with open_runtime(cfg, launcher=_ObservedLauncher(launcher, on_frame)) as runtime:
                    outcome.reached_ready = True
                    outcome.runtime = runtime
                    if point.phase == "handshake":
                        host.cancel()  # the frame count outran the handshake: its end is the last point
                    elif point.phase == "turn":
                        outcome.admission = await runtime.submit(ChannelInput("hang", "a turn that hangs"))
                        phase_started.set()
                    elif point.phase == "backoff":
                        assert launcher.last_pgid is not None
                        os.killpg(launcher.last_pgid, signal.SIGKILL)
                        await runtime.wait_status("degraded")
                        phase_started.set()
                    await trio.sleep_forever()
        except BaseException as exc:  # the property is that nothing escapes; report what did
            outcome.raised = exc
        outcome.cancelled_caught = host.cancelled_caught

    async def canceller() -> None:
        await phase_started.wait()
        if point.phase == "readiness":
            await _wait_until(lambda: bool(_spawned_pgids(pid_log)))
        await trio.sleep(point.delay)
        host.cancel()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            if point.phase != "handshake":
                nursery.start_soon(canceller)
            await embedding_app()
            nursery.cancel_scope.cancel()

    outcome.pgids = list(launcher.pgids)  # recorded at spawn: possibly before the shim logged its pid
    return outcome


def _check_nothing_left(outcome: _Outcome, pid_log: Path, socket_dir: Path) -> None:
    assert outcome.raised is None, f"open_runtime raised {outcome.raised!r} instead of absorbing the cancel"
    assert outcome.cancelled_caught, "the embedding scope did not catch its own cancellation"
    for pgid in set(_spawned_pgids(pid_log)) | set(outcome.pgids):
        assert live_pids_in_group(pgid) == [], f"process group {pgid} still has live processes"
    assert _our_children() == [], "a child process was left running or unreaped (a zombie)"
    left = sorted(p.name for p in socket_dir.iterdir()) if socket_dir.exists() else []
    assert left == [], f"left in the socket dir: {left}"
    if outcome.runtime is not None:
        assert outcome.runtime.status == "stopped"
    if outcome.admission is not None:
        settlement: Settlement | None = outcome.admission.settlement
        assert settlement is not None, "an accepted input never settled"
        assert settlement.outcome in ("stopped", "interrupted"), settlement


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(point=cancel_points)
def test_cancelling_the_embedding_scope_anywhere_leaves_nothing(
    point: CancelPoint, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("cancel")
    # Short and owner-only: the socket path must fit sun_path. One per example, so not the fixture.
    with short_dir() as socket_dir:
        outcome = trio.run(_run_example, point, workdir, socket_dir)
        event(f"phase={point.phase} reached_ready={outcome.reached_ready}")
        _check_nothing_left(outcome, workdir / "pids", socket_dir)


@pytest.mark.parametrize("phase", ["spawn", "readiness", "handshake", "turn", "backoff"])
def test_each_phase_at_its_start(phase: Phase, tmp_path: Path, short_socket_dir: Path) -> None:
    """The earliest point of every phase, always run (Hypothesis may draw a phase rarely)."""
    point = CancelPoint(phase, 0.0, 1)
    outcome = trio.run(_run_example, point, tmp_path, short_socket_dir)
    _check_nothing_left(outcome, tmp_path / "pids", short_socket_dir)
    if phase in ("turn", "backoff"):
        assert outcome.reached_ready
