"""Chaos on the real codex binary: child kills, socket closes, graceful restarts and host kills, until at least
``--inputs`` inputs have been acknowledged; then prove that none was lost, duplicated or reordered, and that no
process, file or descriptor leaked.

    python -m bench.chaos [--inputs N] [--seed S] [--submitters K] [--keep] [--json-out FILE]

What it does
------------
The mock model (``codex_trio.testing.MockModelServer``) runs in this process; it answers most model requests at
once and hangs on some until a driver task releases them, so that kills land mid-turn. One runtime
(``runtime_id="chaos"``) runs in a *host* child process (``python -W error::ResourceWarning -m bench.chaos host
...``) on a SQLite store in a temporary directory, with the real ``codex app-server`` as its child. Each host:

* runs ``--submitters`` concurrent submitters; every input has a unique source id ``h<host>-<n>`` and its text
  carries ``chaos-token:<source id>``; before each ``submit`` it prints ``SUBMIT id``, after it ``ACK id seq`` (an
  accepted admission: durable in the store) or ``REFUSED id status``; half of the submitters wait for each
  input's settlement before the next one;
* first resubmits up to 20 ids acknowledged by earlier hosts: each must come back ``duplicate``;
* at random moments SIGKILLs its app-server's process group, closes the runtime's WebSocket, interrupts the
  active turn, or stops the runtime gracefully (leaving ``open_runtime``) and opens it again on the same store,
  reporting the stop time and its open file descriptors after each stop.

The driver SIGKILLs each host at a random moment (or SIGTERMs it, which it does not handle; or kills it together
with its app-servers, as a container kill does; or kills it while its first app-server is starting) and starts
the next host on the same store, until ``--inputs`` acknowledgements were seen. A last host is never killed: it
delivers what is left, waits until the store holds nothing pending, stops, opens again, runs two more inputs and
stops again.

What is checked (the JSON summary's ``verdict``)
------------------------------------------------
*Acknowledged* means a host printed ``ACK``: ``submit`` returned ``submitted`` or ``queued``. An input *reached the
model* when its token is in a user message of some model request. *Delivered* counts copies: per codex thread,
the most copies of the token in any one request (history is re-sent with every request, so a second delivery
shows up as a second copy), summed over threads.

* ``lost``: acknowledged, never reached the model, and no final settlement that says it did not run to
  completion. Final settlements are the ones seen by a host (``SETTLED`` lines) or stored in the state store
  (read after each host ended); ``stopped`` is not final with a durable store (the input stays pending for the
  next start). ``interrupted`` and ``failed`` are final and tell the caller the input did not complete and will
  not be sent again (``not_reached_but_told``). Must be 0.
* ``delivered_twice``: any token (acknowledged or not) delivered two or more times. Must be 0.
* ``reordered``: walking the model requests in order, the first appearance of each acknowledged token; an
  input counts as reordered when one accepted after it (a higher sequence number) appeared first. Must be 0.
* ``leaks``: processes still alive in any process group an app-server was started in, or alive 2 s after their
  host was killed; orphan watchers still alive; files left in ``/tmp/codex-daemon-<uid>/`` for any of our sockets;
  our socket links; growth of a host's open descriptors across its graceful restarts; unraisable exceptions
  (ResourceWarning is an error in the hosts, so an unclosed socket or file shows here). Must all be 0.

The exit status is 0 when every count is 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket as socket_module
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_ID = "chaos"
TOKEN = re.compile(r"chaos-token:([A-Za-z0-9_.-]+)")
#: The promise under test: every process of a killed host's app-server groups is gone this long after the kill.
GONE_WITHIN = 2.0
#: How many earlier acknowledged ids each host resubmits (all within the default dedup window of 1024).
RESUBMIT = 20
#: Share of model requests that hang until the driver releases them.
HANG_SHARE = 0.15


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# === the host role ==============================================================================================


@attrs.define(eq=False)
class _Holder:
    """The runtime of the current cycle, for the submitters and the chaos task."""

    runtime: Any = None
    launcher: Any = None
    ready: trio.Event = attrs.field(factory=trio.Event)
    restart: trio.Event = attrs.field(factory=trio.Event)


async def host_main(setup: dict[str, Any]) -> int:
    import codex_trio
    from codex_trio import ChannelInput, RestartPolicy, RuntimeConfig, SqliteStateStore
    from codex_trio._events import StatusChanged, SubmissionSettled
    from codex_trio.testing._launchers import AnnouncingLauncher

    def unraisable(info: Any) -> None:
        emit(f"UNRAISABLE {json.dumps(repr(info.exc_value))[:400]} {json.dumps(repr(info.object))[:200]}")

    sys.unraisablehook = unraisable

    index: int = setup["index"]
    final: bool = setup["final"]
    rng = random.Random(setup["seed"])
    config = RuntimeConfig(
        runtime_id=RUNTIME_ID,
        codex_bin=setup["codex_bin"],
        codex_home=Path(setup["codex_home"]),
        cwd=Path(setup["cwd"]),
        sandbox_mode="read-only",
        socket_dir=Path(setup["socket_dir"]),
        log_dir=Path(setup["log_dir"]),
        state_dir=Path(setup["state_dir"]),
        spill_dir=Path(setup["state_dir"]) / "spill",
        delivery_mode=setup["mode"],
        grace_period=0.5,
        request_timeout=30,
        restart=RestartPolicy(base_delay=0.05, max_delay=0.5, max_restarts=10_000, within=60),
    )
    store = SqliteStateStore(setup["db"])
    holder = _Holder()
    counter = iter(range(10**9))
    stop_all = trio.Event()

    def next_id() -> str:
        return f"h{index}-{next(counter)}"

    async def watch_events(runtime: Any) -> None:
        async with runtime.events() as events:
            async for event in events:
                if isinstance(event, SubmissionSettled):
                    s = event.settlement
                    emit(f"SETTLED {s.source_id} {s.outcome} {s.seq}")
                elif isinstance(event, StatusChanged) and event.status == "ready":
                    emit(f"STATUS ready {event.generation}")

    async def submit_one(runtime: Any, source_id: str) -> Any:
        emit(f"SUBMIT {source_id}")
        admission = await runtime.submit(ChannelInput(source_id, f"chaos-token:{source_id} answer briefly"))
        if admission.accepted:
            emit(f"ACK {source_id} {admission.seq} {admission.status}")
            return admission
        emit(f"REFUSED {source_id} {admission.status}")
        return None

    async def submitter(number: int) -> None:
        closed_loop = number % 2 == 0
        while not stop_all.is_set():
            await holder.ready.wait()
            runtime = holder.runtime
            if runtime is None or runtime.stopping:
                await trio.sleep(0.01)
                continue
            if runtime.statistics().queued > 8:
                await trio.sleep(0.05)  # bounded backlog: the drain at the end stays short
                continue
            admission = await submit_one(runtime, next_id())
            if admission is not None and closed_loop:
                with trio.move_on_after(60):
                    await admission.settled()
            await trio.sleep(rng.uniform(0.05, 0.6))

    async def recovered(runtime: Any, generation: int, started: float) -> None:
        with trio.move_on_after(120):
            while runtime.generation <= generation or runtime.status != "ready":
                if runtime.stopping:
                    return
                await trio.sleep(0.01)
            emit(f"RECOVERED {time.monotonic() - started:.3f}")

    async def chaos() -> None:
        ops = ["kill", "close", "interrupt", "restart", "pause"]
        weights = [0.32, 0.22, 0.1, 0.12, 0.24]
        while not stop_all.is_set():
            await trio.sleep(rng.uniform(0.3, 2.0))
            await holder.ready.wait()
            runtime, launcher = holder.runtime, holder.launcher
            if runtime is None or runtime.stopping or runtime.status != "ready":
                continue
            op = rng.choices(ops, weights)[0]
            session = runtime.engine.live
            generation = runtime.generation
            started = time.monotonic()
            if op == "kill" and session is not None and launcher.last_pgid is not None:
                try:
                    os.killpg(launcher.last_pgid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                emit(f"CHILDKILL {launcher.last_pgid}")
                await recovered(runtime, generation, started)
            elif op == "close" and session is not None:
                await session.connection.aclose("chaos: socket closed")
                emit("SOCKCLOSE")
                await recovered(runtime, generation, started)
            elif op == "interrupt":
                emit(f"INTERRUPT {await runtime.interrupt()}")
            elif op == "restart":
                emit("RESTART")
                holder.restart.set()

    async def cycle(resubmit: list[str], nursery: trio.Nursery) -> float:
        """One ``open_runtime`` block; returns the seconds its stop took."""
        launcher = AnnouncingLauncher(config, emit)
        async with codex_trio.open_runtime(config, state=store, launcher=launcher) as runtime:
            emit(f"READY {runtime.generation} {runtime.thread_id} {runtime.thread_resumed}")
            nursery.start_soon(watch_events, runtime)
            for source_id in resubmit:
                admission = await runtime.submit(ChannelInput(source_id, f"chaos-token:{source_id} answer briefly"))
                emit(f"DUP {source_id} {admission.status}")
            holder.runtime, holder.launcher = runtime, launcher
            holder.ready.set()
            if final:
                await final_work(runtime)
            else:
                await holder.restart.wait()
            holder.ready = trio.Event()
            holder.restart = trio.Event()
            stopping = time.monotonic()
        stopped = time.monotonic() - stopping
        holder.runtime = holder.launcher = None
        return stopped

    async def final_work(runtime: Any) -> None:
        # Deliver everything earlier hosts left, plus a few of our own, and wait until nothing is pending.
        admissions = [a for a in [await submit_one(runtime, next_id()) for _ in range(3)] if a is not None]
        with trio.fail_after(300):
            for admission in admissions:
                await admission.settled()
            while (await store.load(RUNTIME_ID)).pending:  # noqa: ASYNC110 - a store has no change notification
                await trio.sleep(0.1)

    exit_status = 0
    try:
        async with trio.open_nursery() as events_nursery:
            async with trio.open_nursery() as nursery:
                if not final:
                    for number in range(setup["submitters"]):
                        nursery.start_soon(submitter, number)
                    nursery.start_soon(chaos)
                resubmit = list(setup["resubmit"])
                cycles = 2 if final else 10**9
                for _ in range(cycles):
                    stopped = await cycle(resubmit, events_nursery)
                    resubmit = []
                    gc.collect()
                    emit(f"STOPPED {stopped:.3f}")
                    emit(f"FDS {open_fds()}")
                stop_all.set()
                holder.ready.set()
                nursery.cancel_scope.cancel()
            events_nursery.cancel_scope.cancel()
    except Exception as exc:
        emit(f"ERROR {type(exc).__name__} {json.dumps(str(exc))[:1000]}")
        exit_status = 1
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
    gc.collect()
    emit(f"FDS {open_fds()}")
    emit("DONE")
    return exit_status


# === the driver =================================================================================================


@attrs.define(eq=False)
class _Request:
    number: int
    thread: str
    tokens: list[str]
    at: float = 0.0


def _recording_model(seed: int) -> Any:
    from codex_trio.testing._mock_model import Hang, MockModelServer, Step, Text

    class RecordingModel(MockModelServer):
        """Keeps, per request, only the thread and the chaos tokens of its user messages (in order): bodies grow
        with the thread's history, and a thousand of them would not fit in memory."""

        def __init__(self) -> None:
            super().__init__(default=self.step)
            self.compact: list[_Request] = []
            self._compact_lock = threading.Lock()

        @staticmethod
        def step(n: int) -> Step:
            if random.Random(f"{seed}:{n}").random() < HANG_SHARE:
                return Hang(then=Text(f"released reply {n}", deltas=2))
            return Text(f"reply {n}", deltas=2)

        def _next_step(self, method: str, path: str, headers: Mapping[str, str], body: Any) -> tuple[int, Step]:
            tokens: list[str] = []
            items = body.get("input") if isinstance(body, dict) else None
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and item.get("role") == "user":
                    content = item.get("content")
                    parts = [content] if isinstance(content, str) else content if isinstance(content, list) else []
                    for part in parts:
                        text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
                        if isinstance(text, str):
                            tokens.extend(sys.intern(t) for t in TOKEN.findall(text))
            thread = str(headers.get("session-id") or (body or {}).get("prompt_cache_key") or "?")
            n, step = super()._next_step(method, path, headers, None)
            with self._compact_lock:
                self.compact.append(_Request(n, thread, tokens, time.monotonic()))
            return n, step

    return RecordingModel()


@attrs.define(eq=False)
class HostRecord:
    index: int
    final: bool
    pid: int = 0
    kill: str | None = None
    started_at: float = 0.0
    ready_after: float | None = None
    killed_at: float | None = None
    gone_after: float | None = None
    returncode: int | None = None
    pgids: list[int] = attrs.field(factory=list)
    sockets: list[str] = attrs.field(factory=list)
    watchers: set[int] = attrs.field(factory=set)
    fds: list[int] = attrs.field(factory=list)
    stops: list[float] = attrs.field(factory=list)
    recoveries: list[float] = attrs.field(factory=list)
    lines: int = 0
    errors: list[str] = attrs.field(factory=list)
    unraisable: list[str] = attrs.field(factory=list)
    counts: Counter[str] = attrs.field(factory=Counter)
    done: bool = False


@attrs.define(eq=False)
class Chaos:
    target: int
    seed: int
    submitters: int
    root: Path
    codex_bin: str
    model: Any
    rng: random.Random
    acked: dict[str, int] = attrs.field(factory=dict)  # id -> seq
    acked_order: list[str] = attrs.field(factory=list)
    submitted: set[str] = attrs.field(factory=set)
    refused: Counter[str] = attrs.field(factory=Counter)
    settlements: dict[str, list[str]] = attrs.field(factory=lambda: defaultdict(list))
    stored: dict[int, tuple[str, str]] = attrs.field(factory=dict)  # seq -> (id, outcome), from the store
    dups: Counter[str] = attrs.field(factory=Counter)
    hosts: list[HostRecord] = attrs.field(factory=list)
    orphans_after_2s: int = 0
    leaked_groups: int = 0

    @property
    def db(self) -> Path:
        return self.root / "state" / "chaos.db"

    def setup(self, index: int, final: bool) -> dict[str, Any]:
        recent = self.acked_order[-200:]
        resubmit = self.rng.sample(recent, min(RESUBMIT, len(recent)))
        return {
            "index": index,
            "final": final,
            "seed": self.rng.randrange(2**32),
            "codex_bin": self.codex_bin,
            "codex_home": str(self.root / "home"),
            "cwd": str(self.root / "work"),
            "socket_dir": str(self.root / "s"),
            "log_dir": str(self.root / "logs"),
            "state_dir": str(self.root / "state"),
            "db": str(self.db),
            "mode": self.rng.choice(["steer", "steer", "queue"]),
            "submitters": self.submitters,
            "resubmit": resubmit,
        }


def _live(pgid: int) -> list[int]:
    from codex_trio._process import live_pids_in_group

    return live_pids_in_group(pgid)


def _pid_alive(pid: int) -> bool:
    from codex_trio._watchdog import pid_alive

    return pid_alive(pid)


def _running_as(pid: int, needle: bytes) -> bool:
    """Whether ``pid`` is alive and ``needle`` is in its command line (so it is still the process we started)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return _pid_alive(pid) and needle in f.read()
    except OSError:
        return False


def _handle(chaos: Chaos, rec: HostRecord, line: str) -> None:
    words = line.split()
    if not words:
        return
    kind = words[0]
    rec.lines += 1
    rec.counts[kind] += 1
    if kind == "SUBMIT":
        chaos.submitted.add(words[1])
    elif kind == "ACK":
        if words[1] not in chaos.acked:
            chaos.acked_order.append(words[1])
        chaos.acked[words[1]] = int(words[2])
    elif kind == "REFUSED":
        chaos.refused[words[2]] += 1
    elif kind == "SETTLED":
        chaos.settlements[words[1]].append(words[2])
    elif kind == "DUP":
        chaos.dups[words[2]] += 1
    elif kind == "SPAWNED":
        rec.pgids.append(int(words[1]))
        if words[3] != "None":
            rec.watchers.add(int(words[3]))
    elif kind == "SOCKET":
        rec.sockets.append(words[1])
    elif kind == "READY" and rec.ready_after is None:
        rec.ready_after = time.monotonic() - rec.started_at
    elif kind == "FDS":
        rec.fds.append(int(words[1]))
    elif kind == "STOPPED":
        rec.stops.append(float(words[1]))
    elif kind == "RECOVERED":
        rec.recoveries.append(float(words[1]))
    elif kind == "ERROR":
        rec.errors.append(line[:1000])
    elif kind == "UNRAISABLE":
        rec.unraisable.append(line[:600])
    elif kind == "DONE":
        rec.done = True


def _kill(rec: HostRecord, how: str) -> None:
    rec.killed_at = time.monotonic()
    try:
        if how == "sigterm":
            os.kill(rec.pid, signal.SIGTERM)  # the host does not handle it: the default action ends it at once
        elif how == "container":
            # The host's group and every app-server group it started, all at once (its watcher is not among
            # them: it lives in a session of its own, as it would outside a container's cgroup kill).
            os.killpg(rec.pid, signal.SIGKILL)
            for pgid in rec.pgids:
                if _running_as(pgid, b"app-server"):  # earlier generations were reaped: their ids are not ours
                    os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(rec.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def _run_host(chaos: Chaos, index: int, final: bool) -> HostRecord:
    setup = chaos.setup(index, final)
    rec = HostRecord(index, final)
    if not final:
        rec.kill = chaos.rng.choices(["sigkill", "container", "sigterm", "start"], [0.45, 0.25, 0.15, 0.15])[0]
    kill_delay = chaos.rng.uniform(1.0, 5.0)
    stderr_path = chaos.root / "logs" / f"host{index}.stderr"
    argv = [sys.executable, "-W", "error::ResourceWarning", "-m", "bench.chaos", "host", json.dumps(setup)]
    with open(stderr_path, "wb") as stderr:  # noqa: ASYNC230 - before anything concurrent runs
        rec.started_at = time.monotonic()
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, start_new_session=True
        )
    rec.pid = proc.pid
    chaos.hosts.append(rec)
    assert proc.stdout is not None
    transcript = open(chaos.root / "logs" / f"host{index}.out", "w")  # noqa: ASYNC230, SIM115 - small writes
    buffer = b""
    kill_at = math.inf
    killed = False
    guard = trio.current_time() + (600 if final else 180)
    try:
        while True:
            with trio.move_on_at(guard if killed else min(kill_at, guard)) as waited:
                chunk = await proc.stdout.receive_some(65536)
            if waited.cancelled_caught:
                if killed or trio.current_time() >= guard:
                    rec.errors.append("the host did not finish in time; killed")
                    _kill(rec, "container")
                    break
                _kill(rec, rec.kill or "sigkill")
                killed = True
                continue
            if not chunk:
                break  # EOF: the host is gone
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                transcript.write(f"{time.monotonic():.3f} {line}\n")
                _handle(chaos, rec, line)
                if killed or final:
                    continue
                word = line.split(" ", 1)[0]
                if rec.kill == "start" and word == "SPAWNED":
                    _kill(rec, "sigkill")
                    killed = True
                elif word == "READY" and kill_at == math.inf:
                    kill_at = trio.current_time() + kill_delay
                if len(chaos.acked) >= chaos.target:
                    kill_at = min(kill_at, trio.current_time())  # enough: kill it now, wherever it is
            if not killed and kill_at <= trio.current_time():
                _kill(rec, rec.kill or "sigkill")
                killed = True
    finally:
        if rec.killed_at is not None:
            transcript.write(f"{rec.killed_at:.3f} [driver] killed ({rec.kill})\n")
        transcript.close()
        with trio.CancelScope(shield=True):
            rec.returncode = await proc.wait()
            await proc.stdout.aclose()
    if rec.killed_at is not None:
        await _await_groups_gone(chaos, rec)
    await _read_store(chaos)
    return rec


async def _await_groups_gone(chaos: Chaos, rec: HostRecord) -> None:
    """Every process of the killed host's app-server groups must be gone within GONE_WITHIN of the kill."""
    assert rec.killed_at is not None
    while True:
        alive = [pgid for pgid in rec.pgids if await trio.to_thread.run_sync(_live, pgid)]
        elapsed = time.monotonic() - rec.killed_at
        if not alive:
            rec.gone_after = elapsed
            return
        if elapsed > GONE_WITHIN and rec.gone_after is None:
            rec.gone_after = math.inf
            chaos.orphans_after_2s += len(alive)
        if elapsed > 15:
            for pgid in alive:  # leaked: count it, then clean up
                chaos.leaked_groups += 1
                if _running_as(pgid, b"app-server"):
                    os.killpg(pgid, signal.SIGKILL)
            return
        await trio.sleep(0.02)


async def _read_store(chaos: Chaos) -> None:
    """Settlements recorded in the store (it keeps the latest 1000 per runtime: read after every host)."""
    from codex_trio import SqliteStateStore

    if not chaos.db.exists():
        return
    async with SqliteStateStore(chaos.db) as store:
        for s in await store.recent_settlements(RUNTIME_ID, limit=1_000_000):
            chaos.stored[s.seq] = (s.source_id, s.outcome)


def _daemon_files(sockets: list[str]) -> list[str]:
    from codex_trio._watchdog import codex_daemon_files

    return [p for sock in sockets for p in (*codex_daemon_files(sock), sock) if os.path.lexists(p)]


def _daemon_dir() -> Path:
    return Path(f"/tmp/codex-daemon-{os.getuid()}")


def _daemon_entries() -> set[str]:
    try:
        return set(os.listdir(_daemon_dir()))
    except OSError:
        return set()


def _stats(values: list[float]) -> dict[str, float | int | None]:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return {"n": len(values), "median": None, "p90": None, "max": None}
    p90 = finite[min(len(finite) - 1, math.ceil(0.9 * len(finite)) - 1)]
    return {
        "n": len(values),
        "median": round(statistics.median(finite), 3),
        "p90": round(p90, 3),
        "max": round(max(finite), 3) if len(finite) == len(values) else math.inf,
    }


def analyse(chaos: Chaos, requests: list[_Request]) -> dict[str, Any]:
    acked = chaos.acked
    # Final outcome of each input: what a host saw, then what the store recorded; "stopped" is not final.
    final_outcome: dict[str, str] = {}
    for source_id, told_outcomes in chaos.settlements.items():
        finals = [o for o in told_outcomes if o != "stopped"]
        if finals:
            final_outcome[source_id] = finals[-1]
    for _seq, (source_id, outcome) in sorted(chaos.stored.items()):
        if outcome != "stopped":
            final_outcome.setdefault(source_id, outcome)
    settled_twice = sorted(i for i, seen in chaos.settlements.items() if len([o for o in seen if o != "stopped"]) > 1)

    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    first_order: list[str] = []
    seen: set[str] = set()
    for request in sorted(requests, key=lambda r: r.number):
        copies = Counter(request.tokens)
        best = per_thread[request.thread]
        for token, n in copies.items():
            best[token] = max(best[token], n)
        for token in request.tokens:
            if token not in seen:
                seen.add(token)
                first_order.append(token)
    delivered: Counter[str] = Counter()
    for best in per_thread.values():
        delivered.update(best)
    twice = sorted(token for token, n in delivered.items() if n > 1)
    reached = set(delivered)

    reordered: list[str] = []
    highest = -1
    for token in first_order:
        seq = acked.get(token)
        if seq is None:
            continue
        if seq < highest:
            reordered.append(token)
        highest = max(highest, seq)

    not_reached = [i for i in acked if i not in reached]
    told = [i for i in not_reached if final_outcome.get(i) in ("interrupted", "failed")]
    lost = sorted(i for i in not_reached if final_outcome.get(i) not in ("interrupted", "failed"))
    unsettled = sorted(i for i in acked if i not in final_outcome)
    unknown = sorted(reached - set(acked) - chaos.submitted)
    maybe = chaos.submitted - set(acked)
    outcomes = Counter(final_outcome.get(i, "none") for i in acked)
    completed_not_reached = sorted(i for i in not_reached if final_outcome.get(i) == "completed")

    return {
        "acknowledged": len(acked),
        "submitted_not_acknowledged": len(maybe),
        "maybe_reached_model": len(maybe & reached),
        "reached_model": len(reached & set(acked)),
        "not_reached_but_told": len(told),
        "not_reached_told_by_outcome": dict(Counter(final_outcome[i] for i in told)),
        "lost": len(lost),
        "lost_ids": lost[:50],
        "delivered_twice": len(twice),
        "delivered_twice_ids": twice[:50],
        "reordered": len(reordered),
        "reordered_ids": reordered[:50],
        "unsettled": len(unsettled),
        "unsettled_ids": unsettled[:50],
        "settled_twice": len(settled_twice),
        "completed_but_never_reached_model": len(completed_not_reached),
        "tokens_from_nowhere": len(unknown),
        "outcomes": dict(sorted(outcomes.items())),
        "model_requests": len(requests),
        "threads": len(per_thread),
    }


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    from codex_trio.testing._mock_model import write_codex_home
    from codex_trio.testing._real_codex import find_codex_bin

    codex_bin = os.environ.get("CODEX_TRIO_CODEX_BIN") or find_codex_bin()
    if not codex_bin:
        raise SystemExit("no codex binary: run `./dev setup` or set CODEX_TRIO_CODEX_BIN")
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    root = Path(tempfile.mkdtemp(prefix="ctchaos-", dir="/tmp"))
    daemon_before = _daemon_entries()
    model = _recording_model(seed)
    chaos = Chaos(args.inputs, seed, args.submitters, root, codex_bin, model, random.Random(seed))
    started = time.monotonic()
    try:
        for sub in ("state", "logs", "work", "s"):
            (root / sub).mkdir(mode=0o700)
        with model:
            write_codex_home(root / "home", model.url)
            async with trio.open_nursery() as nursery:

                async def release_hangs() -> None:
                    rng = random.Random(seed ^ 0x5EED)
                    while True:
                        await trio.sleep(rng.uniform(0.2, 1.5))
                        model.release()

                nursery.start_soon(release_hangs)
                index = 0
                while len(chaos.acked) < chaos.target:
                    await _run_host(chaos, index, final=False)
                    index += 1
                    if index > 20 + chaos.target:  # nothing gets acknowledged: give up, and say so
                        break
                model.set_default(lambda n: _recording_text(n))
                model.release()
                final = await _run_host(chaos, index, final=True)
                nursery.cancel_scope.cancel()
            requests = list(model.compact)
        with open(root / "logs" / "model.jsonl", "w") as f:  # noqa: ASYNC230 - after everything ran
            for request in requests:
                f.write(json.dumps(attrs.asdict(request)) + "\n")
        wall = time.monotonic() - started
        report = await _verify(chaos, requests, final, daemon_before, wall)
    finally:
        for rec in chaos.hosts:  # whatever a failed run left behind, if it is still ours (pids get reused)
            for pid, needle in [(rec.pid, b"bench.chaos"), *((w, b"_watchdog.py") for w in rec.watchers)]:
                if _running_as(pid, needle):
                    os.kill(pid, signal.SIGKILL)
            for pgid in rec.pgids:
                if _running_as(pgid, b"app-server"):
                    os.killpg(pgid, signal.SIGKILL)
        # Counted above (leaks.daemon_files_of_ours); not left in codex's shared directory.
        for path in _daemon_files([sock for rec in chaos.hosts for sock in rec.sockets]):
            try:
                os.unlink(path)
            except OSError:
                pass
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["root"] = str(root) + ("" if args.keep else " (removed)")
    return report


def _recording_text(n: int) -> Any:
    from codex_trio.testing._mock_model import Text

    return Text(f"final reply {n}", deltas=2)


async def _verify(
    chaos: Chaos, requests: list[_Request], final: HostRecord, daemon_before: set[str], wall: float
) -> dict[str, Any]:
    verdict = analyse(chaos, requests)
    # Leaks, once everything has had its chance to end: watchers clean up after their host within seconds.
    watchers = {pid for rec in chaos.hosts for pid in rec.watchers}
    with trio.move_on_after(20):
        while any(_pid_alive(pid) for pid in watchers):  # noqa: ASYNC110 - other processes: polling is all there is
            await trio.sleep(0.05)
    sockets = [sock for rec in chaos.hosts for sock in rec.sockets]
    with trio.move_on_after(10):
        while _daemon_files(sockets):  # noqa: ASYNC110 - files the watchers remove
            await trio.sleep(0.05)
    live_groups = [pgid for rec in chaos.hosts for pgid in rec.pgids if _live(pgid)]
    fd_growth = [max(rec.fds) - rec.fds[0] for rec in chaos.hosts if len(rec.fds) > 1]
    from codex_trio import SqliteStateStore

    async with SqliteStateStore(chaos.db) as store:
        pending = len((await store.load(RUNTIME_ID)).pending)
    leaks = {
        "processes_alive_at_end": len(live_groups) + chaos.leaked_groups,
        "groups_alive_2s_after_host_kill": chaos.orphans_after_2s,
        "watchers_alive_at_end": sum(1 for pid in watchers if _pid_alive(pid)),
        "daemon_files_of_ours": len(_daemon_files(sockets)),
        "socket_links_left": len(list((chaos.root / "s").rglob("*.sock"))),
        "host_fd_growth_across_restarts": max(fd_growth, default=0),
        "unraisable_in_hosts": sum(len(rec.unraisable) for rec in chaos.hosts),
    }
    killed = [rec for rec in chaos.hosts if rec.killed_at is not None]
    host_errors = [e for rec in chaos.hosts for e in rec.errors]
    counts: Counter[str] = Counter()
    for rec in chaos.hosts:
        counts.update(rec.counts)
    failures = {
        "lost": verdict["lost"],
        "delivered_twice": verdict["delivered_twice"],
        "reordered": verdict["reordered"],
        **{f"leaked_{k}": v for k, v in leaks.items()},
        "duplicates_not_refused": sum(n for status, n in chaos.dups.items() if status != "duplicate"),
        "pending_in_store_at_end": pending,
        "final_host_failed": int(not final.done or final.returncode != 0 or bool(final.errors)),
    }
    return {
        "command": "python -m bench.chaos " + " ".join(sys.argv[1:]),
        "seed": chaos.seed,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "ok": not any(failures.values()),
        "failures": failures,
        "verdict": verdict,
        "leaks": leaks,
        "daemon_dir_new_entries_any_owner": len(_daemon_entries() - daemon_before),
        "chaos": {
            "hosts": len(chaos.hosts),
            "host_kills": dict(Counter(rec.kill for rec in killed)),
            "child_sigkills": counts["CHILDKILL"],
            "socket_closes": counts["SOCKCLOSE"],
            "interrupts": counts["INTERRUPT"],
            "graceful_restarts": counts["RESTART"],
            "duplicates_resubmitted": sum(chaos.dups.values()),
            "refused": dict(chaos.refused),
            "host_errors": host_errors[:10],
        },
        "timings": {
            "wall_s": round(wall, 1),
            "acknowledged_per_s": round(len(chaos.acked) / wall, 2) if wall else None,
            "host_spawn_to_ready_s": _stats([r.ready_after for r in chaos.hosts if r.ready_after is not None]),
            "host_kill_to_groups_gone_s": _stats([r.gone_after for r in killed if r.gone_after is not None]),
            "graceful_stop_s": _stats([s for r in chaos.hosts for s in r.stops]),
            "child_kill_or_close_to_ready_s": _stats([s for r in chaos.hosts for s in r.recoveries]),
        },
        "machine": {
            "nproc": os.cpu_count(),
            "host": socket_module.gethostname(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0],
            "trio": trio.__version__,
        },
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "host":
        return trio.run(host_main, json.loads(argv[1]))
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1000, help="acknowledged inputs to reach (default 1000)")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: random, printed)")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent submitters per host (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, the store)")
    parser.add_argument("--json-out", help="also write the summary to this file")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    report = trio.run(drive, args)
    text = json.dumps(report, indent=2, default=str)
    print(text, flush=True)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
