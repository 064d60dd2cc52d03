"""``doctor``: check, before starting anything, that a runtime with this config can run here.

Each check yields a :class:`Finding`; problems are findings, never exceptions, so one run reports everything
that is wrong at once. The checks look at the same environment the app-server child would get
(:func:`~codex_trio._config.child_env`), so ``inject_env``/``extra_env`` keys and ``codex_home`` count.

Severity follows what the real codex 0.169 does with each problem: an *error* stops the runtime from working
(no binary, too old, an explicit ``CODEX_HOME`` that does not exist, a config.toml codex cannot parse, no auth
for a provider that needs it, an unusable socket directory); a *warning* works but deserves a look (the default
``~/.codex`` is missing — codex creates it; ``approval_policy = "untrusted"`` in config.toml — fatal for plain
``codex``, but the runtime's own ``-c approval_policy=...`` overrides it, as checked on 0.169).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from ._config import RuntimeConfig, child_env
from ._errors import BINARY_HINT, BinaryNotFound, SocketPathError
from ._paths import allocate_socket_path, default_socket_dir, plan_owner_only_dir, resolve_codex_bin

__all__ = [
    "MIN_CODEX_VERSION",
    "MODEL_CONNECT_TIMEOUT",
    "DoctorReport",
    "Finding",
    "Severity",
    "doctor",
    "parse_codex_version",
]

Severity = Literal["error", "warning", "info"]

#: The oldest codex the real-codex suite passes on (``./dev compat``; figures and reasons in docs/compatibility.md).
#: Before 0.161.0 a thread that never ran a turn is lost when codex is killed ("no rollout found" on resume, so the
#: runtime starts a fresh thread); before 0.156.1 the requested socket path is bound directly (no symlink, so no path
#: longer than ``sun_path``) and a stop mid-turn may end in SIGKILL; in 0.150 and older ``turn/completed`` of an
#: interrupted turn carries no items and ``excludeTurns`` is unknown. ``thread/inject_items`` (teammate completions)
#: dates from 0.137.0. ``./dev compat`` reads the next line with ``sed``: keep it one line.
MIN_CODEX_VERSION: tuple[int, int, int] = (0, 161, 0)
#: How long ``codex --version`` may take; the 294 MB native binary starts in well under a second.
VERSION_TIMEOUT = 15.0

#: How long the model provider's host may take to accept a TCP connection (DNS included) before it counts as
#: unreachable: long enough for a slow network, short enough that a user without one learns it at once.
MODEL_CONNECT_TIMEOUT = 5.0
#: codex 0.171's base URLs of its built-in providers (``openai`` with an API key or a ChatGPT login, local ones).
_OPENAI_API_URL = "https://api.openai.com/v1"
_CHATGPT_URL = "https://chatgpt.com/backend-api/codex"
_LOCAL_PROVIDER_URLS = {"ollama": "http://localhost:11434/v1", "lmstudio": "http://localhost:1234/v1"}

_AUTH_ENV_VARS = ("OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_ACCESS_TOKEN")
#: Built-in codex providers that talk to a local server and need no credentials.
_LOCAL_PROVIDERS = frozenset({"ollama", "lmstudio", "oss"})
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_MIN_TEXT = ".".join(map(str, MIN_CODEX_VERSION))


@attrs.frozen
class Finding:
    """One check's outcome. A passed check is ``ok`` with severity ``info``."""

    name: str
    ok: bool
    severity: Severity
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "severity": self.severity, "detail": self.detail}


def _passed(name: str, detail: str) -> Finding:
    return Finding(name, True, "info", detail)


def _error(name: str, detail: str) -> Finding:
    return Finding(name, False, "error", detail)


def _warning(name: str, detail: str) -> Finding:
    return Finding(name, False, "warning", detail)


@attrs.frozen
class DoctorReport:
    """All findings of one :func:`doctor` run, plus what was resolved along the way."""

    findings: tuple[Finding, ...]
    codex_bin: str | None = None
    codex_version: tuple[int, int, int] | None = None
    codex_home: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no finding is an error (warnings do not stop a runtime)."""
        return not self.errors

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    def render(self) -> str:
        """Human-readable lines: a verdict, then one line per finding."""
        verdict = "ok" if self.ok else "NOT READY"
        lines = [f"codex_trio doctor: {verdict} ({len(self.errors)} error(s), {len(self.warnings)} warning(s))"]
        for finding in self.findings:
            tag = "ok" if finding.ok else finding.severity
            lines.append(f"  [{tag}] {finding.name}: {finding.detail}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        version = ".".join(map(str, self.codex_version)) if self.codex_version else None
        return {
            "ok": self.ok,
            "codex_bin": self.codex_bin,
            "codex_version": version,
            "codex_home": str(self.codex_home) if self.codex_home is not None else None,
            "findings": [f.to_json() for f in self.findings],
        }


def parse_codex_version(raw: str) -> tuple[int, int, int] | None:
    """The first ``X.Y.Z`` in ``raw`` (e.g. ``codex-cli 0.169.0``) as ints, or None."""
    match = _VERSION.search(raw)
    if match is None:
        return None
    try:
        return int(match[1]), int(match[2]), int(match[3])
    except ValueError:  # more digits than int() will convert
        return None


async def doctor(
    config: RuntimeConfig,
    env: Mapping[str, str] | None = None,
    *,
    check_model: bool = False,
    project_dir: Path | None = None,
    codex_bin_as: str = "configured codex_bin",
    binary_hint: str = BINARY_HINT,
) -> DoctorReport:
    """Check that a runtime with ``config`` can start here; problems are findings, never raised.

    ``env`` is the environment to check against (default ``os.environ``); it is the base of the child's
    environment, as in :func:`~codex_trio._config.child_env`. ``check_model`` also checks that the configured
    model provider's host accepts a connection (within :data:`MODEL_CONNECT_TIMEOUT`), through the proxy the
    environment names if any: without it, codex starts and then retries the model for ever. ``project_dir``,
    ``codex_bin_as`` and ``binary_hint`` are passed to :func:`~codex_trio._paths.resolve_codex_bin` (the CLI looks
    for the project's ``.codex-npm`` install and words its messages for a CLI user).
    """
    base = os.environ if env is None else env
    effective = child_env(config, base)
    findings: list[Finding] = []
    bin_path: str | None = None
    version: tuple[int, int, int] | None = None
    try:
        # Resolved against the caller's environment, as the runtime does before it spawns the child.
        bin_path = resolve_codex_bin(
            config.codex_bin, base, project_dir=project_dir, configured_as=codex_bin_as, hint=binary_hint
        )
    except BinaryNotFound as exc:
        findings.append(_error("codex binary", str(exc)))
    else:
        findings.append(_passed("codex binary", bin_path))
        version_finding, version = await _check_version(bin_path, effective)
        findings.append(version_finding)
    home, fs_findings, model_url = await trio.to_thread.run_sync(_filesystem_checks, config, effective)
    findings += fs_findings
    if check_model:
        findings.append(await _check_model_reachable(model_url, effective))
    return DoctorReport(tuple(findings), codex_bin=bin_path, codex_version=version, codex_home=home)


async def _check_version(bin_path: str, env: Mapping[str, str]) -> tuple[Finding, tuple[int, int, int] | None]:
    name = "codex version"
    cannot = f"could not determine Codex version from {bin_path}"
    with trio.move_on_after(VERSION_TIMEOUT) as scope:
        try:
            result = await trio.run_process(
                [bin_path, "--version"],
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=dict(env),
            )
        except OSError as exc:
            return _error(name, f"{cannot}: {exc}; requires codex >= {_MIN_TEXT}"), None
    if scope.cancelled_caught:
        return _error(name, f"{cannot}: `--version` did not finish within {VERSION_TIMEOUT:g}s"), None
    stdout = result.stdout.decode("utf-8", "replace").strip()
    stderr = result.stderr.decode("utf-8", "replace").strip()
    if result.returncode != 0:
        tail = (stderr or stdout)[-300:] or "<no output>"
        return _error(name, f"{cannot}: `--version` exited with rc {result.returncode}: {tail}"), None
    shown = stdout or stderr
    version = parse_codex_version(stdout) or parse_codex_version(stderr)
    if version is None or version < MIN_CODEX_VERSION:
        return (
            _error(
                name,
                f"Codex at {bin_path} reported {shown or '<empty>'}; requires codex >= {_MIN_TEXT} "
                f"(the oldest version codex_trio is tested against, see docs/compatibility.md)",
            ),
            version,
        )
    return _passed(name, f"{shown} (>= {_MIN_TEXT})"), version


# --- file system checks (run in a worker thread: they stat and read files) ----------------------------------


def _filesystem_checks(
    config: RuntimeConfig, env: Mapping[str, str]
) -> tuple[Path, list[Finding], tuple[str, str | None]]:
    findings: list[Finding] = []
    home, explicit = _codex_home(env)
    findings.append(_check_home(home, explicit))
    toml_finding, parsed = _check_config_toml(home)
    findings.append(toml_finding)
    findings.append(_check_auth(home, parsed, env))
    findings += _check_socket_dir(config)
    return home, findings, _model_url(home, parsed, env)


def _model_url(home: Path, parsed: dict[str, Any] | None, env: Mapping[str, str]) -> tuple[str, str | None]:
    """(the model provider's name, its base URL or None when codex's own default is not known here)."""
    config = parsed or {}
    provider = config.get("model_provider") if isinstance(config.get("model_provider"), str) else "openai"
    assert isinstance(provider, str)
    providers = config.get("model_providers")
    custom = providers.get(provider) if isinstance(providers, dict) else None
    if isinstance(custom, dict):
        url = custom.get("base_url")
        return provider, url if isinstance(url, str) and url.strip() else None
    if provider in _LOCAL_PROVIDER_URLS:
        return provider, _LOCAL_PROVIDER_URLS[provider]
    if provider != "openai":
        return provider, None
    configured = config.get("openai_base_url")
    if isinstance(configured, str) and configured.strip():
        return provider, configured
    if env.get("OPENAI_BASE_URL", "").strip():
        return provider, env["OPENAI_BASE_URL"].strip()
    return provider, _CHATGPT_URL if _chatgpt_login(home) else _OPENAI_API_URL


def _chatgpt_login(home: Path) -> bool:
    """auth.json holds a ChatGPT login (tokens, no API key): codex then talks to chatgpt.com, not the API."""
    try:
        auth = json.loads((home / "auth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(auth, dict) and bool(auth.get("tokens")) and not auth.get("OPENAI_API_KEY")


async def _check_model_reachable(model: tuple[str, str | None], env: Mapping[str, str]) -> Finding:
    name = "model provider"
    provider, url = model
    if url is None:
        return _passed(name, f"model provider {provider!r}: base URL unknown here, not checked")
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    if parts.hostname is None or port is None or parts.scheme not in ("http", "https"):
        return _error(name, f"model provider {provider!r} has base_url {url!r}, which is not an http(s) URL")
    host, via = parts.hostname, ""
    proxy = _proxy_for(parts, env)
    if proxy is not None:
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        try:
            host, port = proxy_parts.hostname or host, proxy_parts.port or 80
        except ValueError:
            return _error(name, f"the proxy {proxy!r} for {url} is not a valid URL")
        via = f" through the proxy {host}:{port}"
    why = "timed out"
    with trio.move_on_after(MODEL_CONNECT_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            why = _connect_error(exc)
        else:
            await stream.aclose()
            return _passed(name, f"model provider {provider!r} at {url} accepts connections{via}")
    return _error(
        name,
        f"cannot reach model provider {provider!r} at {url}{via}: {why} (codex would retry it for ever); "
        f"check the network, or the provider's base_url in config.toml",
    )


def _connect_error(exc: OSError) -> str:
    """The reason behind trio's "all attempts to connect ... failed" (the first attempt's), else the error's."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        first = cause.exceptions[0]
        if isinstance(first, OSError):
            exc = first
    if exc.errno and exc.errno > 0:  # a getaddrinfo error has a negative one and its own strerror
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


def _proxy_for(parts: urllib.parse.SplitResult, env: Mapping[str, str]) -> str | None:
    """The proxy codex (reqwest) would use for this URL, read from ``env`` as curl reads it."""
    lowered = {key.lower(): value for key, value in env.items() if key.lower().endswith("_proxy") and value}
    host = parts.hostname or ""
    for entry in lowered.get("no_proxy", "").split(","):
        entry = entry.strip().lstrip(".").lower()
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    return lowered.get(f"{parts.scheme}_proxy") or lowered.get("all_proxy")


def _codex_home(env: Mapping[str, str]) -> tuple[Path, bool]:
    """(home, whether it was chosen explicitly); codex's own default is ``~/.codex``."""
    configured = env.get("CODEX_HOME", "").strip()
    if configured:
        return Path(configured).expanduser(), True
    base = env.get("HOME", "").strip()
    return (Path(base) if base else Path.home()) / ".codex", False


def _check_home(home: Path, explicit: bool) -> Finding:
    name = "codex home"
    if home.is_dir():
        return _passed(name, str(home))
    if home.exists():
        return _error(name, f"Codex home {home} exists but is not a directory")
    if explicit:
        return _error(
            name,
            f"missing Codex home directory: {home} (codex refuses to start when CODEX_HOME points to a "
            f"missing path); create it or fix RuntimeConfig.codex_home / CODEX_HOME",
        )
    return _warning(name, f"missing Codex home directory: {home}; codex creates it on first start")


def _check_config_toml(home: Path) -> tuple[Finding, dict[str, Any] | None]:
    name = "config.toml"
    path = home / "config.toml"
    if not path.exists():
        return _passed(name, f"no {path}; codex uses its defaults"), {}
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return _error(name, f"cannot read Codex config {path}: {exc.strerror or exc}"), None
    except UnicodeDecodeError as exc:
        return _error(name, f"Codex config parse error in {path}: not UTF-8 ({exc.reason})"), None
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is not None:
            message = message[: position.start()]
            where = f"at {path}:{position[1]}:{position[2]}"
        else:
            where = f"in {path}"
        return _error(name, f"Codex config parse error {where}: {message}"), None
    if parsed.get("approval_policy") == "untrusted":
        return (
            _warning(
                name,
                f'{path} sets approval_policy = "untrusted", which codex 0.169 refuses at startup '
                f'("no longer supported; remove this setting"); the runtime overrides it with '
                f"-c approval_policy, but a plain `codex` run with this home fails",
            ),
            parsed,
        )
    return _passed(name, f"{path} parses"), parsed


def _check_auth(home: Path, parsed: dict[str, Any] | None, env: Mapping[str, str]) -> Finding:
    name = "auth"
    provider = "openai"
    if parsed is not None and isinstance(parsed.get("model_provider"), str):
        provider = parsed["model_provider"]
    providers = parsed.get("model_providers") if parsed is not None else None
    custom = providers.get(provider) if isinstance(providers, dict) else None
    if isinstance(custom, dict):
        env_key = custom.get("env_key")
        if isinstance(env_key, str) and env_key:
            if env.get(env_key, "").strip():
                return _passed(name, f"model provider {provider!r} reads its key from ${env_key}, which is set")
            return _error(name, f"model provider {provider!r} reads its API key from ${env_key}, which is not set")
        if custom.get("requires_openai_auth") is not True:
            return _passed(name, f"model provider {provider!r} needs no auth (no env_key, no requires_openai_auth)")
    elif provider in _LOCAL_PROVIDERS:
        return _passed(name, f"built-in local model provider {provider!r} needs no auth")
    if (home / "auth.json").is_file():
        return _passed(name, f"{home / 'auth.json'} present")
    for var in _AUTH_ENV_VARS:
        if env.get(var, "").strip():
            return _passed(name, f"${var} is set")
    return _error(
        name,
        f"missing Codex auth state in {home} (no auth.json) or a supported auth environment variable "
        f"({', '.join(_AUTH_ENV_VARS)}); run `codex login` or set one of them",
    )


def _check_socket_dir(config: RuntimeConfig) -> list[Finding]:
    directory = config.socket_dir if config.socket_dir is not None else default_socket_dir()
    finding, planned = _socket_dir_usable(directory)
    findings = [finding]
    try:
        sample = allocate_socket_path(planned, config.runtime_id)
    except SocketPathError as exc:
        findings.append(_error("socket path", str(exc)))
    else:
        findings.append(_passed("socket path", f"a socket path like {sample} fits the sun_path budget"))
    return findings


def _socket_dir_usable(directory: Path) -> tuple[Finding, Path]:
    """Could :func:`~codex_trio._paths.ensure_owner_only_dir` succeed, and which directory would it use?
    Checked without creating or changing anything."""
    name = "socket dir"
    try:
        planned, why = plan_owner_only_dir(directory)
    except SocketPathError as exc:
        return _error(name, str(exc)), directory
    existing = planned if os.path.lexists(planned) else _nearest_existing(planned)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return _error(name, f"cannot use socket directory {planned}: {existing} is not writable"), planned
    return _passed(name, why), planned


def _nearest_existing(path: Path) -> Path | None:
    for candidate in path.parents:
        if os.path.lexists(candidate):
            return candidate
    return None
