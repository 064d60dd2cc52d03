"""A small Trio program that stops on signals with codex_trio's helper, run by ``test_signals.py``.

``argv[1]`` is ``quick`` (the clean-up in ``finally`` takes a moment) or ``stuck`` (it waits, shielded, for a
minute: only a second signal gets it out). It prints ``ready`` once the signals are watched, ``cleanup
started`` and ``cleanup done`` from the ``finally`` block, ``stopped by <SIGNAL>`` after the block, and exits
with the conventional status; ``KeyboardInterrupt`` (a second SIGINT) exits with 130.
"""

from __future__ import annotations

import sys

import trio

from codex_trio._signals import stop_on_signals


async def main(mode: str) -> int:
    async with stop_on_signals() as stop:
        try:
            print("ready", flush=True)
            await trio.sleep_forever()
        finally:
            print("cleanup started", flush=True)
            with trio.CancelScope(shield=True):  # like a runtime reaping its child
                await trio.sleep(60 if mode == "stuck" else 0.01)
            print("cleanup done", flush=True)
    assert stop.received is not None and stop.exit_status is not None
    print(f"stopped by {stop.received.name}", flush=True)
    return stop.exit_status


if __name__ == "__main__":
    try:
        sys.exit(trio.run(main, sys.argv[1]))
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(130)
