"""Lifecycle and durability on the real codex 0.169 binary, offline with the mock model.

Each test is a scenario that the old code failed:

1. A child SIGSTOPped, or SIGKILLed, between readiness and the WebSocket upgrade: the runtime restarts it (a first
   start that keeps meeting it reports a typed error); nothing hangs.
2. Host and child SIGKILLed together right after ``turn/start`` was answered: on the next host (same SQLite
   store) the input reached the model exactly once, or its settlement says it did not run; never silently lost.
3. A host SIGKILLed or SIGTERMed (unhandled) during its child's start or with a turn in flight, with the memory
   and the SQLite store: no process of the app-server's group is alive 2 s later.
4. Two hosts racing for one runtime: exactly one owner each round, the other told ``RuntimeBusy`` naming it at
   once; ``wait_for_owner`` takes over after a stop; a SIGKILLed owner is replaced at once.
5. A shared sticky directory (1777) as ``socket_dir`` works and keeps its mode.
6. A database locked by another writer, or read-only: one ``StateStoreError`` that says so and never advises
   discarding the file.
7. Fifty runtimes opened at once with the default configuration all become ready (the wall time is printed).
8. Twenty stops in the middle of a turn leave ``/tmp/codex-daemon-<uid>/`` as it was (stop times are printed).
9. A chaos scenario with ResourceWarning as an error: no socket or file is left for the garbage collector, and
   the process has the descriptors it started with.
10. ``python -m bench.chaos --inputs 60`` (random child, socket and host kills) finds nothing lost, duplicated,
    reordered or leaked.

And three regression tests, each the smallest that showed a defect the chaos run found (see
``docs/reliability.md``): an input codex put in its history without recording its client id is not sent again;
a caller is told a settlement only once it is durable; the orphan watcher waits for every thread of a killed
codex before it removes its files.

Hosts are ``lifecycle_host.py`` processes driven over a line protocol. Guards are generous; no timing is
asserted except the 2 s promise of scenario 3, which is the behaviour under test.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import stat
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from codex_trio import (
    AppServerExited,
    AppServerNotReady,
    ChannelInput,
    MemoryStateStore,
    RestartPolicy,
    RuntimeConfig,
    SqliteStateStore,
    StateStoreError,
    open_runtime,
)
from codex_trio._errors import LeaseLost
from codex_trio._launcher import Launched, ProcessLauncher
from codex_trio._paths import private_dir_name
from codex_trio._process import live_pids_in_group
from codex_trio._runtime import Runtime
from codex_trio._watchdog import _stat_fields, codex_daemon_files, pid_alive, process_state
from codex_trio.testing import FakeLauncher
from codex_trio.testing._mock_model import Hang, MockModelServer, RecordedRequest, Text, write_codex_home

pytestmark = pytest.mark.real_codex

HOST = Path(__file__).with_name("lifecycle_host.py")
ROOT = Path(__file__).resolve().parents[2]
GUARD = 180
#: The promise of scenario 3: every process of a dead host's app-server groups is gone this long after its death.
GONE_WITHIN = 2.0
TOKEN = re.compile(r"lifecycle-token:([A-Za-z0-9_.-]+)")


def text_for(source_id: str) -> str:
    return f"lifecycle-token:{source_id} answer briefly"


def user_tokens(request: RecordedRequest) -> list[str]:
    """The tokens of a model request's user messages, in order (history included)."""
    return [t for role, text in request.input_messages() if role == "user" for t in TOKEN.findall(text)]


def daemon_leftovers(sockets: list[Path] | list[str]) -> list[str]:
    """codex's files in /tmp/codex-daemon-<uid>/ for our sockets, and our socket links, that still exist."""
    return [p for sock in sockets for p in (*codex_daemon_files(sock), str(sock)) if os.path.lexists(p)]


def remove_daemon_leftovers(sockets: list[Path] | list[str]) -> None:
    for path in daemon_leftovers(sockets):
        try:
            os.unlink(path)
        except OSError:
            pass


def daemon_dir() -> Path:
    return Path(f"/tmp/codex-daemon-{os.getuid()}")


def daemon_entries() -> set[str]:
    try:
        return set(os.listdir(daemon_dir()))
    except FileNotFoundError:
        return set()


def running_as(pid: int, needle: bytes) -> bool:
    """Whether ``pid`` is alive and ``needle`` is in its command line (so it is still the process we started)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid_alive(pid) and needle in f.read()
    except OSError:
        return False


def pid_is_zombie(pid: int) -> bool:
    return process_state(pid) == "Z"


async def groups_gone(pgids: list[int], within: float) -> list[int]:
    """Poll until no live process is left in ``pgids`` or ``within`` seconds passed; the groups still alive."""
    deadline = trio.current_time() + within
    while True:
        alive = [pgid for pgid in pgids if await trio.to_thread.run_sync(live_pids_in_group, pgid)]
        if not alive or trio.current_time() >= deadline:
            return alive
        await trio.sleep(0.02)


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return (
        f"n={len(ordered)} min={ordered[0]:.3f}s median={statistics.median(ordered):.3f}s p90={p90:.3f}s "
        f"max={ordered[-1]:.3f}s"
    )


def thread_states(pid: int) -> list[str]:
    """The state letter of each thread of ``pid`` (R, S, D, T, Z, ...); [] once it is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return [fields[0].decode() for tid in tids if (fields := _stat_fields(pid, tid))]


# --- a launcher that records, and can break a child between readiness and the upgrade ------------------------


class ScriptedLauncher(ProcessLauncher):
    """The production launcher; records each socket path and process group, and applies ``faults``
    (generation -> ``"stop"`` | ``"die"``): once the child's socket accepts connections, and before the WebSocket
    upgrade, its group gets SIGSTOP or SIGKILL."""

    def __init__(self, config: RuntimeConfig, faults: dict[int, str] | None = None) -> None:
        super().__init__(config)
        self.faults = dict(faults or {})
        self.sockets: list[Path] = []
        self.applied: list[tuple[int, str]] = []

    def _spec(self, socket_dir: Path) -> Any:
        spec = super()._spec(socket_dir)
        self.sockets.append(spec.socket_path)
        return spec

    @asynccontextmanager
    async def launch(self, generation: int) -> AsyncIterator[Launched]:
        async with super().launch(generation) as launched:
            fault = self.faults.get(generation)
            if fault is None:
                yield launched
                return
            sock = self.sockets[-1]

            async def connect() -> Any:
                while True:  # readiness as the runtime sees it: a connect() succeeds
                    try:
                        probe = await trio.open_unix_socket(str(sock))
                    except OSError:
                        await trio.sleep(0.005)
                        continue
                    await probe.aclose()
                    break
                assert launched.pgid is not None and launched.pid is not None
                os.killpg(launched.pgid, signal.SIGSTOP if fault == "stop" else signal.SIGKILL)
                self.applied.append((generation, fault))
                # A signal takes effect when each thread next runs, which on a loaded VM can be a while after
                # kill() returned; until then codex may well answer the upgrade. Wait until it has. (A child that
                # died is seen by the session meanwhile, which cancels this: that is the fault's effect too.)
                while not all(state in ("T", "Z", "X") for state in thread_states(launched.pid)):
                    await trio.sleep(0.001)
                return await launched.connect()

            yield attrs.evolve(launched, connect=connect)


# --- the environment -------------------------------------------------------------------------------------------


@attrs.define
class Env:
    tmp: Path
    short: Path
    model: MockModelServer
    codex_bin: str
    home: Path

    def config(self, runtime_id: str = "life", **overrides: Any) -> RuntimeConfig:
        fields: dict[str, Any] = {
            "runtime_id": runtime_id,
            "codex_bin": self.codex_bin,
            "codex_home": self.home,
            "cwd": self.tmp / "work",
            "sandbox_mode": "read-only",
            "socket_dir": self.short / "s",
            "log_dir": self.tmp / "logs",
            "state_dir": self.tmp / "state",
            "spill_dir": self.tmp / "spill",
            "grace_period": 0.5,
            "restart": RestartPolicy(base_delay=0.05, max_delay=0.5, max_restarts=50),
        }
        fields.update(overrides)
        return RuntimeConfig(**fields)

    def host_setup(
        self, runtime_id: str, *, db: Path | None = None, launcher: str = "process", **overrides: Any
    ) -> dict[str, Any]:
        config: dict[str, Any] = {
            "runtime_id": runtime_id,
            "codex_bin": self.codex_bin,
            "codex_home": str(self.home),
            "cwd": str(self.tmp / "work"),
            "sandbox_mode": "read-only",
            "socket_dir": str(self.short / "h"),
            "log_dir": str(self.tmp / "logs"),
            "state_dir": str(self.tmp / "state"),
            "grace_period": 0.5,
        }
        config.update(overrides)
        return {"config": config, "db": str(db) if db is not None else None, "launcher": launcher}


@pytest.fixture
def env(tmp_path: Path, short_socket_dir: Path, codex_bin: str) -> Iterator[Env]:
    (tmp_path / "work").mkdir()  # every runtime's cwd here (RuntimeConfig refuses a missing one)
    with MockModelServer() as model:
        yield Env(tmp_path, short_socket_dir, model, codex_bin, write_codex_home(tmp_path / "home", model.url))
        model.release()


# --- host processes --------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Host:
    proc: trio.Process
    stderr: Path
    lines: list[str] = attrs.field(factory=list)
    buffer: bytes = b""
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(command.encode() + b"\n")

    async def line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise EOFError(f"host {self.pid} exited; it said {self.lines[-20:]}; stderr: {self.stderr_tail()}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n", 1)
        text = raw.decode()
        self.lines.append(text)
        return text

    async def expect(self, *words: str) -> list[str]:
        """Read until a line starting with one of ``words``; its words."""
        while True:
            fields = (await self.line()).split()
            if fields and fields[0] in words:
                return fields

    def seen(self, word: str) -> list[list[str]]:
        return [line.split() for line in self.lines if line.split()[:1] == [word]]

    @property
    def pgids(self) -> list[int]:
        return [int(f[1]) for f in self.seen("SPAWNED")]

    @property
    def sockets(self) -> list[str]:
        return [f[1] for f in self.seen("SOCKET")]

    @property
    def watchers(self) -> list[int]:
        return [int(f[3]) for f in self.seen("SPAWNED") if f[3] != "None"]

    def kill(self, how: str = "SIGKILL") -> None:
        """``SIGKILL``/``SIGTERM`` (not handled by the host: the default action ends it) to the host alone, or
        ``container``: SIGKILL to the host and to every app-server group it started, at once."""
        self.killed_at = trio.current_time()
        if how == "container":
            os.killpg(self.pid, signal.SIGKILL)
            for pgid in self.pgids:
                if running_as(pgid, b"app-server"):  # earlier generations were reaped: their ids are not ours
                    os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(self.pid, getattr(signal, how))

    def stderr_tail(self) -> str:
        try:
            return self.stderr.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@attrs.define(eq=False)
class Hosts:
    tmp: Path
    started: list[Host] = attrs.field(factory=list)

    async def start(self, setup: dict[str, Any]) -> Host:
        stderr = self.tmp / f"host{len(self.started)}.stderr"
        fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, str(HOST), json.dumps(setup)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=fd,
                start_new_session=True,
            )
        finally:
            os.close(fd)
        host = Host(proc, stderr)
        self.started.append(host)
        assert (await host.expect("HELLO"))[1] == str(proc.pid)
        return host

    async def exit(self, host: Host) -> None:
        await host.send("exit")
        await host.expect("BYE")
        assert await host.proc.wait() == 0, host.stderr_tail()

    async def cleanup(self) -> None:
        # Only what is still ours: a pid that exited may have been reused by now, so each one is checked by its
        # command line first (the host is our child, so its pid is ours until we wait for it).
        with trio.CancelScope(shield=True):
            for host in self.started:
                if host.proc.returncode is None:
                    host.proc.kill()
                for pid in host.watchers:
                    if running_as(pid, b"_watchdog.py"):
                        os.kill(pid, signal.SIGKILL)
                for pgid in host.pgids:
                    if running_as(pgid, b"app-server"):
                        os.killpg(pgid, signal.SIGKILL)
                await host.proc.wait()
                for stream in (host.proc.stdin, host.proc.stdout):
                    if stream is not None:
                        await stream.aclose()
            # Let the watchers finish removing codex's files, then remove whatever is left.
            sockets = [s for host in self.started for s in host.sockets]
            with trio.move_on_after(5):
                while daemon_leftovers(sockets):
                    await trio.sleep(0.05)
            remove_daemon_leftovers(sockets)


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[Hosts]:
    registry = Hosts(tmp_path)
    try:
        yield registry
    finally:
        await registry.cleanup()


def _log_tails(log_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace")[-2000:] for p in sorted(log_dir.rglob("*.log"))}


async def settle(runtime: Runtime, source_id: str, timeout: float = 90) -> str:
    admission = await runtime.submit(ChannelInput(source_id, text_for(source_id)))
    assert admission.accepted, admission
    with trio.move_on_after(timeout):
        return (await admission.settled()).outcome
    # Not asserting a timing: a turn of the mock model takes well under a second; this is a hang, say what it is.
    tails = await trio.to_thread.run_sync(_log_tails, Path(str(runtime.config.log_dir)))
    raise AssertionError(f"{source_id} did not settle within {timeout}s: {runtime.statistics()!r}; logs {tails}")


async def wait_ready_generation(runtime: Runtime, generation: int) -> None:
    while runtime.generation < generation or runtime.status != "ready":
        await trio.sleep(0.01)


def assert_clean(launcher: ScriptedLauncher) -> None:
    alive = {pgid: pids for pgid in launcher.pgids if (pids := live_pids_in_group(pgid))}
    assert alive == {}, f"live processes in our groups: {alive}"
    assert daemon_leftovers(launcher.sockets) == []


# === 1. a child stopped or dead between readiness and the WebSocket upgrade ===================================


@pytest.mark.parametrize("fault", ["stop", "die"])
async def test_child_stopped_or_dead_before_the_upgrade_is_restarted(env: Env, fault: str) -> None:
    # Generation 1 (the first start) and generation 3 (a restart after a SIGKILL) meet the fault. A child stopped
    # there must not leave connect() waiting for the upgrade forever (open_runtime would never return).
    cfg = env.config(handshake_timeout=3.0)
    launcher = ScriptedLauncher(cfg, {1: fault, 3: fault})
    try:
        with trio.fail_after(GUARD):
            async with open_runtime(cfg, launcher=launcher) as runtime:
                assert runtime.generation == 2 and runtime.status == "ready"
                assert await settle(runtime, "a1") == "completed"
                assert launcher.last_pgid is not None
                os.killpg(launcher.last_pgid, signal.SIGKILL)
                await wait_ready_generation(runtime, 4)
                assert await settle(runtime, "a2") == "completed"
                causes = runtime.causes
        assert launcher.applied == [(1, fault), (3, fault)]
        if fault == "stop":
            stalled = [c for c in causes if isinstance(c, AppServerNotReady)]
            assert len(stalled) == 2 and all("WebSocket upgrade" in str(c) for c in stalled), causes
        else:
            died = [c for c in causes if isinstance(c, AppServerExited) and c.returncode == -signal.SIGKILL]
            assert len(died) >= 2, causes  # the two faults (and the SIGKILL of generation 2)
        assert_clean(launcher)
    finally:
        remove_daemon_leftovers(launcher.sockets)


@pytest.mark.parametrize("fault", ["stop", "die"])
async def test_a_first_start_that_keeps_meeting_it_reports_a_typed_error(env: Env, fault: str) -> None:
    cfg = env.config(handshake_timeout=3.0)
    launcher = ScriptedLauncher(cfg, {1: fault, 2: fault, 3: fault})
    expected = AppServerNotReady if fault == "stop" else AppServerExited
    try:
        with trio.fail_after(GUARD), pytest.raises(expected) as raised:
            async with open_runtime(cfg, launcher=launcher):
                pytest.fail("the runtime started although every attempt met the fault")
        print(f"\nfirst start, {fault} every time: {type(raised.value).__name__}: {raised.value}")
        assert len(launcher.applied) == 3, (launcher.applied, raised.value)  # three attempts, then the cause
        if fault == "stop":
            assert "WebSocket upgrade" in str(raised.value)
        assert_clean(launcher)
    finally:
        remove_daemon_leftovers(launcher.sockets)


# === 2. host and child killed together right after turn/start was answered =====================================


async def test_host_and_child_killed_after_turn_start_the_input_reaches_the_model_once(env: Env, hosts: Hosts) -> None:
    db = env.tmp / "durable.db"
    setup = env.host_setup("durable", db=db)
    reports = []
    thread_ids = set()
    with trio.fail_after(GUARD * 2):
        # "turn": killed as soon as codex answered turn/start (before it called the model, as it turns out);
        # "model": killed once codex is waiting on the model for that turn. "text": the model answers at once.
        plan = [
            ("hang", "turn", "container"),
            ("text", "turn", "container"),
            ("hang", "model", "container"),
            ("hang", "turn", "SIGKILL"),
            ("hang", "model", "SIGKILL"),
            ("text", "turn", "SIGKILL"),
        ]
        for round_, (kind, when, how) in enumerate(plan):
            first = await hosts.start(setup)
            await first.send("open 0")
            owner = await first.expect("OWNER")
            thread_ids.add(owner[4])
            step = Hang() if kind == "hang" else Text(f"round {round_}", deltas=2)
            env.model.enqueue(step)
            source_id = f"x{round_}"
            await first.send(f"submit {source_id} {text_for(source_id)}")
            while not (first.seen("TURN") and first.seen("ACK")):
                await first.line()
            if when == "model":
                assert isinstance(step, Hang)
                assert await trio.to_thread.run_sync(step.wait_started, 60), "codex never called the model"
            # "container": the host and its app-server at once, as a container kill does; "SIGKILL": the host
            # alone, and its orphan watcher stops the app-server.
            first.kill(how)
            await first.proc.wait()
            model_called = isinstance(step, Hang) and step.started
            env.model.release()  # a Hang the dead codex never reached must not hold up the next request
            assert await groups_gone(first.pgids, 10) == []

            second = await hosts.start(setup)
            await second.send("open 0")
            owner = await second.expect("OWNER")
            assert owner[5] == "True", owner  # the thread was resumed
            thread_ids.add(owner[4])
            probe = f"p{round_}"
            await second.send(f"submit {probe} {text_for(probe)}")
            while [probe, "completed"] not in [f[1:3] for f in second.seen("SETTLED")]:
                await second.line()
            await hosts.exit(second)

            async with SqliteStateStore(db) as store:
                stored = [s for s in await store.recent_settlements("durable", 1000) if s.source_id == source_id]
                assert not (await store.load("durable")).pending
            requests = env.model.requests
            copies = max((user_tokens(r).count(source_id) for r in requests), default=0)
            reports.append(
                f"round {round_} ({kind}, {how} at {when}, model called before the kill: {model_called}): "
                f"copies in any model request {copies}, settled {[s.outcome for s in stored]}"
            )
            assert copies <= 1, f"{source_id} reached the model {copies} times; " + "; ".join(reports)
            assert len([s for s in stored if s.outcome != "stopped"]) == 1, reports
            if copies == 0:
                # Never reached the model: the settlement must say it did not run.
                assert stored[-1].outcome in ("interrupted", "failed"), reports
    print("\n" + "\n".join(reports))
    assert len(thread_ids) == 1, thread_ids
    last = user_tokens(env.model.requests[-1])
    assert all(n == 1 for n in Counter(last).values()), last  # the final history holds each input once


# === 3. no app-server outlives a killed host ===================================================================


@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.parametrize("point", ["start", "turn"])
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_no_app_server_outlives_a_killed_host(env: Env, hosts: Hosts, store: str, point: str, how: str) -> None:
    db = env.tmp / "orphans.db" if store == "sqlite" else None
    host = await hosts.start(env.host_setup("orphans", db=db))
    with trio.fail_after(GUARD):
        await host.send("open 0")
        if point == "start":
            await host.expect("SPAWNED")  # printed right after the spawn, long before the child is ready
        else:
            await host.expect("OWNER")
            hang = Hang()
            env.model.enqueue(hang)
            await host.send(f"submit t1 {text_for('t1')}")
            assert await trio.to_thread.run_sync(hang.wait_started, 60), "codex never called the model"
        host.kill(how)
        alive = await groups_gone(host.pgids, GONE_WITHIN)
        assert alive == [], f"app-server groups {alive} alive {GONE_WITHIN}s after the host's {how}"
        assert await host.proc.wait() == -getattr(signal, how)
        # The watcher then removes codex's files and our link, and exits.
        while any(pid_alive(pid) for pid in host.watchers) or daemon_leftovers(host.sockets):
            await trio.sleep(0.05)


# === 4. two hosts racing for one runtime =========================================================================


@pytest.mark.parametrize("launcher", ["fake", "real"])
async def test_two_hosts_racing_for_one_runtime(env: Env, hosts: Hosts, launcher: str) -> None:
    # "fake": the app-server is an in-process FakeAppServer, so the 50 rounds race for the lease only; "real":
    # every owner starts a codex.
    rounds = 50 if launcher == "fake" else 3
    setup = env.host_setup("race", db=env.tmp / "race.db", launcher=launcher)
    a, b = await hosts.start(setup), await hosts.start(setup)
    answers = ("OWNER", "BUSY", "ERROR")
    winners: Counter[str] = Counter()
    with trio.fail_after(GUARD * 2):
        for round_ in range(rounds):
            first, second = (a, b) if round_ % 2 == 0 else (b, a)
            await first.send("open 0")
            await second.send("open 0")
            said = {a: await a.expect(*answers), b: await b.expect(*answers)}
            owners = [h for h, words in said.items() if words[0] == "OWNER"]
            assert len(owners) == 1, f"round {round_}: {said.values()}"
            owner = owners[0]
            other = b if owner is a else a
            # RuntimeBusy names the owner: its pid, host and since, as the owner itself reports them.
            assert said[other] == ["BUSY", *said[owner][1:4]], f"round {round_}: {said.values()}"
            winners["first" if owner is first else "second"] += 1
            await owner.send("close")
            await owner.expect("CLOSED")

        # wait_for_owner: the second waits while the first holds, and takes over once it stops.
        await a.send("open 0")
        held = await a.expect("OWNER")
        await b.send("open 120")
        with trio.move_on_after(1.5):
            early = await b.expect(*answers)
            pytest.fail(f"the second opener did not wait for the owner: {early}")
        await a.send("close")
        await a.expect("CLOSED")
        took = await b.expect(*answers)
        assert took[0] == "OWNER" and float(took[3]) >= float(held[3]), (held, took)

        # A SIGKILLed owner is replaced at once (wait 0: no waiting for anything to time out).
        b.kill("SIGKILL")
        await b.proc.wait()
        await a.send("open 0")
        replaced = await a.expect(*answers)
        assert replaced[0] == "OWNER", replaced
        assert await groups_gone(b.pgids, 10) == []  # the dead owner's app-server, if it had one
        await a.send("close")
        await a.expect("CLOSED")
        await hosts.exit(a)
    print(f"\n{rounds} rounds ({launcher}): the first to ask won {winners['first']}, the second {winners['second']}")


# === 5. a shared sticky directory as socket_dir ===================================================================


async def test_a_shared_sticky_socket_dir_works_and_keeps_its_mode(env: Env, tmp_path: Path) -> None:
    shared = env.short / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    cfg = env.config(socket_dir=shared)
    launcher = ScriptedLauncher(cfg)
    try:
        with trio.fail_after(GUARD):
            async with open_runtime(cfg, launcher=launcher) as runtime:
                assert await settle(runtime, "s1") == "completed"
                assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
                private = shared / private_dir_name()
                assert stat.S_IMODE(private.stat().st_mode) == 0o700
                assert launcher.sockets and all(sock.parent == private for sock in launcher.sockets)
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
        assert shared.stat().st_uid == os.geteuid()
        assert_clean(launcher)
    finally:
        remove_daemon_leftovers(launcher.sockets)


# === 6. a locked and a read-only state store =====================================================================

_DISCARD_ADVICE = ("corrupt", "move it aside", "start fresh", "discard", "delete", "remove the file", "rm ")


def _assert_honest(error: BaseException, says: str) -> None:
    assert isinstance(error, StateStoreError) and not isinstance(error, LeaseLost), repr(error)
    message = str(error)
    assert says in message, message
    lowered = message.lower()
    assert not [advice for advice in _DISCARD_ADVICE if advice in lowered], message


async def _open_fails(cfg: RuntimeConfig, db: Path) -> BaseException:
    launcher = FakeLauncher()
    store = SqliteStateStore(db, busy_timeout=0.5)
    try:
        with trio.fail_after(60), pytest.raises(StateStoreError) as raised:
            async with open_runtime(cfg, state=store, launcher=launcher):
                pytest.fail("the runtime opened on a store it cannot write")
    finally:
        await store.aclose()
    assert launcher.launches == 0  # reported before anything was started
    return raised.value


async def _opens(cfg: RuntimeConfig, db: Path) -> None:
    async with SqliteStateStore(db) as store, open_runtime(cfg, state=store, launcher=FakeLauncher()) as runtime:
        assert runtime.status == "ready"


@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_a_locked_store_is_reported_as_locked(env: Env, journal: str) -> None:
    # "wal": our own store, another writer holds BEGIN EXCLUSIVE (readers pass, our first write waits); "delete":
    # someone switched it to a rollback journal and holds an exclusive lock (even our first read waits).
    db = env.tmp / "locked.db"
    cfg = env.config("locked")
    await _opens(cfg, db)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        if journal == "delete":
            other.execute("PRAGMA journal_mode = DELETE")
        other.execute("BEGIN EXCLUSIVE")
        _assert_honest(await _open_fails(cfg, db), "locked by another process")
        other.execute("ROLLBACK")
    finally:
        other.close()
    await _opens(cfg, db)  # nothing was damaged: once the other writer is gone, it opens
    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        check.close()


async def test_a_read_only_store_is_reported_as_read_only(env: Env) -> None:
    db = env.tmp / "readonly.db"
    cfg = env.config("readonly")
    await _opens(cfg, db)
    immutable = False
    if os.geteuid() == 0:
        # Root writes through any mode bits; an immutable file is read-only even for root.
        if (
            shutil.which("chattr") is None
            or (await trio.run_process(["chattr", "+i", str(db)], check=False)).returncode
        ):
            pytest.skip("running as root without chattr +i: cannot make a read-only file here")
        immutable = True
    else:
        db.chmod(0o400)
    try:
        _assert_honest(await _open_fails(cfg, db), "read-only")
    finally:
        if immutable:
            await trio.run_process(["chattr", "-i", str(db)])
        db.chmod(0o600)
    await _opens(cfg, db)


# === 7. fifty runtimes at once, default configuration =============================================================


async def test_fifty_runtimes_open_at_once_with_the_default_configuration(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The defaults put sockets under $XDG_RUNTIME_DIR and logs under $XDG_STATE_HOME: point both at this test's
    # directories, and leave every other setting (timeouts, restart policy, start limit) at its default.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(env.short))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    n = 50
    ready: list[float] = []
    outcomes: list[str] = []
    launchers: list[ScriptedLauncher] = []
    all_ready = trio.Event()
    release = trio.Event()
    turns = trio.CapacityLimiter(4)

    async def one(i: int) -> None:
        (tmp_path / f"work{i}").mkdir(parents=True, exist_ok=True)
        cfg = RuntimeConfig(
            runtime_id=f"many{i}",
            codex_bin=env.codex_bin,
            codex_home=write_codex_home(tmp_path / f"home{i}", env.model.url),
            cwd=tmp_path / f"work{i}",
        )
        launcher = ScriptedLauncher(cfg)
        launchers.append(launcher)
        async with open_runtime(cfg, launcher=launcher) as runtime:
            ready.append(trio.current_time() - started)
            if len(ready) == n:
                all_ready.set()
            await all_ready.wait()
            # A few turns at a time: the mock model is one stdlib HTTP server (listen backlog 5), and codex is set
            # up not to retry a model request, so fifty at once would test the mock, not the runtime.
            async with turns:
                admission = await runtime.submit(ChannelInput(f"m{i}", text_for(f"m{i}")))
                settlement = await admission.settled()
            outcomes.append(settlement.outcome if settlement.outcome == "completed" else repr(settlement))
            await release.wait()

    try:
        with trio.fail_after(600):
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)
                await all_ready.wait()
                wall = trio.current_time() - started
                while len(outcomes) < n:
                    await trio.sleep(0.05)
                release.set()
                stopping = trio.current_time()
            stop_wall = trio.current_time() - stopping
        print(
            f"\n{n} runtimes (default configuration) all ready in {wall:.1f}s wall; each ready after "
            f"{summary(ready)}; one turn each, then all stopped in {stop_wall:.1f}s"
        )
        assert outcomes == ["completed"] * n
        for launcher in launchers:
            assert_clean(launcher)
    finally:
        for launcher in launchers:
            remove_daemon_leftovers(launcher.sockets)


# === 8. twenty stops mid-turn ======================================================================================


async def test_twenty_stops_mid_turn_leave_the_daemon_dir_as_it_was(env: Env) -> None:
    before = daemon_entries()
    stop_times: list[float] = []
    launchers: list[ScriptedLauncher] = []
    try:
        with trio.fail_after(GUARD * 3):
            for i in range(20):
                cfg = env.config(f"stop{i}")
                launcher = ScriptedLauncher(cfg)
                launchers.append(launcher)
                hang = Hang()
                env.model.enqueue(hang)
                async with open_runtime(cfg, launcher=launcher) as runtime:
                    admission = await runtime.submit(ChannelInput(f"h{i}", text_for(f"h{i}")))
                    assert await trio.to_thread.run_sync(hang.wait_started, 60), "codex never called the model"
                    stopping = time.monotonic()
                stop_times.append(time.monotonic() - stopping)
                settlement = admission.settlement
                assert settlement is not None and settlement.outcome == "stopped", settlement
                assert_clean(launcher)
        ours = {os.path.basename(f) for launcher in launchers for s in launcher.sockets for f in codex_daemon_files(s)}
        new = daemon_entries() - before
        assert new & ours == set(), sorted(new & ours)
        print(
            f"\n20 stops mid-turn: {summary(stop_times)}; /tmp/codex-daemon-{os.getuid()}/ entries of ours left: "
            f"{len(new & ours)} (new entries from anyone during the test: {len(new)})"
        )
    finally:
        for launcher in launchers:
            remove_daemon_leftovers(launcher.sockets)


# === 9. chaos with ResourceWarning as an error ====================================================================


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the descriptor listdir itself used
    return out


async def test_chaos_leaves_nothing_for_the_garbage_collector(env: Env) -> None:
    rng = random.Random(20261202)
    unraisable: list[str] = []
    previous_hook = sys.unraisablehook

    def hook(info: Any) -> None:
        unraisable.append(f"{info.exc_type.__name__}: {info.exc_value!r} in {info.object!r}")

    launchers: list[ScriptedLauncher] = []

    async def cycle(store: Any, round_: int, chaos: bool) -> None:
        cfg = env.config("gc")
        launcher = ScriptedLauncher(cfg)
        launchers.append(launcher)
        async with open_runtime(cfg, state=store, launcher=launcher) as runtime:
            admissions = []
            for step in range(12 if chaos else 1):
                admissions.append(await runtime.submit(ChannelInput(f"c{round_}-{step}", text_for(f"{round_}-{step}"))))
                if not chaos:
                    continue
                op = rng.choice(["kill", "close", "interrupt", "hang", "pause"])
                session = runtime.engine.live
                if op == "kill" and session is not None and launcher.last_pgid is not None:
                    os.killpg(launcher.last_pgid, signal.SIGKILL)
                elif op == "close" and session is not None:
                    await session.connection.aclose("chaos: socket closed")
                elif op == "interrupt":
                    await runtime.interrupt()
                elif op == "hang":
                    env.model.enqueue(Hang(then=Text("released", deltas=2)))
                await trio.sleep(rng.uniform(0.05, 0.4))
                env.model.release()
            env.model.release()
            with trio.move_on_after(60):
                for admission in admissions:
                    await admission.settled()

    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings(record=True) as caught, trio.fail_after(GUARD * 2):
            warnings.simplefilter("always", ResourceWarning)
            # A first cycle starts what lives as long as the process (the orphan watcher's pipe, the spawner
            # thread): the descriptors after it are the baseline.
            await cycle(MemoryStateStore(), 0, chaos=False)
            gc.collect()
            baseline = _fds()
            stores: list[MemoryStateStore | SqliteStateStore] = [
                MemoryStateStore(),
                SqliteStateStore(env.tmp / "gc.db"),
                SqliteStateStore(env.tmp / "gc.db"),  # a second store object on the same file: a host restart
            ]
            for round_, store in enumerate(stores, 1):
                await cycle(store, round_, chaos=True)
                await store.aclose()
            env.model.release()
            # The mock model's handler threads close their ends once codex's connections are gone.
            with trio.move_on_after(10):
                while True:
                    gc.collect()
                    if _fds() == baseline:
                        break
                    await trio.sleep(0.1)
            gc.collect()
            leaked_fds = {fd: target for fd, target in _fds().items() if baseline.get(fd) != target}
    finally:
        sys.unraisablehook = previous_hook
        for launcher in launchers:
            remove_daemon_leftovers(launcher.sockets)
    resource_warnings = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert resource_warnings == []
    assert unraisable == []
    assert leaked_fds == {}, leaked_fds
    for launcher in launchers:
        assert_clean(launcher)


# === 10. the chaos command, small ==================================================================================


async def test_the_chaos_command_smoke(codex_bin: str) -> None:
    env_vars = {**os.environ, "CODEX_TRIO_CODEX_BIN": codex_bin}
    with trio.fail_after(600):
        done = await trio.run_process(
            [sys.executable, "-m", "bench.chaos", "--inputs", "60", "--seed", "12345"],
            cwd=ROOT,
            env=env_vars,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode()
    assert out.strip(), done.stderr.decode()[-3000:]
    report = json.loads(out)
    print(
        f"\nchaos smoke: {json.dumps(report['verdict'])}\n{json.dumps(report['chaos'])}\n"
        f"{json.dumps(report['timings'])}"
    )
    verdict = report["verdict"]
    assert verdict["acknowledged"] >= 60
    assert sum(report["chaos"]["host_kills"].values()) >= 1
    failures = {name: n for name, n in report["failures"].items() if n}
    assert not failures, failures
    assert verdict["reached_model"] + verdict["not_reached_but_told"] == verdict["acknowledged"]
    assert done.returncode == 0, done.stderr.decode()[-3000:]


# === regressions of bugs the chaos run found (each the smallest test that showed it) ===================


# What codex 0.169 answered to thread/turns/list (desc) after it was stopped between writing a new turn's user
# message to the thread's model history and writing the item event that carries its clientId (`bench.chaos`,
# seed 7: the host died 28 ms after sending turn/start for h2-1, and its orphan watcher stopped codex). The next
# request to the model carried h2-1 twice: once from the dead turn's history, once sent again by the next host.
_DEAD_TURN: dict[str, Any] = {
    "id": "01a23500-f9d8-7753-b2ca-a18ded29d1e5",
    "rootTurnId": "01a23500-f9d8-7753-b2ca-a18ded29d1e5",
    "items": [],
    "itemsView": "full",
    "status": "interrupted",
    "error": None,
    "startedAt": 1796185586,
    "completedAt": None,
    "durationMs": None,
}
_PREVIOUS_TURN: dict[str, Any] = {
    "id": "01a23500-f94e-74c2-8aae-79a3fac3d2a8",
    "rootTurnId": "01a23500-f94e-74c2-8aae-79a3fac3d2a8",
    "items": [
        {
            "type": "userMessage",
            "id": "01a23500-f95d-7531-b497-01a0a1ccd232",
            "clientId": "h2-0",
            "content": [{"type": "text", "text": "chaos-token:h2-0 answer briefly", "text_elements": []}],
            "startedAtMs": 1796185586017,
            "completedAtMs": 1796185586017,
        },
        {"type": "agentMessage", "id": "msg-40", "text": "reply 40", "phase": None, "startedAtMs": 1796185586099},
    ],
    "itemsView": "full",
    "status": "completed",
    "error": None,
    "startedAt": 1796185586,
    "completedAt": 1796185586,
    "durationMs": 118,
}


def test_an_input_codex_recorded_only_in_its_history_is_not_sent_again() -> None:
    from codex_trio._core import Submission
    from codex_trio._recovery import decide

    in_doubt = Submission(41, "h2-1", "channel", "chaos-token:h2-1 answer briefly", state="in_doubt")
    resend, outcomes = decide([in_doubt], [_DEAD_TURN, _PREVIOUS_TURN])
    # codex started a turn after the last input it recorded and recorded no input for it: the in-doubt input may
    # be in the thread's history. Sending it again risks a second delivery; settling it interrupted does not.
    assert 41 not in resend, "sent again although codex may have it"
    assert outcomes[41].outcome == "interrupted"


class _SlowSettleStore(MemoryStateStore):
    """Settlement writes wait for ``gate``: a host killed meanwhile would never make them."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.waiting = 0

    async def settle(self, runtime_id: str, settlement: Any, *, keep: int = 1000) -> None:
        self.waiting += 1
        await self.gate.wait()
        await super().settle(runtime_id, settlement, keep=keep)


async def test_a_caller_is_told_a_settlement_only_once_it_is_durable() -> None:
    from codex_trio.testing import FakeAppServer, TurnScript

    fake = FakeAppServer()
    fake.default_turn = TurnScript(hang=True)
    launcher = FakeLauncher(fake)
    store = _SlowSettleStore()
    cfg = RuntimeConfig(runtime_id="durable-first", restart=RestartPolicy(base_delay=0.01, max_delay=0.05))
    with trio.fail_after(30):
        async with open_runtime(cfg, state=store, launcher=launcher) as runtime:
            admission = await runtime.submit(ChannelInput("d1", "hello"))
            while not fake.active_turns:
                await trio.sleep(0.01)
            launcher.kill()  # the app-server dies mid-turn: d1 settles "interrupted" (it is not sent again)
            while store.waiting == 0:
                await trio.sleep(0.01)
            await trio.sleep(0.2)
            told = admission.settlement  # what the caller knows while the store does not know it yet
            store.gate.set()
            await admission.settled()
    assert told is None, f"the caller was told {told.outcome!r} before the store recorded it"


_LINGERING_CHILD = r"""
import ctypes, os, signal, socket, sys, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
open(sys.argv[2], "w").close()
threading.Thread(target=lambda: (time.sleep(float(sys.argv[3])), os._exit(0))).start()
print("ready", flush=True)
ctypes.CDLL(None, use_errno=True).syscall(int(sys.argv[4]), 0)  # SYS_exit: only the main thread ends
"""
_SYS_EXIT = {"x86_64": 60, "aarch64": 93}


def test_the_watcher_waits_for_every_thread_of_a_killed_leader_before_cleaning_up(tmp_path: Path) -> None:
    from codex_trio._watchdog import _stop_groups, start_ticks

    if os.uname().machine not in _SYS_EXIT or not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux on x86_64 or aarch64 (a raw SYS_exit)")
    socket_path = tmp_path / "lingering.sock"  # the path a host asked codex for; codex binds in its daemon dir
    daemon_sock, daemon_lock = codex_daemon_files(socket_path)
    os.makedirs(os.path.dirname(daemon_sock), mode=0o700, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _LINGERING_CHILD, daemon_sock, daemon_lock, "3", str(_SYS_EXIT[os.uname().machine])],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10
        while not pid_is_zombie(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)  # until the leader is a zombie; its other thread still runs and holds the socket
        # The other thread is alive: sleeping, or running (R) when the machine is busy (seen at load ~40).
        assert pid_is_zombie(proc.pid) and any(s not in ("Z", "X") for s in thread_states(proc.pid))
        # What the watcher does when its host dies with this group registered.
        _stop_groups({proc.pid: (start_ticks(proc.pid), str(socket_path))}, None)
        running = [s for s in thread_states(proc.pid) if s not in ("Z", "X")]
        left = [p for p in (daemon_sock, daemon_lock) if os.path.lexists(p)]
        assert (running, left) == ([], []), f"threads still running {running}; files left {left}"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        for path in (daemon_sock, daemon_lock):
            try:
                os.unlink(path)
            except OSError:
                pass
