"""The benchmark code runs: ``python -m bench --quick ingest`` end to end, with tiny sizes. No timing is asserted.

Every ingest variant checks that it received exactly the deltas the emitter child sent (and raises otherwise),
so a broken transport, connection or runtime path makes this fail rather than report a bogus rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_ingest_benchmark_runs_and_reports_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--deltas", "500", "ingest", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    [saved] = json.loads(out.read_text())
    assert printed["name"] == saved["name"] == "ingest"
    assert printed["parameters"]["deltas"] == 500
    rates = printed["figures"]["deltas_per_second_median"]
    assert set(rates) == {
        "ws_bare_default",
        "ws_bare",
        "ws_connection",
        "ws_runtime",
        "stdio_bare",
        "stdio_connection",
        "stdio_runtime",
    }
    assert all(isinstance(rate, int) and rate > 0 for rate in rates.values())
    assert set(printed["ratios"]) >= {"ws_connection/ws_bare", "stdio_runtime/stdio_bare"}
    assert printed["machine"]["nproc"] >= 1 and printed["machine"]["trio"]


def test_quick_turn_and_idle_benchmarks_run(tmp_path: Path) -> None:
    """The turn-overhead and idle benchmarks run end to end (tiny sizes; the turn's real-codex part included
    when the binary is there). What they measure is in docs/performance.md, never asserted."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "turn", "idle"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    decoder = json.JSONDecoder()
    text, index, names = proc.stdout, 0, []
    while index < len(text.rstrip()):
        while text[index].isspace():
            index += 1
        obj, index = decoder.raw_decode(text, index)
        names.append(obj["name"])
        assert obj["figures"] and obj["machine"]["nproc"] >= 1
    assert names == ["turn_overhead", "idle"]
