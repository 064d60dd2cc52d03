"""No app-server outlives its host, whatever ends the host.

A real host process (:data:`HOST`, a small script) opens two ProcessLaunchers, one on the real codex binary (with
the mock model) and one on the fake app-server child, and is ended at several points: during the children's
start, after readiness, and in the middle of a turn; by SIGKILL, by an unhandled SIGTERM, by SIGKILL of the host
together with its children (what a container kill does), and by an exception. Every process of every group it
recorded must be gone within 2 s, and the orphan watcher must clean up and exit after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from codex_trio._process import live_pids_in_group
from codex_trio._watchdog import _pdeathsig_prefix, codex_daemon_files, pid_alive
from codex_trio.testing._mock_model import Hang, MockModelServer, write_codex_home
from codex_trio.testing._real_codex import require_codex_bin

pytestmark = pytest.mark.real_codex

# A guard against a hang, never the thing that fails: a host starts Python, a real codex and a fake app-server (each
# with a 60 s ready timeout), which a busy 2-core machine can make slow.
GUARD = 240
#: The promise under test: every process of a dead host's groups is gone this long after the host died.
GONE_WITHIN = 2.0

HOST = r"""
import json, os, sys
import trio
from codex_trio._config import RuntimeConfig
from codex_trio._launcher import ProcessLauncher
from codex_trio._watchdog import watcher_pid

args = json.loads(sys.argv[1])


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def socket_of(pid):
    while True:  # the command line can be empty for a moment while the child execs
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if b"--listen" in argv:
            return os.fsdecode(argv[argv.index(b"--listen") + 1])[len("unix://"):]


async def rpc(stream, request_id, method, params):
    await stream.send_message(json.dumps({"id": request_id, "method": method, "params": params}))
    while True:
        message = json.loads(await stream.receive_message())
        if message.get("id") == request_id and "method" not in message:
            return message["result"]


async def run(kind, spec, in_turn):
    cfg = RuntimeConfig(**spec)
    async with ProcessLauncher(cfg).launch(1) as launched:
        emit(f"SPAWNED {kind} {launched.pgid} {socket_of(launched.pid)}")
        emit(f"WATCHER {watcher_pid()}")
        stream = await launched.connect()
        emit(f"READY {kind}")
        await rpc(stream, 1, "initialize", {"clientInfo": {"name": "host", "version": "0"}})
        await stream.send_message(json.dumps({"method": "initialized"}))
        thread = (await rpc(stream, 2, "thread/start", {"cwd": spec["cwd"]}))["thread"]["id"]
        await rpc(stream, 3, "turn/start", {"threadId": thread, "input": [{"type": "text", "text": "hang"}]})
        emit(f"TURN {kind}")
        in_turn.append(kind)
        await trio.sleep_forever()


async def main():
    in_turn = []
    async with trio.open_nursery() as nursery:
        for kind, spec in args["launchers"].items():
            nursery.start_soon(run, kind, spec, in_turn)
        if args["crash"]:
            while len(in_turn) < len(args["launchers"]):
                await trio.sleep(0.01)
            raise RuntimeError("the host fails")


trio.run(main)
"""


@attrs.define
class Host:
    proc: trio.Process
    groups: dict[str, int] = attrs.field(factory=dict)
    sockets: dict[str, Path] = attrs.field(factory=dict)
    watcher: int | None = None
    seen: list[str] = attrs.field(factory=list)
    pending: bytes = b""

    async def line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self.pending:
            chunk = await self.proc.stdout.receive_some(4096)
            if not chunk:
                raise EOFError(f"the host exited; it said {self.seen}")
            self.pending += chunk
        raw, self.pending = self.pending.split(b"\n", 1)
        text = raw.decode()
        self.seen.append(text)
        words = text.split()
        if words[0] == "SPAWNED":
            self.groups[words[1]] = int(words[2])
            self.sockets[words[1]] = Path(words[3])
        elif words[0] == "WATCHER" and words[1] != "None":
            self.watcher = int(words[1])
        return text

    async def until(self, word: str, count: int) -> None:
        while sum(1 for seen in self.seen if seen.startswith(word + " ")) < count:
            await self.line()


@attrs.define
class Setup:
    tmp: Path
    short: Path
    model: MockModelServer
    launchers: dict[str, dict[str, Any]]
    hosts: list[Host] = attrs.field(factory=list)


@pytest.fixture
def setup(tmp_path: Path, short_socket_dir: Path) -> Iterator[Setup]:
    codex_bin = require_codex_bin()
    short = short_socket_dir
    fake = tmp_path / "fake-codex"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n')
    fake.chmod(0o755)
    (tmp_path / "script.json").write_text(json.dumps({"default": {"hang": True}}))
    with MockModelServer() as model:
        common = {
            "sandbox_mode": "read-only",
            "log_dir": str(tmp_path / "logs"),
            "state_dir": str(tmp_path / "state"),
            # A loaded CI machine may take long to start a Python child: what is tested is the host's death.
            "ready_timeout": 60.0,
            "handshake_timeout": 60.0,
        }
        for work in ("work-real", "work-fake"):
            (tmp_path / work).mkdir()
        launchers: dict[str, dict[str, Any]] = {
            "real": {
                "runtime_id": "orphan-real",
                "codex_bin": codex_bin,
                "codex_home": str(write_codex_home(tmp_path / "home", model.url)),
                "cwd": str(tmp_path / "work-real"),
                "socket_dir": str(short / "real"),
                **common,
            },
            "fake": {
                "runtime_id": "orphan-fake",
                "codex_bin": str(fake),
                "cwd": str(tmp_path / "work-fake"),
                "socket_dir": str(short / "fake"),
                "extra_env": {"FAKE_APP_SERVER_SCRIPT": str(tmp_path / "script.json")},
                **common,
            },
        }
        s = Setup(tmp_path, short, model, launchers)
        try:
            yield s
        finally:
            # Whatever a failing test left: the hosts, their groups, the watchers, codex's files.
            for host in s.hosts:
                pids = [host.proc.pid, *([host.watcher] if host.watcher else [])]
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                for pgid in host.groups.values():
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                for sock in host.sockets.values():
                    for leftover in codex_daemon_files(sock):
                        try:
                            os.unlink(leftover)
                        except OSError:
                            pass


async def start_host(s: Setup, *, crash: bool = False) -> Host:
    args = {"launchers": s.launchers, "crash": crash}
    stderr = open(s.tmp / f"host{len(s.hosts)}.stderr", "wb")  # noqa: ASYNC230, SIM115 - handed to the child
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", HOST, json.dumps(args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    finally:
        stderr.close()
    host = Host(proc)
    s.hosts.append(host)
    return host


async def reach(s: Setup, host: Host, point: str) -> None:
    """Read the host's lines until both launchers reached ``point`` (and, mid-turn, codex is calling the model)."""
    hang = Hang()
    if point == "turn":
        s.model.enqueue(hang)
    word = {"start": "SPAWNED", "ready": "READY", "turn": "TURN"}[point]
    await host.until(word, 2)
    if point == "turn":
        assert await trio.to_thread.run_sync(hang.wait_started, 30), "the real codex never called the model"


def children_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if int(data[data.rfind(b")") + 2 :].split()[1]) == pid:
                found.append(int(name))
    return found


def kill_host(host: Host, how: str) -> None:
    pid = host.proc.pid
    if how == "SIGTERM":
        os.kill(pid, signal.SIGTERM)  # not handled by the host: the default action ends it at once
    elif how == "SIGKILL":
        os.kill(pid, signal.SIGKILL)
    elif how == "SIGKILL-with-children":
        # What a container kill does to the host's part of the tree: the host's group and its direct children,
        # the app-server leaders among them, all at once.
        children = children_of(pid)
        os.killpg(pid, signal.SIGKILL)
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
    else:
        raise AssertionError(how)


def alive(host: Host) -> dict[str, list[int]]:
    return {kind: pids for kind, pgid in host.groups.items() if (pids := live_pids_in_group(pgid))}


async def assert_all_gone(host: Host, *, watcher_cleans: bool = True) -> None:
    """Every group gone within GONE_WITHIN of now (the kill); then the watcher cleans up and exits."""
    deadline = trio.current_time() + GONE_WITHIN
    while alive(host) and trio.current_time() < deadline:
        await trio.sleep(0.02)
    assert alive(host) == {}, f"still alive {GONE_WITHIN}s after the host died; host said {host.seen}"
    await host.proc.wait()
    assert host.watcher is not None
    with trio.fail_after(GUARD):
        while pid_alive(host.watcher):
            await trio.sleep(0.02)
        if watcher_cleans:
            while left_behind(host):
                await trio.sleep(0.02)


def left_behind(host: Host) -> list[str]:
    """codex's files for our sockets, and our socket links."""
    paths = [p for sock in host.sockets.values() for p in (*codex_daemon_files(sock), str(sock))]
    return [p for p in paths if os.path.lexists(p)]


@pytest.mark.parametrize("point", ["start", "ready", "turn"])
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGKILL-with-children"])
async def test_no_app_server_outlives_its_host(setup: Setup, point: str, how: str) -> None:
    with trio.fail_after(GUARD):
        host = await start_host(setup)
        await reach(setup, host, point)
        assert set(host.groups) == {"real", "fake"}
        if point != "start":
            assert all(live_pids_in_group(pgid) for pgid in host.groups.values())
        kill_host(host, how)
        await assert_all_gone(host)


async def test_a_failing_host_stops_its_app_servers_itself(setup: Setup) -> None:
    with trio.fail_after(GUARD):
        host = await start_host(setup, crash=True)
        await reach(setup, host, "turn")
        assert await host.proc.wait() == 1
        assert alive(host) == {}  # stopped by the host on its way out, before it exited
        await assert_all_gone(host)


async def test_pdeathsig_ends_the_children_when_the_watcher_dies_too(setup: Setup) -> None:
    # Both gone at once (the watcher is not the host's child, so this takes a deliberate kill): the kernel's
    # PDEATHSIG still ends the app-servers, which are the host's children. Nobody removes codex's files then.
    if not _pdeathsig_prefix():
        pytest.skip("no `setpriv --pdeathsig` on this system: only the watcher stops a dead host's children")
    with trio.fail_after(GUARD):
        host = await start_host(setup)
        await reach(setup, host, "ready")
        assert host.watcher is not None
        os.kill(host.watcher, signal.SIGKILL)
        os.kill(host.proc.pid, signal.SIGKILL)
        await assert_all_gone(host, watcher_cleans=False)
