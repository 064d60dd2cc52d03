"""Large frames: one 64 MiB ``item/completed`` agent message, end to end through a runtime, on each transport.

The emitter (another process) answers ``turn/start`` with a turn whose agentMessage item is one WebSocket message
(or one NDJSON line) of just under 64 MiB — the default ``max_message_size`` — and the runtime must settle the
turn with that text. Peak memory is tracemalloc's peak of this process from ``submit`` to the settlement, above
what was allocated before, compared with the frame size.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Any

import trio

from codex_trio._config import RuntimeConfig
from codex_trio._render import ChannelInput
from codex_trio._runtime import open_runtime
from codex_trio._transport import DEFAULT_MAX_MESSAGE_SIZE

from ._common import StdioLauncher, UnixEmitterLauncher, emitter_stdio_argv, emitter_unix, result, short_tmpdir
from .emitter import turn_id_for, turn_payloads


def _item_bytes_for(frame_bytes: int) -> tuple[int, int]:
    """The text size whose item/completed frame is ``frame_bytes`` long (frames are ASCII JSON)."""
    probe = next(f for f in turn_payloads(turn_id_for(1), 0, 1) if b'"item/completed"' in f)
    text = frame_bytes - (len(probe) - 1)
    return text, frame_bytes


async def _through_runtime(launcher: Any, text_bytes: int) -> dict[str, Any]:
    config = RuntimeConfig(runtime_id="bench-large")
    async with open_runtime(config, launcher=launcher) as runtime:
        gc.collect()
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        admission = await runtime.submit(ChannelInput("large-1", "send the big one"))
        settled = await admission.settled()
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        ok = settled.outcome == "completed" and settled.text is not None and len(settled.text) == text_bytes
        del settled
    return {"seconds": round(elapsed, 3), "peak_above_baseline_bytes": peak - baseline, "intact": ok}


def run(*, quick: bool = False, **_options: Any) -> dict[str, Any]:
    frame_bytes = 2 * 2**20 if quick else DEFAULT_MAX_MESSAGE_SIZE
    text_bytes, frame = _item_bytes_for(frame_bytes)
    figures: dict[str, Any] = {}
    with short_tmpdir("ctb-") as tmp:
        path = tmp / "emitter.sock"
        with emitter_unix(path, 0, text_bytes):
            figures["ws"] = trio.run(_through_runtime, UnixEmitterLauncher(path), text_bytes)
    figures["stdio"] = trio.run(_through_runtime, StdioLauncher(emitter_stdio_argv(0, text_bytes)), text_bytes)
    for entry in figures.values():
        entry["peak_over_frame"] = round(entry["peak_above_baseline_bytes"] / frame, 3)
        entry["peak_above_baseline_mib"] = round(entry["peak_above_baseline_bytes"] / 2**20, 1)
    ratios = {
        "ws_peak/frame": figures["ws"]["peak_over_frame"],
        "stdio_peak/frame": figures["stdio"]["peak_over_frame"],
        "targets": {"peak/frame": "< 4"},
    }
    return result("large_frame", {"frame_bytes": frame, "text_chars": text_bytes}, figures, ratios)
