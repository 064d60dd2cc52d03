"""Permissions and hygiene: owner-only directories and files, refused symlinks and foreign owners, no shell in
any spawn, and secrets from the environment never showing up in logs, events, errors, statistics or the store.

The runtime tests run the fake app-server as a real child process (through a ``#!/bin/sh`` shim standing in for
the codex binary), so the production :class:`ProcessLauncher` does the spawning, logging and reaping.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import codex_trio
from codex_trio import ChannelInput, RestartPolicy, RuntimeConfig, SqliteStateStore
from codex_trio._completions import Completion, build_completion_item, spill_path
from codex_trio._config import McpServer
from codex_trio._errors import ConfigError, SocketPathError
from codex_trio._events import Restarting
from codex_trio._paths import (
    SOCKET_PATH_BUDGET,
    allocate_socket_path,
    ensure_owner_only_dir,
    path_bytes,
    plan_owner_only_dir,
)
from codex_trio._process import live_pids_in_group, log_paths
from codex_trio._watchdog import _pdeathsig_prefix

PACKAGE_DIR = Path(codex_trio.__file__).resolve().parent
#: A guard against a hang around runtimes with real child processes: never the thing that fails a slow machine.
GUARD = 240


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def fake_codex(tmp_path: Path, script: dict[str, object] | None = None) -> tuple[str, dict[str, str]]:
    """A ``codex`` stand-in that runs the fake app-server, plus the environment it needs."""
    import json

    shim = tmp_path / "codex"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n')
    shim.chmod(0o700)
    env = {"FAKE_APP_SERVER_STATE": str(tmp_path / "fake-state.json")}
    if script is not None:
        (tmp_path / "script.json").write_text(json.dumps(script))
        env["FAKE_APP_SERVER_SCRIPT"] = str(tmp_path / "script.json")
    return str(shim), env


def child_config(tmp_path: Path, short: Path, tag: str, **overrides: Any) -> RuntimeConfig:
    """``short`` is the test's ``short_socket_dir`` (tmp_path is too long for a Unix socket path); the socket
    directory is ``short/tag``, which does not exist yet: the runtime creates it."""
    bin, env = fake_codex(tmp_path, {"default": {"text": "ok", "delay": 0.02}})
    fields: dict[str, Any] = {
        "runtime_id": f"hygiene-{tag}",
        "codex_bin": bin,
        "extra_env": env,
        "socket_dir": short / tag,
        "log_dir": tmp_path / "logs",
        "spill_dir": tmp_path / "spill",
        "state_dir": tmp_path / "state",
        "grace_period": 0.1,
        # The fake app-server is a Python child: on a busy 2-core machine its start alone can take over the default
        # 10 s, and a start that times out is restarted (and counted). Not what these tests are about.
        "ready_timeout": 60.0,
        "handshake_timeout": 60.0,
        "restart": RestartPolicy(base_delay=0.05, max_delay=0.2, max_restarts=20),
    }
    fields.update(overrides)
    return RuntimeConfig(**fields)


def assert_nothing_left(launcher: codex_trio.ProcessLauncher, socket_dir: Path) -> None:
    for pgid in launcher.pgids:
        assert live_pids_in_group(pgid) == [], f"process group {pgid} still has live processes"
    assert not list(socket_dir.glob("*.sock")), "a socket link of ours was left behind"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    # With no umask the creation modes in the library are the only thing keeping files private.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- owner-only directories ----------------------------------------------------------------------------------
#
# The rule: a directory we create is 0700; an existing directory is never chmod-ed unless it is ours by creation or
# by name and owner; a shared one (world- or group-writable, or sticky) gets a private subdirectory instead.


def private_name() -> str:
    return f"codex-trio-{os.geteuid()}"


def test_new_directory_and_its_new_parents_are_created_0700_even_with_no_umask(
    tmp_path: Path, umask_zero: None
) -> None:
    target = tmp_path / "a" / "b" / "sockets"
    assert ensure_owner_only_dir(target) == target
    for created in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert mode(created) == 0o700, created
    assert ensure_owner_only_dir(target) == target  # the second time, the same directory


@pytest.mark.parametrize("loose", [0o755, 0o750, 0o701, 0o711], ids=oct)
def test_a_directory_of_ours_that_others_can_enter_is_refused_not_chmodded(tmp_path: Path, loose: int) -> None:
    target = tmp_path / "sockets"
    target.mkdir()
    target.chmod(loose)
    with pytest.raises(SocketPathError, match=rf"its mode is {loose:04o}.*chmod 700 {re.escape(str(target))}"):
        ensure_owner_only_dir(target)
    assert mode(target) == loose
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("shared", [0o1777, 0o777, 0o770, 0o2775, 0o1755], ids=oct)
def test_shared_directory_keeps_its_mode_and_gets_a_private_subdirectory(
    tmp_path: Path, umask_zero: None, shared: int
) -> None:
    target = tmp_path / "shared"
    target.mkdir()
    target.chmod(shared)
    used = ensure_owner_only_dir(target)
    assert used == target / private_name()
    assert mode(target) == shared  # the sticky bit (and every other bit) kept
    assert mode(used) == 0o700
    assert ensure_owner_only_dir(target) == used  # reused
    assert ensure_owner_only_dir(used) == used  # and stable when given back
    assert mode(target) == shared


@pytest.fixture
def tmp_cannot_be_chmodded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``/tmp``, guarded: a chmod of it (by path or descriptor) fails the test instead of happening.

    Without this a regression run as root would break ``/tmp`` for the whole machine; the mode is also put back
    afterwards, should anything get past the guard.
    """
    tmp = Path("/tmp")
    before = os.lstat(tmp)
    guarded = (before.st_dev, before.st_ino)
    real_chmod, real_fchmod = os.chmod, os.fchmod

    def chmod(path: Any, bits: int, *args: Any, **kwargs: Any) -> None:
        if isinstance(path, int):
            return fchmod(path, bits)
        try:
            st = os.stat(path, follow_symlinks=kwargs.get("follow_symlinks", True))
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == guarded:
            raise AssertionError(f"chmod {bits:o} of /tmp attempted")
        return real_chmod(path, bits, *args, **kwargs)

    def fchmod(fd: int, bits: int) -> None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == guarded:
            raise AssertionError(f"fchmod {bits:o} of /tmp attempted")
        return real_fchmod(fd, bits)

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "fchmod", fchmod)
    try:
        yield tmp
    finally:
        monkeypatch.undo()
        if os.lstat(tmp).st_mode != before.st_mode:
            os.chmod(tmp, stat.S_IMODE(before.st_mode))


def test_tmp_itself_as_socket_dir_is_untouched(tmp_cannot_be_chmodded: Path) -> None:
    tmp = tmp_cannot_be_chmodded
    before = os.lstat(tmp)
    private = tmp / private_name()
    existed = os.path.lexists(private)
    try:
        used = ensure_owner_only_dir(tmp)
        assert used == private
        after = os.lstat(tmp)
        assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
        assert mode(used) == 0o700 and os.lstat(used).st_uid == os.geteuid()
        socket_path = allocate_socket_path(used, "a-runtime-id-of-thirty-two-chars")
        assert socket_path.parent == used and path_bytes(socket_path) <= SOCKET_PATH_BUDGET
    finally:
        if not existed:
            try:
                private.rmdir()  # ours, made by this test; kept if something else started using it meanwhile
            except OSError:
                pass


def test_our_private_directory_with_wider_bits_is_tightened(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    ours = shared / private_name()
    ours.mkdir()
    ours.chmod(0o755)
    assert ensure_owner_only_dir(shared) == ours
    assert mode(ours) == 0o700
    # Given directly, a directory named like ours and owned by us is ours too.
    direct = tmp_path / private_name()
    direct.mkdir()
    direct.chmod(0o1777)
    assert ensure_owner_only_dir(direct) == direct
    assert mode(direct) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory owned by another user needs root")
def test_foreign_owned_private_subdirectory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    planted = shared / private_name()
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)
    planted.chmod(0o777)
    with pytest.raises(SocketPathError, match=r"owned by uid 65534, not the current user.*remove it") as info:
        ensure_owner_only_dir(shared)
    assert str(planted) in str(info.value)
    assert mode(shared) == 0o1777 and mode(planted) == 0o777  # nothing of theirs changed either
    assert os.lstat(planted).st_uid == 65534


def test_shared_directory_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root's shared directories (/tmp) are trusted; another user's are not: its owner can replace our entries.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    theirs.chmod(0o1777)
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
    with pytest.raises(SocketPathError, match=r"owned by uid \d+, not the current user.*could replace"):
        ensure_owner_only_dir(theirs)
    assert mode(theirs) == 0o1777
    assert list(theirs.iterdir()) == []


def test_symlinked_private_subdirectory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    (shared / private_name()).symlink_to(elsewhere)
    with pytest.raises(SocketPathError, match="symlink"):
        ensure_owner_only_dir(shared)
    assert mode(elsewhere) == 0o755
    assert list(elsewhere.iterdir()) == []


def test_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(SocketPathError, match="symlink"):
        ensure_owner_only_dir(link)


def test_dangling_symlink_is_refused_and_nothing_is_created_behind_it(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SocketPathError, match="symlink"):
        ensure_owner_only_dir(link)
    assert not (tmp_path / "elsewhere").exists()


def test_foreign_owned_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "theirs"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
    with pytest.raises(SocketPathError, match=r"owned by uid \d+, not the current user"):
        ensure_owner_only_dir(target)
    assert mode(target) == 0o755  # refused, not "fixed": we do not touch someone else's directory
    assert list(target.iterdir()) == []


def test_plan_says_what_ensure_would_do_without_doing_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "sockets"
    assert plan_owner_only_dir(missing) == (missing, f"{missing} will be created with mode 0700")
    assert not (tmp_path / "missing").exists()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    planned, why = plan_owner_only_dir(shared)
    assert planned == shared / private_name() and "will be created" in why
    assert list(shared.iterdir()) == []
    assert ensure_owner_only_dir(shared) == planned
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    with pytest.raises(SocketPathError, match="its mode is 0755"):
        plan_owner_only_dir(loose)


def test_a_private_subdirectory_can_push_the_socket_path_over_the_budget(short_socket_dir: Path) -> None:
    # The budget is checked on the directory actually used: callers allocate in what ensure_owner_only_dir returns.
    base = short_socket_dir
    room = SOCKET_PATH_BUDGET - path_bytes(base / "x" / "rt-12345678.sock")
    shared = base / ("s" * (room - len(private_name()) // 2))  # fits by itself, not with the subdirectory
    shared.mkdir()
    shared.chmod(0o1777)
    allocate_socket_path(shared, "rt")  # the configured directory alone would fit
    used = ensure_owner_only_dir(shared)
    with pytest.raises(SocketPathError, match="shorter socket_dir"):
        allocate_socket_path(used, "rt")


# --- spill files -----------------------------------------------------------------------------------------------


def _completion(result: str = "a teammate result longer than the budget") -> Completion:
    return Completion("c-1", "mate", "completed", result)


def test_spill_file_is_0600_in_a_0700_directory(tmp_path: Path, umask_zero: None) -> None:
    spill_dir = tmp_path / "spill" / "rt"
    item = build_completion_item(_completion(), spill_dir, budget=8)
    written = Path(spill_path(spill_dir, _completion()))
    assert str(written) in item["content"][0]["text"]
    assert written.read_text() == _completion().result
    assert mode(written) == 0o600
    assert mode(spill_dir) == 0o700


def test_spill_over_a_loose_file_tightens_the_file(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir(mode=0o700)
    old = Path(spill_path(spill_dir, _completion()))
    old.write_text("stale")
    old.chmod(0o644)
    build_completion_item(_completion(), spill_dir, budget=8)
    assert mode(spill_dir) == 0o700
    assert mode(old) == 0o600
    assert old.read_text() == _completion().result


def test_shared_spill_directory_keeps_its_mode_and_gets_a_private_subdirectory(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    spill_dir.chmod(0o1777)
    item = build_completion_item(_completion(), spill_dir, budget=8)
    assert mode(spill_dir) == 0o1777
    written = Path(spill_path(spill_dir / private_name(), _completion()))
    assert str(written) in item["content"][0]["text"]
    assert written.read_text() == _completion().result
    assert mode(written) == 0o600
    assert mode(written.parent) == 0o700


def test_small_result_touches_no_disk(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    build_completion_item(_completion("tiny"), spill_dir, budget=100)
    assert not spill_dir.exists()


def test_symlinked_spill_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "spill"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        build_completion_item(_completion(), link, budget=8)
    assert list(real.iterdir()) == []


def test_symlink_planted_at_the_spill_file_name_is_not_followed(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    Path(spill_path(spill_dir, _completion())).symlink_to(victim)
    with pytest.raises(OSError):
        build_completion_item(_completion(), spill_dir, budget=8)
    assert victim.read_text() == "keep me"


def test_foreign_owned_spill_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
    with pytest.raises(ConfigError, match="owned by uid"):
        build_completion_item(_completion(), spill_dir, budget=8)
    assert list(spill_dir.iterdir()) == []


# --- a runtime on the fake child: socket dir, logs ---------------------------------------------------------------


async def test_runtime_makes_socket_and_log_dirs_0700_and_logs_0600(tmp_path: Path, short_socket_dir: Path) -> None:
    cfg = child_config(tmp_path, short_socket_dir, "perm")
    assert cfg.socket_dir is not None and cfg.log_dir is not None
    assert not cfg.socket_dir.exists()  # created by the runtime, with no umask to help
    stdout_log, stderr_log = log_paths(cfg.log_dir, cfg.runtime_id)
    stdout_log.parent.mkdir(parents=True, mode=0o700)
    stderr_log.write_text("an older generation's line\n")  # not empty, so it survives the stop
    stderr_log.chmod(0o644)  # left by an older, laxer version
    launcher = codex_trio.ProcessLauncher(cfg)
    old_umask = os.umask(0)
    try:
        with trio.fail_after(GUARD):
            async with codex_trio.open_runtime(cfg, launcher=launcher) as runtime:
                assert mode(cfg.socket_dir) == 0o700
                socks = list(cfg.socket_dir.glob("*.sock"))
                assert socks, "the app-server's socket is in the configured directory"
                assert mode(stdout_log.parent) == 0o700
                for log_file in (stdout_log, stderr_log):
                    assert mode(log_file) == 0o600, log_file
                done = await (await runtime.submit(ChannelInput("p1", "hello"))).settled()
                assert done.outcome == "completed"
    finally:
        os.umask(old_umask)
    assert mode(stderr_log) == 0o600
    assert "an older generation's line" in stderr_log.read_text()
    assert_nothing_left(launcher, cfg.socket_dir)


@pytest.mark.parametrize("problem", ["symlink", "foreign", "loose"])
async def test_runtime_refuses_an_unsafe_socket_dir_before_spawning(
    tmp_path: Path, short_socket_dir: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    real = tmp_path / "real-sockets"
    real.mkdir(mode=0o700)
    socket_dir = short_socket_dir / problem[:3]
    if problem == "symlink":
        socket_dir.symlink_to(real)
        expected = "symlink"
    elif problem == "foreign":
        socket_dir.mkdir(mode=0o700)
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
        expected = "owned by uid"
    else:
        socket_dir.mkdir()
        socket_dir.chmod(0o755)  # ours, but others may enter it: refused, not chmod-ed
        expected = "its mode is 0755"
    try:
        cfg = child_config(tmp_path, short_socket_dir, problem[:3], socket_dir=socket_dir)
        launcher = codex_trio.ProcessLauncher(cfg)
        with trio.fail_after(GUARD), pytest.raises(SocketPathError, match=expected) as info:
            async with codex_trio.open_runtime(cfg, launcher=launcher):
                pass  # pragma: no cover
        assert str(socket_dir) in str(info.value)
        assert list(launcher.pgids) == [], "nothing may be spawned into an unsafe directory"
        assert list(real.iterdir()) == []
        if problem == "loose":
            assert mode(socket_dir) == 0o755
            assert list(socket_dir.iterdir()) == []
    finally:
        if socket_dir.is_symlink():
            socket_dir.unlink()
        else:
            socket_dir.rmdir()


# --- no shell anywhere ---------------------------------------------------------------------------------------

_SHELL_PATTERNS = [
    re.compile(r"shell\s*=\s*True"),
    re.compile(r"\bos\.system\s*\("),
    re.compile(r"\bos\.popen\s*\("),
    re.compile(r"create_subprocess_shell"),
    re.compile(r"\bos\.exec[lv]p?e?\s*\(\s*['\"]/bin/(ba)?sh"),
    re.compile(r"['\"](/bin/)?(ba)?sh['\"]\s*,\s*['\"]-c['\"]"),
]


def test_no_shell_invocation_in_the_library_source() -> None:
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(sources) > 10, sources  # the scan really looked at the package
    offenders = [
        f"{path.relative_to(PACKAGE_DIR)}:{lineno}: {line.strip()}"
        for path in sources
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if any(p.search(line) for p in _SHELL_PATTERNS)
    ]
    assert offenders == []


class _Spawns:
    """Every ``subprocess.Popen`` made while installed (trio's ``open_process`` and ``run_process`` use it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        spawns = self

        class RecordingPopen(subprocess.Popen):  # type: ignore[type-arg]
            def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
                spawns.calls.append((args, dict(kwargs, _positional=rest)))
                super().__init__(args, *rest, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", RecordingPopen)


async def test_every_spawn_is_an_argv_without_a_shell(
    tmp_path: Path, short_socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawns = _Spawns()
    spawns.install(monkeypatch)
    cfg = child_config(tmp_path, short_socket_dir, "shell")
    assert cfg.socket_dir is not None
    launcher = codex_trio.ProcessLauncher(cfg)
    with trio.fail_after(GUARD):
        async with codex_trio.open_runtime(cfg, launcher=launcher) as runtime:
            pgid = launcher.last_pgid
            assert pgid is not None
            os.killpg(pgid, signal.SIGKILL)  # a restart spawns again
            await runtime.wait_status("degraded")
            await runtime.wait_status("ready")
        # The doctor runs `codex --version`.
        await codex_trio.doctor(cfg)
    assert_nothing_left(launcher, cfg.socket_dir)
    app_servers = [args for args, _ in spawns.calls if "app-server" in list(args)]
    assert len(app_servers) == 2, spawns.calls
    assert any(list(args)[1:] == ["--version"] for args, _ in spawns.calls), spawns.calls
    # Where util-linux has it, the child is exec'd through `setpriv --pdeathsig KILL --` (it dies with its host's
    # spawner thread); setpriv execs the argv as given, with no shell either.
    prefix = list(_pdeathsig_prefix())
    for args, kwargs in spawns.calls:
        assert not isinstance(args, (str, bytes)), f"a command line string, not an argv: {args!r}"
        assert kwargs.get("shell", False) is False, kwargs
        assert kwargs.get("executable") is None, kwargs
        argv = list(args)
        if prefix and argv[: len(prefix)] == prefix:
            argv = argv[len(prefix) :]
        if argv == ["true"]:
            continue  # the one-time probe of whether setpriv supports --pdeathsig
        assert argv[0] == cfg.codex_bin, argv  # the resolved binary itself, not an interpreter
        assert argv[1] in ("app-server", "--version"), argv  # never `<x> -c "<command string>"`


# --- secrets -------------------------------------------------------------------------------------------------


def read_environ(pid: int | None) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


def read_files(directory: Path, pattern: str) -> list[str]:
    return [p.read_bytes().decode("latin-1") for p in sorted(directory.glob(pattern)) if p.is_file()]


def _leaks(secret: str, texts: list[str]) -> list[str]:
    return [t[:300] for t in texts if secret in t]


async def test_secrets_in_the_environment_never_appear_in_logs_events_errors_or_state(
    tmp_path: Path, short_socket_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-secret-" + secrets.token_hex(16)
    injected = "sk-injected-" + secrets.token_hex(16)
    caplog.set_level(logging.DEBUG, logger="codex_trio")
    monkeypatch.setenv("TASK_MAX_OUTPUT_LENGTH", "16")  # so the completion below spills to a file
    base = child_config(tmp_path, short_socket_dir, "sec")
    cfg = child_config(
        tmp_path,
        short_socket_dir,
        "sec",
        extra_env={**base.extra_env, "OPENAI_API_KEY": secret},
        inject_env={"CODEX_API_KEY": injected},
    )
    assert cfg.socket_dir is not None and cfg.log_dir is not None
    store = SqliteStateStore(tmp_path / "state.db")
    launcher = codex_trio.ProcessLauncher(cfg)
    seen: list[str] = []
    events: list[Any] = []

    async def collect(stream: codex_trio.EventStream) -> None:
        async for event in stream:
            events.append(event)

    def read_logs() -> None:
        for path in sorted(cfg.log_dir.rglob("*")):  # type: ignore[union-attr]
            if path.is_file():
                seen.append(path.read_text(errors="replace"))

    # The collector's nursery is outside the runtime block: its stream ends only when the runtime has stopped.
    with trio.fail_after(GUARD):
        async with (
            trio.open_nursery() as nursery,
            codex_trio.open_runtime(cfg, state=store, launcher=launcher) as runtime,
        ):
            nursery.start_soon(collect, runtime.events())
            # The secrets really are in play: the child has them in its environment.
            pid = launcher.last_pgid
            environ = read_environ(pid)
            assert secret.encode() in environ and injected.encode() in environ
            first = await (await runtime.submit(ChannelInput("s1", "hello"))).settled()
            assert first.outcome == "completed"
            busy = await runtime.submit(ChannelInput("s2", "keep busy"))
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            await busy.settled()
            # degraded lasts only the 0.05 s backoff and may be over already: wait for the next generation's ready
            while runtime.generation < 2 or runtime.status != "ready":
                await trio.sleep(0.01)
            after = await (await runtime.submit(ChannelInput("s3", "after the restart"))).settled()
            assert after.outcome == "completed"
            assert (await runtime.submit(ChannelInput("s1", "hello"))).status == "duplicate"
            result = await runtime.completion_input(
                codex_trio.Completion("c-1", "mate", "completed", "a result long enough to spill")
            )
            assert result.status == "accepted", result
            seen.append(repr(runtime.statistics()))
            seen.extend(f"{cause!r} {cause}" for cause in runtime.causes)
            seen.extend(repr(s) for s in (first, after, runtime.last_result))
            read_logs()
            assert runtime.restarts == 1
    assert any(isinstance(e, Restarting) for e in events)
    read_logs()
    seen.extend(repr(e) for e in events)
    seen.extend(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    seen.append(caplog.text)
    seen.extend(repr(r) for r in await store.list_runtimes())
    seen.extend(repr(s) for s in await store.recent_settlements(cfg.runtime_id))
    await store.aclose()
    seen.extend(read_files(tmp_path, "state.db*"))
    spill_dir = cfg.spill_dir
    assert spill_dir is not None
    spilled = [p for p in spill_dir.rglob("*") if p.is_file()]
    assert spilled, "the completion spilled to a file"
    seen.extend(p.read_text() for p in spilled)
    doctor_report = await codex_trio.doctor(cfg, env={**os.environ, "OPENAI_API_KEY": secret})
    seen.append(repr(doctor_report))
    assert_nothing_left(launcher, cfg.socket_dir)
    assert len(seen) > 10
    assert _leaks(secret, seen) == []
    assert _leaks(injected, seen) == []


async def test_secret_is_not_in_a_failed_start_error(
    tmp_path: Path, short_socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-secret-" + secrets.token_hex(16)
    caplog.set_level(logging.DEBUG, logger="codex_trio")
    base = child_config(tmp_path, short_socket_dir, "err")
    env = {**base.extra_env, "OPENAI_API_KEY": secret, "FAKE_APP_SERVER_EXIT": "1:Error: bad config"}
    cfg = child_config(tmp_path, short_socket_dir, "err", extra_env=env)
    with trio.fail_after(GUARD), pytest.raises(codex_trio.AppServerExited) as info:
        async with codex_trio.open_runtime(cfg):
            pass  # pragma: no cover
    assert "bad config" in str(info.value)
    texts = [str(info.value), repr(info.value), repr(info.value.__dict__), caplog.text]
    assert _leaks(secret, texts) == []


@pytest.mark.parametrize("where", ["extra_env", "inject_env", "mcp_env"])
def test_config_repr_does_not_show_secret_values(where: str) -> None:
    secret = "sk-secret-" + secrets.token_hex(8)
    if where == "mcp_env":
        server = McpServer(name="gh", command="/usr/bin/gh-mcp", env={"GITHUB_TOKEN": secret})
        cfg = RuntimeConfig(mcp_servers=[server])
        texts = [repr(server), str(server), repr(cfg)]
    else:
        kwargs: dict[str, Any] = {where: {"OPENAI_API_KEY": secret}}
        cfg = RuntimeConfig(**kwargs)
        texts = [repr(cfg), str(cfg)]
    assert _leaks(secret, texts) == []


def test_mcp_env_values_are_not_on_the_command_line(tmp_path: Path) -> None:
    from codex_trio._config import app_server_argv

    secret = "sk-secret-" + secrets.token_hex(8)
    server = McpServer(name="gh", command="/usr/bin/gh-mcp", env={"GITHUB_TOKEN": secret})
    argv = app_server_argv(RuntimeConfig(mcp_servers=[server]), "/usr/bin/codex", tmp_path / "s.sock")
    assert _leaks(secret, argv) == []
