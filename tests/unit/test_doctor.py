"""The doctor against fake codex binaries (tiny ``#!/bin/sh`` scripts) and scratch Codex homes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from codex_trio import _doctor
from codex_trio._config import RuntimeConfig
from codex_trio._doctor import MIN_CODEX_VERSION, DoctorReport, Finding, doctor, parse_codex_version

MOCK_PROVIDER = """
model = "mock-model"
model_provider = "mock"

[model_providers.mock]
name = "Mock provider"
base_url = "http://127.0.0.1:9/v1"
wire_api = "responses"
"""

MakeBin = Callable[..., Path]


@pytest.fixture
def make_bin(tmp_path: Path) -> MakeBin:
    def make(body: str = 'echo "codex-cli 0.169.0"', name: str = "codex") -> Path:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
        return path

    return make


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A Codex home with the mock provider (which needs no auth), so a healthy setup has no findings."""
    path = tmp_path / "codex-home"
    path.mkdir()
    (path / "config.toml").write_text(MOCK_PROVIDER)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "user")}


@pytest.fixture
def sockets(tmp_path: Path) -> Path:
    return tmp_path / "sock"


def _config(bin: Path | None, home: Path | None, sockets: Path, **kwargs: object) -> RuntimeConfig:
    return RuntimeConfig(
        codex_bin=str(bin) if bin is not None else None,
        codex_home=home,
        socket_dir=sockets,
        **kwargs,  # type: ignore[arg-type]
    )


async def _run(config: RuntimeConfig, env: dict[str, str]) -> DoctorReport:
    with trio.fail_after(30):
        return await doctor(config, env)


def _finding(report: DoctorReport, name: str) -> Finding:
    matches = [f for f in report.findings if f.name == name]
    assert len(matches) == 1, report.render()
    return matches[0]


# --- the happy path ------------------------------------------------------------------------------------------


async def test_healthy_setup_is_ok(make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path) -> None:
    bin = make_bin()
    report = await _run(_config(bin, home, sockets), env)
    assert report.ok, report.render()
    assert [f.name for f in report.findings] == [
        "codex binary",
        "codex version",
        "codex home",
        "config.toml",
        "auth",
        "socket dir",
        "socket path",
    ]
    assert all(f.ok and f.severity == "info" for f in report.findings)
    assert report.codex_bin == str(bin)
    assert report.codex_version == (0, 169, 0)
    assert report.codex_home == home
    assert "needs no auth" in _finding(report, "auth").detail
    assert "will be created" in _finding(report, "socket dir").detail
    assert not await trio.Path(sockets).exists()  # the doctor looks, it does not create


async def test_render_and_json(make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path) -> None:
    report = await _run(_config(make_bin('echo "codex-cli 0.100.0"'), home, sockets), env)
    text = report.render()
    assert text.splitlines()[0] == "codex_trio doctor: NOT READY (1 error(s), 0 warning(s))"
    assert "  [error] codex version: Codex at " in text
    assert "  [ok] codex home: " in text
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["ok"] is False
    assert data["codex_version"] == "0.100.0"
    assert data["codex_home"] == str(home)
    assert {"name": "codex version", "ok": False, "severity": "error"}.items() <= data["findings"][1].items()


# --- binary and version --------------------------------------------------------------------------------------


async def test_old_version_is_an_error_with_the_documented_message(
    make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path
) -> None:
    bin = make_bin('echo "codex-cli 0.160.1"')
    report = await _run(_config(bin, home, sockets), env)
    assert not report.ok
    finding = _finding(report, "codex version")
    assert (finding.ok, finding.severity) == (False, "error")
    assert finding.detail == (
        f"Codex at {bin} reported codex-cli 0.160.1; requires codex >= 0.161.0 (the oldest version codex_trio "
        f"is tested against, see docs/compatibility.md)"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('echo "codex-cli 0.161.0"', None),
        ('echo "codex-cli 1.0.0"', None),
        ('echo "codex-cli 0.169.0" >&2', None),  # on stderr only: still parsed
        ('echo "codex-cli dev"', "reported codex-cli dev; requires codex >= 0.161.0"),
        ("true", "reported <empty>; requires codex >= 0.161.0"),
        ('echo "boom" >&2; exit 3', "`--version` exited with rc 3: boom"),
    ],
)
async def test_version_outputs(
    make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path, body: str, expected: str | None
) -> None:
    report = await _run(_config(make_bin(body), home, sockets), env)
    finding = _finding(report, "codex version")
    if expected is None:
        assert finding.ok, finding
    else:
        assert not finding.ok and finding.severity == "error"
        assert expected in finding.detail


async def test_version_check_times_out(
    make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real child and the autojump clock do not mix (the clock jumps while the kernel reaps), so the 15 s
    # limit is shortened instead; the script sleeps far longer than either.
    monkeypatch.setattr(_doctor, "VERSION_TIMEOUT", 0.2)
    report = await _run(_config(make_bin("exec sleep 60"), home, sockets), env)
    finding = _finding(report, "codex version")
    assert not finding.ok
    assert "did not finish within 0.2s" in finding.detail


async def test_unrunnable_binary(tmp_path: Path, home: Path, env: dict[str, str], sockets: Path) -> None:
    # Executable but not a valid program: exec fails with ENOEXEC, which the doctor reports, not raises.
    bad = tmp_path / "codex"
    bad.write_bytes(b"\x7fELF garbage")
    bad.chmod(0o755)
    report = await _run(_config(bad, home, sockets), env)
    finding = _finding(report, "codex version")
    assert not finding.ok and f"could not determine Codex version from {bad}" in finding.detail


async def test_missing_binary(tmp_path: Path, home: Path, env: dict[str, str], sockets: Path) -> None:
    missing = tmp_path / "nowhere" / "codex"
    report = await _run(_config(missing, home, sockets), env)
    assert not report.ok
    finding = _finding(report, "codex binary")
    assert (finding.ok, finding.severity) == (False, "error")
    assert str(missing) in finding.detail and "no such file" in finding.detail
    assert not [f for f in report.findings if f.name == "codex version"]
    assert report.codex_bin is None
    # The other checks still ran.
    assert _finding(report, "codex home").ok


async def test_binary_from_env_then_path(make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path) -> None:
    from_env = make_bin(name="codex-from-env")
    report = await _run(_config(None, home, sockets), {**env, "CODEX_TRIO_CODEX_BIN": str(from_env)})
    assert report.codex_bin == str(from_env)
    on_path = make_bin()
    report = await _run(_config(None, home, sockets), {**env, "PATH": f"{on_path.parent}:/usr/bin:/bin"})
    assert report.codex_bin == str(on_path)
    report = await _run(_config(None, home, sockets), env)
    assert not _finding(report, "codex binary").ok


# --- codex home and config.toml ------------------------------------------------------------------------------


async def test_missing_explicit_home_is_an_error(
    make_bin: MakeBin, tmp_path: Path, env: dict[str, str], sockets: Path
) -> None:
    report = await _run(_config(make_bin(), tmp_path / "no-home", sockets), env)
    finding = _finding(report, "codex home")
    assert (finding.ok, finding.severity) == (False, "error")
    assert f"missing Codex home directory: {tmp_path / 'no-home'}" in finding.detail


async def test_codex_home_from_env_and_default(
    make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path
) -> None:
    report = await _run(_config(make_bin(), None, sockets), {**env, "CODEX_HOME": str(home)})
    assert report.codex_home == home and report.ok
    # No CODEX_HOME anywhere: ~/.codex, which codex creates itself, so its absence is only a warning.
    report = await _run(_config(make_bin(), None, sockets, inject_env={"OPENAI_API_KEY": "k"}), env)
    assert report.codex_home == Path(env["HOME"]) / ".codex"
    finding = _finding(report, "codex home")
    assert (finding.ok, finding.severity) == (False, "warning")
    assert report.ok


async def test_bad_toml_names_file_line_and_column(
    make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path
) -> None:
    (home / "config.toml").write_text('model = "x"\napproval_policy = \n')
    report = await _run(_config(make_bin(), home, sockets), {**env, "OPENAI_API_KEY": "k"})
    assert not report.ok
    finding = _finding(report, "config.toml")
    assert (finding.ok, finding.severity) == (False, "error")
    assert finding.detail == f"Codex config parse error at {home / 'config.toml'}:2:19: Invalid value"


async def test_non_utf8_toml(make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path) -> None:
    (home / "config.toml").write_bytes(b'model = "\xff"\n')
    report = await _run(_config(make_bin(), home, sockets), env)
    finding = _finding(report, "config.toml")
    assert not finding.ok and "not UTF-8" in finding.detail


async def test_untrusted_in_config_toml_is_a_warning(
    make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path
) -> None:
    (home / "config.toml").write_text('approval_policy = "untrusted"\n' + MOCK_PROVIDER)
    report = await _run(_config(make_bin(), home, sockets), env)
    finding = _finding(report, "config.toml")
    assert (finding.ok, finding.severity) == (False, "warning")
    assert "untrusted" in finding.detail and "no longer supported" in finding.detail
    assert report.ok  # the runtime's -c approval_policy overrides it (checked on the real binary)


async def test_no_config_toml_is_fine(make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path) -> None:
    (home / "config.toml").unlink()
    (home / "auth.json").write_text("{}")
    report = await _run(_config(make_bin(), home, sockets), env)
    assert report.ok, report.render()
    assert "codex uses its defaults" in _finding(report, "config.toml").detail


# --- auth ------------------------------------------------------------------------------------------------------


async def test_missing_auth_for_openai(make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path) -> None:
    (home / "config.toml").write_text('model = "gpt-5"\n')
    report = await _run(_config(make_bin(), home, sockets), env)
    assert not report.ok
    finding = _finding(report, "auth")
    assert (finding.ok, finding.severity) == (False, "error")
    assert finding.detail.startswith(f"missing Codex auth state in {home}")
    assert "OPENAI_API_KEY" in finding.detail


@pytest.mark.parametrize("var", ["OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_ACCESS_TOKEN"])
async def test_auth_from_environment(
    make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path, var: str
) -> None:
    (home / "config.toml").unlink()
    report = await _run(_config(make_bin(), home, sockets), {**env, var: "secret"})
    assert _finding(report, "auth").ok
    # Blank does not count.
    report = await _run(_config(make_bin(), home, sockets), {**env, var: "  "})
    assert not _finding(report, "auth").ok
    # The child's environment counts: inject_env/extra_env reach codex too.
    report = await _run(_config(make_bin(), home, sockets, extra_env={var: "secret"}), env)
    assert _finding(report, "auth").ok


async def test_auth_json(make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path) -> None:
    (home / "config.toml").unlink()
    (home / "auth.json").write_text("{}")
    report = await _run(_config(make_bin(), home, sockets), env)
    assert _finding(report, "auth").ok


async def test_custom_provider_auth_rules(make_bin: MakeBin, home: Path, env: dict[str, str], sockets: Path) -> None:
    bin = make_bin()
    with_key = MOCK_PROVIDER + 'env_key = "MOCK_KEY"\n'
    (home / "config.toml").write_text(with_key)
    finding = _finding(await _run(_config(bin, home, sockets), env), "auth")
    assert not finding.ok and "$MOCK_KEY, which is not set" in finding.detail
    finding = _finding(await _run(_config(bin, home, sockets), {**env, "MOCK_KEY": "k"}), "auth")
    assert finding.ok and "$MOCK_KEY" in finding.detail

    (home / "config.toml").write_text(MOCK_PROVIDER + "requires_openai_auth = true\n")
    finding = _finding(await _run(_config(bin, home, sockets), env), "auth")
    assert not finding.ok and "missing Codex auth state" in finding.detail

    (home / "config.toml").write_text('model_provider = "ollama"\n')
    finding = _finding(await _run(_config(bin, home, sockets), env), "auth")
    assert finding.ok and "needs no auth" in finding.detail


# --- socket directory ----------------------------------------------------------------------------------------


async def test_socket_dir_problems(make_bin: MakeBin, home: Path, env: dict[str, str], tmp_path: Path) -> None:
    bin = make_bin()
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    real.chmod(0o755)
    finding = _finding(await _run(_config(bin, home, real), env), "socket dir")
    assert not finding.ok and "chmod 700" in finding.detail  # never chmod-ed behind the user's back
    real.chmod(0o700)
    finding = _finding(await _run(_config(bin, home, real), env), "socket dir")
    assert finding.ok

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    finding = _finding(await _run(_config(bin, home, shared), env), "socket dir")
    assert finding.ok and f"codex-trio-{os.geteuid()}" in finding.detail

    link = tmp_path / "link"
    link.symlink_to(real)
    finding = _finding(await _run(_config(bin, home, link), env), "socket dir")
    assert (finding.ok, finding.severity) == (False, "error") and "is a symlink" in finding.detail

    file = tmp_path / "file"
    file.write_text("")
    finding = _finding(await _run(_config(bin, home, file), env), "socket dir")
    assert not finding.ok and "not a directory" in finding.detail
    finding = _finding(await _run(_config(bin, home, file / "sub"), env), "socket dir")
    assert not finding.ok and "Not a directory" in finding.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
async def test_foreign_owned_socket_dir(make_bin: MakeBin, home: Path, env: dict[str, str], tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 54321, -1)
    finding = _finding(await _run(_config(make_bin(), home, foreign), env), "socket dir")
    assert not finding.ok and "owned by uid 54321" in finding.detail


async def test_socket_path_over_budget(make_bin: MakeBin, home: Path, env: dict[str, str], tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    report = await _run(_config(make_bin(), home, deep), env)
    finding = _finding(report, "socket path")
    assert (finding.ok, finding.severity) == (False, "error")
    assert "too long for Unix sockets" in finding.detail
    assert not report.ok


# --- version parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("codex-cli 0.169.0", (0, 169, 0)),
        ("codex-cli 0.137.0-alpha.2\n", (0, 137, 0)),
        ("v1.2.3 and 4.5.6", (1, 2, 3)),
        ("codex-cli 0.169", None),
        ("", None),
        ("9" * 5000 + ".1.1", None),  # too many digits for int(): not a crash
    ],
)
def test_parse_codex_version(raw: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_codex_version(raw) == expected


def test_min_version() -> None:
    assert MIN_CODEX_VERSION == (0, 161, 0)


# --- which model provider URL the preflight connects to ------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "auth", "env", "expected"),
    [
        ({}, None, {}, ("openai", "https://api.openai.com/v1")),
        (
            {},
            {"tokens": {"id_token": "x"}, "OPENAI_API_KEY": None},
            {},
            ("openai", "https://chatgpt.com/backend-api/codex"),
        ),
        ({}, {"OPENAI_API_KEY": "sk-x"}, {}, ("openai", "https://api.openai.com/v1")),
        (
            {"openai_base_url": "http://gw:8080/v1"},
            None,
            {"OPENAI_BASE_URL": "http://env/v1"},
            ("openai", "http://gw:8080/v1"),
        ),
        ({}, None, {"OPENAI_BASE_URL": "http://env/v1"}, ("openai", "http://env/v1")),
        ({"model_provider": "ollama"}, None, {}, ("ollama", "http://localhost:11434/v1")),
        ({"model_provider": "mystery"}, None, {}, ("mystery", None)),
        (
            {"model_provider": "m", "model_providers": {"m": {"base_url": "http://127.0.0.1:9/v1"}}},
            None,
            {},
            ("m", "http://127.0.0.1:9/v1"),
        ),
        ({"model_provider": "m", "model_providers": {"m": {"name": "no url"}}}, None, {}, ("m", None)),
    ],
)
def test_the_model_url_is_the_one_codex_would_use(
    tmp_path: Path,
    toml: dict[str, object],
    auth: dict[str, object] | None,
    env: dict[str, str],
    expected: tuple[str, str | None],
) -> None:
    if auth is not None:
        (tmp_path / "auth.json").write_text(json.dumps(auth))
    assert _doctor._model_url(tmp_path, toml, env) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        ({"https_proxy": "http://lower:3128", "NO_PROXY": "example.com"}, None),
        ({"ALL_PROXY": "socks5://p:1080", "no_proxy": ".other.org"}, "socks5://p:1080"),
        ({"HTTP_PROXY": "http://only-http:3128"}, None),  # an https URL does not use the http proxy
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, None),
    ],
)
def test_the_proxy_is_the_one_the_environment_names_for_the_url(env: dict[str, str], expected: str | None) -> None:
    from urllib.parse import urlsplit

    assert _doctor._proxy_for(urlsplit("https://api.example.com/v1"), env) == expected


def test_a_model_url_that_is_not_http_is_an_error() -> None:
    finding = trio.run(_doctor._check_model_reachable, ("m", "ftp://host/v1"), {})
    assert (finding.ok, finding.severity) == (False, "error")
    assert "not an http(s) URL" in finding.detail
    unknown = trio.run(_doctor._check_model_reachable, ("mystery", None), {})
    assert unknown.ok and "not checked" in unknown.detail
