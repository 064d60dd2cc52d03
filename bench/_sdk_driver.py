"""Drive OpenAI's ``openai-codex`` SDK against the benchmark emitter (stdio). Runs in the SDK's own venv.

    SDK_PYTHON bench/_sdk_driver.py ingest EMITTER THREAD_ID DELTAS
    SDK_PYTHON bench/_sdk_driver.py turn   EMITTER THREAD_ID TURNS

Prints one JSON object. Imports nothing from codex_trio (it is not installed there).
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def main() -> int:
    from openai_codex import CodexConfig  # type: ignore[import-not-found]
    from openai_codex.client import CodexClient  # type: ignore[import-not-found]

    mode, emitter, thread_id, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    deltas = count if mode == "ingest" else 3
    argv = (sys.executable, emitter, "--stdio", "--deltas", str(deltas))
    with CodexClient(CodexConfig(launch_args_override=argv)) as client:
        client.initialize()
        if mode == "ingest":
            start = time.perf_counter()
            seen = sum(1 for _ in client.stream_text(thread_id, "go"))
            elapsed = time.perf_counter() - start
            if seen != count:
                raise SystemExit(f"SDK saw {seen} deltas, expected {count}")
            out = {"deltas": seen, "seconds": elapsed, "deltas_per_second": round(seen / elapsed)}
        else:
            times = []
            for _ in range(count + 2):
                start = time.perf_counter()
                started = client.turn_start(thread_id, "Say something short.")
                client.wait_for_turn_completed(started.turn.id)
                times.append(time.perf_counter() - start)
            times = times[2:]
            out = {"turns": len(times), "median_ms": round(statistics.median(times) * 1000, 3)}
    from openai_codex import __version__

    out["sdk_version"] = __version__
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
