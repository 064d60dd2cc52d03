"""RuntimeConfig validation, and the argv / environment it turns into."""

from __future__ import annotations

import math
import tomllib
import typing
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pytest
from hypothesis import given, settings, strategies as st

from codex_trio._config import (
    APPROVAL_POLICIES,
    SANDBOX_MODES,
    McpServer,
    RuntimeConfig,
    SkillSource,
    app_server_argv,
    child_env,
    codex_cli_args,
    toml_key,
    toml_string,
)
from codex_trio._errors import ConfigError
from codex_trio._policy import RestartPolicy

# --- construction --------------------------------------------------------------------------------------------


def test_defaults() -> None:
    config = RuntimeConfig()
    assert config.runtime_id == "default"
    assert config.approval_policy == "never"
    assert config.sandbox_mode == "workspace-write"
    assert (config.handshake_timeout, config.request_timeout, config.turn_timeout) == (10.0, 60.0, 600.0)
    assert (config.ready_timeout, config.grace_period, config.approval_timeout) == (10.0, 1.0, 60.0)
    assert config.restart == RestartPolicy()
    assert config.dedup_window == 1024
    assert config.delivery_mode == "steer"
    assert config.max_message_size == 64 * 2**20
    assert config.event_buffer == 1024
    assert config.client_name == "codex_trio"
    assert config.extra_args == () and dict(config.extra_env) == {} and dict(config.inject_env) == {}


def test_lists_become_tuples_and_mappings_become_read_only_copies() -> None:
    env = {"A": "1"}
    config = RuntimeConfig(
        extra_args=["--enable", "x"],
        extra_env=env,
        mcp_servers=[McpServer("s", "cmd", ["a"])],
        skill_sources=[SkillSource("k", "/skills/k/SKILL.md")],
        opt_out_notification_methods=["thread/started"],
    )
    assert config.extra_args == ("--enable", "x")
    assert config.mcp_servers == (McpServer("s", "cmd", ("a",)),)
    assert config.skill_sources[0].path == Path("/skills/k/SKILL.md")
    assert config.opt_out_notification_methods == ("thread/started",)
    env["A"] = "changed"
    assert config.extra_env == {"A": "1"}
    with pytest.raises(TypeError):
        config.extra_env["B"] = "2"  # type: ignore[index]


def test_path_fields_accept_strings_and_pathlikes(tmp_path: Path) -> None:
    config = RuntimeConfig(cwd=str(tmp_path), socket_dir=PurePosixPath("/run/x"))
    assert config.cwd == tmp_path
    assert config.socket_dir == Path("/run/x")


def test_a_cwd_that_does_not_exist_or_is_a_file_is_refused_naming_the_field_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(ConfigError, match=r"RuntimeConfig\.cwd='.*/no-such-dir' does not exist; create it") as info:
        RuntimeConfig(cwd=missing)
    assert (info.value.field, info.value.value) == ("cwd", missing)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"RuntimeConfig\.cwd='.*/file' is not a directory"):
        RuntimeConfig(cwd=tmp_path / "file")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model_retry_limit": 0}, "model_retry_limit"),
        ({"model_retry_limit": 1.5}, "model_retry_limit"),
        ({"model_retry_limit": True}, "model_retry_limit"),
        ({"model_retry_timeout": 0}, "model_retry_timeout"),
        ({"model_retry_timeout": float("inf")}, "model_retry_timeout"),
        ({"model_retry_timeout": "20"}, "model_retry_timeout"),
    ],
)
def test_model_retry_bounds_are_validated(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RuntimeConfig(**fields)  # type: ignore[arg-type]
    assert info.value.field == field


def test_model_retry_bounds_default_to_giving_up_within_half_a_minute_and_can_be_turned_off() -> None:
    config = RuntimeConfig()
    assert (config.model_retry_limit, config.model_retry_timeout) == (3, 20.0)
    off = RuntimeConfig(model_retry_limit=None, model_retry_timeout=None)
    assert (off.model_retry_limit, off.model_retry_timeout) == (None, None)
    assert RuntimeConfig(model_retry_timeout=5).model_retry_timeout == 5.0


def test_int_timeouts_become_floats_and_zero_grace_is_allowed() -> None:
    config = RuntimeConfig(handshake_timeout=3, grace_period=0)
    assert config.handshake_timeout == 3.0 and isinstance(config.handshake_timeout, float)
    assert config.grace_period == 0.0


def test_config_is_frozen_hashable_and_comparable() -> None:
    a = RuntimeConfig(extra_env={"A": "1"}, mcp_servers=[McpServer("s", "c", env={"K": "v"})])
    b = RuntimeConfig(extra_env={"A": "1"}, mcp_servers=[McpServer("s", "c", env={"K": "v"})])
    assert a == b and hash(a) == hash(b)
    assert a != RuntimeConfig(extra_env={"A": "2"})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.runtime_id = "x"  # type: ignore[misc]


@pytest.mark.parametrize("policy", APPROVAL_POLICIES)
@pytest.mark.parametrize("sandbox", SANDBOX_MODES)
def test_every_codex_policy_and_sandbox_is_accepted(policy: str, sandbox: str) -> None:
    config = RuntimeConfig(approval_policy=policy, sandbox_mode=sandbox)
    assert (config.approval_policy, config.sandbox_mode) == (policy, sandbox)


def test_untrusted_is_refused_with_codexs_own_reason() -> None:
    with pytest.raises(ConfigError) as info:
        RuntimeConfig(approval_policy="untrusted")
    message = str(info.value)
    assert info.value.field == "approval_policy" and info.value.value == "untrusted"
    assert "RuntimeConfig.approval_policy='untrusted'" in message
    assert 'approval_policy = "untrusted" is no longer supported; remove this setting' in message
    assert "'never' | 'on-request' | 'on-failure'" in message


def test_sandbox_message_matches_the_documented_form() -> None:
    with pytest.raises(ConfigError) as info:
        RuntimeConfig(sandbox_mode="sandbox")
    assert str(info.value) == (
        "RuntimeConfig.sandbox_mode='sandbox' is not one of 'read-only' | 'workspace-write' | 'danger-full-access'"
    )


def test_extra_args_type_message() -> None:
    with pytest.raises(ConfigError) as info:
        RuntimeConfig(extra_args=5)  # type: ignore[arg-type]
    assert str(info.value) == "RuntimeConfig.extra_args must be a sequence of strings (got int: 5)"


class _Weird:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


# (kwargs, field named in the message, text that shows the bad value)
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"runtime_id": ""}, "runtime_id", "''"),
    ({"runtime_id": "a/b"}, "runtime_id", "'a/b'"),
    ({"runtime_id": "x" * 65}, "runtime_id", "'xxxx"),
    ({"runtime_id": ".."}, "runtime_id", "'..'"),
    ({"runtime_id": 7}, "runtime_id", "7"),
    ({"cwd": "relative/dir"}, "cwd", "relative/dir"),
    ({"cwd": 3}, "cwd", "3"),
    ({"cwd": "/a\0b"}, "cwd", "'/a\\x00b'"),
    ({"codex_bin": ""}, "codex_bin", "''"),
    ({"codex_bin": "  "}, "codex_bin", "'  '"),
    ({"codex_bin": b"/bin/codex"}, "codex_bin", "b'/bin/codex'"),
    ({"codex_bin": "co\0dex"}, "codex_bin", "'co\\x00dex'"),
    ({"codex_home": "rel"}, "codex_home", "rel"),
    ({"base_instructions": 1}, "base_instructions", "1"),
    ({"developer_instructions": ["x"]}, "developer_instructions", "['x']"),
    ({"approval_policy": "auto"}, "approval_policy", "'auto'"),
    ({"approval_policy": "Never"}, "approval_policy", "'Never'"),
    ({"approval_policy": None}, "approval_policy", "None"),
    ({"sandbox_mode": "sandbox"}, "sandbox_mode", "'sandbox'"),
    ({"sandbox_mode": 1}, "sandbox_mode", "1"),
    ({"extra_args": "-c x=1"}, "extra_args", "'-c x=1'"),
    ({"extra_args": [1]}, "extra_args[0]", "1"),
    ({"extra_args": ["ok", "n\0ul"]}, "extra_args[1]", "'n\\x00ul'"),
    ({"extra_env": ["A=1"]}, "extra_env", "['A=1']"),
    ({"extra_env": {"": "x"}}, "extra_env", "''"),
    ({"extra_env": {"A=B": "x"}}, "extra_env", "'A=B'"),
    ({"extra_env": {1: "x"}}, "extra_env key", "1"),
    ({"extra_env": {"A": 1}}, "extra_env['A']", "1"),
    ({"extra_env": {"A": "x\0"}}, "extra_env['A']", "'x\\x00'"),
    ({"inject_env": {"K\0": "v"}}, "inject_env", "'K\\x00'"),
    ({"inject_env": "A=1"}, "inject_env", "'A=1'"),
    ({"mcp_servers": [("s", "c")]}, "mcp_servers[0]", "('s', 'c')"),
    ({"mcp_servers": [McpServer("s", "a"), McpServer("s", "b")]}, "mcp_servers", "'s'"),
    ({"mcp_servers": McpServer("s", "a")}, "mcp_servers", "McpServer(name='s'"),
    ({"skill_sources": ["/a/SKILL.md"]}, "skill_sources[0]", "'/a/SKILL.md'"),
    ({"handshake_timeout": 0}, "handshake_timeout", "0.0"),
    ({"handshake_timeout": -1.5}, "handshake_timeout", "-1.5"),
    ({"request_timeout": math.inf}, "request_timeout", "inf"),
    ({"turn_timeout": math.nan}, "turn_timeout", "nan"),
    ({"ready_timeout": "10"}, "ready_timeout", "'10'"),
    ({"grace_period": -0.1}, "grace_period", "-0.1"),
    ({"approval_timeout": True}, "approval_timeout", "True"),
    ({"approval_timeout": 10**400}, "approval_timeout", "1000000"),
    ({"restart": {"base_delay": 1}}, "restart", "{'base_delay': 1}"),
    ({"dedup_window": -1}, "dedup_window", "-1"),
    ({"dedup_window": True}, "dedup_window", "True"),
    ({"dedup_window": 1.0}, "dedup_window", "1.0"),
    ({"delivery_mode": "interrupt"}, "delivery_mode", "'interrupt'"),
    ({"socket_dir": "run/sock"}, "socket_dir", "run/sock"),
    ({"log_dir": "logs"}, "log_dir", "logs"),
    ({"spill_dir": "."}, "spill_dir", "."),
    ({"state_dir": b"/state"}, "state_dir", "b'/state'"),
    ({"max_message_size": 2**20 - 1}, "max_message_size", "1048575"),
    ({"max_message_size": False}, "max_message_size", "False"),
    ({"event_buffer": 15}, "event_buffer", "15"),
    ({"event_buffer": 16.0}, "event_buffer", "16.0"),
    ({"opt_out_notification_methods": "thread/started"}, "opt_out_notification_methods", "'thread/started'"),
    ({"opt_out_notification_methods": [""]}, "opt_out_notification_methods[0]", "''"),
    ({"opt_out_notification_methods": [None]}, "opt_out_notification_methods[0]", "None"),
    ({"client_name": ""}, "client_name", "''"),
    ({"client_name": "bad\nname"}, "client_name", "'bad\\nname'"),
    ({"client_name": "ünïcode"}, "client_name", "'ünïcode'"),
    ({"client_name": " padded"}, "client_name", "' padded'"),
    ({"client_name": _Weird()}, "client_name", "_Weird with a failing repr"),
]


@pytest.mark.parametrize(("kwargs", "field", "shown"), INVALID, ids=[f"{c[1]}-{i}" for i, c in enumerate(INVALID)])
def test_invalid_values_name_the_field_and_the_value(kwargs: dict[str, Any], field: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        RuntimeConfig(**kwargs)
    message = str(info.value)
    assert message.startswith(f"RuntimeConfig.{field}"), message
    assert shown in message, message
    assert info.value.field == field


# (class, kwargs, field, shown)
INVALID_RECORDS: list[tuple[type, dict[str, Any], str, str]] = [
    (McpServer, {"name": "", "command": "c"}, "name", "''"),
    (McpServer, {"name": 1, "command": "c"}, "name", "1"),
    (McpServer, {"name": "s", "command": ""}, "command", "''"),
    (McpServer, {"name": "s", "command": "c\0"}, "command", "'c\\x00'"),
    (McpServer, {"name": "s", "command": "c", "args": "a b"}, "args", "'a b'"),
    (McpServer, {"name": "s", "command": "c", "args": [None]}, "args[0]", "None"),
    (McpServer, {"name": "s", "command": "c", "args": ["\ud800"]}, "args[0]", "'\\ud800'"),
    (McpServer, {"name": "s", "command": "c", "env": {"A": 2}}, "env['A']", "2"),
    (McpServer, {"name": "s", "command": "c", "env": {"A=": "x"}}, "env", "'A='"),
    (SkillSource, {"name": "k", "path": "rel/SKILL.md"}, "path", "rel/SKILL.md"),
    (SkillSource, {"name": "k", "path": None}, "path", "None"),
    (SkillSource, {"name": "", "path": "/a"}, "name", "''"),
    (SkillSource, {"name": "k", "path": "/a", "layout": 3}, "layout", "3"),
]


@pytest.mark.parametrize(("cls", "kwargs", "field", "shown"), INVALID_RECORDS)
def test_invalid_records_name_the_field_and_the_value(
    cls: type, kwargs: dict[str, Any], field: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{cls.__name__}.{field}"), message
    assert shown in message, message


# --- property: construction only ever raises ConfigError -----------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=6),
    st.builds(object),
    st.sampled_from(["/abs", "rel", "never", "read-only", "queue", "\0", "\ud800", "a=b"]),
    st.sampled_from([Path("/abs"), Path("rel"), PurePosixPath("/p")]),
)
_anything = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3),
    ),
    max_leaves=6,
)


_text = st.text(max_size=10)
# attrs gives converter-typed __init__ parameters (Sequence[Any]), which from_type cannot resolve, so the
# records are built explicitly: well-typed fields, plus arbitrary values through _anything.
_mcp_servers = st.builds(
    McpServer,
    name=_text | _anything,
    command=_text | _anything,
    args=st.lists(_text) | _anything,
    env=st.dictionaries(_text, _text, max_size=2) | _anything,
)
_skill_sources = st.builds(SkillSource, name=_text, path=st.sampled_from(["/s/SKILL.md", "s"]), layout=_text)
_RECORD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "mcp_servers": st.lists(_mcp_servers, max_size=3),
    "skill_sources": st.lists(_skill_sources, max_size=2),
}


_paths = st.none() | st.text(max_size=10).map(Path) | st.text(max_size=10).map(lambda t: Path("/", t))


def _field_strategy(name: str) -> st.SearchStrategy[Any]:
    hint = typing.get_type_hints(RuntimeConfig)[name]
    if name in _RECORD_FIELDS:
        typed = _RECORD_FIELDS[name]
    elif hint == Path | None:
        typed = _paths  # from_type(Path) can only build Path()
    else:
        typed = st.from_type(hint)
    return _anything | typed


_config_kwargs = st.fixed_dictionaries(
    {}, optional={f.name: _field_strategy(f.name) for f in attrs.fields(RuntimeConfig)}
)
_mcp_kwargs = st.fixed_dictionaries(
    {"name": _text | _anything, "command": _text | _anything},
    optional={
        "args": st.lists(_text) | _anything,
        "env": st.dictionaries(_text, _text, max_size=2) | _anything,
    },
)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_construction_only_ever_raises_config_error(data: st.DataObject) -> None:
    # Drawing may itself build McpServer/RestartPolicy from arbitrary values, so it is inside the try too.
    try:
        kwargs = data.draw(_config_kwargs)
        config = RuntimeConfig(**kwargs)
    except ConfigError as exc:
        assert exc.field, str(exc)
        assert str(exc).split(".", 1)[0] in {"RuntimeConfig", "McpServer", "SkillSource", "RestartPolicy"}
        return
    # Whatever was accepted is usable: argv and env build without error.
    args = codex_cli_args(config)
    assert all(isinstance(a, str) and "\0" not in a for a in args)
    child_env(config, {})


@pytest.mark.parametrize("name", [f.name for f in attrs.fields(RuntimeConfig)])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_each_field_alone_only_ever_raises_config_error_naming_it(name: str, data: st.DataObject) -> None:
    # One arbitrary field, the rest default: every field's validation is reached, not just the first ones.
    try:
        value = data.draw(_field_strategy(name))
    except ConfigError:
        return  # building a nested record (McpServer, RestartPolicy, ...) from junk already failed cleanly
    try:
        RuntimeConfig(**{name: value})
    except ConfigError as exc:
        assert exc.field is not None and exc.field.split("[")[0].split(" ")[0] == name, str(exc)
        assert str(exc).startswith(f"RuntimeConfig.{name}")


@settings(max_examples=200, deadline=None)
@given(kwargs=_mcp_kwargs)
def test_mcp_construction_only_ever_raises_config_error(kwargs: dict[str, Any]) -> None:
    try:
        McpServer(**kwargs)
    except ConfigError as exc:
        assert str(exc).startswith("McpServer.")


# --- TOML literals and CLI args ------------------------------------------------------------------------------

_toml_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@given(value=_toml_text)
def test_toml_string_round_trips(value: str) -> None:
    assert tomllib.loads(f"k = {toml_string(value)}")["k"] == value


@given(key=_toml_text.filter(bool))
def test_toml_key_round_trips(key: str) -> None:
    assert tomllib.loads(f"{toml_key(key)} = 1") == {key: 1}


def test_toml_key_is_bare_only_for_bare_keys() -> None:
    assert toml_key("my_server-2") == "my_server-2"
    assert toml_key("my.server") == '"my.server"'
    assert toml_key("") == '""'


def test_default_cli_args_are_exact() -> None:
    assert codex_cli_args(RuntimeConfig()) == [
        "-c",
        'approval_policy="never"',
        "-c",
        'sandbox_mode="workspace-write"',
    ]


def test_extra_args_come_last_so_a_same_key_override_wins() -> None:
    config = RuntimeConfig(
        approval_policy="on-request",
        sandbox_mode="read-only",
        extra_args=["-c", 'sandbox_mode="danger-full-access"'],
        mcp_servers=[McpServer("docs", "/usr/bin/docs-mcp", ["--port", "0"])],
    )
    assert codex_cli_args(config) == [
        "-c",
        'approval_policy="on-request"',
        "-c",
        'sandbox_mode="read-only"',
        "-c",
        'mcp_servers.docs.command="/usr/bin/docs-mcp"',
        "-c",
        'mcp_servers.docs.args=["--port", "0"]',
        "-c",
        'sandbox_mode="danger-full-access"',
    ]


def test_mcp_env_names_go_to_codex_and_values_to_its_environment() -> None:
    config = RuntimeConfig(mcp_servers=[McpServer("s", "c", env={"TOKEN": 'a"b', "X.Y": "1"})])
    assert codex_cli_args(config)[4:] == [
        "-c",
        'mcp_servers.s.command="c"',
        "-c",
        "mcp_servers.s.args=[]",
        "-c",
        'mcp_servers.s.env_vars=["TOKEN", "X.Y"]',
    ]
    env = child_env(config, {})
    assert (env["TOKEN"], env["X.Y"]) == ('a"b', "1")
    assert 'a"b' not in " ".join(codex_cli_args(config))


def test_mcp_env_names_cannot_carry_two_values() -> None:
    with pytest.raises(ConfigError, match="one name can have only one value"):
        RuntimeConfig(mcp_servers=[McpServer("a", "c", env={"K": "1"}), McpServer("b", "c", env={"K": "2"})])
    with pytest.raises(ConfigError, match="different value than extra_env"):
        RuntimeConfig(extra_env={"K": "0"}, mcp_servers=[McpServer("a", "c", env={"K": "1"})])
    RuntimeConfig(
        extra_env={"K": "1"}, mcp_servers=[McpServer("a", "c", env={"K": "1"}), McpServer("b", "c", env={"K": "1"})]
    )


def test_dotted_mcp_name_is_one_quoted_table_before_the_bare_names() -> None:
    # codex 0.169 splits `-c` keys on every dot, even inside quotes, so a dotted name only survives as a key
    # of a whole `mcp_servers={...}` table; that table must precede per-key overrides or it would erase them.
    config = RuntimeConfig(
        mcp_servers=[
            McpServer("plain", "p"),
            McpServer("my.server", "/bin/srv", ["--x"], {"A": "1"}),
            McpServer("with space", "w"),
        ]
    )
    args = codex_cli_args(config)
    assert args[4:] == [
        "-c",
        'mcp_servers={"my.server"={command="/bin/srv", args=["--x"], env_vars=["A"]}, '
        '"with space"={command="w", args=[]}}',
        "-c",
        'mcp_servers.plain.command="p"',
        "-c",
        "mcp_servers.plain.args=[]",
    ]
    table = tomllib.loads(args[5])["mcp_servers"]
    assert table == {
        "my.server": {"command": "/bin/srv", "args": ["--x"], "env_vars": ["A"]},
        "with space": {"command": "w", "args": []},
    }


@given(
    name=_toml_text.filter(lambda s: s.strip() != "" and "\0" not in s),
    command=_toml_text.filter(lambda s: s.strip() != "" and "\0" not in s),
    args=st.lists(_toml_text.filter(lambda s: "\0" not in s), max_size=3),
)
def test_any_mcp_server_round_trips_through_toml(name: str, command: str, args: list[str]) -> None:
    cli = codex_cli_args(RuntimeConfig(mcp_servers=[McpServer(name, command, args)]))
    overrides = [cli[i + 1] for i in range(4, len(cli), 2)]
    merged: dict[str, Any] = {}
    for override in overrides:
        key, _, value = override.partition("=")
        parsed = tomllib.loads(f"v = {value}")["v"]
        # Mirror codex: the key path is split on every dot.
        target = merged
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = parsed
    assert merged == {"mcp_servers": {name: {"command": command, "args": args}}}


def test_app_server_argv_is_exact() -> None:
    config = RuntimeConfig(sandbox_mode="read-only", extra_args=["--disable", "plugins"])
    assert app_server_argv(config, "/opt/codex", Path("/run/ct/a.sock")) == [
        "/opt/codex",
        "app-server",
        "--listen",
        "unix:///run/ct/a.sock",
        "-c",
        'approval_policy="never"',
        "-c",
        'sandbox_mode="read-only"',
        "--disable",
        "plugins",
    ]


# --- child environment ---------------------------------------------------------------------------------------


def test_child_env_precedence() -> None:
    base = {"A": "base", "B": "base", "C": "base", "CODEX_HOME": "/base/home", "PATH": "/bin"}
    config = RuntimeConfig(
        inject_env={"B": "inject", "C": "inject"},
        extra_env={"C": "extra", "CODEX_HOME": "/extra/home"},
        codex_home=Path("/config/home"),
    )
    env = child_env(config, base)
    assert env == {
        "A": "base",
        "B": "inject",
        "C": "extra",
        "CODEX_HOME": "/config/home",
        "PATH": "/bin",
        "RUST_LOG": "warn",
    }
    assert base["B"] == "base"  # the base is not modified


def test_child_env_keeps_codex_home_and_rust_log_when_given() -> None:
    assert child_env(RuntimeConfig(), {"CODEX_HOME": "/h", "RUST_LOG": "debug"}) == {
        "CODEX_HOME": "/h",
        "RUST_LOG": "debug",
    }
    assert child_env(RuntimeConfig(extra_env={"RUST_LOG": "info"}), {})["RUST_LOG"] == "info"
    assert child_env(RuntimeConfig(inject_env={"RUST_LOG": "error"}), {})["RUST_LOG"] == "error"


def test_child_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEX_TRIO_TEST_MARKER", "yes")
    assert child_env(RuntimeConfig())["CODEX_TRIO_TEST_MARKER"] == "yes"
