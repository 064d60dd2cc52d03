"""Child for test_state_crash.py: accept submissions forever, acknowledging each on stdout.

Usage: state_crash_child.py DB RUNTIME_ID SEED

After each awaited ``accept`` returns it prints ``<seq>`` and flushes, so every line the parent has read is a
submission the store promised to keep. It also settles or delivers earlier ones now and then, so the kill can
land in any kind of write. Runs until killed.
"""

from __future__ import annotations

import random
import sys
import time

import trio

from codex_trio._state import SqliteStateStore, StoredSettlement, StoredSubmission

DEDUP_WINDOW = 64
SETTLEMENTS_KEPT = 1_000_000  # the parent checks every settled seq, so keep them all


async def main(path: str, runtime_id: str, seed: int) -> None:
    rng = random.Random(seed)
    store = SqliteStateStore(path)
    snapshot = await store.load(runtime_id)
    seq = snapshot.next_seq
    while True:
        text = "x" * rng.randrange(0, 4000)
        await store.accept(
            runtime_id,
            StoredSubmission(seq, f"src-{seq}", "channel", text, time.time()),
            dedup_window=DEDUP_WINDOW,
        )
        print(seq, flush=True)
        # Settled seqs must stay findable; delivered ones vanish, so only settle acknowledged ones.
        if rng.random() < 0.5:
            await store.settle(
                runtime_id,
                StoredSettlement(seq, f"src-{seq}", "completed", f"turn-{seq}", None, time.time()),
                keep=SETTLEMENTS_KEPT,
            )
        await store.set_status(runtime_id, "ready", last_ready_at=time.time())
        seq += 1


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
