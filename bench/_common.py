"""Shared helpers: machine description, JSON output, emitter children, launchers that reach the emitter."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TextIO

import trio

from codex_trio._launcher import Launched
from codex_trio._transport import MessageStream, NdjsonMessageStream, connect_unix_websocket

ROOT = Path(__file__).resolve().parent.parent
EMITTER = str(Path(__file__).resolve().parent / "emitter.py")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import trio_websocket
    import wsproto

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "trio_websocket": trio_websocket.__version__,
        "wsproto": wsproto.__version__,
        "platform": platform.platform(),
    }


def result(
    name: str, parameters: dict[str, Any], figures: dict[str, Any], ratios: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {"name": name, "machine": machine(), "parameters": parameters, "figures": figures, "ratios": ratios, **extra}


def write_json(obj: Any, out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    json.dump(obj, stream, indent=2, sort_keys=False, default=str)
    stream.write("\n")
    stream.flush()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


# --- the emitter child --------------------------------------------------------------------------------------------


@contextmanager
def short_tmpdir(prefix: str) -> Iterator[Path]:
    # Unix socket paths must fit sun_path: stay in /tmp, not under a long pytest tmp path.
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as d:
        os.chmod(d, 0o700)
        yield Path(d)


@contextmanager
def emitter_unix(path: Path, deltas: int, item_bytes: int = 0) -> Iterator[subprocess.Popen[bytes]]:
    """An emitter child serving a Unix-socket WebSocket at ``path``; waits until it is listening."""
    proc = subprocess.Popen(
        [
            sys.executable,
            EMITTER,
            "--listen",
            f"unix://{path}",
            "--deltas",
            str(deltas),
            "--item-bytes",
            str(item_bytes),
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"emitter did not start (said {line!r})")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def emitter_stdio_argv(deltas: int, item_bytes: int = 0) -> list[str]:
    return [sys.executable, EMITTER, "--stdio", "--deltas", str(deltas), "--item-bytes", str(item_bytes)]


@asynccontextmanager
async def open_stdio_child(argv: Sequence[str]) -> AsyncIterator[trio.Process]:
    proc = await trio.lowlevel.open_process(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield proc
    finally:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    await stream.aclose()


# --- launchers for a runtime on the emitter -----------------------------------------------------------------------


class UnixEmitterLauncher:
    """A Launcher that connects a WebSocket to an already running emitter (one connection per generation)."""

    def __init__(self, path: Path, max_message_size: int | None = None) -> None:
        self.path = path
        self.max_message_size = max_message_size

    @asynccontextmanager
    async def launch(self, generation: int) -> AsyncIterator[Launched]:
        kwargs = {} if self.max_message_size is None else {"max_message_size": self.max_message_size}
        streams: list[MessageStream] = []
        async with trio.open_nursery() as nursery:

            async def connect() -> MessageStream:
                streams.append(await connect_unix_websocket(nursery, self.path, **kwargs))
                return streams[-1]

            async def wait_gone() -> BaseException:
                await trio.sleep_forever()
                raise AssertionError("unreachable")

            try:
                yield Launched(connect, wait_gone, description=f"emitter at {self.path}")
            finally:
                for stream in streams:
                    await stream.aclose()
                nursery.cancel_scope.cancel()


class StdioLauncher:
    """A Launcher that spawns ``argv`` per generation and speaks NDJSON over its stdin/stdout."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)

    @asynccontextmanager
    async def launch(self, generation: int) -> AsyncIterator[Launched]:
        async with open_stdio_child(self.argv) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            stream = NdjsonMessageStream(proc.stdin, proc.stdout, description=f"stdio child {proc.pid}")

            async def connect() -> MessageStream:
                await trio.lowlevel.checkpoint()
                return stream

            async def wait_gone() -> BaseException:
                await proc.wait()
                return ConnectionError(f"stdio child exited with {proc.returncode}")

            yield Launched(connect, wait_gone, pid=proc.pid, description=f"stdio child {proc.pid}")
