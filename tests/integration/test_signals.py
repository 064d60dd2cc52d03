"""Stopping on SIGTERM, SIGHUP and SIGINT: the ``stop_on_signals`` helper in a small program, and ``codex-trio``.

Each test runs a real child process and signals it, as a service manager or a terminal would: the block's
clean-up must run, the exit status must be the conventional one, and nothing may land on stderr (no traceback).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from codex_trio._signals import DEFAULT_STOP_SIGNALS, SignalStop

CHILD = Path(__file__).with_name("signal_child.py")
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
#: Generous: the machine is shared and slow. Only a hang comes near it.
WAIT = 60.0


class Child:
    """A child process whose stdout or stderr is read up to a marker, then collected whole."""

    def __init__(self, argv: list[str], **kwargs: object) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kwargs,  # type: ignore[call-overload]
        )
        self.seen = {"stdout": b"", "stderr": b""}

    def wait_for(self, marker: str, stream: str = "stdout") -> None:
        pipe = getattr(self.proc, stream)
        deadline = time.monotonic() + WAIT
        while marker.encode() not in self.seen[stream]:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} on {stream} within {WAIT} s: {self.seen}"
            ready, _, _ = select.select([pipe], [], [], left)
            if ready:
                chunk = os.read(pipe.fileno(), 65536)
                assert chunk, f"{stream} closed before {marker!r}: {self.seen}"
                self.seen[stream] += chunk

    def finish(self) -> tuple[int, str, str]:
        """Wait for the exit; returns (returncode, all stdout, all stderr)."""
        try:
            out, err = self.proc.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"still running {WAIT} s after the signal: {self.seen} {out!r} {err!r}")
        return (
            self.proc.returncode,
            (self.seen["stdout"] + out).decode(errors="replace"),
            (self.seen["stderr"] + err).decode(errors="replace"),
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def test_signal_stop_record() -> None:
    stop = SignalStop(DEFAULT_STOP_SIGNALS)
    assert stop.received is None and stop.exit_status is None
    stop.received = signal.SIGTERM
    assert stop.exit_status == 143


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_first_signal_stops_the_block_cleanly(children: list[Child], signum: signal.Signals) -> None:
    child = Child([sys.executable, str(CHILD), "quick"])
    children.append(child)
    child.wait_for("ready")
    child.proc.send_signal(signum)
    code, out, err = child.finish()
    assert out.split() == ["ready", "cleanup", "started", "cleanup", "done", "stopped", "by", signum.name]
    assert code == STATUS[signum]
    assert err == ""


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        # SIGTERM and SIGHUP get their default action back: the process ends at once, by that signal.
        (signal.SIGTERM, signal.SIGTERM, -signal.SIGTERM),
        (signal.SIGTERM, signal.SIGHUP, -signal.SIGHUP),
        # SIGINT gets Trio's: KeyboardInterrupt in the main task, even in the shielded clean-up.
        (signal.SIGINT, signal.SIGINT, 130),
        (signal.SIGTERM, signal.SIGINT, 130),
    ],
    ids=lambda s: s.name if isinstance(s, signal.Signals) else str(s),
)
def test_second_signal_during_the_stop_escalates(
    children: list[Child], first: signal.Signals, second: signal.Signals, expected: int
) -> None:
    child = Child([sys.executable, str(CHILD), "stuck"])
    children.append(child)
    child.wait_for("ready")
    child.proc.send_signal(first)
    child.wait_for("cleanup started")
    child.proc.send_signal(second)
    code, out, err = child.finish()
    assert code == expected
    assert "cleanup done" not in out
    if expected == 130:
        assert out.split()[-1] == "KeyboardInterrupt"
    assert err == ""


# --- the codex-trio command ------------------------------------------------------------------------------------


def fake_codex(tmp_path: Path) -> tuple[Path, Path]:
    """A ``codex`` stand-in running the fake app-server, which writes its pid (the app-server child's) to a file."""
    shim = tmp_path / "codex"
    pid_file = tmp_path / "app-server.pid"
    shim.write_text(
        f'#!/bin/sh\necho $$ > {pid_file}\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n'
    )
    shim.chmod(0o700)
    return shim, pid_file


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_cli_chat_stops_cleanly_on_signals(children: list[Child], tmp_path: Path, signum: signal.Signals) -> None:
    shim, pid_file = fake_codex(tmp_path)
    db = tmp_path / "state.db"
    (tmp_path / "work").mkdir()
    (tmp_path / "r").mkdir()
    env = {
        **os.environ,
        "FAKE_APP_SERVER_STATE": str(tmp_path / "fake-state.json"),
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
        "XDG_RUNTIME_DIR": str(tmp_path / "r"),  # the socket directory too: nothing of this test outside tmp_path
        "NO_COLOR": "1",
    }
    # The fake codex is a Python interpreter importing trio: on a loaded machine it can take longer than the
    # default 10 s to listen, which is what --ready-timeout is for.
    argv = [sys.executable, "-m", "codex_trio", "chat", "--codex-bin", str(shim), "--db", str(db)]
    argv += ["--ready-timeout", "60", "--no-preflight"]  # a fake codex, and no model: the special setup it is for
    child = Child([*argv, "--cwd", str(tmp_path / "work"), "--runtime-id", "sig"], env=env)
    children.append(child)
    child.wait_for("ready in", "stderr")  # the runtime is up; chat now waits for a line on stdin
    app_server = int(pid_file.read_text())
    try:
        assert alive(app_server)
        child.proc.send_signal(signum)
        code, _, err = child.finish()
        assert code == STATUS[signum], err
        assert "Traceback" not in err, err
        expected = "interrupted" if signum == signal.SIGINT else f"stopped by {signum.name}"
        assert err.rstrip().splitlines()[-1] == f"codex-trio chat: {expected}", err
        assert not alive(app_server), "the runtime's block did not reap its app-server child"
    finally:
        if alive(app_server):
            os.kill(app_server, signal.SIGKILL)  # not left running after a failure
    status = subprocess.run(
        [sys.executable, "-m", "codex_trio", "status", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
        check=True,
    )
    [record] = json.loads(status.stdout)["runtimes"]
    assert record["runtime_id"] == "sig"
    assert record["status"] == "stopped", record
