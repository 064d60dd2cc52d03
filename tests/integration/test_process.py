"""The app-server child's life cycle, driven with a small fake child (tests/integration/fake_child.py).

Tests that run real processes use no autojump clock: timeouts are short real ones, and every test has a
``trio.fail_after`` guard. Nothing asserts how long anything took. The stop schedule is sans-IO and is tested in
virtual time, with Hypothesis; the start-slot queue runs under the autojump clock.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings, strategies as st

from codex_trio._errors import (
    AppServerExited,
    AppServerNotReady,
    BinaryNotFound,
    ConfigError,
    ProcessError,
    SocketPathError,
)
from codex_trio._paths import (
    SOCKET_PATH_BUDGET,
    SUN_PATH_MAX,
    allocate_socket_path,
    default_socket_dir,
    ensure_owner_only_dir,
    resolve_codex_bin,
    sanitize_id,
)
from codex_trio._process import (
    HANDLER_WAIT,
    RETERM_INTERVAL,
    SECOND_TERM_DELAY,
    TERM_AFTER_CONNECTABLE,
    AppServerChild,
    ChildSpec,
    StopSchedule,
    acquire_start_slot,
    app_server_argv,
    describe_returncode,
    live_pids_in_group,
    log_paths,
    open_app_server,
    start_limiter,
)
from codex_trio._watchdog import codex_daemon_files, pid_alive, remove_stale_daemon_files

FAKE = str(Path(__file__).with_name("fake_child.py"))
GUARD = 20  # seconds; a hang fails the test instead of the run


@pytest.fixture
def short_dir(short_socket_dir: Path) -> Path:
    """The testing kit's ``short_socket_dir``: pytest's tmp_path can push socket paths past sun_path."""
    return short_socket_dir


@pytest.fixture
def cleanup_groups() -> Iterator[list[int]]:
    """Process groups to SIGKILL after the test, so a failing reap does not leak processes into the run."""
    pgids: list[int] = []
    yield pgids
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def make_spec(
    sock_dir: Path,
    log_dir: Path,
    *fake_args: str,
    ready_timeout: float = 10.0,
    grace_period: float = 1.0,
    socket_path: Path | None = None,
    runtime_id: str = "rt",
) -> ChildSpec:
    sock = socket_path or sock_dir / "s" / "app.sock"
    return ChildSpec(
        argv=[sys.executable, FAKE, "--socket", str(sock), *fake_args],
        env=dict(os.environ),
        cwd=None,
        socket_path=sock,
        log_dir=log_dir,
        runtime_id=runtime_id,
        ready_timeout=ready_timeout,
        grace_period=grace_period,
    )


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate()`` holds; the caller's fail_after bounds it."""
    while True:
        if predicate():
            return
        await trio.sleep(0.01)


async def read_pidfile(path: Path) -> int:
    await eventually(path.exists)
    return read_pid(path)


def read_pid(path: Path) -> int:
    return int(path.read_text())


def gone(path: Path) -> bool:
    return not os.path.lexists(path)


# --- readiness ------------------------------------------------------------------------------------------


async def test_ready_when_connect_succeeds_then_group_reaped(short_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(short_dir, tmp_path, "--bind-after", "0.2")
    with trio.fail_after(GUARD):
        async with open_app_server(spec) as child:
            assert child.socket_path == spec.socket_path
            assert child.connect_path() == str(spec.socket_path)
            # its own session and process group, so signalling the group cannot hit us
            assert child.pgid == child.pid == os.getpgid(child.pid) == os.getsid(child.pid)
            assert child.pgid != os.getpgrp()
            assert child.returncode is None
            stream = await trio.open_unix_socket(child.connect_path())
            await stream.aclose()
            assert live_pids_in_group(child.pgid) == [child.pid]
        # plain python dies of the polite SIGTERM: no SIGKILL was needed
        assert child.returncode == -signal.SIGTERM
        assert live_pids_in_group(child.pgid) == []
        assert gone(spec.socket_path)
    # 0700 directories for the socket and for the logs
    assert stat.S_IMODE(os.stat(spec.socket_path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "codex-app-server").st_mode) == 0o700


async def test_stale_socket_file_is_not_ready(short_dir: Path, tmp_path: Path) -> None:
    # The child leaves a dead socket file at the path (as a SIGKILLed codex does) and never listens: the
    # path exists and is a socket the whole time, yet it must not count as ready.
    pidfile = short_dir / "pid"
    spec = make_spec(short_dir, tmp_path, "--stale-first", "--never-bind", "--pidfile", str(pidfile), ready_timeout=0.5)
    with trio.fail_after(GUARD):
        with pytest.raises(AppServerNotReady) as info:
            async with open_app_server(spec):
                pytest.fail("a stale socket was taken for readiness")
    pid = read_pid(pidfile)
    message = str(info.value)
    assert f"pid {pid}" in message
    assert str(spec.socket_path) in message
    assert "within 0.5s" in message
    assert "refused" in message.lower()  # it did find the stale socket, and connect() was refused
    assert not pid_alive(pid)
    assert live_pids_in_group(pid) == []
    assert gone(spec.socket_path)


async def test_never_binds_gives_not_ready_and_reaps(short_dir: Path, tmp_path: Path) -> None:
    pidfile = short_dir / "pid"
    spec = make_spec(
        short_dir,
        tmp_path,
        "--never-bind",
        "--ignore-term",
        "--pidfile",
        str(pidfile),
        ready_timeout=0.5,
        grace_period=0.1,
    )
    with trio.fail_after(GUARD):
        with pytest.raises(AppServerNotReady, match=r"did not accept connections on .* within 0\.5s"):
            async with open_app_server(spec):
                pytest.fail("never-binding child became ready")
    pid = read_pid(pidfile)
    assert not pid_alive(pid)  # it ignored SIGTERM, so only the SIGKILL ended it
    assert live_pids_in_group(pid) == []


async def test_exit_before_ready_reports_status_and_stderr(short_dir: Path, tmp_path: Path) -> None:
    err = 'Error: approval_policy = "untrusted" is no longer supported\n'
    spec = make_spec(short_dir, tmp_path, "--exit", "3", "--stderr", err)
    with trio.fail_after(GUARD):
        with pytest.raises(AppServerExited) as info:
            async with open_app_server(spec):
                pytest.fail("exited child became ready")
    exc = info.value
    assert exc.returncode == 3
    assert 'approval_policy = "untrusted" is no longer supported' in exc.stderr_tail
    message = str(exc)
    assert re.search(
        rf"codex app-server \(pid \d+\) exited with status 3 before it accepted connections on "
        rf"{re.escape(str(spec.socket_path))}",
        message,
    )
    assert "is no longer supported" in message
    stdout_log, stderr_log = log_paths(tmp_path, "rt")
    assert not stdout_log.exists()  # empty: removed
    assert stderr_log.read_text() == err  # non-empty: kept, owner-only
    assert stat.S_IMODE(os.stat(stderr_log).st_mode) == 0o600


async def test_exit_after_ready_is_seen_by_wait(short_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(short_dir, tmp_path)
    with trio.fail_after(GUARD):
        async with open_app_server(spec) as child:
            os.kill(child.pid, signal.SIGKILL)
            assert await child.wait() == -signal.SIGKILL
            assert child.returncode == -signal.SIGKILL
            error = child.exit_error()
            assert isinstance(error, AppServerExited)
            assert error.returncode == -signal.SIGKILL
            assert f"codex app-server (pid {child.pid}) was killed by SIGKILL" in str(error)


async def test_long_socket_path_connects_through_the_link(short_dir: Path, tmp_path: Path) -> None:
    # The fake does what codex does: binds a short socket and makes the over-long requested path a symlink.
    long_dir = short_dir / ("d" * 60) / ("e" * 60)
    sock = long_dir / "app.sock"
    real = short_dir / "real.sock"
    assert len(os.fsencode(str(sock))) > SUN_PATH_MAX
    spec = make_spec(short_dir, tmp_path, "--real-socket", str(real), socket_path=sock)
    with trio.fail_after(GUARD):
        async with open_app_server(spec) as child:
            assert child.connect_path() == str(real)
            stream = await trio.open_unix_socket(child.connect_path())
            await stream.aclose()
        assert gone(sock)  # our link is removed
        assert live_pids_in_group(child.pgid) == []


# --- reap -----------------------------------------------------------------------------------------------


async def test_child_ignoring_sigterm_is_killed_after_grace(short_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(short_dir, tmp_path, "--ignore-term", grace_period=0.2)
    with trio.fail_after(GUARD):
        async with open_app_server(spec) as child:
            pass
    assert child.returncode == -signal.SIGKILL
    assert live_pids_in_group(child.pgid) == []


async def test_grandchild_in_the_group_is_killed(short_dir: Path, tmp_path: Path, cleanup_groups: list[int]) -> None:
    # The grandchild ignores SIGTERM and its parent dies of it, so only the group SIGKILL sent after the
    # leader is gone can end it (the npm wrapper's native codex is such a grandchild).
    gc_pidfile = short_dir / "gc.pid"
    spec = make_spec(short_dir, tmp_path, "--grandchild", str(gc_pidfile))
    with trio.fail_after(GUARD):
        async with open_app_server(spec) as child:
            cleanup_groups.append(child.pgid)
            gc_pid = await read_pidfile(gc_pidfile)
            assert gc_pid != child.pid
            assert sorted(live_pids_in_group(child.pgid)) == sorted([child.pid, gc_pid])
        assert child.returncode == -signal.SIGTERM
        assert live_pids_in_group(child.pgid) == []  # the reap waited for the grandchild to die
    assert not pid_alive(gc_pid)


async def test_logs_non_empty_kept_empty_removed(short_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(short_dir, tmp_path, "--stdout", "hello from stdout\n")
    stdout_log, stderr_log = log_paths(tmp_path, "rt")
    with trio.fail_after(GUARD):
        async with open_app_server(spec):
            assert stat.S_IMODE(os.stat(stdout_log).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(stderr_log).st_mode) == 0o600
    assert stdout_log.read_text() == "hello from stdout\n"
    assert stat.S_IMODE(os.stat(stdout_log).st_mode) == 0o600
    assert not stderr_log.exists()


async def test_stderr_tail_is_this_childs_own_and_bounded(short_dir: Path, tmp_path: Path) -> None:
    _, stderr_log = log_paths(tmp_path, "rt")
    stderr_log.parent.mkdir(mode=0o700)
    stderr_log.write_text("old generation crashed\n")
    stderr_log.chmod(0o644)  # a lax leftover gets tightened
    noise = "".join(f"line {i}\n" for i in range(2000))
    spec = make_spec(short_dir, tmp_path, "--stderr", noise + "the last line\n")
    with trio.fail_after(GUARD):
        async with open_app_server(spec) as child:
            await eventually(lambda: "the last line" in child.stderr_tail())
            tail = child.stderr_tail()
            assert "old generation" not in tail
            small = child.stderr_tail(max_bytes=100)
            assert len(small.encode()) <= 100
            assert small.endswith("the last line\n")
            assert small.startswith("line ")  # the cut-off first line is dropped
            full = child.stderr_tail(max_bytes=1 << 20)
            assert full.startswith("line 0\n")
    assert stat.S_IMODE(os.stat(stderr_log).st_mode) == 0o600
    assert stderr_log.read_text().startswith("old generation crashed\n")  # appended, not truncated


async def test_error_in_body_propagates_and_reaps(short_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(short_dir, tmp_path)
    with trio.fail_after(GUARD):
        with pytest.raises(ValueError, match="boom"):
            async with open_app_server(spec) as child:
                raise ValueError("boom")
    assert child.returncode is not None
    assert live_pids_in_group(child.pgid) == []
    assert gone(spec.socket_path)


# --- cancellation ---------------------------------------------------------------------------------------


async def test_cancel_during_readiness_leaves_no_process(short_dir: Path, tmp_path: Path) -> None:
    pidfile = short_dir / "pid"
    spec = make_spec(short_dir, tmp_path, "--never-bind", "--ignore-term", "--pidfile", str(pidfile), grace_period=0.1)
    pid = None

    async def cancel_once_started(scope: trio.CancelScope) -> None:
        nonlocal pid
        pid = await read_pidfile(pidfile)
        scope.cancel()

    with trio.fail_after(GUARD):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_once_started, scope)
                async with open_app_server(spec):
                    pytest.fail("never-binding child became ready")
    assert scope.cancelled_caught
    assert pid is not None
    assert not pid_alive(pid)
    assert live_pids_in_group(pid) == []


async def test_cancel_while_running_leaves_no_process(
    short_dir: Path, tmp_path: Path, cleanup_groups: list[int]
) -> None:
    gc_pidfile = short_dir / "gc.pid"
    spec = make_spec(short_dir, tmp_path, "--ignore-term", "--grandchild", str(gc_pidfile), grace_period=0.1)
    child: AppServerChild | None = None
    with trio.fail_after(GUARD):
        with trio.CancelScope() as scope:
            async with open_app_server(spec) as child:
                cleanup_groups.append(child.pgid)
                await read_pidfile(gc_pidfile)
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert child is not None
        assert child.returncode == -signal.SIGKILL
        assert live_pids_in_group(child.pgid) == []
    assert gone(spec.socket_path)


# --- spawn errors ---------------------------------------------------------------------------------------


async def test_missing_binary_is_binary_not_found(short_dir: Path, tmp_path: Path) -> None:
    missing = str(short_dir / "no-such-codex")
    spec = ChildSpec(
        argv=app_server_argv(missing, short_dir / "a.sock"),
        env=dict(os.environ),
        cwd=None,
        socket_path=short_dir / "a.sock",
        log_dir=tmp_path,
        runtime_id="rt",
    )
    with trio.fail_after(GUARD), pytest.raises(BinaryNotFound, match="no such file") as info:
        async with open_app_server(spec):
            pytest.fail("started a missing binary")
    assert missing in str(info.value)
    assert not any(log.exists() for log in log_paths(tmp_path, "rt"))


async def test_non_executable_binary_is_binary_not_found(short_dir: Path, tmp_path: Path) -> None:
    plain = short_dir / "codex"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    spec = ChildSpec(
        argv=app_server_argv(str(plain), short_dir / "a.sock"),
        env=dict(os.environ),
        cwd=None,
        socket_path=short_dir / "a.sock",
        log_dir=tmp_path,
        runtime_id="rt",
    )
    with trio.fail_after(GUARD), pytest.raises(BinaryNotFound, match="permission denied"):
        async with open_app_server(spec):
            pytest.fail("started a non-executable file")


def test_child_spec_validation(short_dir: Path) -> None:
    good: dict[str, Any] = {
        "env": {},
        "cwd": None,
        "socket_path": short_dir / "a.sock",
        "log_dir": short_dir,
        "runtime_id": "r",
    }
    with pytest.raises(ProcessError, match="argv"):
        ChildSpec(argv=[], **good)
    with pytest.raises(ProcessError, match="argv"):
        ChildSpec(argv="codex app-server", **good)
    with pytest.raises(SocketPathError, match="absolute"):
        ChildSpec(argv=["x"], env={}, cwd=None, socket_path=Path("rel.sock"), log_dir=short_dir, runtime_id="r")
    with pytest.raises(ProcessError, match="ready_timeout"):
        ChildSpec(argv=["x"], ready_timeout=0, **good)
    with pytest.raises(ProcessError, match="grace_period"):
        ChildSpec(argv=["x"], grace_period=float("nan"), **good)
    spec = ChildSpec(argv=["x", "y"], **good)
    assert spec.argv == ("x", "y")


def test_describe_returncode() -> None:
    assert describe_returncode(None) == "is still running"
    assert describe_returncode(0) == "exited with status 0"
    assert describe_returncode(1) == "exited with status 1"
    assert describe_returncode(-9) == "was killed by SIGKILL"
    assert describe_returncode(-15) == "was killed by SIGTERM"


# --- socket directory and path --------------------------------------------------------------------------


def test_owner_only_dir_created_0700(short_dir: Path) -> None:
    target = short_dir / "a" / "b"
    assert ensure_owner_only_dir(target) == target
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700


def test_owner_only_dir_leaves_a_shared_directory_alone(short_dir: Path) -> None:
    target = short_dir / "lax"
    target.mkdir()
    target.chmod(0o777)
    private = ensure_owner_only_dir(target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777  # not ours to change
    assert private == target / f"codex-trio-{os.geteuid()}"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700


def test_owner_only_dir_refuses_symlink(short_dir: Path) -> None:
    real = short_dir / "real"
    real.mkdir(mode=0o700)
    link = short_dir / "link"
    link.symlink_to(real)
    with pytest.raises(SocketPathError, match="it is a symlink, not a real directory") as info:
        ensure_owner_only_dir(link)
    assert str(link) in str(info.value)
    dangling = short_dir / "dangling"
    dangling.symlink_to(short_dir / "nowhere")
    with pytest.raises(SocketPathError, match="symlink"):
        ensure_owner_only_dir(dangling)
    assert not (short_dir / "nowhere").exists()


def test_owner_only_dir_refuses_a_file(short_dir: Path) -> None:
    f = short_dir / "file"
    f.write_text("")
    with pytest.raises(SocketPathError, match="not a directory"):
        ensure_owner_only_dir(f)


def test_owner_only_dir_refuses_foreign_owner(short_dir: Path) -> None:
    if os.geteuid() == 0:
        foreign = short_dir / "foreign"
        foreign.mkdir()
        os.chown(foreign, 65534, 65534)
        other = 65534
    else:
        foreign, other = Path("/"), 0  # root-owned, and we are not root
    with pytest.raises(SocketPathError, match=rf"owned by uid {other}, not the current user \(uid {os.geteuid()}\)"):
        ensure_owner_only_dir(foreign)


def test_socket_dir_error_is_a_config_error() -> None:
    assert issubclass(SocketPathError, ConfigError)
    assert issubclass(SocketPathError, ProcessError)


def test_allocate_socket_path_fresh_and_in_budget(short_dir: Path) -> None:
    a = allocate_socket_path(short_dir, "support bot/1")
    b = allocate_socket_path(short_dir, "support bot/1")
    assert a != b
    assert a.parent == short_dir
    assert re.fullmatch(r"support_bot_1-[A-Za-z0-9_-]{8}\.sock", a.name)
    assert len(os.fsencode(str(a))) <= SOCKET_PATH_BUDGET


def test_allocate_socket_path_too_long(short_dir: Path) -> None:
    deep = short_dir / ("x" * 100)
    with pytest.raises(SocketPathError) as info:
        allocate_socket_path(deep, "rt")
    message = str(info.value)
    assert str(deep) in message
    assert f"> {SOCKET_PATH_BUDGET} safe bytes" in message
    length = int(re.search(r"\((\d+) bytes", message).group(1))  # type: ignore[union-attr]
    assert length > SOCKET_PATH_BUDGET
    assert "shorter socket_dir" in message


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_allocated_names_are_one_safe_component(runtime_id: str) -> None:
    path = allocate_socket_path(Path("/tmp/ct"), runtime_id)
    assert path.parent == Path("/tmp/ct")
    assert re.fullmatch(r"[A-Za-z0-9._-]+-[A-Za-z0-9_-]{8}\.sock", path.name)
    assert len(os.fsencode(str(path))) <= SOCKET_PATH_BUDGET
    assert sanitize_id(runtime_id) not in ("", ".", "..")


def test_default_socket_dir(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    assert default_socket_dir() == short_dir / "codex-trio"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir / "missing"))
    assert default_socket_dir() == Path(tempfile.gettempdir()) / f"codex-trio-{os.geteuid()}"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_dir() == Path(tempfile.gettempdir()) / f"codex-trio-{os.geteuid()}"


# --- resolve_codex_bin ----------------------------------------------------------------------------------


def _exe(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_resolve_configured_wins(short_dir: Path) -> None:
    configured = _exe(short_dir / "mine")
    env_bin = _exe(short_dir / "from-env")
    env = {"CODEX_TRIO_CODEX_BIN": str(env_bin), "PATH": ""}
    assert resolve_codex_bin(str(configured), env) == str(configured)
    assert resolve_codex_bin(None, env) == str(env_bin)
    assert resolve_codex_bin("  ", env) == str(env_bin)


def test_resolve_path_lookup_and_absolute(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = short_dir / "bin"
    bindir.mkdir()
    codex = _exe(bindir / "codex")
    assert resolve_codex_bin(None, {"PATH": str(bindir)}) == str(codex)
    monkeypatch.chdir(short_dir)
    assert resolve_codex_bin("./bin/codex", {"PATH": ""}) == str(codex)  # absolute: the child's cwd differs


def test_resolve_missing_configured_names_it(short_dir: Path) -> None:
    missing = str(short_dir / "nope")
    with pytest.raises(BinaryNotFound) as info:
        resolve_codex_bin(missing, {"PATH": ""})
    assert info.value.tried == [f"configured codex_bin {missing!r}: no such file"]
    assert missing in str(info.value)


def test_resolve_non_executable(short_dir: Path) -> None:
    plain = short_dir / "plain"
    plain.write_text("")
    plain.chmod(0o644)
    with pytest.raises(BinaryNotFound, match="not executable"):
        resolve_codex_bin(None, {"CODEX_TRIO_CODEX_BIN": str(plain), "PATH": ""})
    with pytest.raises(BinaryNotFound, match="not a regular file"):
        resolve_codex_bin(str(short_dir), {"PATH": ""})


def test_resolve_nothing_lists_every_candidate(short_dir: Path) -> None:
    with pytest.raises(BinaryNotFound) as info:
        resolve_codex_bin(None, {"PATH": str(short_dir)})
    tried = info.value.tried
    assert len(tried) == 3
    assert "codex_bin: not given" in tried[0]
    assert "CODEX_TRIO_CODEX_BIN: not set" in tried[1]
    assert str(short_dir) in tried[2] and "not found" in tried[2]
    assert "npm install @openai/codex" in str(info.value)


# --- the stop schedule (sans-IO) ------------------------------------------------------------------------------


def drive(
    schedule: StopSchedule,
    *,
    start: float = 1000.0,
    exit_at: float | None = None,
    handler_at: float | None = None,
    handler_known: bool = True,
) -> list[tuple[float, str]]:
    """Run ``schedule`` the way ``AppServerChild.stop`` does, in virtual time; the signals sent, with when."""
    now = start
    sent: list[tuple[float, str]] = []
    for _ in range(10_000):
        handles: bool | None = None
        if schedule.wants_disposition(now) and handler_known:
            handles = handler_at is not None and now >= handler_at
        step = schedule.next(now, exited=exit_at is not None and now >= exit_at, handles_term=handles)
        if step.signal is not None:
            sent.append((now, step.signal.name))
        if step.done:
            return sent
        assert step.wait_until >= now
        wake = step.wait_until
        if exit_at is not None and now < exit_at < wake:
            wake = exit_at  # the driver waits for the exit, so it wakes at once
        assert wake > now or step.signal is not None, "no progress"
        now = wake
    raise AssertionError("the schedule never finished")


def names(sent: list[tuple[float, str]]) -> list[str]:
    return [name for _, name in sent]


def test_schedule_codex_mid_turn_exits_on_the_second_sigterm() -> None:
    sent = drive(StopSchedule(grace_period=1.0), exit_at=1000.0 + SECOND_TERM_DELAY + 0.03)
    assert names(sent) == ["SIGTERM", "SIGTERM", "SIGKILL"]
    assert sent[1][0] - sent[0][0] == pytest.approx(SECOND_TERM_DELAY)
    assert sent[2][0] == pytest.approx(1000.0 + SECOND_TERM_DELAY + 0.03)  # the final group SIGKILL at the exit


def test_schedule_deaf_child_gets_repeated_sigterms_then_sigkill_after_grace() -> None:
    sent = drive(StopSchedule(grace_period=0.5))
    assert names(sent)[0] == names(sent)[1] == "SIGTERM"
    assert names(sent)[-1] == "SIGKILL" and names(sent).count("SIGKILL") == 1
    second = sent[1][0]
    assert sent[-1][0] == pytest.approx(second + 0.5)
    repeats = [t for t, name in sent[2:] if name == "SIGTERM"]
    gaps = [b - a for a, b in zip([second, *repeats[:-1]], repeats, strict=True)]
    assert repeats and gaps == pytest.approx([RETERM_INTERVAL] * len(gaps))


def test_schedule_zero_grace_still_sends_two_sigterms() -> None:
    assert names(drive(StopSchedule(grace_period=0.0))) == ["SIGTERM", "SIGTERM", "SIGKILL"]


def test_schedule_waits_after_readiness_and_for_the_handler() -> None:
    start = 1000.0
    connectable = start - 0.001
    sent = drive(StopSchedule(1.0, connectable_at=connectable), handler_at=connectable + 0.1, exit_at=start + 1)
    assert sent[0][1] == "SIGTERM" and sent[0][0] == pytest.approx(connectable + 0.1, abs=0.006)
    # never any handler: it gives up waiting at HANDLER_WAIT
    sent = drive(StopSchedule(1.0, connectable_at=connectable), handler_at=None, exit_at=start + 1)
    assert sent[0][1] == "SIGTERM" and sent[0][0] == pytest.approx(connectable + HANDLER_WAIT, abs=0.006)
    # the handler was there already: only the fixed delay after readiness
    sent = drive(StopSchedule(1.0, connectable_at=connectable), handler_at=0.0, exit_at=start + 1)
    assert sent[0][1] == "SIGTERM" and sent[0][0] == pytest.approx(connectable + TERM_AFTER_CONNECTABLE)
    # no /proc to ask: the fixed delay too
    sent = drive(StopSchedule(1.0, connectable_at=connectable), handler_known=False, exit_at=start + 1)
    assert sent[0][1] == "SIGTERM" and sent[0][0] == pytest.approx(connectable + TERM_AFTER_CONNECTABLE)
    # long connectable: at once
    assert drive(StopSchedule(1.0, connectable_at=start - 5), exit_at=start + 1)[0] == (start, "SIGTERM")


def test_schedule_exited_child_gets_only_the_final_sigkill() -> None:
    assert drive(StopSchedule(1.0, connectable_at=999.0), exit_at=0.0) == [(1000.0, "SIGKILL")]


@settings(max_examples=300, deadline=None)
@given(
    grace=st.floats(0, 5),
    connectable=st.none() | st.floats(-3, 0),
    handler=st.none() | st.floats(-3, 1),
    exit_after=st.none() | st.floats(0, 8),
    known=st.booleans(),
)
def test_schedule_properties(
    grace: float, connectable: float | None, handler: float | None, exit_after: float | None, known: bool
) -> None:
    start = 1000.0
    schedule = StopSchedule(grace, connectable_at=None if connectable is None else start + connectable)
    exit_at = None if exit_after is None else start + exit_after
    handler_at = None if handler is None else start + handler
    sent = drive(schedule, start=start, exit_at=exit_at, handler_at=handler_at, handler_known=known)
    kinds = names(sent)
    # it always ends with exactly one SIGKILL to the group, and never signals after it
    assert kinds[-1] == "SIGKILL" and kinds.count("SIGKILL") == 1
    terms = [t for t, name in sent if name == "SIGTERM"]
    killed_at = sent[-1][0]
    if exit_at is None or exit_at > killed_at:
        # not exited: two SIGTERMs at least, then the grace period, before the SIGKILL
        assert len(terms) >= 2
        assert terms[1] - terms[0] == pytest.approx(SECOND_TERM_DELAY)
        assert killed_at == pytest.approx(terms[1] + grace)
    if terms and connectable is not None:
        ready = start + connectable
        assert terms[0] >= ready + TERM_AFTER_CONNECTABLE - 1e-9
        if known and handler_at is not None and handler_at < ready + HANDLER_WAIT:
            assert terms[0] >= handler_at - 1e-9  # never before the handler, when it comes in time
        assert terms[0] <= max(start, ready + HANDLER_WAIT) + 1e-9  # and never waits longer than that
    if terms and connectable is None:
        assert terms[0] == start  # not known to be ready: at once


# --- start slots ----------------------------------------------------------------------------------------------


async def test_start_slot_wait_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    limiter = start_limiter()
    limiter.total_tokens = 1
    await limiter.acquire_on_behalf_of("a start that hangs")
    with pytest.raises(AppServerNotReady, match="no codex app-server start slot within"):
        await acquire_start_slot(ready_timeout=2.0)
    limiter.release_on_behalf_of("a start that hangs")
    slot = await acquire_start_slot(ready_timeout=2.0)
    assert limiter.statistics().borrowed_tokens == 1
    slot.release()
    slot.release()  # idempotent
    assert limiter.statistics().borrowed_tokens == 0


async def test_start_slots_are_fifo_and_per_run(autojump_clock: trio.testing.MockClock) -> None:
    limiter = start_limiter()
    assert limiter is start_limiter()
    assert limiter.total_tokens >= 2
    limiter.total_tokens = 1
    order: list[int] = []

    async def take(i: int) -> None:
        slot = await acquire_start_slot(ready_timeout=10.0)
        order.append(i)
        await trio.sleep(1)
        slot.release()

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(take, i)
            await trio.sleep(0.01)
    assert order == [0, 1, 2, 3, 4]


async def test_open_app_server_counts_the_ready_timeout_from_the_spawn(short_dir: Path, tmp_path: Path) -> None:
    # One slot and five children that each bind 0.5 s after their start: the last waits longer than its ready
    # timeout for the slot, and still has the whole timeout from its own spawn.
    start_limiter().total_tokens = 1
    n, bind_after, ready_timeout = 5, 0.5, 1.5
    assert (n - 1) * bind_after > ready_timeout
    ready: list[int] = []

    async def one(i: int) -> None:
        sock = short_dir / f"{i}.sock"
        spec = make_spec(
            short_dir, tmp_path, "--bind-after", str(bind_after), ready_timeout=ready_timeout, socket_path=sock
        )
        async with open_app_server(spec) as child:
            ready.append(child.pid)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
    assert len(ready) == n


# --- codex's daemon files -------------------------------------------------------------------------------------


def test_stale_daemon_files_are_removed_live_ones_kept(short_dir: Path) -> None:
    import socket

    daemon = short_dir / "daemon"
    daemon.mkdir()
    ours = short_dir / "s" / "app.sock"
    sock_path, lock_path = codex_daemon_files(ours, str(daemon))
    assert Path(sock_path).parent == daemon and lock_path == sock_path + ".lock"
    assert Path(sock_path).name == hashlib.sha256(os.fsencode(str(ours))).hexdigest()
    assert codex_daemon_files(ours)[0] == f"/tmp/codex-daemon-{os.geteuid()}/{Path(sock_path).name}"

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    Path(lock_path).touch()
    try:
        assert remove_stale_daemon_files(ours, str(daemon)) == []  # someone serves on it: not ours to touch
        assert os.path.exists(sock_path) and os.path.exists(lock_path)
    finally:
        listener.close()  # now a stale socket file, like after a SIGKILL
    assert remove_stale_daemon_files(ours, str(daemon)) == [sock_path, lock_path]
    assert list(daemon.iterdir()) == []
    Path(sock_path).write_text("not a socket")
    assert remove_stale_daemon_files(ours, str(daemon)) == []  # only what codex makes
    assert remove_stale_daemon_files(short_dir / "other.sock", str(daemon)) == []


def test_resolve_finds_the_project_codex_npm_install_from_a_subdirectory(short_dir: Path) -> None:
    native = short_dir / ".codex-npm/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
    native.parent.mkdir(parents=True)
    _exe(native)
    below = short_dir / "src" / "deep"
    below.mkdir(parents=True)
    on_path = _exe(short_dir / "codex")
    assert resolve_codex_bin(None, {"PATH": str(short_dir)}, project_dir=below) == str(native)
    assert resolve_codex_bin(None, {"PATH": str(short_dir)}) == str(on_path)  # the library does not look there
    env_bin = _exe(short_dir / "from-env")
    assert resolve_codex_bin(None, {"CODEX_TRIO_CODEX_BIN": str(env_bin)}, project_dir=below) == str(env_bin)
    native.chmod(0o644)
    with pytest.raises(BinaryNotFound) as info:
        resolve_codex_bin(None, {"PATH": ""}, project_dir=below, configured_as="--codex-bin", hint="Pass --codex-bin.")
    assert info.value.tried[0] == "--codex-bin: not given"
    assert f".codex-npm in {below} or a parent: {native}: not executable" in info.value.tried
    assert str(info.value).endswith("Pass --codex-bin.")
