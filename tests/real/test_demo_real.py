"""The ``codex-trio`` command on the real codex binary: ``send`` and ``chat`` with ``--offline`` (the bundled
scripted model), and the whole ``demo`` — the README's main command — as a user runs it.

Each test runs the command as a subprocess (``python -m codex_trio``), which is what users do and gives every
test a hard time bound.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from codex_trio._process import live_pids_in_group
from codex_trio.testing._real_codex import require_codex_bin

pytestmark = pytest.mark.real_codex

TIMEOUT = 90
OFFLINE_REPLY = re.compile(r"Offline reply #(\d+) from the bundled scripted model")


@pytest.fixture
def codex_bin() -> str:
    return require_codex_bin()


def cli(
    tmp_path: Path, codex_bin: str, *argv: str, stdin: str | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CODEX_TRIO_CODEX_BIN": codex_bin,
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),  # never the user's ~/.local/state
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "codex_trio", *argv],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_send_offline_prints_the_reply(tmp_path: Path, codex_bin: str) -> None:
    done = cli(tmp_path, codex_bin, "send", "--offline", "hello there")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()  # the result alone on stdout
    assert OFFLINE_REPLY.match(line)
    assert "\x1b[" not in done.stdout + done.stderr  # piped: plain text
    assert "ready in" in done.stderr  # progress goes to stderr
    assert not (tmp_path / "xdg-state").exists()  # offline without --db keeps nothing


def test_send_json_and_a_redelivered_source_id_across_processes(tmp_path: Path, codex_bin: str) -> None:
    db = tmp_path / "state.db"
    first = cli(tmp_path, codex_bin, "send", "--offline", "--db", str(db), "--json", "--source-id", "m-1", "hi")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["admission"] == "submitted"
    assert result["outcome"] == "completed"
    assert result["source_id"] == "m-1"
    assert OFFLINE_REPLY.match(result["text"])
    assert result["turn_id"] and result["thread_id"]

    # A second host process on the same database: the id is remembered, nothing reaches codex.
    again = cli(tmp_path, codex_bin, "send", "--offline", "--db", str(db), "--json", "--source-id", "m-1", "hi")
    assert again.returncode == 0, again.stderr
    duplicate = json.loads(again.stdout)
    assert duplicate["admission"] == "duplicate"
    assert duplicate["outcome"] is None

    status = cli(tmp_path, codex_bin, "status", "--db", str(db), "--json")
    assert status.returncode == 0, status.stderr
    (runtime,) = json.loads(status.stdout)["runtimes"]
    assert runtime["runtime_id"] == "cli"
    assert runtime["status"] == "stopped"
    assert runtime["pending"] == 0


def test_chat_offline_reads_piped_lines_until_quit(tmp_path: Path, codex_bin: str) -> None:
    done = cli(tmp_path, codex_bin, "chat", "--offline", stdin="first message\n\nsecond message\n/quit\nnever sent\n")
    assert done.returncode == 0, done.stderr
    replies = [line for line in done.stdout.splitlines() if line.startswith("codex> ")]
    assert [OFFLINE_REPLY.search(line)[1] for line in replies] == ["1", "2"]  # type: ignore[index]
    assert "bye (2 message(s) sent)" in done.stderr
    assert "\x1b[" not in done.stdout


def test_chat_json_lines_until_eof(tmp_path: Path, codex_bin: str) -> None:
    done = cli(tmp_path, codex_bin, "chat", "--offline", "--json", stdin="one\ntwo\n")
    assert done.returncode == 0, done.stderr
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    results = [o for o in objects if o["type"] == "result"]
    assert [r["outcome"] for r in results] == ["completed", "completed"]
    assert len({r["source_id"] for r in results}) == 2
    assert len({r["thread_id"] for r in results}) == 1


def test_demo_runs_end_to_end(tmp_path: Path, codex_bin: str) -> None:
    done = cli(tmp_path, codex_bin, "demo")
    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr}"
    assert "\x1b[" not in out
    for step in range(1, 6):
        assert f"[{step}/5]" in out
    assert "codex> Hello, everyone!" in out  # the streamed turn
    assert "carried it as a developer message: <teammate_session_completion" in out
    assert "SIGKILL -> process group" in out
    assert "settled interrupted" in out
    assert "restart #1: backing off 0.5 s" in out
    assert "same thread resumed" in out
    assert "status: starting -> ready" in out
    assert "again -> duplicate" in out
    assert re.search(r"demo ok in [\d.]+ m?s: 1 restart, thread resumed, 2 duplicates refused", out)

    # Everything the demo made is gone: its scratch directory and both app-server process groups.
    scratch = re.search(r"scratch  (\S+)", out)
    assert scratch is not None
    assert not Path(scratch[1]).exists()
    pids = [int(p) for p in re.findall(r"app-server pid (\d+)", out)]
    assert len(pids) == 2
    for pgid in pids:
        assert live_pids_in_group(pgid) == []
