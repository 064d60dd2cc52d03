"""attrs models of the app-server protocol subset codex_trio uses, and the one cattrs converter for them.

Field names are snake_case here and camelCase on the wire (``thread_id`` ↔ ``threadId``); the converter renames
them. Unknown fields are tolerated everywhere (codex adds fields in minor versions), and every model that wraps
open-ended data keeps the raw dict, so nothing the server sent is ever dropped: an item of a type we do not
model is still an :class:`Item` with ``type`` and ``raw``.

``tests/real/test_protocol_schema.py`` generates the JSON schema from the pinned binary and checks every model
here against it, so protocol drift fails CI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

__all__ = [
    "SERVER_REQUEST_METHODS",
    "AgentMessageDelta",
    "ClientInfo",
    "ErrorNotification",
    "ImageUrlInput",
    "InitializeCapabilities",
    "InitializeParams",
    "InitializeResult",
    "Item",
    "ItemNotification",
    "LocalImageInput",
    "SkillsExtraRootsSetParams",
    "TextInput",
    "ThreadInjectItemsParams",
    "ThreadResumeParams",
    "ThreadStartParams",
    "ThreadStartResult",
    "ThreadStatusChanged",
    "Turn",
    "TurnError",
    "TurnInterruptParams",
    "TurnNotification",
    "TurnStartParams",
    "TurnStartResult",
    "TurnSteerParams",
    "TurnSteerResult",
    "UserInput",
    "converter",
    "structure",
    "unstructure",
]

T = TypeVar("T")

#: The ten server-request methods of the 0.169 stable schema (``ServerRequest.json``).
SERVER_REQUEST_METHODS: Final = (
    "item/commandExecution/requestApproval",
    "item/fileChange/requestApproval",
    "item/tool/requestUserInput",
    "mcpServer/elicitation/request",
    "item/permissions/requestApproval",
    "item/tool/call",
    "account/chatgptAuthTokens/refresh",
    "attestation/generate",
    "applyPatchApproval",
    "execCommandApproval",
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# --- handshake ------------------------------------------------------------------------------------------------


@attrs.frozen
class ClientInfo:
    name: str
    version: str
    title: str | None = None


@attrs.frozen
class InitializeCapabilities:
    experimental_api: bool = True
    opt_out_notification_methods: list[str] | None = None


@attrs.frozen
class InitializeParams:
    client_info: ClientInfo
    capabilities: InitializeCapabilities | None = None


@attrs.frozen
class InitializeResult:
    user_agent: str
    codex_home: str
    platform_family: str
    platform_os: str


# --- inputs, items, turns -------------------------------------------------------------------------------------


@attrs.frozen
class TextInput:
    text: str
    type: str = "text"
    # The wire name really is snake_case here (schema: ``text_elements``).
    text_elements: list[Any] = attrs.field(factory=list)


@attrs.frozen
class ImageUrlInput:
    """An image by URL (``http(s)://`` or ``data:``): codex's ``image`` user input."""

    url: str
    type: str = "image"


@attrs.frozen
class LocalImageInput:
    """An image file codex reads when the turn starts: its ``localImage`` user input."""

    path: str
    type: str = "localImage"


UserInput = TextInput | ImageUrlInput | LocalImageInput


@attrs.frozen
class Item:
    """A thread item. ``type`` and ``id`` are typed; everything else stays in ``raw``."""

    type: str
    id: str | None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def text(self) -> str | None:
        value = self.raw.get("text")
        return value if isinstance(value, str) else None


@attrs.frozen
class TurnError:
    message: str
    additional_details: str | None = None
    codex_error_info: Any = None


@attrs.frozen
class Turn:
    id: str
    status: str = "inProgress"
    items: list[Item] = attrs.field(factory=list)
    error: TurnError | None = None
    duration_ms: int | None = None


# --- requests -------------------------------------------------------------------------------------------------


@attrs.frozen
class ThreadStartParams:
    base_instructions: str | None = None
    developer_instructions: str | None = None
    cwd: str | None = None


@attrs.frozen
class ThreadResumeParams:
    thread_id: str
    base_instructions: str | None = None
    developer_instructions: str | None = None
    cwd: str | None = None
    # Without it codex sends the whole history back and a deprecationNotice (codex-app-server.md §5).
    exclude_turns: bool | None = True


@attrs.frozen
class ThreadStartResult:
    thread_id: str
    model: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


@attrs.frozen
class TurnStartParams:
    """``turn/start``. The settings (model ... output_schema) hold for this turn; codex keeps all but
    ``output_schema`` for the thread's later turns too."""

    thread_id: str
    input: list[UserInput]
    client_user_message_id: str | None = None
    cwd: str | None = None
    model: str | None = None
    effort: str | None = None
    summary: str | None = None
    approval_policy: str | None = None
    sandbox_policy: Mapping[str, Any] | None = None
    output_schema: Mapping[str, Any] | None = None


@attrs.frozen
class TurnStartResult:
    turn: Turn


@attrs.frozen
class TurnSteerParams:
    thread_id: str
    expected_turn_id: str
    input: list[UserInput]
    client_user_message_id: str | None = None


@attrs.frozen
class TurnSteerResult:
    turn_id: str


@attrs.frozen
class TurnInterruptParams:
    thread_id: str
    turn_id: str


@attrs.frozen
class ThreadInjectItemsParams:
    thread_id: str
    items: list[Mapping[str, Any]]


@attrs.frozen
class SkillsExtraRootsSetParams:
    extra_roots: list[str]


# --- notifications --------------------------------------------------------------------------------------------


@attrs.frozen
class TurnNotification:
    """``turn/started`` and ``turn/completed``."""

    thread_id: str
    turn: Turn


@attrs.frozen
class ItemNotification:
    """``item/started`` and ``item/completed``."""

    thread_id: str
    turn_id: str
    item: Item


@attrs.frozen
class AgentMessageDelta:
    thread_id: str
    turn_id: str
    item_id: str
    delta: str


@attrs.frozen
class ErrorNotification:
    error: TurnError
    thread_id: str | None = None
    turn_id: str | None = None
    will_retry: bool | None = None


@attrs.frozen
class ThreadStatusChanged:
    thread_id: str
    status: Mapping[str, Any]

    @property
    def kind(self) -> str | None:
        value = self.status.get("type")
        return value if isinstance(value, str) else None


# --- the converter --------------------------------------------------------------------------------------------

converter = cattrs.Converter(omit_if_default=False, forbid_extra_keys=False)

# Models whose field name on the wire is not the camelCase of the attribute.
_WIRE_NAMES: dict[tuple[type, str], str] = {(TextInput, "text_elements"): "text_elements"}


def _wire(cls: type, name: str) -> str:
    return _WIRE_NAMES.get((cls, name), _camel(name))


def _structure_factory(cls: type[Any]) -> Any:
    overrides = {a.name: override(rename=_wire(cls, a.name)) for a in attrs.fields(cls) if a.name != "raw"}
    return make_dict_structure_fn(cls, converter, **overrides)  # type: ignore[arg-type]


def _unstructure_factory(cls: type[Any]) -> Any:
    overrides = {a.name: override(rename=_wire(cls, a.name)) for a in attrs.fields(cls)}
    base = make_dict_unstructure_fn(cls, converter, **overrides)  # type: ignore[arg-type]

    def unstructure_dropping_none(obj: Any) -> dict[str, Any]:
        # Optional request fields are omitted rather than sent as null: codex treats a present null differently
        # from an absent key for some of them (e.g. cwd).
        return {k: v for k, v in base(obj).items() if v is not None}

    return unstructure_dropping_none


def _structure_item(value: Any, _: type) -> Item:
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        raise ValueError(f"a thread item must be an object with a string 'type' (got {value!r:.200})")
    item_id = value.get("id")
    return Item(value["type"], item_id if isinstance(item_id, str) else None, dict(value))


def _structure_thread_start(value: Any, _: type) -> ThreadStartResult:
    thread = value.get("thread") if isinstance(value, Mapping) else None
    if not isinstance(thread, Mapping) or not isinstance(thread.get("id"), str):
        raise ValueError(f"thread/start result has no thread.id (got {value!r:.200})")
    model = value.get("model")
    return ThreadStartResult(thread["id"], model if isinstance(model, str) else None, dict(value))


def _structure_mapping(value: Any, _: type) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected an object (got {type(value).__name__})")
    return dict(value)


converter.register_structure_hook(Item, _structure_item)
converter.register_unstructure_hook(
    Item, lambda item: {"type": item.type, **({"id": item.id} if item.id is not None else {}), **item.raw}
)
converter.register_structure_hook(ThreadStartResult, _structure_thread_start)
converter.register_structure_hook_func(lambda t: t == Mapping[str, Any], _structure_mapping)
converter.register_structure_hook_factory(attrs.has, _structure_factory)
converter.register_unstructure_hook_factory(attrs.has, _unstructure_factory)


def structure(value: Any, cls: type[T]) -> T:
    """Decode wire data into ``cls``; raises ``cattrs`` errors (ValueError/TypeError family) on mismatch."""
    return converter.structure(value, cls)


def unstructure(obj: object) -> dict[str, Any]:
    """Encode a model as wire params (camelCase keys, ``None`` fields omitted)."""
    result = converter.unstructure(obj)
    assert isinstance(result, dict)
    return result
