"""Run the benchmarks: ``python -m bench`` (all), ``python -m bench ingest turn`` (some), ``--quick`` (smoke)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from . import competitor, idle, ingest, large, restart, scale, stall, turn
from ._common import write_json

BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "ingest": ingest.run,
    "turn": turn.run,
    "restart": restart.run,
    "scale": scale.run,
    "large": large.run,
    "competitor": competitor.run,
    "stall": stall.run,
    "idle": idle.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="any of: " + ", ".join(BENCHMARKS) + " (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the code runs, measures nothing")
    parser.add_argument("--out", help="also write all results, as one JSON list, to this file")
    parser.add_argument("--deltas", type=int, help="ingest/competitor: deltas per measurement (default 200000)")
    parser.add_argument("--rounds", type=int, help="ingest: rounds per variant (default 3)")
    parser.add_argument("--runtimes", type=int, help="scale: number of runtimes (default 100)")
    parser.add_argument("--profile", action="store_true", help="ingest: print a cProfile of the WS Connection path")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    # The restart benchmark kills children on purpose; the runtime's warnings about it are expected noise.
    logging.getLogger("codex_trio").setLevel(logging.ERROR)
    if args.profile:
        sys.stdout.write(ingest.profile("ws_connection", args.deltas or ingest.DEFAULT_DELTAS))
        return 0
    names = args.names or list(BENCHMARKS)
    results = []
    for name in names:
        started = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        res = BENCHMARKS[name](quick=args.quick, deltas=args.deltas, rounds=args.rounds, runtimes=args.runtimes)
        res["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_json(res)
        results.append(res)
    if args.out:
        with open(args.out, "w") as f:
            write_json(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
