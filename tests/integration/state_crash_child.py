"""Child for test_state_crash.py: accept submissions forever, in batches, acknowledging each on stdout.

Usage: state_crash_child.py DB RUNTIME_ID SEED

It first takes the runtime's lease: the previous child was SIGKILLed holding it, and its lock died with it,
so this must succeed at once. After each awaited ``accept`` of a batch (1 to MAX_BATCH submissions, one
transaction) returns it prints the batch's seqs, one ``<seq>`` a line, and flushes, so every line the parent
has read is a submission the store promised to keep. It also settles earlier ones now and then, so the kill
can land in any kind of write. Runs until killed.
"""

from __future__ import annotations

import random
import sys
import time

import trio

from codex_trio._state import SqliteStateStore, StoredSettlement, StoredSubmission

DEDUP_WINDOW = 64
MAX_BATCH = 5
SETTLEMENTS_KEPT = 1_000_000  # the parent checks every settled seq, so keep them all


async def main(path: str, runtime_id: str, seed: int) -> None:
    rng = random.Random(seed)
    store = SqliteStateStore(path)
    await store.acquire(runtime_id)
    snapshot = await store.load(runtime_id)
    seq = snapshot.next_seq
    while True:
        batch = [
            StoredSubmission(s, f"src-{s}", "channel", "x" * rng.randrange(0, 4000), time.time())
            for s in range(seq, seq + rng.randint(1, MAX_BATCH))
        ]
        await store.accept(runtime_id, batch, dedup_window=DEDUP_WINDOW)
        print("\n".join(str(s.seq) for s in batch), flush=True)
        # Settled seqs must stay findable; delivered ones vanish, so only settle acknowledged ones.
        for s in batch:
            if rng.random() < 0.5:
                await store.settle(
                    runtime_id,
                    StoredSettlement(s.seq, s.source_id, "completed", f"turn-{s.seq}", None, time.time()),
                    keep=SETTLEMENTS_KEPT,
                )
        await store.set_status(runtime_id, "ready", last_ready_at=time.time())
        seq = batch[-1].seq + 1


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
