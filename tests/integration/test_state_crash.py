"""SqliteStateStore keeps every acknowledged ``accept`` across a SIGKILL of the process that wrote it.

A child (state_crash_child.py) takes the runtime's lease, accepts batches of submissions in a loop and prints
each seq once ``accept`` returned. The parent kills it with SIGKILL after a random number of acknowledgements
(seeded), then opens the database and checks that every acknowledged seq is still there (pending, or
settled), that the file is intact and that the dead child is no longer the runtime's owner. Several rounds
run against the same file, each child taking the lease its killed predecessor held and continuing where it
died.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import trio

from codex_trio._state import SqliteStateStore

CHILD = str(Path(__file__).with_name("state_crash_child.py"))
MAX_BATCH = 5  # state_crash_child.MAX_BATCH
ROUNDS = 8
GUARD = 30  # seconds for the whole test; a hang fails it instead of the run
RUNTIME = "crash-rt"


async def _run_until_killed(db: Path, seed: int, kill_after: int) -> list[int]:
    """Start the child, read ``kill_after`` acknowledgements, SIGKILL it mid-stride; return the acked seqs."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, CHILD, str(db), RUNTIME, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        buffer = b""
        while len(acked) < kill_after:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                assert proc.stderr is not None
                err = await proc.stderr.receive_some(65536)
                raise AssertionError(f"child exited early: {err.decode(errors='replace')}")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            acked.extend(int(line) for line in lines)
    finally:
        proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    await stream.aclose()
    assert proc.returncode == -signal.SIGKILL
    return acked


async def test_acknowledged_accepts_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    rng = random.Random(20240611)
    all_acked: list[int] = []
    with trio.fail_after(GUARD):
        for round_number in range(ROUNDS):
            acked = await _run_until_killed(db, seed=rng.randrange(2**32), kill_after=rng.randint(1, 60))
            # each child continues from the durable next_seq, so acks never repeat
            assert acked == list(range(len(all_acked) + 1, len(all_acked) + len(acked) + 1)), round_number
            all_acked.extend(acked)

            raw = sqlite3.connect(db)
            try:
                assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            finally:
                raw.close()

            async with SqliteStateStore(db) as store:
                assert await store.owner(RUNTIME) is None  # its lock died with it
                snap = await store.load(RUNTIME)
                settled = {s.seq for s in await store.recent_settlements(RUNTIME, limit=1_000_000)}
            pending = {p.seq for p in snap.pending}
            missing = [seq for seq in all_acked if seq not in pending and seq not in settled]
            assert not missing, f"round {round_number}: acknowledged but lost: {missing}"
            assert not pending & settled  # settling removed it from pending in the same transaction
            # a batch that committed but was not acknowledged yet may be there too, nothing beyond it
            assert all_acked[-1] < snap.next_seq <= all_acked[-1] + 1 + MAX_BATCH
            assert max(pending | settled) == snap.next_seq - 1
            assert snap.dedup_ids[-1] in (f"src-{all_acked[-1]}", f"src-{snap.next_seq - 1}")
            assert len(snap.dedup_ids) <= 64
            all_acked = list(range(1, snap.next_seq))  # the next child starts after the unacked one too
