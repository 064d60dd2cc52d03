"""Idle: what N ready, idle runtimes cost the host when nothing happens — ideally nothing at all.

N runtimes in one Trio process, each supervising a fake app-server child (the production ProcessLauncher, as in
``scale``). Once all are ready, the host is watched for ``seconds``: its CPU time (``getrusage``, this process
only: the children and the watcher process are not the library's host) and the number of Trio task steps (an
instrument counts every time any task runs). Side by side, in the same run: a bare Trio loop with N tasks parked
in ``sleep_forever``, the floor of "nothing happens". No periodic wake-up means zero task steps: every wait in
an idle runtime (the engine's inbox, the watchers, the connection reader, the supervisor) is a blocking wait
with no timer, and an idle runtime has no open turn, so its deadline scope is not armed.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from codex_trio._config import RuntimeConfig
from codex_trio._runtime import open_runtime

from ._common import result


class _StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _watch(seconds: float) -> dict[str, Any]:
    counter = _StepCounter()
    cpu, wall = _cpu(), time.perf_counter()
    trio.lowlevel.add_instrument(counter)
    try:
        await trio.to_thread.run_sync(time.sleep, seconds)  # our own task sleeps in a thread: not a step
    finally:
        trio.lowlevel.remove_instrument(counter)
    # Includes the few steps of the thread's completion waking this task: the bare loop has them too.
    return {
        "task_steps": counter.steps,
        "cpu_ms": round((_cpu() - cpu) * 1000, 1),
        "wall_s": round(time.perf_counter() - wall, 2),
    }


async def _bare(n: int, seconds: float) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(trio.sleep_forever)
        await trio.sleep(0.1)
        figures = await _watch(seconds)
        nursery.cancel_scope.cancel()
    return figures


async def _runtimes(n: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ctb-idle-", dir="/tmp") as d:
        tmp = Path(d)
        shim = tmp / "codex"
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n')
        shim.chmod(0o755)
        ready = 0
        all_ready = trio.Event()
        stop = trio.Event()

        async def one(i: int) -> None:
            nonlocal ready
            (tmp / "work").mkdir(parents=True, exist_ok=True)
            config = RuntimeConfig(
                runtime_id=f"idle-{i}",
                codex_bin=str(shim),
                cwd=tmp / "work",
                socket_dir=tmp / "s",
                log_dir=tmp / "logs",
                state_dir=tmp / "state",
                ready_timeout=300.0,
                handshake_timeout=120.0,
                request_timeout=120.0,
            )
            async with open_runtime(config):
                ready += 1
                if ready == n:
                    all_ready.set()
                await stop.wait()

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
            await all_ready.wait()
            ready_s = time.perf_counter() - started
            await trio.sleep(1.0)  # let the last starts' stragglers (thread/name/set answers, ...) pass
            figures = await _watch(seconds)
            stop.set()
    return {"all_ready_s": round(ready_s, 1), **figures}


def run(*, quick: bool = False, runtimes: int | None = None, **_options: Any) -> dict[str, Any]:
    n = runtimes or (3 if quick else 100)
    seconds = 2.0 if quick else 30.0
    bare = trio.run(_bare, n, seconds)
    ours = trio.run(_runtimes, n, seconds)
    figures = {"runtimes": ours, "bare_sleeping_tasks": bare}
    ratios = {
        "task_steps_runtimes_minus_bare": ours["task_steps"] - bare["task_steps"],
        "cpu_ms_runtimes_minus_bare": round(ours["cpu_ms"] - bare["cpu_ms"], 1),
        "targets": {"task_steps": "0 (no periodic wake-up)"},
    }
    return result(
        "idle", {"runtimes": n, "seconds": seconds, "launcher": "ProcessLauncher + fake child"}, figures, ratios
    )
