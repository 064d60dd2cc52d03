"""Competitor: OpenAI's ``openai-codex`` Python SDK (stdio, a reader thread, pydantic models) on the same emitter.

The SDK is installed with pip into a throwaway venv under /tmp (``CODEX_TRIO_BENCH_SDK_VENV``, default
``/tmp/codex-trio-bench-sdk``) — never into the project's venv. Ingest: the SDK's ``stream_text`` against
codex_trio's ``runtime.events()`` and ``Connection`` on a stdio emitter, rounds interleaved. Turn: the SDK's
``turn_start`` + ``wait_for_turn_completed`` against a runtime's ``submit`` + ``settled()`` (3 deltas per turn).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from codex_trio._config import RuntimeConfig
from codex_trio._runtime import open_runtime

from . import ingest
from ._common import EMITTER, StdioLauncher, emitter_stdio_argv, median, ratio, result
from .emitter import THREAD_ID
from .turn import _runtime_turn

DRIVER = str(Path(__file__).resolve().parent / "_sdk_driver.py")


def sdk_python() -> tuple[str | None, str]:
    """The SDK venv's python, installing it on first use; (None, why) when it cannot be installed."""
    venv = Path(os.environ.get("CODEX_TRIO_BENCH_SDK_VENV", "/tmp/codex-trio-bench-sdk"))
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import openai_codex; print(openai_codex.__version__)"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python), "already installed"
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", "openai-codex"],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"{' '.join(step)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, "openai-codex installed but does not import"
    return str(python), "installed now"


def _sdk(python: str, mode: str, count: int) -> dict[str, Any]:
    proc = subprocess.run(
        [python, DRIVER, mode, EMITTER, THREAD_ID, str(count)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"SDK driver failed: {proc.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


async def _runtime_turns(turns: int) -> float:
    config = RuntimeConfig(runtime_id="bench-sdk-turn")
    async with open_runtime(config, launcher=StdioLauncher(emitter_stdio_argv(3))) as runtime:
        times = [await _runtime_turn(runtime, i) for i in range(turns + 2)]
    return median(times[2:])


def run(*, quick: bool = False, deltas: int | None = None, **_options: Any) -> dict[str, Any]:
    deltas = deltas or (2_000 if quick else ingest.DEFAULT_DELTAS)
    rounds = 1 if quick else 3
    turns = 20 if quick else 200
    python, how = sdk_python()
    if python is None:
        return result("competitor", {"sdk": "openai-codex"}, {"skipped": how}, {})
    sdk: dict[str, Any] = {}
    sdk_rates: list[float] = []
    ours: dict[str, list[float]] = {"stdio_runtime": [], "stdio_connection": []}
    for _ in range(rounds):
        sdk = _sdk(python, "ingest", deltas)
        sdk_rates.append(sdk["deltas_per_second"])
        for name in ours:
            ours[name].append(round(deltas / ingest.run_variant(name, deltas)))
    sdk_turn = _sdk(python, "turn", turns)
    ours_turn_ms = trio.run(_runtime_turns, turns) * 1000
    figures: dict[str, Any] = {
        "sdk_version": sdk.get("sdk_version"),
        "sdk_venv": how,
        "ingest_deltas_per_second_median": {
            "openai_codex_stream_text": round(median(sdk_rates)),
            "codex_trio_runtime_events": round(median(ours["stdio_runtime"])),
            "codex_trio_connection": round(median(ours["stdio_connection"])),
        },
        "ingest_all": {"openai_codex_stream_text": sdk_rates, **ours},
        "turn_median_ms": {"openai_codex": sdk_turn["median_ms"], "codex_trio_runtime": round(ours_turn_ms, 3)},
    }
    ing: dict[str, float] = figures["ingest_deltas_per_second_median"]
    ratios = {
        "ingest codex_trio_runtime/openai_codex": ratio(
            ing["codex_trio_runtime_events"], ing["openai_codex_stream_text"]
        ),
        "ingest codex_trio_connection/openai_codex": ratio(
            ing["codex_trio_connection"], ing["openai_codex_stream_text"]
        ),
        "turn latency openai_codex/codex_trio_runtime": ratio(sdk_turn["median_ms"], ours_turn_ms),
        "targets": {"ingest codex_trio/openai_codex": ">= 2"},
    }
    return result(
        "competitor",
        {"deltas": deltas, "rounds": rounds, "turns": turns, "transport": "stdio NDJSON (the SDK's only one)"},
        figures,
        ratios,
    )
