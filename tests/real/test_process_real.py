"""The app-server child life cycle against the real ``codex app-server`` (0.169): bind, readiness, long paths
through codex's symlink, a fatal config, the clean stop and the group reap, and no leftovers in codex's daemon
directory after any stop."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from codex_trio._errors import AppServerExited
from codex_trio._paths import SUN_PATH_MAX, allocate_socket_path
from codex_trio._process import ChildSpec, app_server_argv, live_pids_in_group, open_app_server
from codex_trio.testing._real_codex import require_codex_bin

pytestmark = pytest.mark.real_codex

GUARD = 30


@pytest.fixture
def codex_bin() -> str:
    return require_codex_bin()


@pytest.fixture
def short_dir(short_socket_dir: Path) -> Path:
    """The testing kit's ``short_socket_dir``: pytest's tmp_path can push socket paths past sun_path."""
    return short_socket_dir


def codex_side_socket(path: Path) -> Path:
    """Where codex 0.169 really binds when asked for ``path`` (codex-app-server.md §3)."""
    return Path(f"/tmp/codex-daemon-{os.getuid()}") / hashlib.sha256(os.fsencode(path)).hexdigest()


@pytest.fixture
def track() -> Iterator[Callable[[Path], Path]]:
    """Registers socket paths whose codex-side files (``/tmp/codex-daemon-<uid>/<sha256(path)>`` and its
    ``.lock``) are removed after the test: codex leaves them behind after a SIGKILL or a very early SIGTERM,
    and every test uses a fresh path, so nothing would ever reuse or clean them."""
    paths: list[Path] = []

    def add(path: Path) -> Path:
        paths.append(path)
        return path

    yield add
    for path in paths:
        target = codex_side_socket(path)
        for leftover in (target, target.with_name(target.name + ".lock")):
            leftover.unlink(missing_ok=True)


def codex_spec(
    argv0: str, socket_path: Path, codex_home: Path, log_dir: Path, *, grace_period: float = 1.0
) -> ChildSpec:
    codex_home.mkdir(parents=True, exist_ok=True)
    return ChildSpec(
        argv=app_server_argv(argv0, socket_path),
        env={**os.environ, "CODEX_HOME": str(codex_home), "RUST_LOG": "warn"},
        cwd=None,
        socket_path=socket_path,
        log_dir=log_dir,
        runtime_id="real",
        ready_timeout=20.0,
        grace_period=grace_period,
    )


def gone(path: Path) -> bool:
    return not os.path.lexists(path)


def daemon_leftovers(path: Path) -> list[Path]:
    target = codex_side_socket(path)
    return [p for p in (target, target.with_name(target.name + ".lock")) if not gone(p)]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_link(path: Path) -> bool:
    return os.path.islink(path)


async def test_real_codex_ready_then_sigkill_is_seen(
    codex_bin: str, short_dir: Path, tmp_path: Path, track: Callable[[Path], Path]
) -> None:
    sock = track(allocate_socket_path(short_dir / "sock", "real"))
    spec = codex_spec(codex_bin, sock, tmp_path / "home", tmp_path / "logs")
    with trio.fail_after(GUARD):
        async with open_app_server(spec) as child:
            assert is_link(sock)  # codex binds elsewhere and links our path to it
            assert os.readlink(sock) == str(codex_side_socket(sock))
            stream = await trio.open_unix_socket(child.connect_path())
            await stream.aclose()
            os.killpg(child.pgid, signal.SIGKILL)
            assert await child.wait() == -signal.SIGKILL
            error = child.exit_error()
            assert error.returncode == -signal.SIGKILL
            assert f"codex app-server (pid {child.pid}) was killed by SIGKILL" in str(error)
            # after a SIGKILL codex's link, socket and lock stay behind: the stop must remove them
            assert is_link(sock)
            assert not gone(codex_side_socket(sock))
        assert live_pids_in_group(child.pgid) == []
        assert gone(sock)
        assert daemon_leftovers(sock) == []


async def test_real_codex_idle_stops_on_sigterm(
    codex_bin: str, short_dir: Path, tmp_path: Path, track: Callable[[Path], Path]
) -> None:
    sock = track(allocate_socket_path(short_dir / "sock", "real"))
    # A generous grace period: an idle codex exits on the first SIGTERM, and this checks that it did.
    spec = codex_spec(codex_bin, sock, tmp_path / "home", tmp_path / "logs", grace_period=20.0)
    with trio.fail_after(GUARD):
        async with open_app_server(spec) as child:
            pass
        # rc 0: the SIGTERM waited for codex's handler (one in its first milliseconds would kill it, -15)
        assert child.returncode == 0
        assert live_pids_in_group(child.pgid) == []
        assert gone(sock)
        assert daemon_leftovers(sock) == []


async def test_real_codex_stops_right_after_readiness_are_clean(
    codex_bin: str, short_dir: Path, tmp_path: Path, track: Callable[[Path], Path]
) -> None:
    # codex accepts connections a few ms before it handles SIGTERM (3-20 ms measured, longer under load); a stop
    # in that window used to kill it with the default action and leave its socket and lock behind.
    with trio.fail_after(GUARD * 2):
        for i in range(5):
            sock = track(allocate_socket_path(short_dir / "sock", "real"))
            spec = codex_spec(codex_bin, sock, tmp_path / "home", tmp_path / f"logs{i}")
            async with open_app_server(spec) as child:
                pass
            assert child.returncode == 0
            assert daemon_leftovers(sock) == []


async def test_real_codex_long_socket_path(
    codex_bin: str, short_dir: Path, tmp_path: Path, track: Callable[[Path], Path]
) -> None:
    sock = track(short_dir / ("d" * 70) / ("e" * 40) / "app.sock")
    assert len(os.fsencode(str(sock))) > SUN_PATH_MAX
    spec = codex_spec(codex_bin, sock, tmp_path / "home", tmp_path / "logs")
    with trio.fail_after(GUARD):
        async with open_app_server(spec) as child:
            target = child.connect_path()
            assert target != str(sock)
            assert os.path.isabs(target)
            assert len(os.fsencode(target)) <= SUN_PATH_MAX
            assert target == str(sock.resolve())
            stream = await trio.open_unix_socket(target)
            await stream.aclose()
        assert live_pids_in_group(child.pgid) == []
        assert gone(sock)


async def test_real_codex_fatal_config_exits_before_ready(
    codex_bin: str, short_dir: Path, tmp_path: Path, track: Callable[[Path], Path]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('approval_policy = "untrusted"\n')
    sock = track(allocate_socket_path(short_dir / "sock", "real"))
    spec = codex_spec(codex_bin, sock, home, tmp_path / "logs")
    with trio.fail_after(GUARD), pytest.raises(AppServerExited) as info:
        async with open_app_server(spec):
            pytest.fail("codex accepted a fatal config")
    exc = info.value
    assert exc.returncode == 1
    assert 'approval_policy = "untrusted" is no longer supported' in str(exc)
    assert "exited with status 1 before it accepted connections on" in str(exc)
    assert gone(sock)


async def test_real_codex_node_wrapper_group_reaped(
    short_dir: Path, tmp_path: Path, track: Callable[[Path], Path]
) -> None:
    """Under Node 20 the npm wrapper runs the native codex as its child in the same group."""
    wrapper = os.environ.get("CODEX_TRIO_CODEX_WRAPPER", "")
    if not wrapper or not os.access(wrapper, os.X_OK) or shutil.which("node") is None:
        message = "the npm wrapper (CODEX_TRIO_CODEX_WRAPPER, set by ./dev) or node is not available"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(message + " — under CI the real-codex tests must run")
        pytest.skip(message)
    sock = track(allocate_socket_path(short_dir / "sock", "real"))
    spec = codex_spec(wrapper, sock, tmp_path / "home", tmp_path / "logs")
    with trio.fail_after(GUARD):
        probe = await trio.run_process(
            ["node", "-e", "process.stdout.write(typeof process.execve)"], capture_stdout=True
        )
        # A Node with execve() replaces itself with codex; Node 20 spawns the native codex as its child.
        node_execs = probe.stdout == b"function"
        async with open_app_server(spec) as child:
            members = live_pids_in_group(child.pgid)
            assert child.pid in members
            # codex's own helpers (git, lsb_release) may be in the group too: look for the server by argv
            native = [pid for pid in members if pid != child.pid and "app-server" in cmdline(pid)]
            # (a forked helper of codex carries the server's argv until it execs, so there may briefly be two)
            assert (not native) if node_execs else bool(native), {pid: cmdline(pid) for pid in members}
        assert child.returncode is not None
        assert live_pids_in_group(child.pgid) == []
        assert gone(sock)
