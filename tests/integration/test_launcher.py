"""ProcessLauncher on the launcher protocol, driven with a small stdlib child that can misbehave on cue.

``launch`` returns at the spawn; ``connect()`` waits for readiness (counted from the spawn) and performs the
WebSocket upgrade, each step bounded and failing with a typed error; ``wait_gone()`` works from the spawn on;
leaving the context stops the group (two SIGTERMs, SIGKILL as the last resort) and cleans up. Real processes, so
no autojump clock: every test has a ``fail_after`` guard and nothing asserts how long anything took.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from codex_trio import _watchdog as watchdog
from codex_trio._config import RuntimeConfig
from codex_trio._errors import AppServerExited, AppServerNotReady, BinaryNotFound, ConnectionLost, ProcessError
from codex_trio._launcher import PGID_HISTORY, Launched, ProcessLauncher
from codex_trio._process import live_pids_in_group, start_limiter
from codex_trio._watchdog import MARKER, pid_alive, watcher_pid

GUARD = 30  # seconds; a hang fails the test instead of the run

#: The child: ``<this file> app-server --listen unix://PATH ...`` like codex; behaviour from LCHILD_* variables.
CHILD_SOURCE = r"""
import base64, hashlib, os, signal, socket, subprocess, sys, time

env = os.environ
argv = sys.argv[1:]
path = argv[argv.index("--listen") + 1][len("unix://"):]


def write_atomic(target, text):
    with open(target + ".tmp", "w") as f:
        f.write(text)
    os.replace(target + ".tmp", target)


def note(what):
    if env.get("LCHILD_EVENTS"):
        fd = os.open(env["LCHILD_EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, (what + "\n").encode())
        os.close(fd)


if env.get("LCHILD_PIDFILE"):
    write_atomic(env["LCHILD_PIDFILE"], str(os.getpid()))
if env.get("LCHILD_STDERR"):
    os.write(2, env["LCHILD_STDERR"].encode())
mode = env.get("LCHILD_MODE", "serve")
if mode == "exit":
    os._exit(int(env.get("LCHILD_EXIT", "3")))

terms = []


def on_term(signum, frame):
    # like codex with a turn in flight: the first SIGTERM starts a drain, the second exits (cleanly) at once
    terms.append(signum)
    note("TERM")
    if len(terms) >= 2 or env.get("LCHILD_TERM") == "clean":
        note("EXIT")
        os._exit(0)


term = env.get("LCHILD_TERM", "default")
if term == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif term in ("second", "clean"):
    signal.signal(signal.SIGTERM, on_term)

if env.get("LCHILD_GRANDCHILD"):
    gc = env["LCHILD_GRANDCHILD"]
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "while True: time.sleep(60)\n"
    )
    subprocess.Popen([sys.executable, "-c", code, gc], stdin=subprocess.DEVNULL)
    while not os.path.exists(gc):
        time.sleep(0.01)

time.sleep(float(env.get("LCHILD_BIND_AFTER", "0")))
if mode == "never-bind":
    while True:
        time.sleep(60)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if os.path.lexists(path):
    os.unlink(path)
srv.bind(path)
srv.listen(64)  # from here on connect() succeeds: the kernel queues connections we have not accepted yet
note("BOUND")
if env.get("LCHILD_HANDLER_AFTER"):
    # like codex: the socket accepts connections a few ms before the SIGTERM handler is installed
    time.sleep(float(env["LCHILD_HANDLER_AFTER"]))
    signal.signal(signal.SIGTERM, on_term)
    note("HANDLER")
held = []
while True:
    conn, _ = srv.accept()
    if mode == "mute":
        held.append(conn)  # accept, then never answer
        continue
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    if not data:
        conn.close()  # a readiness probe: connect, close
        continue
    if mode == "die-on-upgrade":
        os._exit(7)
    if mode == "http400":
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        held.append(conn)
        continue
    if mode == "garbage":
        conn.sendall(b"\x00\xff\xfe this is not HTTP\r\n\r\n")
        held.append(conn)
        continue
    key = b""
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + b"\x81\x05hello"
    )
    held.append(conn)
"""


@pytest.fixture
def short_dir(short_socket_dir: Path) -> Path:
    """The testing kit's ``short_socket_dir``: pytest's tmp_path can push socket paths past sun_path."""
    return short_socket_dir


@pytest.fixture
def child_bin(tmp_path: Path) -> Path:
    child = tmp_path / "codex"
    child.write_text(f"#!{sys.executable}\n{CHILD_SOURCE}")
    child.chmod(0o755)
    return child


@pytest.fixture
def cleanup_groups() -> Iterator[list[int]]:
    """Groups to SIGKILL after the test, so a failing stop does not leak processes into the run."""
    pgids: list[int] = []
    yield pgids
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def make_config(short_dir: Path, tmp_path: Path, codex_bin: Path, env: dict[str, str], **kw: Any) -> RuntimeConfig:
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    return RuntimeConfig(
        runtime_id="lt",
        codex_bin=str(codex_bin),
        cwd=tmp_path / "work",
        extra_env=env,
        socket_dir=short_dir / "s",
        log_dir=tmp_path / "logs",
        state_dir=tmp_path / "state",
        **kw,
    )


def connectable(path: Path) -> bool:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


async def eventually(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.01)


def events(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def assert_group_gone(launched: Launched) -> None:
    assert launched.pgid is not None
    assert live_pids_in_group(launched.pgid) == []


# --- launch and connect ---------------------------------------------------------------------------------------


async def test_launch_returns_at_the_spawn_and_connect_upgrades(
    short_dir: Path, tmp_path: Path, child_bin: Path
) -> None:
    cfg = make_config(short_dir, tmp_path, child_bin, {"LCHILD_BIND_AFTER": "1.0"})
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(7) as launched:
            # entered while the child cannot be connectable yet (it binds a second after its start)
            assert launched.pid is not None and launched.pgid == launched.pid
            assert launcher.last_pgid == launched.pgid and list(launcher.pgids) == [launched.pgid]
            assert launched.identity is not None and launched.identity.startswith(f"{launched.pgid}:")
            assert "generation 7" in launched.description
            assert pid_alive(launched.pid)
            assert not any(connectable(p) for p in (short_dir / "s").iterdir())
            assert watcher_pid() is not None  # the orphan watcher knows about this group
            stream = await launched.connect()
            assert await stream.receive_message() == "hello"
            with pytest.raises(ProcessError, match="already called"):
                await launched.connect()
        reason = await launched.wait_gone()
        assert isinstance(reason, AppServerExited)
        assert_group_gone(launched)
        assert list((short_dir / "s").iterdir()) == []  # our socket is removed
        assert not (tmp_path / "logs" / "codex-app-server" / "lt.log").exists()  # empty logs are removed


async def test_ready_deadline_counts_from_the_spawn_not_from_the_queue(
    short_dir: Path, tmp_path: Path, child_bin: Path
) -> None:
    # One start slot, eight launches: the last waits for seven children that each take at least 0.5 s to bind,
    # longer than its ready timeout, yet each child has the whole ready timeout from its own spawn.
    n, bind_after = 8, 0.5
    cfg = make_config(short_dir, tmp_path, child_bin, {"LCHILD_BIND_AFTER": str(bind_after)}, ready_timeout=3.0)
    assert (n - 1) * bind_after > cfg.ready_timeout
    connected: list[int] = []
    most_starting = 0

    async def one(done: trio.Event) -> None:
        launcher = ProcessLauncher(cfg)
        async with launcher.launch(1) as launched:
            await launched.connect()
            assert launched.pid is not None
            connected.append(launched.pid)
            await done.wait()

    async def monitor(limiter: trio.CapacityLimiter) -> None:
        nonlocal most_starting
        while True:
            most_starting = max(most_starting, limiter.statistics().borrowed_tokens)
            await trio.sleep(0.005)

    with trio.fail_after(GUARD):
        limiter = start_limiter()
        limiter.total_tokens = 1
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor, limiter)
            async with trio.open_nursery() as launches:
                for _ in range(n):
                    launches.start_soon(one, done)
                await eventually(lambda: len(connected) == n)
                done.set()
            nursery.cancel_scope.cancel()
    assert most_starting == 1
    assert limiter.statistics().borrowed_tokens == 0


async def test_exit_during_the_start_is_seen_by_connect_and_wait_gone(
    short_dir: Path, tmp_path: Path, child_bin: Path
) -> None:
    err = "Error: approval_policy is no longer supported\n"
    cfg = make_config(short_dir, tmp_path, child_bin, {"LCHILD_MODE": "exit", "LCHILD_EXIT": "3", "LCHILD_STDERR": err})
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            reasons: list[BaseException] = []

            async def gone() -> None:
                reasons.append(await launched.wait_gone())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(gone)
                with pytest.raises(AppServerExited) as info:
                    await launched.connect()
    assert info.value.returncode == 3
    assert "exited with status 3 before it accepted connections on" in str(info.value)
    assert "no longer supported" in str(info.value)
    [reason] = reasons
    assert isinstance(reason, AppServerExited) and reason.returncode == 3
    assert "no longer supported" in reason.stderr_tail
    assert_group_gone(launched)


async def test_not_connectable_in_time_is_not_ready(short_dir: Path, tmp_path: Path, child_bin: Path) -> None:
    cfg = make_config(short_dir, tmp_path, child_bin, {"LCHILD_MODE": "never-bind"}, ready_timeout=0.5)
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        with pytest.raises(AppServerNotReady, match=r"did not accept connections on .* within 0\.5s of its start"):
            async with launcher.launch(1) as launched:
                await launched.connect()
        assert_group_gone(launched)
        assert start_limiter().statistics().borrowed_tokens == 0


@pytest.mark.parametrize("mode", ["http400", "garbage"])
async def test_upgrade_answered_with_something_else_is_a_typed_error(
    short_dir: Path, tmp_path: Path, child_bin: Path, mode: str
) -> None:
    cfg = make_config(short_dir, tmp_path, child_bin, {"LCHILD_MODE": mode}, handshake_timeout=5.0)
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            with pytest.raises((ConnectionLost, AppServerNotReady)):
                await launched.connect()
        assert_group_gone(launched)


async def test_upgrade_that_never_answers_times_out(short_dir: Path, tmp_path: Path, child_bin: Path) -> None:
    cfg = make_config(short_dir, tmp_path, child_bin, {"LCHILD_MODE": "mute"}, handshake_timeout=0.5)
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            with pytest.raises(AppServerNotReady, match=r"did not complete the WebSocket upgrade within 0\.5s"):
                await launched.connect()
        assert_group_gone(launched)


async def test_child_stopped_after_it_became_connectable(
    short_dir: Path, tmp_path: Path, child_bin: Path, cleanup_groups: list[int]
) -> None:
    # SIGSTOP between readiness and the upgrade: the kernel still queues our connection, nobody answers. The stop
    # then has to get past a frozen group (its SIGTERMs wait; the SIGKILL does not).
    events_file = short_dir / "events"
    env = {"LCHILD_EVENTS": str(events_file), "LCHILD_TERM": "second"}  # handled: it has to wait for SIGCONT
    cfg = make_config(short_dir, tmp_path, child_bin, env, handshake_timeout=0.5, grace_period=0.2)
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            assert launched.pgid is not None
            cleanup_groups.append(launched.pgid)
            await eventually(lambda: "BOUND" in events(events_file))
            os.killpg(launched.pgid, signal.SIGSTOP)
            with pytest.raises(AppServerNotReady, match="did not complete the WebSocket upgrade"):
                await launched.connect()
        reason = await launched.wait_gone()
        assert isinstance(reason, AppServerExited) and reason.returncode == -signal.SIGKILL
        assert_group_gone(launched)


async def test_child_dying_during_the_upgrade_is_app_server_exited(
    short_dir: Path, tmp_path: Path, child_bin: Path
) -> None:
    cfg = make_config(short_dir, tmp_path, child_bin, {"LCHILD_MODE": "die-on-upgrade"})
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            with pytest.raises(AppServerExited, match="exited with status 7 during the WebSocket upgrade") as info:
                await launched.connect()
            assert info.value.returncode == 7
        assert_group_gone(launched)


async def test_kill_while_connect_waits(short_dir: Path, tmp_path: Path, child_bin: Path) -> None:
    cfg = make_config(short_dir, tmp_path, child_bin, {"LCHILD_BIND_AFTER": "30"})
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            assert launched.pgid is not None
            reasons: list[BaseException] = []
            errors: list[BaseException] = []

            async def connect() -> None:
                try:
                    await launched.connect()
                except AppServerExited as exc:
                    errors.append(exc)

            async def gone() -> None:
                reasons.append(await launched.wait_gone())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(connect)
                nursery.start_soon(gone)
                await trio.sleep(0.2)
                os.killpg(launched.pgid, signal.SIGKILL)
    [error] = errors
    [reason] = reasons
    assert isinstance(reason, AppServerExited) and reason.returncode == -signal.SIGKILL
    assert "was killed by SIGKILL before it accepted connections" in str(error)
    assert_group_gone(launched)


# --- the stop -------------------------------------------------------------------------------------------------


async def test_stop_sends_a_second_sigterm(short_dir: Path, tmp_path: Path, child_bin: Path) -> None:
    # Like codex with a turn in flight: the first SIGTERM only starts a drain. A grace period longer than the guard
    # shows that the exit came from the second SIGTERM, not from a SIGKILL.
    events_file = short_dir / "events"
    env = {"LCHILD_TERM": "second", "LCHILD_EVENTS": str(events_file)}
    cfg = make_config(short_dir, tmp_path, child_bin, env, grace_period=GUARD * 2)
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            await launched.connect()
        reason = await launched.wait_gone()
    assert isinstance(reason, AppServerExited) and reason.returncode == 0
    assert events(events_file) == ["BOUND", "TERM", "TERM", "EXIT"]
    assert_group_gone(launched)


async def test_first_sigterm_waits_for_the_handler(short_dir: Path, tmp_path: Path, child_bin: Path) -> None:
    # Like codex: connectable a little before its SIGTERM handler exists. A SIGTERM in between would kill it with
    # the default action (-15; codex then leaves its socket files behind).
    events_file = short_dir / "events"
    env = {"LCHILD_HANDLER_AFTER": "0.1", "LCHILD_TERM": "clean-later", "LCHILD_EVENTS": str(events_file)}
    cfg = make_config(short_dir, tmp_path, child_bin, env)
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            await eventually(lambda: "BOUND" in events(events_file))  # and leave at once, connect() or not
        reason = await launched.wait_gone()
    assert isinstance(reason, AppServerExited)
    assert reason.returncode == 0, events(events_file)
    assert events(events_file)[:3] == ["BOUND", "HANDLER", "TERM"]
    assert_group_gone(launched)


async def test_stop_kills_what_ignores_sigterm_and_the_grandchild(
    short_dir: Path, tmp_path: Path, child_bin: Path, cleanup_groups: list[int]
) -> None:
    gc_pidfile = short_dir / "gc.pid"
    env = {"LCHILD_TERM": "ignore", "LCHILD_GRANDCHILD": str(gc_pidfile)}
    cfg = make_config(short_dir, tmp_path, child_bin, env, grace_period=0.2)
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            assert launched.pgid is not None
            cleanup_groups.append(launched.pgid)
            await launched.connect()
            gc_pid = int(gc_pidfile.read_text())
            assert sorted(live_pids_in_group(launched.pgid)) == sorted([launched.pgid, gc_pid])
        reason = await launched.wait_gone()
    assert isinstance(reason, AppServerExited) and reason.returncode == -signal.SIGKILL
    assert not pid_alive(gc_pid)
    assert_group_gone(launched)


async def test_an_error_in_the_body_comes_out_as_itself(short_dir: Path, tmp_path: Path, child_bin: Path) -> None:
    cfg = make_config(short_dir, tmp_path, child_bin, {})
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        with pytest.raises(KeyError) as info:
            async with launcher.launch(1) as launched:
                await launched.connect()
                raise KeyError("boom")
        assert not isinstance(info.value, BaseExceptionGroup)
        assert_group_gone(launched)
        with trio.move_on_after(0.3) as scope:
            async with launcher.launch(2) as launched:
                await launched.connect()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert_group_gone(launched)


async def test_a_spawn_that_cannot_happen_fails_at_once(short_dir: Path, tmp_path: Path, child_bin: Path) -> None:
    cfg = make_config(short_dir, tmp_path, child_bin, {})
    launcher = ProcessLauncher(cfg)
    os.unlink(child_bin)  # resolved when the launcher was made, gone by the launch
    with trio.fail_after(GUARD):
        with pytest.raises(BinaryNotFound, match="no such file"):
            async with launcher.launch(1):
                pytest.fail("launched a missing binary")
        assert start_limiter().statistics().borrowed_tokens == 0
    assert list(launcher.pgids) == []


async def test_pgids_keep_only_the_most_recent(short_dir: Path, tmp_path: Path) -> None:
    quick = tmp_path / "quick"
    quick.write_text("#!/bin/sh\nexit 0\n")
    quick.chmod(0o755)
    cfg = make_config(short_dir, tmp_path, quick, {})
    launcher = ProcessLauncher(cfg)
    seen: list[int] = []
    with trio.fail_after(GUARD * 2):
        for generation in range(PGID_HISTORY + 6):
            async with launcher.launch(generation) as launched:
                assert launched.pgid is not None
                seen.append(launched.pgid)
    assert len(launcher.pgids) == PGID_HISTORY
    assert list(launcher.pgids) == seen[-PGID_HISTORY:]


async def test_blocking_work_stays_off_the_trio_thread(
    short_dir: Path, tmp_path: Path, child_bin: Path, monkeypatch: pytest.MonkeyPatch, cleanup_groups: list[int]
) -> None:
    # /proc scans, /proc and log reads, and file clean-up run in worker threads: record where each one ran.
    import codex_trio._process as process

    trio_thread = threading.current_thread()
    calls: list[tuple[str, bool]] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, threading.current_thread() is trio_thread))
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(process, "live_pids_in_group", spy("scan", process.live_pids_in_group))
    monkeypatch.setattr(watchdog, "sigterm_disposition_set", spy("status", watchdog.sigterm_disposition_set))
    monkeypatch.setattr(watchdog, "remove_stale_daemon_files", spy("clean", watchdog.remove_stale_daemon_files))
    monkeypatch.setattr(process.AppServerChild, "stderr_tail", spy("tail", process.AppServerChild.stderr_tail))
    gc_pidfile = short_dir / "gc.pid"
    env = {"LCHILD_GRANDCHILD": str(gc_pidfile), "LCHILD_TERM": "clean"}
    cfg = make_config(short_dir, tmp_path, child_bin, env)
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            assert launched.pgid is not None
            cleanup_groups.append(launched.pgid)
            await launched.connect()
        await launched.wait_gone()
        # and the wait for a group whose member outlives the leader, which needs a /proc scan
        sleeper = await trio.lowlevel.open_process(
            [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
        )
        cleanup_groups.append(sleeper.pid)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(process._wait_group_gone, sleeper.pid)
            await trio.sleep(0.1)
            sleeper.kill()
        await sleeper.wait()
    names = {name for name, _ in calls}
    assert {"scan", "clean", "tail"} <= names, calls
    assert not [call for call in calls if call[1]], calls
    assert_group_gone(launched)


# --- the orphan watcher, on its own ---------------------------------------------------------------------------


def start_watcher(token: str) -> tuple[int, int]:
    """A watcher like the one each host starts: returns its pid and the write end of its dead-man's pipe."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", watchdog.__file__, "--watch", str(read_fd), token],
        pass_fds=(read_fd,),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(read_fd)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    proc.stdout.close()
    proc.wait()
    return pid, write_fd


def victim(*, ignore_term: bool = False, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('up', flush=True)\ntime.sleep(60)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True, env={**os.environ, **(env or {})}
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # its handlers are in place
    return proc


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_watcher_stops_what_is_registered_when_the_host_is_gone(short_dir: Path) -> None:
    token = "test-" + os.urandom(4).hex()
    watcher, pipe = start_watcher(token)
    polite, deaf, forgotten, marked = victim(), victim(ignore_term=True), victim(), victim(env={MARKER: token})
    link = short_dir / "app.sock"
    link.symlink_to(short_dir / "nowhere")  # what codex leaves at our socket path after a SIGKILL
    try:
        for proc, path in ((polite, str(link)), (deaf, None), (forgotten, None)):
            message = f"R {proc.pid} {watchdog.start_ticks(proc.pid)} {os.fsencode(path).hex() if path else '-'}\n"
            os.write(pipe, message.encode())
        os.write(pipe, f"U {forgotten.pid}\n".encode())  # reaped by the host: no longer the watcher's business
        os.close(pipe)  # the host is gone
        assert wait_for(lambda: not pid_alive(polite.pid) and not pid_alive(deaf.pid))
        assert polite.wait() == -signal.SIGTERM
        assert deaf.wait() == -signal.SIGKILL  # it ignored the SIGTERMs
        assert wait_for(lambda: not pid_alive(watcher))
        assert not os.path.lexists(link)
        assert forgotten.poll() is None
        assert marked.poll() is None  # no spawn was under way: no sweep of the environments
    finally:
        for proc in (polite, deaf, forgotten, marked):
            proc.kill()
            proc.wait()


def test_watcher_sweeps_for_the_marker_when_the_host_died_mid_spawn() -> None:
    token = "test-" + os.urandom(4).hex()
    watcher, pipe = start_watcher(token)
    unregistered = victim(env={MARKER: token})
    other = victim(env={MARKER: "someone-else"})
    try:
        os.write(pipe, b"S\n")  # the host forked this child, and died before registering it
        os.close(pipe)
        assert wait_for(lambda: not pid_alive(unregistered.pid))
        assert unregistered.wait() == -signal.SIGTERM
        assert wait_for(lambda: not pid_alive(watcher))
        assert other.poll() is None
    finally:
        for proc in (unregistered, other):
            proc.kill()
            proc.wait()


def test_a_forked_host_does_not_keep_its_parents_watcher_waiting() -> None:
    # The write end of the dead-man's pipe is inherited by a fork without exec (multiprocessing's "fork" start
    # method, say); it is closed in the child, so the parent's death still reaches its watcher.
    code = (
        "import os, sys, time\n"
        "from codex_trio import _watchdog as w\n"
        "w.run_in_spawner(lambda: None)\n"
        "proc = w.run_in_spawner(lambda: w.popen_in_spawner(['/bin/sleep', '60'], env=os.environ, cwd=None,"
        " stdout=-3, stderr=-3))\n"
        "w.register(proc.pid, None)\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(proc.pid, w.watcher_pid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    host = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert host.stdout is not None
        child, watcher = (int(x) for x in host.stdout.readline().split())
        host.kill()  # the host dies; its forked copy lives on
        host.wait()
        assert wait_for(lambda: not pid_alive(child))
        assert wait_for(lambda: not pid_alive(watcher))
    finally:
        os.killpg(host.pid, signal.SIGKILL)  # the forked copy, still in the host's group
