"""Supervision with the fake app-server as a real child process (ProcessLauncher, real signals, real sockets).

SIGKILL the child, make it exit non-zero, and close its socket — idle and mid-turn, repeatedly: the runtime comes
back to ready each time on the same thread, and no process or socket of ours is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import codex_trio
from codex_trio import ChannelInput, RestartPolicy, RuntimeConfig
from codex_trio._process import live_pids_in_group


def fake_codex(tmp_path: Path, script: dict[str, object] | None = None) -> tuple[str, dict[str, str]]:
    shim = tmp_path / "codex"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {"FAKE_APP_SERVER_STATE": str(tmp_path / "fake-state.json")}
    if script is not None:
        (tmp_path / "script.json").write_text(json.dumps(script))
        env["FAKE_APP_SERVER_SCRIPT"] = str(tmp_path / "script.json")
    return str(shim), env


def config(tmp_path: Path, socket_dir: Path, bin: str, env: dict[str, str]) -> RuntimeConfig:
    return RuntimeConfig(
        runtime_id="child",
        codex_bin=bin,
        extra_env=env,
        socket_dir=socket_dir,
        log_dir=tmp_path / "logs",
        restart=RestartPolicy(base_delay=0.05, max_delay=0.2, max_restarts=50),
        ready_timeout=60,  # a Python child on a loaded machine: the failures under test are ours, not the load's
    )


@pytest.mark.parametrize("how", ["sigkill", "exit-nonzero", "close-socket"])
async def test_child_failures_restart_and_resume(tmp_path: Path, short_socket_dir: Path, how: str) -> None:
    bin, env = fake_codex(tmp_path, {"default": {"text": "ok", "delay": 0.05}})
    cfg = config(tmp_path, short_socket_dir, bin, env)
    launcher = codex_trio.ProcessLauncher(cfg)
    with trio.fail_after(60):
        async with codex_trio.open_runtime(cfg, launcher=launcher) as runtime:
            thread_id = runtime.thread_id
            async with runtime.events() as events:
                for round_ in range(3):
                    mid_turn = round_ % 2 == 1
                    if mid_turn:
                        await runtime.submit(ChannelInput(f"busy{round_}", "keep busy"))
                    pgid = launcher.last_pgid
                    assert pgid is not None
                    if how == "sigkill":
                        os.killpg(pgid, signal.SIGKILL)
                    elif how == "exit-nonzero":
                        os.killpg(pgid, signal.SIGUSR1)  # the fake exits with status 3
                    else:
                        for link in cfg.socket_dir.glob("*.sock"):  # type: ignore[union-attr]
                            link.unlink()
                        os.killpg(pgid, signal.SIGINT)  # it stops listening: the socket closes
                    while True:
                        event = await events.receive()
                        if isinstance(event, codex_trio.Restarting):
                            break
                    await runtime.wait_status("ready")
                    assert runtime.thread_id == thread_id
                    assert runtime.thread_resumed
                    done = await (await runtime.submit(ChannelInput(f"r{round_}", "after"))).settled()
                    assert done.outcome == "completed"
                    assert live_pids_in_group(pgid) == []
            # One restart per failure we caused; on a loaded machine a restarted child may also miss its ready
            # deadline once and be restarted again, which must be for a transient reason.
            assert runtime.restarts >= 3
            assert all(
                isinstance(cause, (codex_trio.AppServerExited, codex_trio.AppServerNotReady, codex_trio.TransportError))
                for cause in runtime.causes
            ), runtime.causes
    for pgid in launcher.pgids:
        assert live_pids_in_group(pgid) == []
    assert not list(cfg.socket_dir.glob("*.sock"))  # type: ignore[union-attr]


async def test_child_that_exits_at_once_fails_the_first_start_with_its_stderr(
    tmp_path: Path, short_socket_dir: Path
) -> None:
    bin, env = fake_codex(tmp_path)
    env["FAKE_APP_SERVER_EXIT"] = '1:Error: approval_policy = "untrusted" is no longer supported'
    cfg = config(tmp_path, short_socket_dir, bin, env)
    with trio.fail_after(30), pytest.raises(codex_trio.AppServerExited) as info:
        async with codex_trio.open_runtime(cfg):
            pass  # pragma: no cover
    assert "no longer supported" in str(info.value)
    assert info.value.returncode == 1


async def test_child_that_never_binds_fails_after_ready_timeout(tmp_path: Path, short_socket_dir: Path) -> None:
    bin, env = fake_codex(tmp_path)
    env["FAKE_APP_SERVER_BIND_DELAY"] = "never"
    cfg = RuntimeConfig(
        runtime_id="nobind",
        codex_bin=bin,
        extra_env=env,
        ready_timeout=0.5,
        socket_dir=short_socket_dir,
        log_dir=tmp_path / "logs",
    )
    launcher = codex_trio.ProcessLauncher(cfg)
    with trio.fail_after(30), pytest.raises(codex_trio.AppServerNotReady):
        async with codex_trio.open_runtime(cfg, launcher=launcher):
            pass  # pragma: no cover


async def test_bad_binary_is_one_clear_error(tmp_path: Path) -> None:
    cfg = RuntimeConfig(runtime_id="bad", codex_bin=str(tmp_path / "no-such-codex"))
    with pytest.raises(codex_trio.BinaryNotFound, match="no-such-codex"):
        async with codex_trio.open_runtime(cfg):
            pass  # pragma: no cover


@pytest.mark.parametrize("when", [0.0, 0.01, 0.05, 0.2, 0.6])
async def test_cancelling_the_host_at_any_point_leaves_nothing(
    tmp_path: Path, short_socket_dir: Path, when: float
) -> None:
    bin, env = fake_codex(tmp_path, {"default": {"hang": True}})
    cfg = config(tmp_path, short_socket_dir, bin, env)
    launcher = codex_trio.ProcessLauncher(cfg)
    with trio.move_on_after(when + 0.3 if when else 0.05):
        async with codex_trio.open_runtime(cfg, launcher=launcher) as runtime:
            await runtime.submit(ChannelInput("x", "hang"))
            os.killpg(launcher.last_pgid or 0, signal.SIGKILL)  # and a restart (backoff) in progress
            await trio.sleep_forever()
    for pgid in launcher.pgids:
        assert live_pids_in_group(pgid) == []
    assert not list(cfg.socket_dir.glob("*.sock"))  # type: ignore[union-attr]


@pytest.fixture
def no_core_dumps() -> Iterator[None]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))  # SIGABRT children must not leave core files
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


@pytest.mark.usefixtures("no_core_dumps")
async def test_a_crash_is_reported_by_its_exit_status_not_by_the_socket_close(
    tmp_path: Path, short_socket_dir: Path
) -> None:
    bin, env = fake_codex(tmp_path)
    cfg = config(tmp_path, short_socket_dir, bin, env)
    launcher = codex_trio.ProcessLauncher(cfg)
    with trio.fail_after(30):
        async with codex_trio.open_runtime(cfg, launcher=launcher) as runtime, runtime.events() as events:
            causes = []
            for _ in range(3):
                assert launcher.last_pgid is not None
                os.kill(launcher.last_pgid, signal.SIGABRT)
                while not isinstance(event := await events.receive(), codex_trio.Restarting):
                    pass
                causes.append(event.cause)
                await runtime.wait_status("ready")
    # the child's socket closes first (1006), but the cause recorded is how the child died
    assert all("SIGABRT" in cause for cause in causes), causes
