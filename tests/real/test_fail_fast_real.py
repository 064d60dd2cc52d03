"""Fail fast without a model, on the real codex binary.

Measured on codex 0.171.0 (the pin) with the mock model's provider pointed at a closed port: codex never gives up by
itself. It sends ``error`` notifications with ``willRetry: true`` ("Reconnecting... waiting for network") ever
further apart (with the mock's ``request_max_retries = 0``: after 0.1 s, 5 s, 15 s, ...; with codex's default
retries: 3 s, 11 s, 24 s, 47 s, ...) and no ``willRetry: false`` error ever comes, so a turn used to wait for its
600 s deadline. Against HTTP 500s it retries 5 times over ~18 s and then sends ``willRetry: false`` itself.

* The CLI's preflight: the mock model passes it; a closed port and a missing login fail it at once, before codex
  starts, with what to do and exit status 1.
* The runtime's give-up: a turn against the closed port settles ``failed`` with codex's words once
  ``model_retry_limit`` or ``model_retry_timeout`` is reached, codex honours the interrupt that follows (its
  ``turn/completed`` arrives, no restart), and the next turn, with the model back, completes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from codex_trio import ChannelInput, RuntimeConfig, TurnCompleted, open_runtime
from codex_trio.testing._mock_model import MockModelServer, Text, write_codex_home
from codex_trio.testing._real_codex import require_codex_bin
from codex_trio.testing.pytest_plugin import short_dir

pytestmark = pytest.mark.real_codex

#: A generous ceiling, far below the 600 s turn deadline the give-up replaces.
CEILING = 120


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def cli(tmp_path: Path, *argv: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "CODEX_TRIO_CODEX_BIN": require_codex_bin(),
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    for var in ("OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_ACCESS_TOKEN", "HTTPS_PROXY", "https_proxy"):
        if var not in env:
            full.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "codex_trio", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CEILING,
        env=full,
        check=False,
    )


def test_the_mock_model_passes_the_preflight(tmp_path: Path) -> None:
    with MockModelServer() as model:
        model.enqueue(Text("preflight passed"))
        home = write_codex_home(tmp_path / "home", model.url)
        done = cli(tmp_path, "send", "hi", "--db", str(tmp_path / "s.db"), CODEX_HOME=str(home))
        url = model.url
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "preflight passed"
    assert f"model provider 'mock' at {url} accepts connections" in done.stderr
    offline = cli(tmp_path, "send", "--offline", "hi")  # the bundled model passes it too
    assert offline.returncode == 0, offline.stderr
    assert "accepts connections" in offline.stderr


def test_a_closed_port_fails_the_preflight_before_codex_starts(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    home = write_codex_home(tmp_path / "home", url)
    done = cli(tmp_path, "send", "hi", "--db", str(tmp_path / "s.db"), CODEX_HOME=str(home))
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"cannot reach model provider 'mock' at {url}: Connection refused" in done.stderr
    assert "check your network" in done.stderr and "--offline" in done.stderr
    assert "starting codex app-server" not in done.stderr


def test_a_missing_login_fails_the_preflight_and_says_how_to_log_in(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()  # the built-in openai provider, no auth.json, no API key in the environment
    done = cli(tmp_path, "chat", CODEX_HOME=str(home), OPENAI_BASE_URL=f"http://127.0.0.1:{closed_port()}/v1")
    assert done.returncode == 1
    assert "auth: missing Codex auth state" in done.stderr and "`codex login`" in done.stderr
    assert "starting codex app-server" not in done.stderr


def test_without_the_preflight_the_turn_fails_with_codex_words_well_before_its_deadline(tmp_path: Path) -> None:
    home = write_codex_home(tmp_path / "home", f"http://127.0.0.1:{closed_port()}/v1")
    done = cli(tmp_path, "send", "hi", "--no-preflight", "--db", str(tmp_path / "s.db"), CODEX_HOME=str(home))
    assert done.returncode == 1
    assert "ready in" in done.stderr  # codex started: only the model is missing
    assert "turn failed: Reconnecting... waiting for network (codex could not reach the model" in done.stderr


@pytest.mark.parametrize(
    "bounds",
    [{"model_retry_limit": 3}, {"model_retry_limit": None, "model_retry_timeout": 3.0}],
    ids=["retry-limit", "retry-timeout"],
)
async def test_a_turn_against_an_unreachable_model_gives_up_and_the_next_one_completes(
    tmp_path: Path, bounds: dict[str, object]
) -> None:
    port = closed_port()
    home = write_codex_home(tmp_path / "home", f"http://127.0.0.1:{port}/v1")
    (tmp_path / "work").mkdir()
    with short_dir() as sockets:
        config = RuntimeConfig(
            runtime_id="fail-fast",
            codex_bin=require_codex_bin(),
            codex_home=home,
            cwd=tmp_path / "work",
            sandbox_mode="read-only",
            socket_dir=sockets,
            log_dir=tmp_path / "logs",
            **bounds,  # type: ignore[arg-type]
        )
        with trio.fail_after(CEILING):
            async with open_runtime(config) as runtime, runtime.events() as events:
                admission = await runtime.submit(ChannelInput("m-1", "hello"))
                settlement = await admission.settled()
                assert settlement.outcome == "failed"
                assert settlement.error is not None
                assert settlement.error.startswith("Reconnecting... waiting for network (codex could not reach")
                bound = "model_retry_limit=3" if bounds.get("model_retry_limit") else "model_retry_timeout=3"
                assert f"gave up at RuntimeConfig.{bound}" in settlement.error
                async for event in events:  # codex honours the interrupt: its turn ends, the session lives on
                    if isinstance(event, TurnCompleted) and event.turn_id == settlement.turn_id:
                        break
                assert runtime.restarts == 0 and runtime.status == "ready"
                with MockModelServer(port=port) as model:  # the model is back
                    model.enqueue(Text("back again"))
                    again = await (await runtime.submit(ChannelInput("m-2", "still there?"))).settled()
                assert (again.outcome, again.text) == ("completed", "back again")
