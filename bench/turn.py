"""Turn overhead: the latency a runtime adds to a turn over a bare client, measured turn by turn, interleaved.

* ``fake``: both on an in-process FakeAppServer over memory streams (the runtime through FakeLauncher, the bare
  client a Connection + ``turn/start`` + waiting for the matching ``turn/completed``);
* ``real``: both on the real codex binary (``CODEX_TRIO_CODEX_BIN``) with the MockModelServer, each with its own
  app-server child spawned with the same argv and environment.

A turn is timed from the call (``submit`` / ``turn/start``) until the settlement / the ``turn/completed``.
Runtime and bare turns alternate, so a noisy neighbour hurts both alike.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from codex_trio._config import RuntimeConfig
from codex_trio._connection import Connection, Subscription
from codex_trio._handshake import initialize
from codex_trio._launcher import ProcessLauncher
from codex_trio._render import ChannelInput
from codex_trio._runtime import Runtime, open_runtime
from codex_trio._transport import memory_message_stream_pair
from codex_trio.testing import FakeAppServer, FakeLauncher
from codex_trio.testing._mock_model import MockModelServer, Text, write_codex_home

from ._codex import bare_app_server, codex_bin, real_config
from ._common import median, ratio, result


async def _runtime_turn(runtime: Runtime, i: int) -> float:
    start = time.perf_counter()
    admission = await runtime.submit(ChannelInput(f"bench-{i}", "Say something short."))
    settled = await admission.settled()
    elapsed = time.perf_counter() - start
    if settled.outcome != "completed":
        raise RuntimeError(f"runtime turn {i} ended {settled.outcome}: {settled.error}")
    return elapsed


async def _bare_turn(conn: Connection, completed: Subscription, thread_id: str) -> float:
    start = time.perf_counter()
    answer = await conn.request(
        "turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "Say something short."}]}
    )
    turn_id = answer["turn"]["id"]
    async for note in completed:
        if note.params.get("turn", {}).get("id") == turn_id:
            break
    return time.perf_counter() - start


async def _alternate(
    runtime: Runtime, conn: Connection, completed: Subscription, thread_id: str, turns: int, warmup: int
) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    bare: list[float] = []
    for i in range(warmup + turns):
        first, second = (ours, bare) if i % 2 == 0 else (bare, ours)
        for target in (first, second):
            if target is ours:
                t = await _runtime_turn(runtime, i)
            else:
                t = await _bare_turn(conn, completed, thread_id)
            if i >= warmup:
                target.append(t)
    return ours, bare


async def fake_overhead(turns: int, warmup: int) -> dict[str, Any]:
    bare_fake = FakeAppServer()
    client, server = memory_message_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bare_fake.serve_stream, server)
        conn = Connection(client)
        await nursery.start(conn.run)
        completed = conn.subscribe(["turn/completed"], lossless=True)
        await initialize(conn)
        thread_id = (await conn.request("thread/start", {}))["thread"]["id"]
        config = RuntimeConfig(runtime_id="bench-turn-fake")
        async with open_runtime(config, launcher=FakeLauncher(FakeAppServer())) as runtime:
            ours, bare = await _alternate(runtime, conn, completed, thread_id, turns, warmup)
        await conn.aclose()
        nursery.cancel_scope.cancel()
    return _summary(ours, bare)


async def real_overhead(turns: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ctb-turn-", dir="/tmp") as d:
        tmp = Path(d)
        with MockModelServer(default=Text("bench reply", deltas=2)) as model:
            home_ours = write_codex_home(tmp / "home-ours", model.url)
            home_bare = write_codex_home(tmp / "home-bare", model.url)
            config = real_config(tmp / "ours", home_ours, "bench-turn-real")
            bare_config = real_config(tmp / "bare", home_bare, "bench-turn-bare")
            async with bare_app_server(bare_config, tmp / "bare" / "sockets" / "bare.sock") as (conn, _):
                completed = conn.subscribe(["turn/completed"], lossless=True)
                cwd = str(bare_config.cwd)
                thread_id = (await conn.request("thread/start", {"cwd": cwd}))["thread"]["id"]
                async with open_runtime(config, launcher=ProcessLauncher(config)) as runtime:
                    ours, bare = await _alternate(runtime, conn, completed, thread_id, turns, warmup)
    return _summary(ours, bare)


def _summary(ours: list[float], bare: list[float]) -> dict[str, Any]:
    m_ours, m_bare = median(ours), median(bare)
    # Turn i of each ran back to back, so the median of the pairwise differences cancels most slow drifts
    # (a busy neighbour, a growing thread history) that a difference of medians keeps.
    paired = median([a - b for a, b in zip(ours, bare, strict=True)])
    return {
        "turns": len(ours),
        "runtime_median_ms": round(m_ours * 1000, 3),
        "bare_median_ms": round(m_bare * 1000, 3),
        "added_median_ms": round((m_ours - m_bare) * 1000, 3),
        "added_fraction": round((m_ours - m_bare) / m_bare, 4) if m_bare else None,
        "added_paired_median_ms": round(paired * 1000, 3),
        "added_paired_fraction": round(paired / m_bare, 4) if m_bare else None,
        "runtime_ms_all": [round(t * 1000, 3) for t in ours],
        "bare_ms_all": [round(t * 1000, 3) for t in bare],
    }


def run(*, quick: bool = False, **_options: Any) -> dict[str, Any]:
    fake_turns, real_turns = (20, 3) if quick else (300, 60)
    fake = trio.run(fake_overhead, fake_turns, 2 if quick else 20)
    figures: dict[str, Any] = {"fake": fake}
    ratios: dict[str, Any] = {
        "fake_added_ms": fake["added_median_ms"],
        "fake_runtime/bare": ratio(fake["runtime_median_ms"], fake["bare_median_ms"]),
        "targets": {"fake_added_ms": "< 1", "real_added_fraction": "< 0.05"},
    }
    if codex_bin():
        real = trio.run(real_overhead, real_turns, 1 if quick else 2)
        figures["real"] = real
        ratios["real_added_fraction"] = real["added_fraction"]
        ratios["real_added_paired_fraction"] = real["added_paired_fraction"]
        ratios["real_runtime/bare"] = ratio(real["runtime_median_ms"], real["bare_median_ms"])
    else:
        figures["real"] = "skipped: no codex binary (set CODEX_TRIO_CODEX_BIN or run ./dev bench)"
    return result(
        "turn_overhead",
        {"fake_turns": fake_turns, "real_turns": real_turns if codex_bin() else 0, "statistic": "median"},
        figures,
        ratios,
    )
