"""Scale: N runtimes in one Trio process, each supervising a fake app-server child process.

The children are ``python -m codex_trio.testing.fake_app_server`` behind a shim ``codex`` script, spawned by the
production ProcessLauncher. Memory is the *Python side* of this process, by tracemalloc (allocations made while
the runtimes start and stay up, divided by N) — the children's RSS is theirs, not the library's. Time is from
the first ``open_runtime`` call until the last runtime is ready (tracemalloc is on during it, which slows the
parent's allocations).
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio

from codex_trio._config import RuntimeConfig
from codex_trio._runtime import open_runtime

from ._common import median, result

TARGET_BYTES = 2 * 2**20


def _shim(directory: Path) -> str:
    path = directory / "codex"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n')
    path.chmod(0o755)
    return str(path)


async def scale_bench(runtimes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ctb-scale-", dir="/tmp") as d:
        tmp = Path(d)
        shim = _shim(tmp)
        (tmp / "work").mkdir(parents=True, exist_ok=True)
        configs = [
            RuntimeConfig(
                runtime_id=f"scale-{i}",
                codex_bin=shim,
                cwd=tmp / "work",
                socket_dir=tmp / "s",
                log_dir=tmp / "logs",
                state_dir=tmp / "state",
                spill_dir=tmp / "spill",
                # 100 Python children importing trio at once on a small machine take a while to bind.
                ready_timeout=300.0,
                handshake_timeout=120.0,
                request_timeout=120.0,
                grace_period=2.0,
            )
            for i in range(runtimes)
        ]
        ready_at: list[float] = []
        all_ready = trio.Event()
        stop = trio.Event()

        async def one(config: RuntimeConfig, start: float) -> None:
            async with open_runtime(config) as runtime:
                assert runtime.status == "ready"
                ready_at.append(time.perf_counter() - start)
                if len(ready_at) == runtimes:
                    all_ready.set()
                await stop.wait()

        gc.collect()
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for config in configs:
                nursery.start_soon(one, config, start)
            await all_ready.wait()
            all_ready_s = time.perf_counter() - start
            gc.collect()
            current, peak = tracemalloc.get_traced_memory()
            top = tracemalloc.take_snapshot().statistics("filename")[:8]
            tracemalloc.stop()
            stop.set()
        leftover = [p for p in os.listdir(tmp / "s")] if (tmp / "s").exists() else []
    per_runtime = (current - baseline) / runtimes
    return {
        "runtimes": runtimes,
        "all_ready_s": round(all_ready_s, 2),
        "first_ready_s": round(min(ready_at), 2),
        "median_ready_s": round(median(ready_at), 2),
        "python_bytes_per_runtime": round(per_runtime),
        "python_mib_per_runtime": round(per_runtime / 2**20, 3),
        "python_peak_mib_total": round((peak - baseline) / 2**20, 1),
        "top_allocating_files": [
            {"file": str(s.traceback[0].filename).replace(str(Path(sys.prefix)), "<venv>"), "kib": round(s.size / 1024)}
            for s in top
        ],
        "sockets_left_behind": leftover,
    }


def run(*, quick: bool = False, runtimes: int | None = None, **_options: Any) -> dict[str, Any]:
    n = runtimes or (3 if quick else 100)
    figures = trio.run(scale_bench, n)
    ratios = {
        "python_bytes_per_runtime/target": round(figures["python_bytes_per_runtime"] / TARGET_BYTES, 3),
        "targets": {"python_mib_per_runtime": "< 2"},
    }
    return result("scale", {"runtimes": n, "launcher": "ProcessLauncher + fake_app_server child"}, figures, ratios)
