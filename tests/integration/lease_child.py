"""Child for test_lease.py: a lease holder in a process of its own, driven line by line over stdin.

Usage: lease_child.py DB

Prints ``{"ready": PID}`` once it can take commands, then answers each command line with one JSON line:

    acquire RUNTIME WAIT   {"acquired": OWNER} or {"busy": {"pid": ..., "host": ..., "since": ...}}
    release RUNTIME        {"released": true}
    write RUNTIME SEQ      {"written": SEQ} or {"lease_lost": MESSAGE}

It exits at the end of its input (closing the store releases what it holds), or dies when killed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import attrs
import trio

from codex_trio._errors import LeaseLost, RuntimeBusy
from codex_trio._state import SqliteStateStore, StoredSubmission


def say(message: object) -> None:
    print(json.dumps(message), flush=True)


async def main(path: str) -> None:
    async with SqliteStateStore(path) as store:
        say({"ready": os.getpid()})
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            command, runtime_id, *rest = line.split()
            if command == "acquire":
                wait = math.inf if rest[0] == "inf" else float(rest[0])
                try:
                    owner = await store.acquire(runtime_id, wait=wait)
                except RuntimeBusy as busy:
                    say({"busy": {"pid": busy.pid, "host": busy.host, "since": busy.since}})
                else:
                    say({"acquired": attrs.asdict(owner)})
            elif command == "release":
                await store.release(runtime_id)
                say({"released": True})
            elif command == "write":
                seq = int(rest[0])
                try:
                    await store.accept(
                        runtime_id, [StoredSubmission(seq, f"child-{seq}", "channel", "x", time.time())], dedup_window=8
                    )
                except LeaseLost as lost:
                    say({"lease_lost": str(lost)})
                else:
                    say({"written": seq})
            else:
                raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
