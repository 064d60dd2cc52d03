"""The doctor and the CLI arguments of ``_config`` against the real codex binary (the pinned version).

What these tests established about codex 0.169 (and what they keep checking):

* ``app-server --strict-config --print-startup-config`` does take ``-c`` overrides, validates them and exits:
  rc 0 with ``{"appServerVersion": ...}`` on stdout, or rc 1 with ``{"error": {...}}``.
* Approval policies: ``never`` and ``on-request`` start and read back as themselves; ``on-failure`` starts
  and reads back as ``on-request``; ``untrusted`` fails at startup (rc 1) with ``approval_policy =
  "untrusted" is no longer supported; remove this setting``. All three sandbox modes start.
* ``-c approval_policy=...`` overrides config.toml's value *before* codex checks it, so a config.toml with
  ``approval_policy = "untrusted"`` still starts under the runtime's arguments.
* ``mcp_servers={"my.server"={...}}`` gives a server with a dotted name, merged with config.toml's servers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from codex_trio._config import (
    APPROVAL_POLICIES,
    SANDBOX_MODES,
    McpServer,
    RuntimeConfig,
    child_env,
    codex_cli_args,
)
from codex_trio._doctor import doctor
from codex_trio._errors import ConfigError
from codex_trio._pins import PINNED_CODEX_VERSION
from codex_trio.testing._mock_model import write_codex_home
from codex_trio.testing._real_codex import expected_codex_version, require_codex_bin

pytestmark = pytest.mark.real_codex

# Nothing listens here; no test below starts a turn, so the model is never called.
MODEL_URL = "http://127.0.0.1:9/v1"
UNTRUSTED_REASON = 'approval_policy = "untrusted" is no longer supported; remove this setting'


@pytest.fixture
def codex_bin() -> str:
    return require_codex_bin()


@pytest.fixture
def codex_home(tmp_path: Path) -> Path:
    # Deliberately different from what the tests pass with -c, so a passing check proves the override won.
    return write_codex_home(tmp_path / "home", MODEL_URL, approval_policy="on-request", sandbox_mode="workspace-write")


def _require_print_startup_config(bin: str) -> None:
    """These tests use ``--print-startup-config`` as their oracle; codex has it from 0.164.0 on. Below that (only in
    ``./dev compat`` runs: the pin has it) they are skipped, saying why; the runtime itself does not use the flag."""
    done = subprocess.run([bin, "app-server", "--help"], capture_output=True, text=True, timeout=60, check=False)
    if "--print-startup-config" not in done.stdout + done.stderr:
        if expected_codex_version() == PINNED_CODEX_VERSION:
            pytest.fail(f"the pinned codex {PINNED_CODEX_VERSION} lacks `app-server --print-startup-config`")
        pytest.skip(f"codex {expected_codex_version()} has no `app-server --print-startup-config` (added in 0.164.0)")


async def _print_startup_config(bin: str, config: RuntimeConfig, *extra: str) -> tuple[int, dict[str, Any]]:
    _require_print_startup_config(bin)
    with trio.fail_after(60):
        done = await trio.run_process(
            [bin, "app-server", "--strict-config", "--print-startup-config", *codex_cli_args(config), *extra],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(config),
        )
    first_line = done.stdout.decode().strip().splitlines()[0]
    return done.returncode, json.loads(first_line)


async def test_doctor_on_the_real_binary(codex_bin: str, codex_home: Path, tmp_path: Path) -> None:
    config = RuntimeConfig(codex_bin=codex_bin, codex_home=codex_home, socket_dir=tmp_path / "s")
    with trio.fail_after(60):
        report = await doctor(config)
    assert report.ok, report.render()
    expected = expected_codex_version()
    assert report.codex_version == tuple(int(part) for part in expected.split("."))
    version = next(f for f in report.findings if f.name == "codex version")
    assert version.ok and version.detail.startswith(f"codex-cli {expected}")
    # The mock provider has neither env_key nor requires_openai_auth: no auth needed, and codex agrees.
    auth = next(f for f in report.findings if f.name == "auth")
    assert auth.ok and "needs no auth" in auth.detail


async def test_doctor_parse_error_position_matches_codex(codex_bin: str, codex_home: Path) -> None:
    config_toml = codex_home / "config.toml"
    config_toml.write_text('model = "m"\nsandbox_mode = \n')
    config = RuntimeConfig(codex_bin=codex_bin, codex_home=codex_home)
    with trio.fail_after(60):
        report = await doctor(config)
    finding = next(f for f in report.findings if f.name == "config.toml")
    assert not finding.ok and f"at {config_toml}:2:16:" in finding.detail
    rc, reply = await _print_startup_config(codex_bin, config)
    assert rc == 1
    data = reply["error"]["data"]
    assert (data["filePath"], data["line"], data["column"]) == (str(config_toml), 2, 16)


@pytest.mark.parametrize(
    ("approval", "sandbox"),
    [(policy, "read-only") for policy in APPROVAL_POLICIES] + [("never", mode) for mode in SANDBOX_MODES],
)
async def test_strict_config_accepts_our_args(codex_bin: str, codex_home: Path, approval: str, sandbox: str) -> None:
    config = RuntimeConfig(codex_home=codex_home, approval_policy=approval, sandbox_mode=sandbox)
    rc, reply = await _print_startup_config(codex_bin, config)
    assert rc == 0, reply
    assert reply["appServerVersion"] == expected_codex_version()


async def test_strict_config_accepts_mcp_servers_with_any_name(codex_bin: str, codex_home: Path) -> None:
    config = RuntimeConfig(
        codex_home=codex_home,
        mcp_servers=[
            McpServer("plain", "true", ["--a"], {"K": "v"}),
            McpServer("my.server", "true", ['quote"d', "back\\slash"], {"X.Y": "1"}),
        ],
    )
    rc, reply = await _print_startup_config(codex_bin, config)
    assert rc == 0, reply


async def test_quoted_dotted_key_is_not_understood_by_codex(codex_bin: str, codex_home: Path) -> None:
    # Why dotted MCP names are written as a whole table: codex splits `-c` keys on dots inside quotes too.
    rc, reply = await _print_startup_config(
        codex_bin, RuntimeConfig(codex_home=codex_home), "-c", 'mcp_servers."my.server".command="true"'
    )
    assert rc == 1
    assert "invalid transport" in reply["error"]["message"]


async def test_untrusted_fails_with_the_reason_our_config_error_quotes(codex_bin: str, codex_home: Path) -> None:
    rc, reply = await _print_startup_config(
        codex_bin, RuntimeConfig(codex_home=codex_home), "-c", 'approval_policy="untrusted"'
    )
    assert rc == 1
    assert reply["error"]["data"]["detail"] == UNTRUSTED_REASON
    with pytest.raises(ConfigError, match="no longer supported; remove this setting"):
        RuntimeConfig(approval_policy="untrusted")


class StdioPeer:
    """Just enough NDJSON client for ``app-server --listen stdio://``."""

    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.buffer = b""
        self.next_id = 1

    async def send(self, message: dict[str, Any]) -> None:
        await self.stdin.send_all(json.dumps(message).encode() + b"\n")

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = self.next_id
        self.next_id += 1
        await self.send({"id": request_id, "method": method, "params": params})
        while True:
            while b"\n" not in self.buffer:
                chunk = await self.stdout.receive_some()
                assert chunk, f"app-server closed stdout before answering {method}"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            message: dict[str, Any] = json.loads(line)
            if message.get("id") == request_id and "method" not in message:
                return message


@pytest.mark.parametrize(
    ("approval", "reads_back_as"), [("never", "never"), ("on-request", "on-request"), ("on-failure", "on-request")]
)
async def test_app_server_starts_with_our_args(
    codex_bin: str, codex_home: Path, tmp_path: Path, approval: str, reads_back_as: str
) -> None:
    # config.toml says "untrusted" too: our -c override must win before codex rejects it.
    config_toml = codex_home / "config.toml"
    config_toml.write_text(
        config_toml.read_text().replace('approval_policy = "on-request"', 'approval_policy = "untrusted"')
    )
    config = RuntimeConfig(
        codex_home=codex_home,
        approval_policy=approval,
        sandbox_mode="read-only",
        client_name="codex_trio_doctor_test",
        mcp_servers=[McpServer("plain", "true", ["-x"]), McpServer("my.server", "true", env={"A": "1"})],
    )
    argv = [codex_bin, "app-server", "--listen", "stdio://", *codex_cli_args(config)]
    with (tmp_path / "stderr.log").open("wb") as stderr, trio.fail_after(60):
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=child_env(config)
        )
        try:
            peer = StdioPeer(proc)
            reply = await peer.request("initialize", {"clientInfo": {"name": config.client_name, "version": "0"}})
            assert reply["result"]["userAgent"].startswith(f"codex_trio_doctor_test/{expected_codex_version()}"), reply
            await peer.send({"method": "initialized"})
            read = await peer.request("config/read", {})
            effective = read["result"]["config"]
            assert effective["approval_policy"] == reads_back_as
            assert effective["sandbox_mode"] == "read-only"
            servers = effective["mcp_servers"]
            assert servers["plain"]["command"] == "true" and servers["plain"]["args"] == ["-x"]
            assert servers["my.server"]["env_vars"] == ["A"]  # the value travels in the environment, not argv
            await peer.stdin.aclose()  # stdio app-server exits 0 on EOF
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
