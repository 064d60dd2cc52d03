"""Protocol drift: the models of ``codex_trio._protocol`` against the JSON schema the pinned codex generates.

``codex app-server generate-json-schema --out DIR`` writes the stable schema (§2 of codex-app-server.md) in a
second. For every model ↔ schema pair this checks, in the direction that matters for it:

* every wire name of the model is a property in the schema (a typo or a renamed field fails here);
* params we send carry every field the schema requires (and never leave one out as ``None``);
* results and notifications we parse model every field the schema requires (the exceptions are listed with the
  reason), and every field the *model* requires is required by the schema, so a valid message always parses;
  a field the model cannot hold ``None`` in is not nullable in the schema;
* enums we branch on hold exactly the values we handle;
* the method names we call, route and answer are the schema's, with the params types we model.
"""

from __future__ import annotations

import json
import os
import subprocess
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from codex_trio import _protocol as p
from codex_trio.testing._real_codex import require_codex_bin

pytestmark = pytest.mark.real_codex

Schema = dict[str, Any]


@pytest.fixture(scope="module")
def schema_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = require_codex_bin()
    home = tmp_path_factory.mktemp("codex-home")
    out = tmp_path_factory.mktemp("schema")
    proc = subprocess.run(
        [binary, "app-server", "generate-json-schema", "--out", str(out)],
        env={**os.environ, "CODEX_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"generate-json-schema failed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return out


def load(schema_dir: Path, rel: str) -> Schema:
    doc = json.loads((schema_dir / rel).read_text())
    assert isinstance(doc, dict)
    return doc


def resolve(doc: Schema, node: Schema) -> Schema:
    """Follow a local ``$ref`` (``#/definitions/X``) inside ``doc``."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/definitions/"), ref
        node = doc["definitions"][ref.removeprefix("#/definitions/")]
    return node


def variant(doc: Schema, union: str, type_tag: str) -> Schema:
    """The member of a ``oneOf`` union definition whose ``type`` property is the single enum value ``type_tag``."""
    for member in doc["definitions"][union]["oneOf"]:
        if member.get("properties", {}).get("type", {}).get("enum") == [type_tag]:
            assert isinstance(member, dict)
            return member
    raise AssertionError(f"{union} has no {type_tag!r} variant")


def methods(doc: Schema) -> dict[str, str | None]:
    """Method name → the definition its params refer to, for a ClientRequest/ServerRequest/… union."""
    found: dict[str, str | None] = {}
    for member in doc["oneOf"]:
        (method,) = member["properties"]["method"]["enum"]
        ref = member["properties"].get("params", {}).get("$ref")
        found[method] = ref.removeprefix("#/definitions/") if ref else None
    return found


def nullable(doc: Schema, prop: Schema) -> bool:
    prop = resolve(doc, prop)
    kinds = prop.get("type")
    if kinds == "null" or (isinstance(kinds, list) and "null" in kinds):
        return True
    return any(nullable(doc, m) for key in ("anyOf", "oneOf") for m in prop.get(key, []))


# -- the pairs -------------------------------------------------------------------------------------------------


@attrs.frozen
class Pair:
    model: type[Any]
    file: str
    #: ``None`` for the file's top-level object, ``"Name"`` for a definition in it, ``"Union:tag"`` for a variant.
    where: str | None = None
    sent: bool = False  # params we send; otherwise a result or notification we parse
    #: Schema-required fields the model deliberately does not hold (parsing ignores them), with the reason.
    unmodelled: Mapping[str, str] = attrs.field(factory=dict)

    def node(self, schema_dir: Path) -> tuple[Schema, Schema]:
        doc = load(schema_dir, self.file)
        if self.where is None:
            return doc, doc
        if ":" in self.where:
            union, tag = self.where.split(":")
            return doc, variant(doc, union, tag)
        return doc, doc["definitions"][self.where]

    def __str__(self) -> str:
        return f"{self.model.__name__}@{self.file}{'#' + self.where if self.where else ''}"


TIMESTAMP = "a lifecycle timestamp; codex_trio does not use it"

PAIRS = [
    # sent
    Pair(p.InitializeParams, "v1/InitializeParams.json", sent=True),
    Pair(p.ClientInfo, "v1/InitializeParams.json", "ClientInfo", sent=True),
    Pair(p.InitializeCapabilities, "v1/InitializeParams.json", "InitializeCapabilities", sent=True),
    Pair(p.ThreadStartParams, "v2/ThreadStartParams.json", sent=True),
    Pair(p.ThreadResumeParams, "v2/ThreadResumeParams.json", sent=True),
    Pair(p.TurnStartParams, "v2/TurnStartParams.json", sent=True),
    Pair(p.TextInput, "v2/TurnStartParams.json", "UserInput:text", sent=True),
    Pair(p.TurnSteerParams, "v2/TurnSteerParams.json", sent=True),
    Pair(p.TextInput, "v2/TurnSteerParams.json", "UserInput:text", sent=True),
    Pair(p.LocalImageInput, "v2/TurnStartParams.json", "UserInput:localImage", sent=True),
    Pair(p.LocalImageInput, "v2/TurnSteerParams.json", "UserInput:localImage", sent=True),
    Pair(p.TurnInterruptParams, "v2/TurnInterruptParams.json", sent=True),
    Pair(p.ThreadInjectItemsParams, "v2/ThreadInjectItemsParams.json", sent=True),
    Pair(p.SkillsExtraRootsSetParams, "v2/SkillsExtraRootsSetParams.json", sent=True),
    # parsed
    Pair(p.InitializeResult, "v1/InitializeResponse.json"),
    Pair(p.TurnStartResult, "v2/TurnStartResponse.json"),
    Pair(p.Turn, "v2/TurnStartResponse.json", "Turn"),
    Pair(p.TurnSteerResult, "v2/TurnSteerResponse.json"),
    Pair(p.TurnNotification, "v2/TurnStartedNotification.json"),
    Pair(p.TurnNotification, "v2/TurnCompletedNotification.json"),
    Pair(p.Turn, "v2/TurnStartedNotification.json", "Turn"),
    Pair(p.Turn, "v2/TurnCompletedNotification.json", "Turn"),
    Pair(p.TurnError, "v2/TurnCompletedNotification.json", "TurnError"),
    Pair(p.ItemNotification, "v2/ItemStartedNotification.json", unmodelled={"startedAtMs": TIMESTAMP}),
    Pair(p.ItemNotification, "v2/ItemCompletedNotification.json", unmodelled={"completedAtMs": TIMESTAMP}),
    Pair(p.AgentMessageDelta, "v2/AgentMessageDeltaNotification.json"),
    Pair(p.ErrorNotification, "v2/ErrorNotification.json"),
    Pair(p.TurnError, "v2/ErrorNotification.json", "TurnError"),
    Pair(p.ThreadStatusChanged, "v2/ThreadStatusChangedNotification.json"),
]
SENT = [pair for pair in PAIRS if pair.sent]
PARSED = [pair for pair in PAIRS if not pair.sent]


def wire_fields(cls: type[Any]) -> dict[str, attrs.Attribute[Any]]:
    """Wire name → attrs field (``raw`` holds the whole object and has no wire name of its own)."""
    return {p._wire(cls, a.name): a for a in attrs.fields(cls) if a.name != "raw"}


def admits_none(cls: type[Any], name: str) -> bool:
    hint = typing.get_type_hints(cls)[name]
    return hint is Any or type(None) in typing.get_args(hint)


# -- field names, required fields, nullability -----------------------------------------------------------------


@pytest.mark.parametrize("pair", PAIRS, ids=str)
def test_every_model_field_is_a_schema_property(schema_dir: Path, pair: Pair) -> None:
    _, node = pair.node(schema_dir)
    unknown = set(wire_fields(pair.model)) - set(node["properties"])
    assert not unknown, f"{pair}: not in the schema: {sorted(unknown)} (schema has {sorted(node['properties'])})"


@pytest.mark.parametrize("pair", SENT, ids=str)
def test_params_always_send_what_the_schema_requires(schema_dir: Path, pair: Pair) -> None:
    _, node = pair.node(schema_dir)
    fields = wire_fields(pair.model)
    # unstructure() drops None, so a required field must be one that cannot be left as None by default.
    always_sent = {name for name, a in fields.items() if a.default is attrs.NOTHING or a.default is not None}
    missing = set(node.get("required", [])) - always_sent
    assert not missing, f"{pair}: schema requires {sorted(missing)}, which the model may leave out"


@pytest.mark.parametrize("pair", PARSED, ids=str)
def test_parsed_models_hold_what_the_schema_requires(schema_dir: Path, pair: Pair) -> None:
    _, node = pair.node(schema_dir)
    required = set(node.get("required", []))
    fields = wire_fields(pair.model)
    missing = required - set(fields) - set(pair.unmodelled)
    assert not missing, f"{pair}: schema requires {sorted(missing)}, not modelled (add them, or to `unmodelled`)"
    stale = set(pair.unmodelled) - (required - set(fields))
    assert not stale, f"{pair}: `unmodelled` exceptions {sorted(stale)} are no longer required-and-unmodelled"
    # A field the model requires must be one codex always sends, or a valid message would not parse.
    model_required = {name for name, a in fields.items() if a.default is attrs.NOTHING}
    assert model_required <= required, f"{pair}: model requires {sorted(model_required - required)}"


@pytest.mark.parametrize("pair", PARSED, ids=str)
def test_parsed_fields_that_cannot_hold_none_are_not_nullable(schema_dir: Path, pair: Pair) -> None:
    doc, node = pair.node(schema_dir)
    for name, a in wire_fields(pair.model).items():
        if not admits_none(pair.model, a.name):
            assert not nullable(doc, node["properties"][name]), f"{pair}: {name} may be null on the wire"


# -- enums and unions we branch on -----------------------------------------------------------------------------

#: The turn statuses the runtime tells apart (``_runtime._outcome``: completed, interrupted, else failed) plus the
#: model's default for a running turn. A status codex adds would silently become "failed": it must fail here.
HANDLED_TURN_STATUSES = {"completed", "interrupted", "failed", "inProgress"}


@pytest.mark.parametrize("file", ["v2/TurnCompletedNotification.json", "v2/TurnStartResponse.json"])
def test_turn_status_enum_is_what_we_handle(schema_dir: Path, file: str) -> None:
    doc = load(schema_dir, file)
    assert resolve(doc, doc["definitions"]["Turn"]["properties"]["status"]) == doc["definitions"]["TurnStatus"]
    assert set(doc["definitions"]["TurnStatus"]["enum"]) == HANDLED_TURN_STATUSES
    assert attrs.fields(p.Turn).status.default in HANDLED_TURN_STATUSES


@pytest.mark.parametrize("file", ["v2/TurnStartParams.json", "v2/TurnSteerParams.json"])
def test_text_input_type_tag_is_a_user_input(schema_dir: Path, file: str) -> None:
    doc = load(schema_dir, file)
    params = load(schema_dir, file)["properties"]["input"]
    assert resolve(doc, params["items"]) == doc["definitions"]["UserInput"]
    assert "type" in variant(doc, "UserInput", p.TextInput("x").type)["required"]


@pytest.mark.parametrize("file", ["v2/TurnStartParams.json", "v2/TurnSteerParams.json"])
def test_an_image_by_url_is_a_user_input(schema_dir: Path, file: str) -> None:
    # ``url`` sits in an ``anyOf`` (url or fileId) beside the ``type`` tag, not among the variant's properties.
    doc = load(schema_dir, file)
    image = variant(doc, "UserInput", p.ImageUrlInput("x").type)
    assert image["required"] == ["type"]
    assert {
        "properties": {"url": {"type": "string"}},
        "required": ["url"],
        "title": "UrlUserInput",
        "type": "object",
    } in (image["anyOf"])


def test_turn_option_values_are_the_schemas(schema_dir: Path) -> None:
    """The values ``TurnOptions`` accepts and what it sends are those of the pinned codex's ``TurnStartParams``."""
    from codex_trio import _turn_options as o

    doc = load(schema_dir, "v2/TurnStartParams.json")
    defs = doc["definitions"]
    assert set(o._SUMMARIES) == {v for m in defs["ReasoningSummary"]["oneOf"] for v in m["enum"]}
    assert set(o._APPROVALS) == {v for m in defs["AskForApproval"]["oneOf"] if "enum" in m for v in m["enum"]}
    sandbox_types = {m["properties"]["type"]["enum"][0] for m in defs["SandboxPolicy"]["oneOf"]}
    assert set(o._SANDBOX_TYPES.values()) <= sandbox_types
    # 0.171 takes any non-empty effort a model advertises; ours are the known ones
    assert defs["ReasoningEffort"] == {
        "description": defs["ReasoningEffort"]["description"],
        "minLength": 1,
        "type": "string",
    }
    props = doc["properties"]
    for name in ("model", "effort", "summary", "approvalPolicy", "sandboxPolicy", "cwd", "outputSchema"):
        assert name in props, name


@pytest.mark.parametrize("file", ["v2/ItemCompletedNotification.json", "v2/TurnCompletedNotification.json"])
def test_every_thread_item_has_a_string_type_and_id(schema_dir: Path, file: str) -> None:
    # Item structures any item with a string `type` and keeps the string `id`; codex must always send both.
    doc = load(schema_dir, file)
    members = doc["definitions"]["ThreadItem"]["oneOf"]
    assert len(members) > 5
    for member in members:
        assert {"type", "id"} <= set(member["required"]), member.get("title")
        assert member["properties"]["type"]["type"] == "string"
        assert member["properties"]["id"]["type"] == "string"
    agent = variant(doc, "ThreadItem", "agentMessage")  # Item.text: where the runtime reads the answer
    assert "text" in agent["required"] and agent["properties"]["text"]["type"] == "string"


def test_every_thread_status_has_a_string_type(schema_dir: Path) -> None:
    doc = load(schema_dir, "v2/ThreadStatusChangedNotification.json")
    assert resolve(doc, doc["properties"]["status"]) == doc["definitions"]["ThreadStatus"]
    for member in doc["definitions"]["ThreadStatus"]["oneOf"]:
        assert "type" in member["required"]  # ThreadStatusChanged.kind
        assert member["properties"]["type"]["type"] == "string"


@pytest.mark.parametrize("file", ["v2/ThreadStartResponse.json", "v2/ThreadResumeResponse.json"])
def test_thread_result_carries_the_thread_id(schema_dir: Path, file: str) -> None:
    # ThreadStartResult has a hand-written hook: it reads `thread.id` and `model`, and keeps the rest raw.
    doc = load(schema_dir, file)
    assert "thread" in doc["required"]
    thread = resolve(doc, doc["properties"]["thread"])
    assert "id" in thread["required"] and thread["properties"]["id"]["type"] == "string"
    assert doc["properties"]["model"]["type"] == "string"


# -- method names ----------------------------------------------------------------------------------------------

#: The client requests codex_trio sends, with the params model of each.
CLIENT_REQUESTS: dict[str, type[Any]] = {
    "initialize": p.InitializeParams,
    "thread/start": p.ThreadStartParams,
    "thread/resume": p.ThreadResumeParams,
    "turn/start": p.TurnStartParams,
    "turn/steer": p.TurnSteerParams,
    "turn/interrupt": p.TurnInterruptParams,
    "thread/inject_items": p.ThreadInjectItemsParams,
    "skills/extraRoots/set": p.SkillsExtraRootsSetParams,
}

#: The notifications the runtime routes, with the schema type of their params.
NOTIFICATIONS: dict[str, str] = {
    "turn/started": "TurnStartedNotification",
    "turn/completed": "TurnCompletedNotification",
    "item/started": "ItemStartedNotification",
    "item/completed": "ItemCompletedNotification",
    "item/agentMessage/delta": "AgentMessageDeltaNotification",
    "error": "ErrorNotification",
    "thread/status/changed": "ThreadStatusChangedNotification",
}


def test_server_request_methods_match_the_schema(schema_dir: Path) -> None:
    schema_methods = methods(load(schema_dir, "ServerRequest.json"))
    assert set(p.SERVER_REQUEST_METHODS) == set(schema_methods)
    assert len(p.SERVER_REQUEST_METHODS) == len(set(p.SERVER_REQUEST_METHODS))


@pytest.mark.parametrize(("method", "model"), CLIENT_REQUESTS.items(), ids=list(CLIENT_REQUESTS))
def test_client_requests_exist_with_our_params_type(schema_dir: Path, method: str, model: type[Any]) -> None:
    schema_methods = methods(load(schema_dir, "ClientRequest.json"))
    assert method in schema_methods, f"{method} is not a client request of this codex"
    assert schema_methods[method] == model.__name__


@pytest.mark.parametrize(("method", "params"), NOTIFICATIONS.items(), ids=list(NOTIFICATIONS))
def test_routed_notifications_exist_with_the_checked_params_type(schema_dir: Path, method: str, params: str) -> None:
    schema_methods = methods(load(schema_dir, "ServerNotification.json"))
    assert method in schema_methods, f"{method} is not a server notification of this codex"
    assert schema_methods[method] == params
    checked = {Path(pair.file).stem for pair in PARSED if pair.where is None}
    assert params in checked, f"{params} is routed but no model is checked against it"
