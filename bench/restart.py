"""Restart: SIGKILL of the app-server child until the runtime is ``ready`` again (zero backoff), against a bare
spawn-to-connectable + handshake + ``thread/resume`` of the same binary with the same argv and environment.

Both resume a thread that has a rollout. Kills and bare cycles alternate.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from codex_trio import _protocol as p
from codex_trio._launcher import ProcessLauncher
from codex_trio._runtime import Runtime, open_runtime
from codex_trio.testing._mock_model import MockModelServer, write_codex_home

from ._codex import bare_app_server, codex_bin, immediate_restart, real_config
from ._common import median, ratio, result


async def _kill_and_wait_ready(runtime: Runtime, launcher: ProcessLauncher) -> float:
    pgid = launcher.last_pgid
    assert pgid is not None
    generation = runtime.generation
    start = time.perf_counter()
    os.killpg(pgid, signal.SIGKILL)
    await runtime.wait_status("degraded", "starting")
    await runtime.wait_status("ready")
    elapsed = time.perf_counter() - start
    if runtime.generation != generation + 1 or not runtime.thread_resumed:
        raise RuntimeError(f"restart did not resume the thread (generation {runtime.generation})")
    return elapsed


async def _bare_cycle(config: Any, sock: Path, thread_id: str) -> tuple[float, float]:
    cwd = str(config.cwd)
    start = time.perf_counter()
    async with bare_app_server(config, sock) as (conn, connectable):
        await conn.request("thread/resume", p.unstructure(p.ThreadResumeParams(thread_id, None, None, cwd)))
        elapsed = time.perf_counter() - start
    return elapsed, connectable


async def restart_bench(cycles: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ctb-restart-", dir="/tmp") as d:
        tmp = Path(d)
        with MockModelServer() as model:
            home = write_codex_home(tmp / "home-ours", model.url)
            config = real_config(tmp / "ours", home, "bench-restart", restart=immediate_restart())
            bare_config = real_config(tmp / "bare", write_codex_home(tmp / "home-bare", model.url), "bench-bare")
            sock = tmp / "bare" / "sockets" / "bare.sock"
            async with bare_app_server(bare_config, sock) as (conn, _):
                thread_id = (await conn.request("thread/start", {"cwd": str(bare_config.cwd)}))["thread"]["id"]
                # Persist the rollout so the thread can be resumed (what the runtime does for a fresh thread).
                await conn.request("thread/name/set", {"threadId": thread_id, "name": "bench"})
            launcher = ProcessLauncher(config)
            ours: list[float] = []
            bare: list[float] = []
            connectable: list[float] = []
            async with open_runtime(config, launcher=launcher) as runtime:
                for _ in range(cycles):
                    ours.append(await _kill_and_wait_ready(runtime, launcher))
                    total, to_connect = await _bare_cycle(bare_config, sock, thread_id)
                    bare.append(total)
                    connectable.append(to_connect)
    m_ours, m_bare = median(ours), median(bare)
    return {
        "cycles": cycles,
        "runtime_kill_to_ready_median_ms": round(m_ours * 1000, 1),
        "bare_spawn_handshake_resume_median_ms": round(m_bare * 1000, 1),
        "bare_spawn_to_connectable_median_ms": round(median(connectable) * 1000, 1),
        "runtime_ms_all": [round(t * 1000, 1) for t in ours],
        "bare_ms_all": [round(t * 1000, 1) for t in bare],
    }


def run(*, quick: bool = False, **_options: Any) -> dict[str, Any]:
    cycles = 1 if quick else 7
    if not codex_bin():
        return result("restart", {"cycles": 0}, {"skipped": "no codex binary (set CODEX_TRIO_CODEX_BIN)"}, {})
    figures = trio.run(restart_bench, cycles)
    ratios = {
        "runtime/bare": ratio(
            figures["runtime_kill_to_ready_median_ms"], figures["bare_spawn_handshake_resume_median_ms"]
        ),
        "targets": {"runtime/bare": "< 1.5"},
    }
    return result("restart", {"cycles": cycles, "restart_policy": "RestartPolicy.immediate()"}, figures, ratios)
