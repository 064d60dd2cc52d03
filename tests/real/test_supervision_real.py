"""Process supervision on the real codex 0.169 binary, offline with the scripted mock model.

Three ways for a session to die — a SIGKILL of the app-server's group, an abnormal exit (SIGABRT to codex), and the
WebSocket closed from our side — each three times idle and three times in the middle of a turn that hangs in the
model. After each: a new child, status ``ready`` again, the same thread resumed, a fresh turn completes, the
previous child's process group is empty. At the end nothing of ours is alive and no socket link is left.

And the three start failures that must each surface as one clear exception out of ``open_runtime``: a bad binary
path, a codex that exits at once (a fatal config), and a "codex" that never binds.
"""

from __future__ import annotations

import os
import resource
import signal
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import pytest
import trio

from codex_trio._config import RuntimeConfig
from codex_trio._errors import AppServerExited, AppServerNotReady, BinaryNotFound, ConnectionLost
from codex_trio._events import Restarting
from codex_trio._launcher import ProcessLauncher
from codex_trio._paths import allocate_socket_path
from codex_trio._policy import RestartPolicy
from codex_trio._process import ChildSpec, app_server_argv, live_pids_in_group, open_app_server
from codex_trio._render import ChannelInput
from codex_trio._runtime import Runtime, open_runtime
from codex_trio.testing._mock_model import Hang, MockModelServer, Text, write_codex_home

pytestmark = pytest.mark.real_codex

Failure = Literal["sigkill", "sigabrt", "close-socket"]


@pytest.fixture(autouse=True)
def no_core_dumps() -> Iterator[None]:
    """SIGABRT dumps core where the limit allows; children inherit the limit, and a codex core is ~100 MB."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


@pytest.fixture
def socket_dir(short_socket_dir: Path) -> Path:
    """The testing kit's ``short_socket_dir``: pytest's tmp_path can push socket paths past sun_path."""
    return short_socket_dir


class _CodexSideFiles:
    """codex binds at ``/tmp/codex-daemon-<uid>/<sha256(path)>`` and, after an abnormal exit, leaves that socket
    and its ``.lock`` behind (codex-app-server.md §7). Targets are learned from our links while they exist and
    removed at the end, so repeated kills do not litter the shared daemon directory."""

    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self.targets: set[str] = set()

    def learn(self) -> None:
        for link in self.socket_dir.glob("*.sock"):
            try:
                self.targets.add(os.path.join(str(self.socket_dir), os.readlink(link)))
            except OSError:
                pass

    def remove(self) -> None:
        for target in self.targets:
            for path in (target, target + ".lock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass


def _config(tmp_path: Path, codex_bin: str, model: MockModelServer, socket_dir: Path) -> RuntimeConfig:
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    return RuntimeConfig(
        runtime_id="supervision",
        codex_bin=codex_bin,
        codex_home=write_codex_home(tmp_path / "home", model.url),
        cwd=tmp_path / "work",
        sandbox_mode="read-only",
        socket_dir=socket_dir,
        log_dir=tmp_path / "logs",
        spill_dir=tmp_path / "spill",
        # Short, so a mid-turn close-socket (SIGTERM only drains a busy codex) reaps quickly.
        grace_period=0.3,
        restart=RestartPolicy(base_delay=0.05, max_delay=0.2, max_restarts=50),
    )


@asynccontextmanager
async def _supervised(cfg: RuntimeConfig, files: _CodexSideFiles) -> AsyncIterator[tuple[Runtime, ProcessLauncher]]:
    launcher = ProcessLauncher(cfg)
    try:
        async with open_runtime(cfg, launcher=launcher) as runtime:
            yield runtime, launcher
        assert runtime.status == "stopped"
        for pgid in launcher.pgids:
            assert live_pids_in_group(pgid) == [], f"process group {pgid} still has live processes"
        left = sorted(os.listdir(files.socket_dir))
        assert left == [], f"left in the socket dir: {left}"
    finally:
        files.remove()


async def _inflict(how: Failure, runtime: Runtime, pgid: int) -> None:
    if how == "sigkill":
        os.killpg(pgid, signal.SIGKILL)
    elif how == "sigabrt":
        # The native binary is a single process, its own group leader: pid == pgid.
        os.kill(pgid, signal.SIGABRT)
    else:
        session = runtime.engine.live
        assert session is not None
        await session.connection.aclose()


@pytest.mark.parametrize("how", ["sigkill", "sigabrt", "close-socket"])
async def test_failures_idle_and_mid_turn_restart_and_resume(
    tmp_path: Path, codex_bin: str, socket_dir: Path, how: Failure
) -> None:
    files = _CodexSideFiles(socket_dir)
    with MockModelServer() as model, trio.fail_after(150):
        cfg = _config(tmp_path, codex_bin, model, socket_dir)
        async with _supervised(cfg, files) as (runtime, launcher), runtime.events() as events:
            thread_id = runtime.thread_id
            assert thread_id
            for round_ in range(6):
                mid_turn = round_ % 2 == 1
                generation = runtime.generation
                old_pgid = launcher.last_pgid
                assert old_pgid is not None and live_pids_in_group(old_pgid)
                files.learn()
                doomed = None
                if mid_turn:
                    hang = Hang()
                    model.enqueue(hang)
                    doomed = await runtime.submit(ChannelInput(f"hang:{round_}", f"hang {round_}"))
                    assert doomed.status == "submitted"
                    assert await trio.to_thread.run_sync(hang.wait_started, 30), "the turn never reached the model"

                await _inflict(how, runtime, old_pgid)

                while not isinstance(event := await events.receive(), Restarting):
                    pass
                assert event.generation == generation
                await runtime.wait_status("ready")
                assert runtime.generation == generation + 1
                assert launcher.last_pgid != old_pgid
                assert runtime.thread_id == thread_id
                assert runtime.thread_resumed
                if doomed is not None:
                    lost = await doomed.settled()
                    assert lost.outcome == "interrupted", lost
                cause = runtime.causes[-1]
                if how == "close-socket":
                    assert isinstance(cause, ConnectionLost), repr(cause)
                else:
                    # The exit watcher or the connection watcher may see the death first; both are fine.
                    assert isinstance(cause, (AppServerExited, ConnectionLost)), repr(cause)
                    if isinstance(cause, AppServerExited):
                        expected = signal.SIGKILL if how == "sigkill" else signal.SIGABRT
                        assert cause.returncode == -expected, repr(cause)

                model.enqueue(Text(f"fresh turn {round_}"))
                done = await (await runtime.submit(ChannelInput(f"fresh:{round_}", f"round {round_}"))).settled()
                assert done.outcome == "completed", done
                assert done.text == f"fresh turn {round_}"
                assert model.last_input_texts()[-1] == f"round {round_}"
                # The reap finished before the next generation started: the old group is empty.
                assert live_pids_in_group(old_pgid) == []
            files.learn()
            assert runtime.restarts == 6
            model.release()
        # Only the hanging inputs were lost; none was re-run after its session died.
        for round_ in (1, 3, 5):
            assert sum(1 for r in model.requests if r.input_texts()[-1:] == [f"hang {round_}"]) == 1


async def test_sigabrt_is_reported_as_the_signal(codex_bin: str, tmp_path: Path, socket_dir: Path) -> None:
    """What codex reports on an abnormal exit: killed by SIGABRT (rc -6), no handler of its own."""
    socket_path = allocate_socket_path(socket_dir, "abrt")
    spec = ChildSpec(
        argv=app_server_argv(codex_bin, socket_path, ["-c", 'approval_policy="never"']),
        env={**os.environ, "CODEX_HOME": str(tmp_path / "home"), "RUST_LOG": "warn"},
        cwd=tmp_path,
        socket_path=socket_path,
        log_dir=tmp_path / "logs",
        runtime_id="abrt",
    )
    (tmp_path / "home").mkdir()
    files = _CodexSideFiles(socket_dir)
    try:
        with trio.fail_after(30):
            async with open_app_server(spec) as child:
                files.learn()
                os.kill(child.pid, signal.SIGABRT)
                assert await child.wait() == -signal.SIGABRT
                error = child.exit_error()
                assert error.returncode == -signal.SIGABRT
                assert "SIGABRT" in str(error)
        assert live_pids_in_group(child.pgid) == []
        assert not os.listdir(socket_dir)
    finally:
        files.remove()


# --- start failures: one clear exception each --------------------------------------------------------------


async def _first_start_error(cfg: RuntimeConfig, launcher: ProcessLauncher | None = None) -> BaseException:
    with trio.fail_after(60):
        try:
            async with open_runtime(cfg, launcher=launcher):
                pass
        except BaseException as exc:  # the type of what escapes is the point of these tests
            return exc
    raise AssertionError("open_runtime started although it should not have")


@pytest.mark.parametrize("kind", ["missing", "not-executable", "directory"])
async def test_bad_binary_path_is_binary_not_found(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "codex"
    if kind == "not-executable":
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o600)
    elif kind == "directory":
        path.mkdir()
    cfg = RuntimeConfig(runtime_id="badbin", codex_bin=str(path), log_dir=tmp_path / "logs")
    error = await _first_start_error(cfg)
    assert type(error) is BinaryNotFound, repr(error)
    assert str(path) in str(error)


async def test_codex_that_exits_at_once_is_app_server_exited(tmp_path: Path, codex_bin: str, socket_dir: Path) -> None:
    """codex 0.169 refuses ``approval_policy = "untrusted"`` at start-up (rc 1). The config validator refuses it
    too, so it is forced through ``extra_args``, which come after our own ``-c`` and win.

    (A config.toml that does not parse is *not* fatal for codex 0.169: it logs "Invalid configuration; using
    defaults" and serves. So the fatal value is the way to make the real binary exit at once.)"""
    with MockModelServer() as model:
        (tmp_path / "work").mkdir(parents=True, exist_ok=True)
        cfg = RuntimeConfig(
            runtime_id="exits",
            codex_bin=codex_bin,
            codex_home=write_codex_home(tmp_path / "home", model.url),
            cwd=tmp_path / "work",
            socket_dir=socket_dir,
            log_dir=tmp_path / "logs",
            extra_args=("-c", 'approval_policy="untrusted"'),
        )
        launcher = ProcessLauncher(cfg)
        error = await _first_start_error(cfg, launcher)
    assert type(error) is AppServerExited, repr(error)
    assert error.returncode == 1
    assert "no longer supported" in error.stderr_tail
    assert "no longer supported" in str(error)
    assert all(live_pids_in_group(pgid) == [] for pgid in launcher.pgids)  # recorded at spawn, reaped
    assert not os.listdir(socket_dir)


async def test_codex_that_never_binds_is_app_server_not_ready(tmp_path: Path, socket_dir: Path) -> None:
    """Not codex at all, but the error path is the one a codex that hangs before binding would take."""
    pid_file = tmp_path / "pid"
    script = tmp_path / "codex"
    # `sleep` runs as a child of the shell, in its group: the reap must end both.
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nsleep 30\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    cfg = RuntimeConfig(
        runtime_id="nobind",
        codex_bin=str(script),
        socket_dir=socket_dir,
        log_dir=tmp_path / "logs",
        ready_timeout=0.5,
        grace_period=0.2,
    )
    error = await _first_start_error(cfg)
    assert type(error) is AppServerNotReady, repr(error)
    assert "did not accept connections" in str(error)
    pgid = int(pid_file.read_text())
    assert live_pids_in_group(pgid) == []
    assert not os.listdir(socket_dir)
