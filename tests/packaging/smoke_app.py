"""A tiny app on the public API: the offline smoke test of an installed codex_trio (see package_check.py).

It is run in a fresh virtualenv holding only the wheel and its dependencies, and checked there with
``mypy --strict``, so it uses nothing but public names. Two turns, each on a fresh runtime:

* in process: :class:`~codex_trio.testing.FakeLauncher` over memory streams;
* as a child process: ``python -m codex_trio.testing.fake_app_server`` started as ``codex app-server`` would be,
  over a WebSocket on a Unix socket: trio-websocket, wsproto and h11 as installed, and the process supervision.

    python smoke_app.py WORKDIR      (WORKDIR: an empty directory with a short path, for the Unix socket)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

import codex_trio
from codex_trio.testing import FakeLauncher, TurnScript


async def one_turn(config: codex_trio.RuntimeConfig, launcher: codex_trio.Launcher | None, text: str) -> str:
    with trio.fail_after(120):  # a guard against a hang, never expected to fire
        async with codex_trio.open_runtime(config, launcher=launcher) as runtime:
            admission = await runtime.submit(codex_trio.ChannelInput(source_id="smoke:1", text=text))
            settlement: codex_trio.Settlement = await admission.settled()
    if settlement.outcome != "completed" or settlement.text is None:
        raise SystemExit(f"turn did not complete: {settlement.outcome} {settlement.error}")
    return settlement.text


def child_config(workdir: Path) -> codex_trio.RuntimeConfig:
    """A runtime whose "codex" is the fake app-server run as a child process of this Python."""
    shim = workdir / "codex"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n')
    shim.chmod(0o700)
    script = workdir / "script.json"
    script.write_text(json.dumps({"default": {"text": "hello over a socket"}}))
    return codex_trio.RuntimeConfig(
        runtime_id="smoke-child",
        codex_bin=str(shim),
        extra_env={"FAKE_APP_SERVER_SCRIPT": str(script), "FAKE_APP_SERVER_STATE": str(workdir / "state.json")},
        socket_dir=workdir / "s",
        log_dir=workdir / "logs",
        spill_dir=workdir / "spill",
        state_dir=workdir / "state",
        grace_period=1.0,
    )


async def main(workdir: Path) -> None:
    launcher = FakeLauncher()
    launcher.fake.push_turns(TurnScript(text="hello in process"))
    in_process = await one_turn(codex_trio.RuntimeConfig(runtime_id="smoke"), launcher, "hi")
    over_socket = await one_turn(child_config(workdir), None, "hi")
    assert (in_process, over_socket) == ("hello in process", "hello over a socket"), (in_process, over_socket)
    print(f"smoke ok: codex_trio {codex_trio.__version__}: {in_process!r}, {over_socket!r}")


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
