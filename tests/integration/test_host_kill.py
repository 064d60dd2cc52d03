"""Durability across host crashes, with real processes: a host (host_kill_child.py) runs a runtime on a SQLite
store with an app-server child of its own, acknowledges submissions on stdout, and is SIGKILLed at a random
point. The next host on the same database must resume the thread, refuse every acknowledged id as a duplicate,
and deliver what was acknowledged but never reached codex — so that every acknowledged input reaches codex
exactly once, in acceptance order, and the database stays intact. The one exception is said, never silent: an
input a killed host was steering into a running turn, which codex may hold without a record that names it, is
settled interrupted rather than sent again (at most once).

What reached codex is read from the fake app-server's journal (every accepted ``turn/start``/``turn/steer``
with its ``clientUserMessageId``, appended before the answer is sent), which survives every kill.

Two more properties, one test each: no app-server outlives its host (the host's watcher process stops it), and an
input that reached codex just before the host died is reconciled against codex's own record by the next host,
never sent twice.

Deadlines are guards against a hang, generous enough for a loaded 2-core machine; none of them is the property
under test, and no test asserts how long something took.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from codex_trio import SqliteStateStore
from codex_trio._process import live_pids_in_group

CHILD = Path(__file__).with_name("host_kill_child.py")
RUNTIME = "hostkill"
ROUNDS = 5
# Guards against a hang, never expected to fire: each host run (it starts Python, a runtime and an app-server, on a
# machine that may be busy with other work), the wait for a killed host's processes to go, and each test as a whole.
HOST_GUARD = 120
REAP_GUARD = 60
GUARD = 900


@attrs.define
class Setup:
    tmp: Path
    db: Path
    shim: Path
    journal: Path
    fake_state: Path
    script: Path
    socket_dir: Path
    log_dir: Path

    def write_script(self, default: dict[str, Any], turns: Sequence[dict[str, Any]] = ()) -> None:
        # Read by each app-server at its start, so it applies to the next host's child.
        self.script.write_text(json.dumps({"default": default, "turns": list(turns)}))

    def journal_entries(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines() if line]

    def recorded_ids(self) -> Counter[str]:
        """How many times codex's own record (the fake's saved state, what ``thread/turns/list`` reports) holds each
        client id: what the model would see. The journal is written a moment before it, so a fake killed between
        the two has journalled an input it never recorded, which the next host then rightly sends again."""
        if not self.fake_state.exists():
            return Counter()
        data = json.loads(self.fake_state.read_text())
        return Counter(
            m["clientId"] for messages in data.get("user_messages", {}).values() for m in messages if m.get("clientId")
        )


@pytest.fixture
def setup(tmp_path: Path, short_socket_dir: Path) -> Iterator[Setup]:
    shim = tmp_path / "codex"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {CHILD} "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    s = Setup(
        tmp=tmp_path,
        db=tmp_path / "host.db",
        shim=shim,
        journal=tmp_path / "journal.jsonl",
        fake_state=tmp_path / "fake-state.json",
        script=tmp_path / "script.json",
        socket_dir=short_socket_dir,  # short: the pytest tmp path can exceed the Unix-socket path budget
        log_dir=tmp_path / "logs",
    )
    try:
        yield s
    finally:
        for pid in our_processes(s):  # whatever a failed test left behind: an app-server, a host
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def our_processes(s: Setup) -> list[int]:
    """Live processes carrying this test's journal path in their environment: hosts and app-servers."""
    marker = f"HOST_KILL_JOURNAL={s.journal}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue  # gone, or not ours to read
        if marker in environ and state not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


@attrs.define
class HostRun:
    """What one host printed, parsed."""

    pid: int
    lines: list[str]
    returncode: int | None = None

    def fields(self, kind: str) -> list[list[str]]:
        return [line.split()[1:] for line in self.lines if line.split()[0] == kind]

    @property
    def acked(self) -> list[str]:
        return [f[0] for f in self.fields("ACK")]

    @property
    def pgids(self) -> list[int]:
        return [int(f[0]) for f in self.fields("PGID")]

    @property
    def thread(self) -> tuple[str, bool]:
        (thread_id, resumed), *_ = self.fields("THREAD")
        return thread_id, resumed == "True"


def host_argv(
    s: Setup, *, resubmit: list[str], mode: str, start: int, seed: int, final: bool = False, kill_on: str | None = None
) -> list[str]:
    resubmit_file = s.tmp / f"resubmit-{uuid.uuid4().hex[:8]}.json"
    resubmit_file.write_text(json.dumps(resubmit))
    argv = [
        sys.executable, str(CHILD), "host",
        "--db", str(s.db), "--runtime-id", RUNTIME, "--codex", str(s.shim),
        "--socket-dir", str(s.socket_dir), "--log-dir", str(s.log_dir),
        "--fake-state", str(s.fake_state), "--script", str(s.script), "--journal", str(s.journal),
        "--resubmit", str(resubmit_file), "--mode", mode, "--start", str(start), "--seed", str(seed),
    ]  # fmt: skip
    if final:
        argv.append("--final")
    if kill_on is not None:
        argv += ["--kill-on", kill_on]
    return argv


async def run_host(s: Setup, argv: list[str], *, kill_after_acks: int | None) -> HostRun:
    """Run a host until it printed ``kill_after_acks`` ACKs and SIGKILL it; or (None) until it exits by itself.

    Every line it printed before dying is read, including those still in the pipe after the kill.
    """
    stderr_path = s.tmp / f"host-{uuid.uuid4().hex[:8]}.stderr"
    # A file, not a pipe: a chatty child can never block on it.
    stderr = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=stderr)
    finally:
        os.close(stderr)
    run = HostRun(proc.pid, [])
    assert proc.stdout is not None
    buffer = b""
    killed = False
    try:
        with trio.fail_after(HOST_GUARD):
            while True:
                chunk = await proc.stdout.receive_some(65536)
                if not chunk:
                    break  # EOF: the host is gone (killed by us, by its app-server, or it finished)
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                run.lines.extend(line.decode() for line in complete)
                if not killed and kill_after_acks is not None and len(run.acked) >= kill_after_acks:
                    proc.send_signal(signal.SIGKILL)
                    killed = True  # keep reading: what it printed before dying is still in the pipe
            run.returncode = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            await proc.stdout.aclose()
    if kill_after_acks is not None and run.returncode != -signal.SIGKILL:
        raise AssertionError(f"host ended by itself ({run.returncode}): {stderr_path.read_text()[-3000:]}")
    return run


async def reap_leftover_app_servers(s: Setup, run: HostRun) -> list[int]:
    """Kill what the dead host left running; return the pgids that were still alive (none, when its watcher process
    stopped them first)."""
    leftover = [pgid for pgid in run.pgids if live_pids_in_group(pgid)]
    for pgid in leftover:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in our_processes(s):  # an app-server spawned too late to be printed, if any
        os.kill(pid, signal.SIGKILL)
    with trio.fail_after(REAP_GUARD):
        while any(live_pids_in_group(pgid) for pgid in run.pgids) or our_processes(s):
            await trio.sleep(0.02)
    return leftover


def check_integrity(db: Path) -> None:
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        raw.close()


async def stored(db: Path) -> tuple[set[str], set[str]]:
    """Source ids still pending in the store, and those with a recorded settlement."""
    async with SqliteStateStore(db) as store:
        snapshot = await store.load(RUNTIME)
        settlements = await store.recent_settlements(RUNTIME, limit=1_000_000)
    return {p.source_id for p in snapshot.pending}, {x.source_id for x in settlements}


async def steered_and_reported(db: Path) -> set[str]:
    """Source ids settled interrupted because a killed host was steering them into a running turn: the next host
    cannot prove codex lacks them, so it reports them instead of sending them again."""
    async with SqliteStateStore(db) as store:
        settlements = await store.recent_settlements(RUNTIME, limit=1_000_000)
    return {x.source_id for x in settlements if x.outcome == "interrupted" and "steering" in (x.detail or "")}


def index(source_id: str) -> int:
    return int(source_id.removeprefix("m"))


def random_script(rng: random.Random, *, hang_first: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    turns = [
        {"text": f"reply {n}", "deltas": 2, "delay": round(rng.uniform(0.05, 0.3), 3), "hang": rng.random() < 0.1}
        for n in range(30)
    ]
    if hang_first:
        turns[0]["hang"] = True
    return {"text": "reply", "delay": 0.1}, turns


async def test_acknowledged_input_reaches_codex_exactly_once_across_host_kills(setup: Setup) -> None:
    s = setup
    rng = random.Random(20240612)
    acked: dict[str, int] = {}  # source id -> the round that acknowledged it
    maybe: set[str] = set()  # the id a host was submitting when killed: committed or not, never acknowledged
    settled: dict[str, tuple[int, str]] = {}
    runs: list[HostRun] = []
    leftovers: list[int] = []
    at_risk: list[str] = []  # ids codex had but the store still listed as pending when their host died
    next_index = 0
    with trio.fail_after(GUARD):
        for round_ in range(ROUNDS):
            # Round 0: queue mode behind a hanging turn, so inputs certainly wait in the store when it dies.
            mode = "queue" if round_ == 0 else rng.choice(["queue", "steer"])
            s.write_script(*random_script(rng, hang_first=round_ == 0))
            kill_after = rng.randint(3 if round_ == 0 else 1, 15)
            seed = rng.randrange(2**32)
            argv = host_argv(s, resubmit=sorted(acked, key=index), mode=mode, start=next_index, seed=seed)
            run = await run_host(s, argv, kill_after_acks=kill_after)
            runs.append(run)
            leftovers += await reap_leftover_app_servers(s, run)

            assert run.fields("DUP") == [[i, "duplicate"] for i in sorted(acked, key=index)], round_
            assert not run.fields("REFUSED")
            assert [index(i) for i in run.acked] == list(range(next_index, next_index + len(run.acked)))
            for source_id, outcome in run.fields("SETTLED"):
                settled.setdefault(source_id, (round_, outcome))
            acked.update(dict.fromkeys(run.acked, round_))
            maybe.add(f"m{next_index + len(run.acked)}")
            next_index += len(run.acked) + 1  # past the maybe-committed one: never reuse an id

            # Nothing acknowledged is lost: codex has it, or the store still holds it for the next host.
            check_integrity(s.db)
            pending, settled_in_store = await stored(s.db)
            delivered = {e["id"] for e in s.journal_entries()}
            reported = await steered_and_reported(s.db)  # see the end of the test
            missing = set(acked) - pending - delivered - reported
            if missing:
                async with SqliteStateStore(s.db) as store:
                    detail = [x for x in await store.recent_settlements(RUNTIME, 1_000_000) if x.source_id in missing]
                raise AssertionError(f"round {round_}: lost {missing}: {detail}; host said {run.lines[-12:]}")
            assert not pending & settled_in_store
            at_risk += sorted(pending & delivered)  # codex has it, the store does not know: sent again next

        s.write_script({"text": "final", "delay": 0.01})
        argv = host_argv(s, resubmit=sorted(acked, key=index), mode="queue", start=next_index, seed=0, final=True)
        final = await run_host(s, argv, kill_after_acks=None)
        runs.append(final)
    assert final.returncode == 0 and final.lines[-2:] == ["DRAINED", "CLOSED"], final.lines[-5:]
    assert final.fields("DUP") == [[i, "duplicate"] for i in sorted(acked, key=index)]

    # One thread across every host; each later host resumed it.
    threads = [run.thread for run in runs]
    assert len({thread_id for thread_id, _ in threads}) == 1, threads
    assert [resumed for _, resumed in threads] == [False] + [True] * ROUNDS

    journal = s.journal_entries()
    host_of = {run.pid: n for n, run in enumerate(runs)}
    assert {e["host"] for e in journal} <= set(host_of), "a delivery came from no host of ours"
    deliveries = Counter(e["id"] for e in journal)
    first_by: dict[str, int] = {}
    for e in journal:
        first_by.setdefault(e["id"], host_of[e["host"]])
    # The killed hosts' last deliveries: codex had them while the store listed them as pending (in doubt), so
    # the next host must settle them interrupted instead of sending them again.
    last_of_killed = {
        [e for e in journal if e["host"] == run.pid][-1]["id"]
        for run in runs[:-1]
        if any(e["host"] == run.pid for e in journal)
    }
    # Delivered twice = twice in codex's record. A journal entry beyond it is an input a fake was killed between
    # journalling and recording (it never reached codex's history), sent again by the next host as it must be.
    recorded = s.recorded_ids()
    twice = {i for i, n in recorded.items() if n > 1}
    assert not twice, f"delivered twice (by hosts): {twice}; at risk: {at_risk}; last of killed: {last_of_killed}"
    unrecorded = {i for i, n in deliveries.items() if n > recorded[i]}
    assert unrecorded <= last_of_killed, f"journalled but not in codex's record, and no kill explains it: {unrecorded}"

    # Acknowledged and never delivered: only an input a killed host was steering into a running turn, which the
    # next host cannot prove codex lacks (codex may have it in the turn's history without the item that names
    # it), so it is settled interrupted and said so, never sent again. Anything else undelivered is lost.
    reported = await steered_and_reported(s.db)
    lost = [i for i in acked if recorded[i] == 0 and i not in reported]
    assert not lost, f"acknowledged but never delivered, and not reported: {lost}"
    assert set(deliveries) <= set(acked) | maybe, "codex received an id nobody acknowledged or submitted"
    firsts = list(dict.fromkeys(e["id"] for e in journal))
    assert firsts == sorted(firsts, key=index), "inputs reached codex out of acceptance order"
    for source_id, (round_, outcome) in settled.items():
        by = [host_of[e["host"]] for e in journal if e["id"] == source_id]
        if not by and source_id in reported:
            assert outcome == "interrupted", (source_id, outcome)
            continue
        # Settled by the host that delivered it, or (reconciled from codex's record of a dead host's in-doubt
        # input) by a later one; never before it was delivered.
        assert by and min(by) <= round_, f"{source_id} settled by host {round_}, delivered by {by}; at risk: {at_risk}"
        # A reconciled input whose turn died with its app-server settles interrupted; the others completed.
        assert outcome == "completed" or (outcome == "interrupted" and round_ not in by), (source_id, outcome, by)
    # Delivered before the host's store had committed it (before submit() returned): see the report.
    early = sorted({e["id"] for e in journal if e["durable"] is False}, key=index)
    assert not early, f"delivered before the acceptance was durable: {early}"
    carried = [i for i in acked if i in first_by and first_by[i] != acked[i]]
    assert carried, "no host died with input still waiting: the test proved nothing about redelivery"

    check_integrity(s.db)
    pending, _ = await stored(s.db)
    assert not pending
    assert not our_processes(s)
    print(
        f"host kills: {ROUNDS}, acknowledged: {len(acked)}, delivered by a later host: {len(carried)}, "
        f"settled before the kill: {len(settled)}, duplicates refused: {sum(len(r.fields('DUP')) for r in runs)}, "
        f"app-servers left running by a killed host: {len(leftovers)}, delivered twice: {sorted(twice)}, "
        f"delivered before durable: {early}"
    )


def test_no_app_server_outlives_a_killed_host(setup: Setup) -> None:
    # A SIGKILLed host cannot reap its child itself: the app-server leads its own session. The host's watcher
    # process stops it when the host's pipe closes (and PDEATHSIG would, were the watcher dead too): about 2 s on
    # an idle machine, which this test does not assert (a loaded machine may take longer; the wait is a guard). The
    # child recorded in the store is the last resort, reaped by the next open_runtime.
    s = setup

    async def scenario() -> None:
        s.write_script({"text": "busy", "hang": True})  # an orphaned codex would go on running this turn
        with trio.fail_after(GUARD):
            run = await run_host(s, host_argv(s, resubmit=[], mode="steer", start=0, seed=1), kill_after_acks=1)
            assert len(run.pgids) == 1
            pgid = run.pgids[0]
            with trio.move_on_after(REAP_GUARD):
                while live_pids_in_group(pgid):
                    await trio.sleep(0.05)
            if live_pids_in_group(pgid):
                await reap_leftover_app_servers(s, run)
                raise AssertionError(f"the app-server (group {pgid}) outlived its host by more than {REAP_GUARD} s")
            s.write_script({"text": "ok", "delay": 0.01})
            argv = host_argv(s, resubmit=run.acked, mode="steer", start=100, seed=2, final=True)
            second = await run_host(s, argv, kill_after_acks=None)
            assert second.returncode == 0, second.lines

    trio.run(scenario)


def test_input_codex_received_before_the_host_died_is_not_sent_again(setup: Setup) -> None:
    s = setup

    async def scenario() -> None:
        s.write_script({"text": "ok", "delay": 0.02})
        with trio.fail_after(GUARD):
            # The app-server journals m2, SIGKILLs its host, and never answers that turn/start.
            argv = host_argv(s, resubmit=[], mode="queue", start=0, seed=2, kill_on="m2")
            first = await run_host(s, argv, kill_after_acks=None)
            assert first.returncode == -signal.SIGKILL, first.lines
            assert "m2" in first.acked
            await reap_leftover_app_servers(s, first)
            assert Counter(e["id"] for e in s.journal_entries())["m2"] == 1
            pending, _ = await stored(s.db)
            assert "m2" in pending  # codex has it; the store marked it in doubt before sending it

            s.write_script({"text": "ok", "delay": 0.01})
            argv = host_argv(s, resubmit=first.acked, mode="queue", start=100, seed=3, final=True)
            second = await run_host(s, argv, kill_after_acks=None)
        assert second.returncode == 0 and second.lines[-2:] == ["DRAINED", "CLOSED"], second.lines
        assert second.fields("DUP") == [[i, "duplicate"] for i in first.acked]
        deliveries = Counter(e["id"] for e in s.journal_entries())
        assert all(deliveries[i] >= 1 for i in first.acked), deliveries  # nothing acknowledged is lost

    trio.run(scenario)
    deliveries = Counter(e["id"] for e in s.journal_entries())
    assert deliveries["m2"] == 1, f"m2 reached codex {deliveries['m2']} times: {s.journal_entries()}"
