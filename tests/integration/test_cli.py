"""The ``codex-trio`` command without the real codex: arguments, ``status`` on a real SQLite file, ``doctor``
with a fake binary, and the live event view. (``send``/``chat``/``demo`` on the real binary are in
``tests/real/test_demo_real.py``.)"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

import codex_trio
from codex_trio._events import (
    AgentMessageDelta,
    EventHub,
    ItemCompleted,
    Restarting,
    StatusChanged,
    SubmissionSettled,
    ThreadReady,
    TurnCompleted,
)
from codex_trio._items import AgentMessageItem
from codex_trio._settlement import Settlement
from codex_trio._state import LostThread, SqliteStateStore, StoredSettlement, StoredSubmission
from codex_trio.cli import Console, LiveView, main

GUARD = 10


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test runs may touch the user's ~/.local/state (the default database lives there)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv("NO_COLOR", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- bad arguments: a clear message on stderr, exit status 2 -------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("bogus",), "invalid choice: 'bogus'"),
        (("--bogus",), "codex-trio: error: unrecognized arguments: --bogus"),
        (("--bogus", "send", "hi"), "codex-trio send: error: unrecognized arguments: --bogus"),
        (("demo", "--bogus"), "codex-trio demo: error: unrecognized arguments: --bogus"),
        (("demo", "extra"), "unrecognized arguments: extra"),
        (("send",), "the following arguments are required: TEXT"),
        (("send", "hi", "--source-id"), "argument --source-id: expected one argument"),
        (("send", "hi", "--bogus"), "unrecognized arguments: --bogus"),
        (("send", "   "), "TEXT must not be empty"),
        (("send", "hi", "--runtime-id", "bad id"), "--runtime-id: RuntimeConfig.runtime_id='bad id'"),
        (("send", "hi", "--cwd", "/nonexistent/ct-cwd"), "--cwd '/nonexistent/ct-cwd': not a directory"),
        (("send", "hi", "--effort", "max"), "argument --effort: invalid choice: 'max'"),
        (("send", "hi", "--model", ""), "--model: options.model"),
        (("send", "hi", "--image", "/nonexistent/ct.png"), "--image: images[0]: no such image file"),
        (("send", "hi", "--image", "http://127.0.0.1:9/a.png"), "--image: images[0]: cannot fetch"),
        (("chat", "--image", "x.png"), "unrecognized arguments: --image"),
        (("chat", "--bogus"), "unrecognized arguments: --bogus"),
        (("chat", "extra"), "unrecognized arguments: extra"),
        (("chat", "--runtime-id", "../escape"), "--runtime-id: RuntimeConfig.runtime_id='../escape'"),
        (("chat", "--ready-timeout", "0"), "argument --ready-timeout: '0': give a positive, finite number of seconds"),
        (("send", "hi", "--ready-timeout", "soon"), "argument --ready-timeout: 'soon' is not a number of seconds"),
        (("status", "extra"), "unrecognized arguments: extra"),
        (("status", "--offline"), "unrecognized arguments: --offline"),
        (("status", "--runtime-id", ""), "--runtime-id: RuntimeConfig.runtime_id=''"),
        (("doctor", "--bogus"), "unrecognized arguments: --bogus"),
        (("doctor", "--db", "x.db"), "unrecognized arguments: --db"),
        (("doctor", "--cwd", "/nonexistent/codex-trio-cwd"), "not a directory"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert "error" in err
    assert out == ""


def test_db_that_is_a_directory_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "status", "--db", str(tmp_path))
    assert code == 2
    assert "is a directory, not a database file" in err
    code, _, err = run(capsys, "send", "hi", "--db", str(tmp_path))
    assert code == 2
    assert "is a directory" in err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("demo", "send", "chat", "status", "doctor"):
        assert command in out
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("codex-trio ")
    code, out, _ = run(capsys, "send", "--help")
    assert code == 0
    assert "--source-id" in out and "--offline" in out and "--no-preflight" in out
    code, out, _ = run(capsys, "status", "--help")
    assert code == 0
    assert "--db" in out and "--offline" not in out  # status takes no --offline, so its help does not offer it


def test_version_answers_without_importing_trio_the_runtime_or_the_testing_kit(tmp_path: Path) -> None:
    """``python -X importtime -m codex_trio --version``: ~10 ms of imports instead of ~0.8 s (trio, attrs, the
    runtime and the testing kit were imported before the version was printed)."""
    probe = (
        "import sys\n"
        "from codex_trio._entry import main\n"
        "code = main(['--version'])\n"
        "heavy = ('trio', 'attrs', 'codex_trio.cli', 'codex_trio._runtime', 'codex_trio.testing')\n"
        "print(sorted(m for m in sys.modules if m in heavy))\n"
        "raise SystemExit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    version, imported = done.stdout.splitlines()
    assert version == f"codex-trio {codex_trio.__version__}" and imported == "[]"
    module = subprocess.run(
        [sys.executable, "-m", "codex_trio", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (module.returncode, module.stdout) == (0, version + "\n")


def test_the_package_imports_its_public_names_on_first_use() -> None:
    probe = (
        "import sys, codex_trio\n"
        "assert 'trio' not in sys.modules, 'import codex_trio imported trio'\n"
        "from codex_trio import RuntimeConfig, open_runtime\n"
        "from codex_trio._config import RuntimeConfig as direct\n"
        "assert RuntimeConfig is direct and 'trio' in sys.modules\n"
        "assert set(codex_trio.__all__) <= set(dir(codex_trio))\n"
        "assert all(getattr(codex_trio, name) is not None for name in codex_trio.__all__)\n"
        "try:\n"
        "    codex_trio.NoSuchName\n"
        "except AttributeError as exc:\n"
        "    assert 'NoSuchName' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_missing_binary_is_a_clear_failure_not_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-codex-here")
    code, _, err = run(capsys, "demo", "--codex-bin", missing)
    assert code == 1
    assert f"no runnable codex binary found (tried: --codex-bin {missing!r}: no such file)" in err
    assert "Pass --codex-bin PATH or set CODEX_TRIO_CODEX_BIN=PATH" in err
    assert "RuntimeConfig" not in err and "./dev demo" not in err  # hints for a CLI user, who may have no checkout
    for argv in (("send", "hi", "--offline"), ("send", "hi", "--offline", "--no-preflight"), ("chat",)):
        code, _, err = run(capsys, *argv, "--codex-bin", missing)
        assert code == 1
        assert "no runnable codex binary found" in err and "--codex-bin PATH" in err
        assert "starting codex app-server" not in err  # reported before anything starts


def test_a_codex_bin_that_is_not_executable_or_not_codex_is_reported_before_starting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    code, _, err = run(capsys, "send", "hi", "--offline", "--codex-bin", str(plain))
    assert code == 1
    assert f"--codex-bin {str(plain)!r}: not executable" in err and "starting codex" not in err
    impostor = tmp_path / "impostor"
    impostor.write_text("#!/bin/sh\necho 'hello, I am not codex'\n")
    impostor.chmod(0o755)
    code, _, err = run(capsys, "send", "hi", "--offline", "--codex-bin", str(impostor))
    assert code == 1
    assert "codex version: Codex at" in err and "reported hello, I am not codex" in err
    assert "starting codex" not in err


def test_the_codex_that_dev_setup_installed_is_found_from_a_subdirectory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    native = tmp_path / ".codex-npm/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
    native.parent.mkdir(parents=True)
    native.write_text("#!/bin/sh\necho 'codex-cli 0.171.0'\n")
    native.chmod(0o755)
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    monkeypatch.delenv("CODEX_TRIO_CODEX_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    code, out, _ = run(capsys, "doctor", "--offline", "--json")
    assert code == 0, out
    assert json.loads(out)["codex_bin"] == str(native)
    native.unlink()
    code, out, _ = run(capsys, "doctor", "--offline", "--json")
    binary = next(f for f in json.loads(out)["findings"] if f["name"] == "codex binary")
    assert code == 1 and "--codex-bin: not given" in binary["detail"]
    assert f".codex-npm in {tmp_path / 'src'} or a parent: none found" in binary["detail"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there now: a connection is refused at once


def codex_home_for(tmp_path: Path, toml: str) -> Path:
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(toml)
    return home


def test_send_without_a_reachable_model_fails_before_starting_and_says_what_to_do(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    toml = f'model_provider = "m"\n[model_providers.m]\nname = "m"\nbase_url = "{url}"\nwire_api = "responses"\n'
    monkeypatch.setenv("CODEX_HOME", str(codex_home_for(tmp_path, toml)))
    fake = fake_codex(tmp_path, "0.171.0")
    code, out, err = run(capsys, "send", "hi", "--codex-bin", str(fake), "--db", str(tmp_path / "s.db"))
    assert (code, out) == (1, "")
    assert "codex-trio send: error: codex cannot run a turn here; nothing was started" in err
    assert f"model provider: cannot reach model provider 'm' at {url}: Connection refused" in err
    assert "check your network" in err and "add --offline" in err and "--no-preflight" in err
    assert "starting codex app-server" not in err and not (tmp_path / "s.db").exists()


def test_chat_without_a_login_fails_before_starting_and_says_how_to_log_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEX_HOME", str(codex_home_for(tmp_path, "")))  # the built-in openai provider, no auth.json
    for var in ("OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_ACCESS_TOKEN", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")  # no wait on a real network
    code, _, err = run(capsys, "chat", "--codex-bin", str(fake_codex(tmp_path, "0.171.0")))
    assert code == 1
    assert "auth: missing Codex auth state" in err and "to log in: `codex login`" in err
    assert "starting codex app-server" not in err


def test_a_proxy_is_what_the_reachability_check_connects_to(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = 'model_provider = "m"\n[model_providers.m]\nname = "m"\nbase_url = "https://model.invalid/v1"\n'
    monkeypatch.setenv("CODEX_HOME", str(codex_home_for(tmp_path, toml)))
    port = closed_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    fake = str(fake_codex(tmp_path, "0.171.0"))
    code, out, _ = run(capsys, "doctor", "--codex-bin", fake, "--json")
    model = next(f for f in json.loads(out)["findings"] if f["name"] == "model provider")
    assert code == 1 and f"through the proxy 127.0.0.1:{port}: Connection refused" in model["detail"]
    monkeypatch.setenv("NO_PROXY", ".invalid")  # bypassed: the host itself, which does not resolve
    code, out, _ = run(capsys, "doctor", "--codex-bin", fake, "--json")
    model = next(f for f in json.loads(out)["findings"] if f["name"] == "model provider")
    assert code == 1 and "proxy" not in model["detail"] and "https://model.invalid/v1" in model["detail"]


def test_module_entry_point_runs_main(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "codex_trio", "status", "extra"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert "codex-trio status: error: unrecognized arguments: extra" in done.stderr


# --- status ---------------------------------------------------------------------------------------------------


def test_status_without_a_database_does_not_create_one(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    code, out, _ = run(capsys, "status", "--db", str(db))
    assert code == 0
    assert "no runtimes" in out and "does not exist" in out
    code, out, _ = run(capsys, "status", "--db", str(db), "--json")
    assert code == 0
    assert json.loads(out) == {"db": str(db), "exists": False, "runtimes": []}
    assert not db.exists()


def test_status_default_db_is_under_xdg_state_home(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "status", "--json")
    assert code == 0
    assert json.loads(out)["db"] == str(tmp_path / "xdg-state" / "codex-trio" / "state.db")


def test_status_on_an_empty_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "empty.db"

    async def create() -> None:
        async with SqliteStateStore(db):
            pass

    trio.run(create)
    code, out, _ = run(capsys, "status", "--db", str(db))
    assert code == 0
    assert f"no runtimes recorded in {db}" in out
    code, out, _ = run(capsys, "status", "--db", str(db), "--json")
    assert code == 0
    assert json.loads(out) == {"db": str(db), "exists": True, "runtimes": []}


def populate(db: Path) -> None:
    now = time.time()

    async def write() -> None:
        async with SqliteStateStore(db) as store:
            await store.acquire("alpha")
            await store.acquire("beta")
            await store.set_status("alpha", "ready", last_started_at=now - 5, last_ready_at=now - 4)
            await store.set_thread_id("alpha", "thread-a")
            rows = [
                StoredSubmission(1, "chat:1", "channel", "hello", now),
                StoredSubmission(2, "chat:2", "channel", "again", now),
            ]
            await store.accept("alpha", rows, dedup_window=16)
            await store.settle("alpha", StoredSettlement(1, "chat:1", "completed", "turn-1", None, now))
            await store.set_status("beta", "failed", last_error="codex app-server (pid 7) was killed by SIGKILL")
            await store.record_lost_thread("beta", LostThread("thread-old", "thread-new", "no rollout found", now))

    trio.run(write)


def test_status_lists_runtimes_from_a_populated_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    populate(db)
    code, out, _ = run(capsys, "status", "--db", str(db))
    assert code == 0
    assert "\x1b[" not in out  # captured output is not a terminal: plain text
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("RUNTIME"))
    alpha, beta = lines[header + 1].split(), lines[header + 2].split()
    assert alpha[:4] == ["alpha", "ready", "thread-a", "1"]  # one accepted submission still pending
    assert beta[:4] == ["beta", "failed", "thread-new", "0"]
    assert "killed by SIGKILL" in lines[header + 2]
    assert "beta: lost thread thread-old -> thread-new (no rollout found)" in out


def test_status_json_parses_and_carries_every_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    populate(db)
    code, out, _ = run(capsys, "status", "--db", str(db), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["exists"] is True
    by_id = {r["runtime_id"]: r for r in data["runtimes"]}
    assert set(by_id) == {"alpha", "beta"}
    assert by_id["alpha"]["status"] == "ready"
    assert by_id["alpha"]["thread_id"] == "thread-a"
    assert by_id["alpha"]["pending"] == 1
    assert by_id["alpha"]["last_ready_at"] is not None
    assert by_id["beta"]["last_error"].startswith("codex app-server (pid 7)")
    assert by_id["beta"]["lost_threads"][0]["old_thread_id"] == "thread-old"
    assert "recent_settlements" not in by_id["alpha"]


def test_status_of_one_runtime_shows_its_settlements(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    populate(db)
    code, out, _ = run(capsys, "status", "--db", str(db), "--runtime-id", "alpha")
    assert code == 0
    assert "beta" not in out
    assert "alpha: #1 chat:1 completed" in out
    code, out, _ = run(capsys, "status", "--db", str(db), "--runtime-id", "alpha", "--json")
    (alpha,) = json.loads(out)["runtimes"]
    assert [s["source_id"] for s in alpha["recent_settlements"]] == ["chat:1"]
    code, out, err = run(capsys, "status", "--db", str(db), "--runtime-id", "gamma")
    assert code == 1
    assert "no runtime 'gamma'" in err


def test_status_on_a_file_that_is_not_a_database_fails_clearly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "garbage.db"
    db.write_bytes(b"this is not sqlite" * 100)
    code, _, err = run(capsys, "status", "--db", str(db))
    assert code == 1
    assert "StateStoreError" in err and str(db) in err


# --- doctor ---------------------------------------------------------------------------------------------------


def fake_codex(tmp_path: Path, version: str) -> Path:
    path = tmp_path / f"fake-codex-{version}"
    path.write_text(f"#!/bin/sh\necho 'codex-cli {version}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_doctor_json_with_a_fake_binary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fake = fake_codex(tmp_path, "0.169.0")
    code, out, _ = run(capsys, "doctor", "--offline", "--codex-bin", str(fake), "--json")
    data = json.loads(out)
    assert code == 0
    assert data["ok"] is True
    assert data["codex_bin"] == str(fake)
    assert data["codex_version"] == "0.169.0"
    names = {f["name"]: f for f in data["findings"]}
    assert names["auth"]["ok"] is True  # the offline provider needs no login
    assert not any(f["severity"] == "error" for f in data["findings"])


def test_doctor_fails_on_a_too_old_binary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fake = fake_codex(tmp_path, "0.100.0")
    code, out, _ = run(capsys, "doctor", "--offline", "--codex-bin", str(fake), "--json")
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False
    version = next(f for f in data["findings"] if f["name"] == "codex version")
    assert version["severity"] == "error" and ">= 0.161.0" in version["detail"]
    code, out, _ = run(capsys, "doctor", "--offline", "--codex-bin", str(fake))
    assert code == 1
    assert out.startswith("codex_trio doctor: NOT READY")
    assert "[error] codex version" in out


def test_doctor_reports_a_missing_binary_as_a_finding(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "doctor", "--codex-bin", str(tmp_path / "missing"), "--json")
    assert code == 1
    binary = next(f for f in json.loads(out)["findings"] if f["name"] == "codex binary")
    assert binary["ok"] is False and "missing" in binary["detail"]


# --- output and the live view -----------------------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_colours_only_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = io.StringIO()
    Console(plain).line("hello", "green")
    assert plain.getvalue() == "hello\n"
    tty = FakeTty()
    Console(tty).line("hello", "green")
    assert tty.getvalue() == "\x1b[32mhello\x1b[0m\n"
    monkeypatch.setenv("NO_COLOR", "1")
    quiet = FakeTty()
    Console(quiet).line("hello", "green")
    assert quiet.getvalue() == "hello\n"


def test_console_ends_a_streamed_line_before_the_next_line() -> None:
    buffer = io.StringIO()
    console = Console(buffer)
    console.partial("abc")
    console.partial("def")
    console.line("next")
    console.end_partial()  # nothing open: no stray newline
    assert buffer.getvalue() == "abcdef\nnext\n"


def settled(seq: int, text: str) -> SubmissionSettled:
    return SubmissionSettled(Settlement(seq, f"s{seq}", "completed", "t1", text, generation=1), runtime_id="rt")


async def test_live_view_streams_deltas_and_shows_notices() -> None:
    out, notices = io.StringIO(), io.StringIO()
    hub = EventHub(64)
    view = LiveView(Console(notices), Console(out), indent="  ")
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(view.run, hub.subscribe())
            for chunk in ("Hel", "lo ", "there"):
                hub.publish(AgentMessageDelta("t1", "m1", chunk, 1, runtime_id="rt"))
            hub.publish(
                ItemCompleted("t1", "agentMessage", "m1", AgentMessageItem("m1", "Hello there"), 1, runtime_id="rt")
            )
            hub.publish(TurnCompleted("t1", "completed", "Hello there", None, 1, runtime_id="rt"))
            hub.publish(settled(1, "Hello there"))
            await view.caught_up(1)
            hub.publish(StatusChanged("degraded", "ready", 1, "killed by SIGKILL", runtime_id="rt"))
            hub.publish(Restarting(1, 0.5, "killed by SIGKILL", 1, runtime_id="rt"))
            hub.publish(StatusChanged("starting", "degraded", 2, runtime_id="rt"))
            hub.publish(ThreadReady("thread-1", True, 2, runtime_id="rt"))
            hub.publish(StatusChanged("ready", "starting", 2, runtime_id="rt"))
            event = await view.wait_for(lambda e: isinstance(e, StatusChanged) and e.status == "ready")
            assert isinstance(event, StatusChanged) and event.generation == 2
            hub.close()
    assert out.getvalue() == "  codex> Hello there\n"
    assert view.deltas == {"m1": 3}
    assert view.streamed_turns == {"t1"}
    assert notices.getvalue().splitlines() == [
        "  status: ready -> degraded (killed by SIGKILL)",
        "  restart #1: backing off 0.5 s before starting a new app-server",
        "  status: degraded -> starting",
        "  thread thread-1 resumed (generation 2)",
        "  status: starting -> ready",
    ]


async def test_live_view_json_lines_skip_text() -> None:
    out = io.StringIO()
    hub = EventHub(64)
    view = LiveView(Console(out), Console(out), json_lines=True)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(view.run, hub.subscribe())
            hub.publish(AgentMessageDelta("t1", "m1", "hidden", 1, runtime_id="rt"))
            hub.publish(Restarting(2, 1.0, "socket closed", 3, runtime_id="rt"))
            hub.publish(settled(1, "x"))
            await view.caught_up(1)
            hub.close()
    (line,) = out.getvalue().splitlines()
    expected = {
        "type": "restarting",
        "attempt": 2,
        "delay": 1.0,
        "cause": "socket closed",
        "generation": 3,
        "runtime_id": "rt",
    }
    assert json.loads(line) == expected


async def test_live_view_prints_progress_during_a_long_backoff(autojump_clock: trio.testing.MockClock) -> None:
    notices = io.StringIO()
    hub = EventHub(64)
    view = LiveView(Console(notices))
    with trio.fail_after(60):  # virtual time: the autojump clock skips the sleeps
        async with trio.open_nursery() as nursery:
            await nursery.start(view.run, hub.subscribe())
            hub.publish(Restarting(3, 4.0, "exited", 1, runtime_id="rt"))
            await trio.sleep(3.5)  # the backoff is still running: progress lines, once a second
            hub.publish(StatusChanged("starting", "degraded", 2, runtime_id="rt"))
            await trio.sleep(0.1)
            hub.publish(StatusChanged("ready", "starting", 2, runtime_id="rt"))
            await trio.sleep(10)  # ready: no more progress lines
            hub.close()
    lines = notices.getvalue().splitlines()
    progress = [line for line in lines if line.startswith("... still backing off before restart #3")]
    assert len(progress) == 3
    assert lines[-1] == "status: starting -> ready"
