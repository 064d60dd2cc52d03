"""ProcessLauncher against the real ``codex app-server`` (0.169) with the mock model: a stop in the middle of a turn
is clean and fast and leaves nothing in codex's daemon directory, a crash's leftovers are removed, and fifty
launches at once all connect with the default timings.

Generous ``fail_after`` guards; no test asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from codex_trio._config import RuntimeConfig
from codex_trio._errors import AppServerExited
from codex_trio._launcher import Launched, ProcessLauncher
from codex_trio._process import live_pids_in_group
from codex_trio._transport import MessageStream
from codex_trio._watchdog import codex_daemon_files
from codex_trio.testing._mock_model import Hang, MockModelServer, write_codex_home
from codex_trio.testing._real_codex import require_codex_bin

pytestmark = pytest.mark.real_codex

GUARD = 60


@pytest.fixture
def codex_bin() -> str:
    return require_codex_bin()


@pytest.fixture
def short_dir(short_socket_dir: Path) -> Path:
    """The testing kit's ``short_socket_dir``: pytest's tmp_path can push socket paths past sun_path."""
    return short_socket_dir


@pytest.fixture
def model() -> Iterator[MockModelServer]:
    with MockModelServer() as server:
        yield server


@pytest.fixture
def sockets(short_dir: Path) -> Iterator[list[Path]]:
    """The socket paths our children used; whatever codex left for them is removed after the test (a failing
    test must not leave files in /tmp/codex-daemon-<uid>/), but the test checks first."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        for leftover in codex_daemon_files(path):
            try:
                os.unlink(leftover)
            except OSError:
                pass


def config(short_dir: Path, tmp_path: Path, codex_bin: str, home: Path, runtime_id: str = "lr") -> RuntimeConfig:
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    return RuntimeConfig(
        runtime_id=runtime_id,
        codex_bin=codex_bin,
        codex_home=home,
        cwd=tmp_path / "work",
        sandbox_mode="read-only",
        socket_dir=short_dir / "s",
        log_dir=tmp_path / "logs",
        state_dir=tmp_path / "state",
    )


def socket_of(launched: Launched) -> Path:
    """The socket path from the child's argv (``--listen unix://PATH``). Read again while the child is between
    two execs (``setpriv`` -> codex), when its command line can be momentarily empty."""
    for _ in range(1000):
        with open(f"/proc/{launched.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if b"--listen" in argv:
            return Path(os.fsdecode(argv[argv.index(b"--listen") + 1])[len("unix://") :])
        time.sleep(0.001)
    raise AssertionError(f"no --listen in the command line of {launched.pid}: {argv}")


def exists(path: str | Path) -> bool:
    return os.path.lexists(path)


def leftovers(sock: Path) -> list[str]:
    return [p for p in (*codex_daemon_files(sock), str(sock)) if os.path.lexists(p)]


async def rpc(stream: MessageStream, request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    await stream.send_message(json.dumps({"id": request_id, "method": method, "params": params}))
    while True:
        message = json.loads(await stream.receive_message())
        if message.get("id") == request_id and "method" not in message:
            assert "error" not in message, message
            result: dict[str, Any] = message["result"]
            return result


async def start_hanging_turn(stream: MessageStream, model: MockModelServer, cwd: Path) -> None:
    await rpc(stream, 1, "initialize", {"clientInfo": {"name": "codex_trio_test", "version": "0"}})
    await stream.send_message(json.dumps({"method": "initialized"}))
    thread = (await rpc(stream, 2, "thread/start", {"cwd": str(cwd)}))["thread"]["id"]
    hang = Hang()
    model.enqueue(hang)
    await rpc(stream, 3, "turn/start", {"threadId": thread, "input": [{"type": "text", "text": "hang"}]})
    assert await trio.to_thread.run_sync(hang.wait_started, 30), "codex never called the model"


async def test_stop_mid_turn_is_clean_and_leaves_no_daemon_files(
    codex_bin: str, short_dir: Path, tmp_path: Path, model: MockModelServer, sockets: list[Path]
) -> None:
    # A single SIGTERM never ends a turn (codex drains until it does); the second one makes codex exit at once,
    # with its clean-up. Before, every such stop took the whole grace period and ended in SIGKILL, leaving a
    # socket and a lock in /tmp/codex-daemon-<uid>/.
    home = write_codex_home(tmp_path / "home", model.url)
    cfg = config(short_dir, tmp_path, codex_bin, home)
    launcher = ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        for _ in range(3):
            async with launcher.launch(1) as launched:
                sock = socket_of(launched)
                sockets.append(sock)
                stream = await launched.connect()
                await start_hanging_turn(stream, model, tmp_path / "work")
                assert exists(sock) and exists(codex_daemon_files(sock)[0])
            reason = await launched.wait_gone()
            assert isinstance(reason, AppServerExited)
            assert reason.returncode == 0, reason  # a clean exit, not the SIGKILL
            assert leftovers(sock) == []
            assert launched.pgid is not None and live_pids_in_group(launched.pgid) == []


async def test_stop_right_after_readiness_is_clean(
    codex_bin: str, short_dir: Path, tmp_path: Path, model: MockModelServer, sockets: list[Path]
) -> None:
    # codex installs its SIGTERM handler a few ms after its socket accepts connections; a SIGTERM in between kills
    # it with the default action and leaves its files. The stop waits for the handler.
    home = write_codex_home(tmp_path / "home", model.url)
    launcher = ProcessLauncher(config(short_dir, tmp_path, codex_bin, home))
    with trio.fail_after(GUARD):
        for _ in range(5):
            async with launcher.launch(1) as launched:
                sock = socket_of(launched)
                sockets.append(sock)
                await launched.connect()
            reason = await launched.wait_gone()
            assert isinstance(reason, AppServerExited) and reason.returncode == 0, reason
            assert leftovers(sock) == []


async def test_crash_leftovers_are_removed(
    codex_bin: str, short_dir: Path, tmp_path: Path, model: MockModelServer, sockets: list[Path]
) -> None:
    home = write_codex_home(tmp_path / "home", model.url)
    launcher = ProcessLauncher(config(short_dir, tmp_path, codex_bin, home))
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            sock = socket_of(launched)
            sockets.append(sock)
            await launched.connect()
            assert launched.pgid is not None
            os.killpg(launched.pgid, signal.SIGKILL)
            reason = await launched.wait_gone()
            assert isinstance(reason, AppServerExited) and reason.returncode == -signal.SIGKILL
            assert exists(codex_daemon_files(sock)[0])  # what a SIGKILLed codex leaves behind ...
        assert leftovers(sock) == []  # ... is gone once the stop is over


async def test_fifty_launches_at_once_all_connect(
    codex_bin: str, short_dir: Path, tmp_path: Path, model: MockModelServer, sockets: list[Path]
) -> None:
    # Default RuntimeConfig timings (ready_timeout 10 s from each spawn, handshake 10 s), each with its own
    # CODEX_HOME (the heavier first start). Starts beyond the host's start limit wait in the queue, not against
    # their ready deadline.
    n = 50
    connected: list[int] = []
    groups: list[int] = []
    all_in = trio.Event()

    async def one(i: int) -> None:
        home = write_codex_home(tmp_path / f"home{i}", model.url)
        launcher = ProcessLauncher(config(short_dir, tmp_path, codex_bin, home, runtime_id=f"r{i}"))
        async with launcher.launch(1) as launched:
            assert launched.pgid is not None
            groups.append(launched.pgid)
            sockets.append(socket_of(launched))
            stream = await launched.connect()
            await rpc(stream, 1, "initialize", {"clientInfo": {"name": "codex_trio_test", "version": "0"}})
            connected.append(i)
            if len(connected) == n:
                all_in.set()
            await all_in.wait()

    with trio.fail_after(300):
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        elapsed = trio.current_time() - started
    print(f"{n} launches connected and initialized in {elapsed:.1f}s")  # for the report; not asserted
    assert sorted(connected) == list(range(n))
    assert all(live_pids_in_group(pgid) == [] for pgid in groups)
    assert all(leftovers(sock) == [] for sock in sockets)


async def test_node_wrapper_mid_turn_stop_is_clean(
    short_dir: Path, tmp_path: Path, model: MockModelServer, sockets: list[Path]
) -> None:
    """Under Node 20 the npm wrapper runs the native codex as its child, in the same group: the group's two
    SIGTERMs reach both (node also forwards them), and codex exits cleanly."""
    wrapper = os.environ.get("CODEX_TRIO_CODEX_WRAPPER", "")
    if not wrapper or not os.access(wrapper, os.X_OK) or shutil.which("node") is None:
        message = "the npm wrapper (CODEX_TRIO_CODEX_WRAPPER, set by ./dev) or node is not available"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(message + " — under CI the real-codex tests must run")
        pytest.skip(message)
    home = write_codex_home(tmp_path / "home", model.url)
    launcher = ProcessLauncher(config(short_dir, tmp_path, wrapper, home))
    with trio.fail_after(GUARD):
        async with launcher.launch(1) as launched:
            sock = socket_of(launched)
            sockets.append(sock)
            stream = await launched.connect()
            await start_hanging_turn(stream, model, tmp_path / "work")
        reason = await launched.wait_gone()
    assert isinstance(reason, AppServerExited) and reason.returncode == 0, reason
    assert launched.pgid is not None and live_pids_in_group(launched.pgid) == []
    assert leftovers(sock) == []
