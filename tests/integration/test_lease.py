"""One owner per runtime across processes: SqliteStateStore leases against a real second process.

A child process (lease_child.py) holds or asks for leases on the same database on command. The tests check
that the lease excludes across processes and names its owner, that a SIGKILLed owner is replaced at once
(its lock dies with it: no timeout), that ``wait=`` waits for a release, that two processes racing for one
runtime get exactly one owner, and that an owner whose lease was taken over cannot write.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from codex_trio._errors import RuntimeBusy
from codex_trio._state import Owner, SqliteStateStore, StoredSubmission, _lock_name

CHILD = str(Path(__file__).with_name("lease_child.py"))
GUARD = 60  # seconds for a whole test; a hang fails it instead of the run
RACE_ROUNDS = 50


class Child:
    """A lease_child.py process and its line protocol."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._buffer = b""

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(command.encode() + b"\n")

    async def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.proc.stdout.receive_some(4096)
            if not chunk:
                raise AssertionError(f"lease child {self.pid} exited (status {self.proc.poll()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, command: str) -> dict[str, Any]:
        await self.send(command)
        return await self.answer()

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await self.proc.wait()


@asynccontextmanager
async def lease_child(db: Path) -> AsyncIterator[Child]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, CHILD, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    child = Child(proc)
    try:
        assert await child.answer() == {"ready": proc.pid}
        yield child
    finally:
        with trio.CancelScope(shield=True):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    await stream.aclose()


def owner_of(answer: dict[str, Any]) -> Owner:
    return Owner(**answer["acquired"])


async def test_a_lease_held_by_another_process_is_busy_and_names_it(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with lease_child(db) as child, SqliteStateStore(db) as store:
            held = owner_of(await child.ask("acquire rt 0"))
            assert (held.pid, held.host, held.token) == (child.pid, socket.gethostname(), 1)
            try:
                await store.acquire("rt")
            except RuntimeBusy as busy:
                assert (busy.runtime_id, busy.pid, busy.host, busy.since) == ("rt", child.pid, held.host, held.since)
                assert f"pid {child.pid} on {held.host}" in str(busy)
            else:
                raise AssertionError("acquired a lease another process holds")
            assert await store.owner("rt") == held
            # the child's other runtimes are not ours to wait for
            assert (await store.acquire("other")).token == 1


async def test_a_sigkilled_owner_is_replaced_at_once(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with lease_child(db) as child, SqliteStateStore(db) as store:
            held = owner_of(await child.ask("acquire rt 0"))
            assert (await child.ask("write rt 1")) == {"written": 1}
            await child.kill()
            # Its lease record still says "held" (it never released), but its lock died with it.
            assert await store.owner("rt") is None
            taken = await store.acquire("rt", wait=0)  # no waiting for any timeout
            assert (taken.pid, taken.token) == (os.getpid(), held.token + 1)
            assert [p.seq for p in (await store.load("rt")).pending] == [1]  # what it accepted is kept
            await store.accept("rt", [StoredSubmission(2, "parent-2", "channel", "y", 0.0)], dedup_window=8)


async def test_wait_takes_the_lease_when_the_other_process_releases(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    got: list[Owner] = []
    with trio.fail_after(GUARD):
        async with lease_child(db) as child, SqliteStateStore(db) as store:
            held = owner_of(await child.ask("acquire rt 0"))

            async def wait_for_it() -> None:
                got.append(await store.acquire("rt", wait=math.inf))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_it)
                await trio.sleep(0.3)
                assert got == []  # the child still holds it
                assert await child.ask("release rt") == {"released": True}
            assert [o.token for o in got] == [held.token + 1]

            # and the other way round: the child waits for us
            await child.send("acquire rt inf")
            await trio.sleep(0.3)
            await store.release("rt")
            assert owner_of(await child.answer()).token == held.token + 2


async def test_two_processes_racing_get_exactly_one_owner(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with trio.fail_after(GUARD * 2):
        async with lease_child(db) as one, lease_child(db) as two:
            for round_number in range(RACE_ROUNDS):
                for child in (one, two):  # as close together as two pipes allow
                    await child.send("acquire rt 0")
                answers = {one: await one.answer(), two: await two.answer()}
                winners = [child for child, answer in answers.items() if "acquired" in answer]
                assert len(winners) == 1, (round_number, answers)
                winner = winners[0]
                loser = two if winner is one else one
                won = owner_of(answers[winner])
                assert (won.pid, won.token) == (winner.pid, round_number + 1)  # one token per owner, ever
                # the loser names the winner (or nobody, if it looked before the winner wrote its record)
                assert answers[loser]["busy"]["pid"] in (winner.pid, None), answers[loser]
                assert await winner.ask("release rt") == {"released": True}


async def test_an_owner_whose_lease_was_taken_over_cannot_write(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with lease_child(db) as child, SqliteStateStore(db) as store:
            owner_of(await child.ask("acquire rt 0"))
            assert await child.ask("write rt 1") == {"written": 1}
            # The child's lock file is deleted by hand, so a second owner gets in...
            (tmp_path / "state.db.locks" / _lock_name("rt")).unlink()
            successor = await store.acquire("rt")
            assert successor.token == 2
            # ...and the fencing token stops the first from writing.
            answer = await child.ask("write rt 2")
            assert "taken over by another owner" in answer["lease_lost"], answer
            await store.accept("rt", [StoredSubmission(2, "parent-2", "channel", "y", 0.0)], dedup_window=8)
            snap = await store.load("rt")
            assert [p.source_id for p in snap.pending] == ["child-1", "parent-2"]
            assert await child.ask("release rt") == {"released": True}
            assert await store.owner("rt") == successor  # its release did not touch our lease
