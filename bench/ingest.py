"""Ingest: agent-message deltas per second from an emitter in another process, ours against bare readers.

Variants, each on a fresh emitter child (``bench/emitter.py``), run round-robin so machine noise hits all alike:

* ``ws_bare_default``  — trio-websocket with its defaults + ``json.loads`` (the issue's "bare reader");
* ``ws_bare``          — trio-websocket with the same queue/read sizes codex_trio uses + ``json.loads``;
* ``ws_connection``    — codex_trio ``connect_unix_websocket`` + ``Connection`` + a lossless subscription;
* ``ws_runtime``       — a whole runtime (handshake, thread, turn worker) and ``runtime.events()``;
* ``stdio_bare``       — ``receive_some`` + split lines + ``json.loads``;
* ``stdio_connection`` — codex_trio ``NdjsonMessageStream`` + ``Connection``;
* ``stdio_runtime``    — a runtime whose launcher speaks NDJSON to the emitter's stdin/stdout.

Rate = deltas / (time from sending ``turn/start`` to receiving ``turn/completed``).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from codex_trio._config import RuntimeConfig
from codex_trio._connection import Connection
from codex_trio._events import AgentMessageDelta, Lagged, TurnCompleted
from codex_trio._handshake import initialize
from codex_trio._render import ChannelInput
from codex_trio._runtime import open_runtime
from codex_trio._transport import NdjsonMessageStream, connect_unix_websocket

from ._common import (
    StdioLauncher,
    UnixEmitterLauncher,
    emitter_stdio_argv,
    emitter_unix,
    median,
    open_stdio_child,
    ratio,
    result,
    short_tmpdir,
)
from .emitter import THREAD_ID

DEFAULT_DELTAS = 200_000
_OTHER_FRAMES = 5  # the turn/start answer, turn/started, item/started, item/completed, turn/completed
_TURN_START = {"threadId": THREAD_ID, "input": [{"type": "text", "text": "go", "text_elements": []}]}
_INIT = {"clientInfo": {"name": "bench", "version": "0"}, "capabilities": {"experimentalApi": True}}

Variant = Callable[[Path, int], Awaitable[float]]


# --- WebSocket ---------------------------------------------------------------------------------------------------


async def _ws_bare(path: Path, deltas: int, *, tuned: bool) -> float:
    options: dict[str, Any] = (
        {"message_queue_size": 256, "receive_buffer_size": 64 * 1024, "max_message_size": 64 * 2**20} if tuned else {}
    )
    async with trio.open_nursery() as nursery:
        stream = await trio.open_unix_socket(str(path))
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "localhost", "/", **options)
        await ws.send_message(json.dumps({"id": 1, "method": "initialize", "params": _INIT}))
        json.loads(await ws.get_message())
        expected = deltas + _OTHER_FRAMES
        loads = json.loads
        receive = ws.get_message
        start = time.perf_counter()
        await ws.send_message(json.dumps({"id": 2, "method": "turn/start", "params": _TURN_START}))
        for _ in range(expected):
            loads(await receive())
        elapsed = time.perf_counter() - start
        await ws.aclose()
        nursery.cancel_scope.cancel()
    return elapsed


async def ws_bare_default(path: Path, deltas: int) -> float:
    return await _ws_bare(path, deltas, tuned=False)


async def ws_bare(path: Path, deltas: int) -> float:
    return await _ws_bare(path, deltas, tuned=True)


async def _through_connection(conn: Connection, deltas: int) -> float:
    with conn.subscribe(buffer=1024, lossless=True) as sub:
        await initialize(conn)
        seen = 0
        start = time.perf_counter()
        await conn.request("turn/start", _TURN_START)
        async for note in sub:
            method = note.method
            if method == "item/agentMessage/delta":
                seen += 1
            elif method == "turn/completed":
                break
        elapsed = time.perf_counter() - start
    if seen != deltas:
        raise RuntimeError(f"connection saw {seen} deltas, expected {deltas}")
    return elapsed


async def ws_connection(path: Path, deltas: int) -> float:
    async with trio.open_nursery() as nursery:
        stream = await connect_unix_websocket(nursery, path)
        conn = Connection(stream)
        await nursery.start(conn.run)
        elapsed = await _through_connection(conn, deltas)
        await conn.aclose()
        nursery.cancel_scope.cancel()
    return elapsed


async def _through_runtime(launcher: Any, deltas: int) -> tuple[float, int]:
    config = RuntimeConfig(runtime_id="bench-ingest", event_buffer=8192)
    async with open_runtime(config, launcher=launcher) as runtime, runtime.events() as events:
        seen = dropped = 0
        start = time.perf_counter()
        await runtime.submit(ChannelInput("ingest-1", "go"))
        while True:
            event = await events.receive()
            if type(event) is AgentMessageDelta:
                seen += 1
            elif type(event) is Lagged:
                dropped += event.dropped
            elif type(event) is TurnCompleted:
                break
        elapsed = time.perf_counter() - start
    if seen + dropped != deltas:
        raise RuntimeError(f"runtime saw {seen} deltas and {dropped} dropped, expected {deltas}")
    return elapsed, dropped


_runtime_drops: dict[str, list[int]] = {}


async def ws_runtime(path: Path, deltas: int) -> float:
    elapsed, dropped = await _through_runtime(UnixEmitterLauncher(path), deltas)
    _runtime_drops.setdefault("ws_runtime", []).append(dropped)
    return elapsed


# --- stdio NDJSON ------------------------------------------------------------------------------------------------


async def stdio_bare(path: Path, deltas: int) -> float:
    async with open_stdio_child(emitter_stdio_argv(deltas)) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        out, inp = proc.stdin, proc.stdout
        await out.send_all(json.dumps({"id": 1, "method": "initialize", "params": _INIT}).encode() + b"\n")
        buffer = b""
        while b"\n" not in buffer:
            buffer += await inp.receive_some(65536)
        buffer = buffer.split(b"\n", 1)[1]
        expected = deltas + _OTHER_FRAMES
        loads = json.loads
        count = 0
        start = time.perf_counter()
        await out.send_all(json.dumps({"id": 2, "method": "turn/start", "params": _TURN_START}).encode() + b"\n")
        while count < expected:
            chunk = await inp.receive_some(65536)
            if not chunk:
                raise RuntimeError("emitter closed early")
            lines = (buffer + chunk).split(b"\n")
            buffer = lines.pop()
            for line in lines:
                loads(line)
            count += len(lines)
        return time.perf_counter() - start


async def stdio_connection(path: Path, deltas: int) -> float:
    async with open_stdio_child(emitter_stdio_argv(deltas)) as proc, trio.open_nursery() as nursery:
        assert proc.stdin is not None and proc.stdout is not None
        conn = Connection(NdjsonMessageStream(proc.stdin, proc.stdout))
        await nursery.start(conn.run)
        elapsed = await _through_connection(conn, deltas)
        await conn.aclose()
        nursery.cancel_scope.cancel()
    return elapsed


async def stdio_runtime(path: Path, deltas: int) -> float:
    elapsed, dropped = await _through_runtime(StdioLauncher(emitter_stdio_argv(deltas)), deltas)
    _runtime_drops.setdefault("stdio_runtime", []).append(dropped)
    return elapsed


VARIANTS: dict[str, Variant] = {
    "ws_bare_default": ws_bare_default,
    "ws_bare": ws_bare,
    "ws_connection": ws_connection,
    "ws_runtime": ws_runtime,
    "stdio_bare": stdio_bare,
    "stdio_connection": stdio_connection,
    "stdio_runtime": stdio_runtime,
}


def run_variant(name: str, deltas: int) -> float:
    """One measurement (seconds) of one variant, each on its own emitter and its own trio.run."""
    variant = VARIANTS[name]
    if name.startswith("ws_"):
        with short_tmpdir("ctb-") as tmp:
            path = tmp / "emitter.sock"
            with emitter_unix(path, deltas):
                return trio.run(variant, path, deltas)
    return trio.run(variant, Path("/nonexistent"), deltas)


def run(
    *, quick: bool = False, deltas: int | None = None, rounds: int | None = None, **_options: Any
) -> dict[str, Any]:
    deltas = deltas or (2_000 if quick else DEFAULT_DELTAS)
    rounds = rounds or (1 if quick else 3)
    _runtime_drops.clear()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name in VARIANTS:
            times[name].append(run_variant(name, deltas))
    rates = {name: [round(deltas / t) for t in ts] for name, ts in times.items()}
    med = {name: round(median(r)) for name, r in rates.items()}
    best = {name: max(r) for name, r in rates.items()}
    figures = {
        "deltas_per_second_median": med,
        "deltas_per_second_best": best,
        "deltas_per_second_all": rates,
        "runtime_deltas_dropped": _runtime_drops.copy(),
    }
    ratios = {
        "ws_connection/ws_bare": ratio(med["ws_connection"], med["ws_bare"]),
        "ws_runtime/ws_bare": ratio(med["ws_runtime"], med["ws_bare"]),
        "ws_connection/ws_bare_default": ratio(med["ws_connection"], med["ws_bare_default"]),
        "ws_runtime/ws_bare_default": ratio(med["ws_runtime"], med["ws_bare_default"]),
        "stdio_connection/stdio_bare": ratio(med["stdio_connection"], med["stdio_bare"]),
        "stdio_runtime/stdio_bare": ratio(med["stdio_runtime"], med["stdio_bare"]),
        "targets": {"ws_ours/ws_bare": ">= 0.8", "stdio_ours/stdio_bare": ">= 0.5"},
    }
    return result(
        "ingest",
        {"deltas": deltas, "rounds": rounds, "delta_frame_bytes": 190, "statistic": "median of rounds"},
        figures,
        ratios,
    )


def profile(name: str = "ws_connection", deltas: int = DEFAULT_DELTAS, top: int = 25) -> str:
    """cProfile one variant; returns the top functions by own time (and by cumulative time)."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run_variant(name, deltas)
    finally:
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()
