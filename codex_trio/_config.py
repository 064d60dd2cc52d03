"""The runtime's configuration, validated up front, and what it becomes: the child's argv and environment.

Every field is checked when :class:`RuntimeConfig` is built, so a bad value fails at construction with a
:class:`~codex_trio.ConfigError` naming the field, the value and what is allowed, instead of as a codex exit
or a ``TypeError`` from deep inside a restart loop. Converters only normalise (lists become tuples, mappings
become read-only copies, path strings become :class:`~pathlib.Path`) and never raise; validators do the
rejecting, because they know the field's name.

Facts about codex 0.169 this module relies on (checked against the binary):

* ``codex app-server generate-json-schema`` lists ``AskForApproval`` as ``"untrusted" | "on-request" |
  "never"`` or a ``{"granular": {...}}`` object, and ``SandboxMode`` as ``"read-only" | "workspace-write" |
  "danger-full-access"``. The config loader also accepts ``"on-failure"`` (not in the schema; it reads back
  as ``on-request``), and refuses ``"untrusted"`` at startup (rc 1) with ``approval_policy = "untrusted" is
  no longer supported; remove this setting``. ``auto`` / ``auto-approve`` (the original runtime's "trusted"
  names) are rejected as unknown variants. A granular policy can still be passed through ``extra_args``.
* ``-c key=value`` parses ``value`` as TOML and falls back to a plain string, so we always emit TOML
  literals.
* ``-c`` splits the key on every ``.``, *ignoring TOML quotes*: ``mcp_servers."my.server".command=...``
  becomes the path ``mcp_servers / "my / server" / command`` and codex fails with ``invalid transport``. A
  server whose name is not a bare key therefore has to be written as one whole table,
  ``-c mcp_servers={"my.server"={...}}``. That table *replaces* every earlier ``-c mcp_servers...`` override
  (it still merges with config.toml's servers), so it goes before the per-key arguments of bare-named
  servers, and the user's ``extra_args`` come last of all.
* A later ``-c`` for the same key wins over an earlier one.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import attrs

from ._errors import ConfigError
from ._policy import RestartPolicy
from ._util import masked_env

__all__ = [
    "APPROVAL_POLICIES",
    "DELIVERY_MODES",
    "SANDBOX_MODES",
    "DeliveryMode",
    "McpServer",
    "RuntimeConfig",
    "SkillSource",
    "app_server_argv",
    "child_env",
    "codex_cli_args",
    "toml_key",
    "toml_string",
]

DeliveryMode = Literal["steer", "queue"]

#: Approval policies codex 0.169 starts with ("on-failure" is accepted and read back as "on-request").
APPROVAL_POLICIES: tuple[str, ...] = ("never", "on-request", "on-failure")
#: The SandboxMode enum of codex 0.169's schema.
SANDBOX_MODES: tuple[str, ...] = ("read-only", "workspace-write", "danger-full-access")
DELIVERY_MODES: tuple[str, ...] = ("steer", "queue")

_UNTRUSTED_REASON = 'approval_policy = "untrusted" is no longer supported; remove this setting'
_RUNTIME_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MIN_MESSAGE_SIZE = 2**20
_MIN_EVENT_BUFFER = 16


# --- messages -----------------------------------------------------------------------------------------------


def _show(value: object) -> str:
    """``repr`` for an error message: bounded, and never raising for an object with a broken ``__repr__``."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} with a failing repr>"
    return text if len(text) <= 120 else text[:117] + "..."


def _fail(owner: object, field: str, message: str, value: object) -> ConfigError:
    return ConfigError(f"{type(owner).__name__}.{field}{message}", field=field, value=value)


def _bad_type(owner: object, field: str, what: str, value: object) -> ConfigError:
    return _fail(owner, field, f" must be {what} (got {type(value).__name__}: {_show(value)})", value)


def _one_of(allowed: Sequence[str]) -> str:
    return " | ".join(repr(a) for a in allowed)


# --- converters: normalise, never raise ---------------------------------------------------------------------


def _to_tuple(value: Sequence[Any]) -> tuple[Any, ...]:
    """Lists and tuples become tuples; anything else is left for the validator to reject by name."""
    if isinstance(value, list | tuple):
        return tuple(value)
    return value  # type: ignore[return-value]


def _to_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy, so a frozen config cannot be changed through the dict the caller still holds."""
    if isinstance(value, Mapping):
        try:
            return MappingProxyType(dict(value))
        except Exception:
            return value
    return value


def _to_path(value: str | os.PathLike[str] | None) -> Path | None:
    raw: Any = value
    if isinstance(raw, os.PathLike) and not isinstance(raw, Path):
        try:
            raw = os.fspath(raw)
        except Exception:
            return value  # type: ignore[return-value]
    return Path(raw) if isinstance(raw, str) else value  # type: ignore[return-value]


def _to_float(value: float) -> float:
    """Ints become floats; a bool or an int too big for a float is left as is, for the validator to refuse."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return value
    return value


def _to_optional_float(value: float | None) -> float | None:
    return None if value is None else _to_float(value)


# --- validators: reject, naming the field -------------------------------------------------------------------


def _text(owner: object, field: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _bad_type(owner, field, "a string", value)
    if not allow_empty and not value.strip():
        raise _fail(owner, field, f"={_show(value)} must be a non-empty string", value)
    return value


def _os_text(owner: object, field: str, value: object, *, allow_empty: bool = False) -> str:
    """A string that will be an argv entry, env entry or path: no NUL, and encodable for the OS."""
    text = _text(owner, field, value, allow_empty=allow_empty)
    if "\0" in text:
        raise _fail(owner, field, f"={_show(value)} must not contain a NUL character", value)
    try:
        os.fsencode(text)
    except UnicodeError:
        raise _fail(
            owner, field, f"={_show(value)} cannot be encoded for the OS (lone surrogate characters)", value
        ) from None
    return text


def _utf8_text(owner: object, field: str, value: object, *, allow_empty: bool = False) -> str:
    """An argv/env string that is also written into a TOML literal, so it must be valid UTF-8 as well."""
    text = _os_text(owner, field, value, allow_empty=allow_empty)
    try:
        text.encode("utf-8")
    except UnicodeError:
        raise _fail(owner, field, f"={_show(value)} is not valid Unicode (lone surrogates)", value) from None
    return text


def _v_runtime_id(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise _bad_type(owner, attribute.name, "a string", value)
    if not _RUNTIME_ID.fullmatch(value) or not value.strip("."):
        raise _fail(
            owner,
            attribute.name,
            f"={_show(value)} must be 1-64 characters of [A-Za-z0-9._-] and not only dots (it is used in file names)",
            value,
        )


def _v_abs_path(*, optional: bool) -> Any:
    what = "an absolute path (str or os.PathLike)" + (" or None" if optional else "")

    def check(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, Path):
            raise _bad_type(owner, attribute.name, what, value)
        _os_text(owner, attribute.name, str(value))
        if not value.is_absolute():
            raise _fail(owner, attribute.name, f"={_show(value)} must be an absolute path", value)

    return check


_v_optional_abs_path = _v_abs_path(optional=True)


def _v_cwd(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # codex runs every turn there: a missing directory is a typo to report now, not one to create silently.
    _v_optional_abs_path(owner, attribute, value)
    if isinstance(value, Path) and not value.is_dir():
        what = "is not a directory" if value.exists() else "does not exist"
        raise _fail(
            owner, attribute.name, f"={str(value)!r} {what}; create it first or pass an existing directory", value
        )


def _v_optional_text(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise _bad_type(owner, attribute.name, "a string or None", value)


def _v_codex_bin(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        if not isinstance(value, str):
            raise _bad_type(owner, attribute.name, "a string or None", value)
        _os_text(owner, attribute.name, value)


def _v_approval_policy(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise _bad_type(owner, attribute.name, f"one of {_one_of(APPROVAL_POLICIES)}", value)
    if value == "untrusted":
        raise _fail(
            owner,
            attribute.name,
            f"={value!r} is refused: codex 0.169 exits at startup with '{_UNTRUSTED_REASON}'; "
            f"use one of {_one_of(APPROVAL_POLICIES)}",
            value,
        )
    if value not in APPROVAL_POLICIES:
        allowed = _one_of(APPROVAL_POLICIES)
        raise _fail(owner, attribute.name, f"={_show(value)} is not one of {allowed}", value)


def _v_enum(allowed: tuple[str, ...]) -> Any:
    def check(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str):
            raise _bad_type(owner, attribute.name, f"one of {_one_of(allowed)}", value)
        if value not in allowed:
            raise _fail(owner, attribute.name, f"={_show(value)} is not one of {_one_of(allowed)}", value)

    return check


def _v_args(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise _bad_type(owner, attribute.name, "a sequence of strings", value)
    for i, item in enumerate(value):
        _os_text(owner, f"{attribute.name}[{i}]", item, allow_empty=True)


def _v_env(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping):
        raise _bad_type(owner, attribute.name, "a mapping of strings to strings", value)
    for key, item in value.items():
        if not isinstance(key, str):
            raise _bad_type(owner, f"{attribute.name} key", "a string", key)
        if not key or "=" in key or "\0" in key:
            rule = "must be non-empty with no '=' or NUL character"
            raise _fail(owner, attribute.name, f" key {_show(key)} {rule}", key)
        _os_text(owner, f"{attribute.name}[{key!r}] key", key)
        _os_text(owner, f"{attribute.name}[{key!r}]", item, allow_empty=True)


def _v_method_names(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise _bad_type(owner, attribute.name, "a sequence of notification method names", value)
    for i, item in enumerate(value):
        _text(owner, f"{attribute.name}[{i}]", item)


def _v_seconds(*, allow_zero: bool) -> Any:
    rule = "a finite number >= 0 (seconds)" if allow_zero else "a finite number > 0 (seconds)"

    def check(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, float):
            raise _bad_type(owner, attribute.name, rule, value)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise _fail(owner, attribute.name, f"={_show(value)} must be {rule}", value)

    return check


_positive = _v_seconds(allow_zero=False)
_non_negative = _v_seconds(allow_zero=True)


def _v_int_at_least(minimum: int, note: str = "") -> Any:
    def check(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_type(owner, attribute.name, f"an int >= {minimum}{note}", value)
        if value < minimum:
            raise _fail(owner, attribute.name, f"={_show(value)} must be an int >= {minimum}{note}", value)

    return check


def _v_optional_int_at_least(minimum: int, note: str = "") -> Any:
    check_int = _v_int_at_least(minimum, note)

    def check(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check_int(owner, attribute, value)

    return check


def _v_optional_positive(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _positive(owner, attribute, value)


def _v_restart(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, RestartPolicy):
        raise _bad_type(owner, attribute.name, "a codex_trio.RestartPolicy", value)


def _v_client_name(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # codex sends it as the `originator` HTTP header, so it has to be a plain printable ASCII token.
    text = _text(owner, attribute.name, value)
    if len(text) > 128 or not all(" " <= ch <= "~" for ch in text) or text != text.strip():
        raise _fail(
            owner,
            attribute.name,
            f"={_show(value)} must be 1-128 printable ASCII characters without surrounding spaces "
            f"(codex sends it as an HTTP header)",
            value,
        )


def _v_records(kind: type, *, unique: bool) -> Any:
    def check(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, tuple):
            raise _bad_type(owner, attribute.name, f"a sequence of {kind.__name__}", value)
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, kind):
                raise _bad_type(owner, f"{attribute.name}[{i}]", f"a {kind.__name__}", item)
            name: str = getattr(item, "name", "")
            if unique and name in seen:
                rule = "names must be unique"
                raise _fail(owner, attribute.name, f" has two entries named {name!r}; {rule}", name)
            seen.add(name)

    return check


# --- records ------------------------------------------------------------------------------------------------


def _v_name(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _utf8_text(owner, attribute.name, value)


def _v_command(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _utf8_text(owner, attribute.name, value)


def _v_mcp_args(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise _bad_type(owner, attribute.name, "a sequence of strings", value)
    for i, item in enumerate(value):
        _utf8_text(owner, f"{attribute.name}[{i}]", item, allow_empty=True)


def _v_mcp_env(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _v_env(owner, attribute, value)
    for key, item in value.items():  # type: ignore[attr-defined]
        _utf8_text(owner, f"{attribute.name}[{key!r}] key", key)
        _utf8_text(owner, f"{attribute.name}[{key!r}]", item, allow_empty=True)


@attrs.frozen
class McpServer:
    """A stdio MCP server handed to codex with ``-c mcp_servers.<name>...`` (merged with config.toml's)."""

    name: str = attrs.field(validator=_v_name)
    command: str = attrs.field(validator=_v_command)
    args: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple, validator=_v_mcp_args)
    env: Mapping[str, str] = attrs.field(
        factory=dict, converter=_to_mapping, validator=_v_mcp_env, hash=False, repr=masked_env
    )


def _v_layout(owner: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _text(owner, attribute.name, value)


@attrs.frozen
class SkillSource:
    """A skill directory; for ``layout == "skill-dir"`` its parent becomes a codex skills extra root."""

    name: str = attrs.field(validator=_v_name)
    path: Path = attrs.field(converter=_to_path, validator=_v_abs_path(optional=False))
    layout: str = attrs.field(default="skill-dir", validator=_v_layout)


@attrs.frozen(kw_only=True)
class RuntimeConfig:
    """Everything one runtime needs, validated on construction (:class:`~codex_trio.ConfigError` otherwise).

    Sequences may be given as lists and mappings as any ``Mapping``; they are stored as tuples and read-only
    copies. Timeouts are seconds. ``codex_home`` sets ``CODEX_HOME`` for the child; without it the child
    inherits the environment's (or codex's default ``~/.codex``).
    """

    runtime_id: str = attrs.field(default="default", validator=_v_runtime_id)
    cwd: Path | None = attrs.field(default=None, converter=_to_path, validator=_v_cwd)
    codex_bin: str | None = attrs.field(default=None, validator=_v_codex_bin)
    codex_home: Path | None = attrs.field(default=None, converter=_to_path, validator=_v_optional_abs_path)
    base_instructions: str | None = attrs.field(default=None, validator=_v_optional_text)
    developer_instructions: str | None = attrs.field(default=None, validator=_v_optional_text)
    approval_policy: str = attrs.field(default="never", validator=_v_approval_policy)
    sandbox_mode: str = attrs.field(default="workspace-write", validator=_v_enum(SANDBOX_MODES))
    extra_args: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple, validator=_v_args)
    extra_env: Mapping[str, str] = attrs.field(
        factory=dict, converter=_to_mapping, validator=_v_env, hash=False, repr=masked_env
    )
    inject_env: Mapping[str, str] = attrs.field(
        factory=dict, converter=_to_mapping, validator=_v_env, hash=False, repr=masked_env
    )
    mcp_servers: tuple[McpServer, ...] = attrs.field(
        default=(), converter=_to_tuple, validator=_v_records(McpServer, unique=True)
    )
    skill_sources: tuple[SkillSource, ...] = attrs.field(
        default=(), converter=_to_tuple, validator=_v_records(SkillSource, unique=False)
    )
    handshake_timeout: float = attrs.field(default=10.0, converter=_to_float, validator=_positive)
    request_timeout: float = attrs.field(default=60.0, converter=_to_float, validator=_positive)
    turn_timeout: float = attrs.field(default=600.0, converter=_to_float, validator=_positive)
    ready_timeout: float = attrs.field(default=10.0, converter=_to_float, validator=_positive)
    #: Give up on a turn whose model codex cannot reach: at codex's ``model_retry_limit``-th retry notice
    #: ("Reconnecting... 3/5", "Reconnecting... waiting for network"), or ``model_retry_timeout`` seconds after
    #: the first of at least two, with no progress in the turn between them. The turn's inputs settle ``failed``
    #: with codex's words and the turn is interrupted. ``None`` turns a bound off (``turn_timeout`` still holds).
    #: Without network codex 0.171 retries forever, first after ~3 s, then ever further apart (8 s, 13 s, 23 s);
    #: against HTTP 500s it retries 5 times (~20 s) before it gives up itself: the defaults end both in ~10-25 s.
    model_retry_limit: int | None = attrs.field(default=3, validator=_v_optional_int_at_least(1, " or None"))
    model_retry_timeout: float | None = attrs.field(
        default=20.0, converter=_to_optional_float, validator=_v_optional_positive
    )
    grace_period: float = attrs.field(default=1.0, converter=_to_float, validator=_non_negative)
    approval_timeout: float = attrs.field(default=60.0, converter=_to_float, validator=_positive)
    restart: RestartPolicy = attrs.field(factory=RestartPolicy, validator=_v_restart)
    dedup_window: int = attrs.field(default=1024, validator=_v_int_at_least(0, " (0 disables dedup)"))
    delivery_mode: DeliveryMode = attrs.field(default="steer", validator=_v_enum(DELIVERY_MODES))
    socket_dir: Path | None = attrs.field(default=None, converter=_to_path, validator=_v_optional_abs_path)
    log_dir: Path | None = attrs.field(default=None, converter=_to_path, validator=_v_optional_abs_path)
    spill_dir: Path | None = attrs.field(default=None, converter=_to_path, validator=_v_optional_abs_path)
    state_dir: Path | None = attrs.field(default=None, converter=_to_path, validator=_v_optional_abs_path)
    max_message_size: int = attrs.field(
        default=64 * 2**20, validator=_v_int_at_least(_MIN_MESSAGE_SIZE, " bytes (1 MiB)")
    )
    event_buffer: int = attrs.field(default=1024, validator=_v_int_at_least(_MIN_EVENT_BUFFER))
    opt_out_notification_methods: tuple[str, ...] = attrs.field(
        default=(), converter=_to_tuple, validator=_v_method_names
    )
    client_name: str = attrs.field(default="codex_trio", validator=_v_client_name)

    def __attrs_post_init__(self) -> None:
        # MCP server env values reach their servers through codex's own environment (see child_env), so one
        # name cannot carry two values.
        seen: dict[str, tuple[str, str]] = {
            key: (value, "extra_env") for key, value in {**self.inject_env, **self.extra_env}.items()
        }
        for server in self.mcp_servers:
            for key, value in server.env.items():
                other = seen.get(key)
                if other is not None and other[0] != value:
                    raise ConfigError(
                        f"RuntimeConfig.mcp_servers: {server.name!r} sets env {key!r} to a different value than "
                        f"{other[1]}; codex passes MCP server env through its own environment, so one name can "
                        f"have only one value — rename the variable for one of them",
                        field="mcp_servers",
                        value=key,
                    )
                seen[key] = (value, f"MCP server {server.name!r}")


# --- TOML literals for `-c key=value` -----------------------------------------------------------------------

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string: quotes, backslashes and every control character escaped."""
    out = ['"']
    for ch in value:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """``key`` as a TOML key: bare when it can be, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def _toml_array(items: Sequence[str]) -> str:
    return "[" + ", ".join(toml_string(item) for item in items) + "]"


def _toml_inline_table(entries: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{toml_key(k)}={v}" for k, v in entries.items()) + "}"


def _mcp_table(server: McpServer) -> str:
    fields = {"command": toml_string(server.command), "args": _toml_array(server.args)}
    if server.env:
        fields["env_vars"] = _toml_array(list(server.env))
    return _toml_inline_table(fields)


def _mcp_args(servers: Sequence[McpServer]) -> list[str]:
    args: list[str] = []
    # See the module docstring: dotted/odd names only survive as one whole-table override, which must come
    # before any per-key `mcp_servers.<name>.*` override or it would erase them.
    odd = [s for s in servers if not _BARE_KEY.fullmatch(s.name)]
    if odd:
        args += ["-c", "mcp_servers=" + _toml_inline_table({s.name: _mcp_table(s) for s in odd})]
    for server in servers:
        if not _BARE_KEY.fullmatch(server.name):
            continue
        prefix = f"mcp_servers.{server.name}"
        args += ["-c", f"{prefix}.command={toml_string(server.command)}"]
        args += ["-c", f"{prefix}.args={_toml_array(server.args)}"]
        if server.env:
            # Only the names: the values go into codex's environment (child_env), which codex forwards to the
            # server (`env_vars`). Values on the command line would be readable by any local user (ps, /proc).
            args += ["-c", f"{prefix}.env_vars={_toml_array(list(server.env))}"]
    return args


def codex_cli_args(config: RuntimeConfig) -> list[str]:
    """The codex config overrides: approval policy, sandbox mode, MCP servers, then ``extra_args``.

    ``extra_args`` come last so that a user's own ``-c key=...`` wins over anything set here (codex keeps the
    last override of a key).
    """
    return [
        "-c",
        f"approval_policy={toml_string(config.approval_policy)}",
        "-c",
        f"sandbox_mode={toml_string(config.sandbox_mode)}",
        *_mcp_args(config.mcp_servers),
        *config.extra_args,
    ]


def child_env(config: RuntimeConfig, base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The app-server child's environment: ``base``, then ``inject_env``, then ``extra_env`` (later wins).

    ``codex_home``, when configured, sets ``CODEX_HOME`` over all of them. ``RUST_LOG`` defaults to ``warn``
    because codex's info level writes hundreds of lines per session to stderr.
    """
    env = dict(base)
    env.update(config.inject_env)
    env.update(config.extra_env)
    for server in config.mcp_servers:
        env.update(server.env)  # forwarded by codex to that server through `env_vars` (see _mcp_args)
    if config.codex_home is not None:
        env["CODEX_HOME"] = str(config.codex_home)
    env.setdefault("RUST_LOG", "warn")
    return env


def app_server_argv(config: RuntimeConfig, bin: str, socket_path: Path) -> list[str]:
    """The full argv of ``codex app-server`` listening on ``socket_path``."""
    return [bin, "app-server", "--listen", f"unix://{socket_path}", *codex_cli_args(config)]
