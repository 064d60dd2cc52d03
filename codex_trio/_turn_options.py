"""Per-turn options and images: what travels on ``turn/start`` (and ``turn/steer``) beside an input's text.

Theory of operation
-------------------
A caller passes :class:`TurnOptions` to ``Runtime.submit`` and images on :class:`~codex_trio.ChannelInput`. Both
are checked at the door by :func:`check_options` and :func:`check_images` (so a typo or a missing file is an
:class:`~codex_trio.InvalidInput` before anything is recorded, never a failed turn later), normalised (a ``cwd``
and a local image path become absolute there and then, so a later change of the process's directory does not
matter), stored with the submission as one JSON document (:func:`encode_payload`, the ``pending.options``
column) and sent by the engine (``_engine.delivery_params``).

The value sets are those of the pinned codex's schema (``TurnStartParams``): ``effort`` is the reasoning effort
(codex 0.171 takes any non-empty string a model advertises; the known ones are accepted here), ``summary`` the
reasoning-summary mode, ``approval_policy`` codex's ``AskForApproval`` names, ``sandbox`` the names of
``config.toml``'s ``sandbox_mode`` (sent as codex's ``sandboxPolicy`` object). codex keeps every one of them but
``outputSchema`` for the thread's later turns too ("for this turn and subsequent turns"): a later input without
options runs with what the last one set.

No Trio here; the file checks of :func:`check_images` do blocking I/O, so the runtime runs them in a thread.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Final, Literal, TypeAlias, get_args

import attrs

from ._errors import InvalidInput
from ._json import JsonValue

__all__ = [
    "IMAGE_URL_PREFIXES",
    "AskForApproval",
    "ImageInput",
    "ReasoningEffort",
    "ReasoningSummary",
    "SandboxMode",
    "TurnOptions",
    "check_images",
    "check_options",
    "decode_payload",
    "encode_payload",
    "parse_output",
    "sandbox_policy",
]

ReasoningEffort: TypeAlias = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
ReasoningSummary: TypeAlias = Literal["auto", "concise", "detailed", "none"]
AskForApproval: TypeAlias = Literal["untrusted", "on-request", "never"]
SandboxMode: TypeAlias = Literal["read-only", "workspace-write", "danger-full-access"]

_EFFORTS: Final = get_args(ReasoningEffort)
_SUMMARIES: Final = get_args(ReasoningSummary)
_APPROVALS: Final = get_args(AskForApproval)
#: the simple names callers use -> the ``type`` of codex's ``SandboxPolicy`` object
_SANDBOX_TYPES: Final[Mapping[str, str]] = {
    "read-only": "readOnly",
    "workspace-write": "workspaceWrite",
    "danger-full-access": "dangerFullAccess",
}
MAX_MODEL_CHARS: Final = 256
#: Images per input. codex has no documented bound; this keeps one input's request and stored row reasonable.
MAX_IMAGES: Final = 16
#: A ``data:`` URL travels inside the input (and the stored row): bound it as codex bounds text input.
MAX_DATA_URL_CHARS: Final = 20 * 1024 * 1024
#: An ``http(s)://`` image is fetched at submit (codex does not fetch images): at most this big, within this time.
MAX_IMAGE_BYTES: Final = MAX_DATA_URL_CHARS // 4 * 3 - 64
IMAGE_FETCH_TIMEOUT: Final = 30.0

#: What is taken as a URL (anything else is a path). codex takes ``data:`` URLs only; the others are refused with
#: the reason, rather than looked for as files.
IMAGE_URL_PREFIXES: Final = ("http://", "https://", "data:")
_DATA_URL = re.compile(r"data:image/(png|jpeg|jpg|gif|webp);base64,(.+)", re.DOTALL)
#: The image formats codex reads from a local file, by their first bytes.
_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)


def _fspath(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


def _choices(values: Iterable[str]) -> str:
    return " | ".join(repr(v) for v in values)


@attrs.frozen
class TurnOptions:
    """Settings for the turn an input starts. ``None`` leaves a setting as codex has it.

    ``model``: the model name (e.g. ``"gpt-5.1-codex"``). ``effort``: the reasoning effort. ``summary``: the
    reasoning-summary mode. ``sandbox``: ``"read-only"``, ``"workspace-write"`` or ``"danger-full-access"``.
    ``approval_policy``: ``"untrusted"``, ``"on-request"`` or ``"never"``. ``cwd``: the turn's working directory
    (must exist; made absolute at ``submit``). ``output_schema``: a JSON Schema (an object) the final message must
    follow; the settlement then carries the parsed JSON as ``Settlement.output``.

    codex keeps every setting but ``output_schema`` for the thread's later turns. An input whose options differ
    from those of the turn it would steer into does not steer: it starts its own turn once that one ended (see
    ``Runtime.submit``). Checked by ``submit``: a bad value is :class:`~codex_trio.InvalidInput` naming the field
    and what is accepted.
    """

    model: str | None = None
    effort: ReasoningEffort | None = None
    summary: ReasoningSummary | None = None
    sandbox: SandboxMode | None = None
    approval_policy: AskForApproval | None = None
    cwd: str | None = attrs.field(default=None, converter=_fspath)
    #: Any mapping of JSON values (so a literal ``{"type": "object", ...}`` type-checks as it is); ``submit`` keeps
    #: a copy made of plain JSON, so a later change of the caller's dict does not reach the stored input.
    output_schema: Mapping[str, object] | None = None

    @property
    def empty(self) -> bool:
        return self == _NO_OPTIONS


_NO_OPTIONS: Final = TurnOptions()


@attrs.frozen
class ImageInput:
    """One image beside an input's text: a ``data:image/...;base64,`` URL (codex's ``image`` input) or a local file
    (an absolute path, codex's ``localImage``: codex reads it when the turn starts and sends the model a data
    URL)."""

    kind: Literal["url", "local"]
    value: str


# -- checks at the door ----------------------------------------------------------------------------------------------


def _bad(name: str, message: str) -> InvalidInput:
    return InvalidInput(f"options.{name} {message}", field=f"options.{name}")


def _require_utf8(field: str, value: str) -> None:
    """A lone surrogate (an undecodable byte of a path, say) cannot be sent: refuse it here, not on the wire."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{field} holds a character UTF-8 cannot encode at index {exc.start} (an undecodable byte?): "
            f"{value!r:.200}",
            field=field,
        ) from None


def check_options(options: object) -> TurnOptions | None:
    """``options`` checked and normalised (``cwd`` absolute); None when it sets nothing. Raises
    :class:`~codex_trio.InvalidInput` naming the field and the accepted values. Looks at the disk (``cwd``)."""
    if options is None:
        return None
    if not isinstance(options, TurnOptions):
        raise InvalidInput(f"options must be a TurnOptions or None, got {type(options).__name__}", field="options")
    if options.model is not None:
        if not isinstance(options.model, str) or not options.model.strip():
            raise _bad("model", f"must be a non-empty model name, got {options.model!r}")
        if len(options.model) > MAX_MODEL_CHARS or any(c.isspace() for c in options.model):
            raise _bad("model", f"must be a model name (no spaces, at most {MAX_MODEL_CHARS} characters)")
        _require_utf8("options.model", options.model)
    for name, value, allowed in (
        ("effort", options.effort, _EFFORTS),
        ("summary", options.summary, _SUMMARIES),
        ("sandbox", options.sandbox, tuple(_SANDBOX_TYPES)),
        ("approval_policy", options.approval_policy, _APPROVALS),
    ):
        if value is not None and value not in allowed:
            raise _bad(name, f"is {value!r}; accepted: {_choices(allowed)} (or None: leave it as codex has it)")
    cwd = options.cwd
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd or "\0" in cwd:
            raise _bad("cwd", f"must be a path to an existing directory, got {cwd!r}")
        absolute = os.path.abspath(os.path.expanduser(cwd))
        _require_utf8("options.cwd", absolute)
        if not os.path.isdir(absolute):
            what = "does not exist" if not os.path.exists(absolute) else "is not a directory"
            raise _bad("cwd", f"{absolute!r} {what}; pass an existing directory")
        cwd = absolute
    schema = options.output_schema
    if schema is not None:
        if not isinstance(schema, Mapping):
            raise _bad("output_schema", f"must be a JSON Schema object (a dict), got {type(schema).__name__}")
        try:
            text = json.dumps(dict(schema), allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise _bad("output_schema", f"is not JSON ({exc})") from None
        _require_utf8("options.output_schema", text)
        schema = json.loads(text)
    checked = attrs.evolve(options, cwd=cwd, output_schema=schema)
    return None if checked.empty else checked


def _check_url(index: int, url: str) -> ImageInput:
    field = f"images[{index}]"
    _require_utf8(field, url)
    if url.startswith("data:"):
        if len(url) > MAX_DATA_URL_CHARS:
            raise InvalidInput(
                f"{field} is a data: URL of {len(url)} characters; at most {MAX_DATA_URL_CHARS}", field=field
            )
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise InvalidInput(
                f"{field} is not a data:image/<png|jpeg|gif|webp>;base64,<data> URL: {url[:60]!r}", field=field
            )
        try:
            base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{field} holds data that is not valid base64", field=field) from None
        return ImageInput("url", url)
    if url.startswith(("http://", "https://")):
        # codex 0.171 refuses a remote URL on turn/start ("remote image URLs are not supported; use an inline data
        # URL instead", -32600). So it is fetched here, at submit, and travels (and is stored) as a data URL: an
        # image that cannot be had is the caller's error now, not a failed turn later, and a restart or a resend
        # needs no second fetch.
        return ImageInput("url", _fetch(field, url))
    raise InvalidInput(f"{field} is not an image URL codex accepts: {url[:100]!r}", field=field)  # pragma: no cover


def _fetch(field: str, url: str) -> str:
    """``url``'s image as a ``data:`` URL. Blocking (a worker thread's job); honours the proxy environment."""
    request = urllib.request.Request(url, headers={"User-Agent": "codex-trio", "Accept": "image/*"})
    try:
        deadline = time.monotonic() + IMAGE_FETCH_TIMEOUT
        with urllib.request.urlopen(request, timeout=IMAGE_FETCH_TIMEOUT) as response:
            # In pieces, against one deadline: a socket timeout alone bounds each read, not a server that trickles.
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_IMAGE_BYTES:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete within {IMAGE_FETCH_TIMEOUT:g}s")
                chunk = response.read(min(65536, MAX_IMAGE_BYTES + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            body = b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise InvalidInput(
            f"{field}: fetching {url[:100]!r} answered HTTP {exc.code} {exc.reason}", field=field
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InvalidInput(
            f"{field}: cannot fetch {url[:100]!r} ({reason}); check the URL and the network, or pass a local file",
            field=field,
        ) from None
    if len(body) > MAX_IMAGE_BYTES:
        raise InvalidInput(f"{field}: {url[:100]!r} is larger than {MAX_IMAGE_BYTES} bytes", field=field)
    kind = _sniff(body[:16])
    if kind is None:
        raise InvalidInput(
            f"{field}: {url[:100]!r} is not a PNG, JPEG, GIF or WebP image (its first bytes are {body[:8]!r})",
            field=field,
        )
    return f"data:image/{kind};base64,{base64.b64encode(body).decode('ascii')}"


def _sniff(head: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _check_file(index: int, path: str) -> ImageInput:
    field = f"images[{index}]"
    if not path or "\0" in path:
        raise InvalidInput(f"{field} must be a URL or a path to an image file, got {path!r}", field=field)
    absolute = os.path.abspath(os.path.expanduser(path))
    _require_utf8(field, absolute)
    hint = " (an image URL must be a data:image/...;base64, URL)"
    try:
        info = os.stat(absolute)
    except FileNotFoundError:
        raise InvalidInput(f"{field}: no such image file {absolute!r}{hint}", field=field) from None
    except OSError as exc:
        raise InvalidInput(f"{field}: cannot read image file {absolute!r}: {exc.strerror}", field=field) from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"{field}: {absolute!r} is a directory, not an image file", field=field)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"{field}: {absolute!r} is not a regular file", field=field)
    try:
        with open(absolute, "rb") as file:
            head = file.read(16)
    except OSError as exc:
        raise InvalidInput(f"{field}: cannot read image file {absolute!r}: {exc.strerror}", field=field) from None
    if _sniff(head) is None:
        raise InvalidInput(
            f"{field}: {absolute!r} is not a PNG, JPEG, GIF or WebP image (its first bytes are {head[:8]!r})",
            field=field,
        )
    return ImageInput("local", absolute)


def check_images(images: Iterable[str]) -> tuple[ImageInput, ...]:
    """Each image checked: a ``data:image/...;base64,`` URL or an existing, readable image file (PNG, JPEG, GIF,
    WebP, by its first bytes), made absolute; an ``http(s)://`` URL is fetched now (codex does not fetch images)
    and becomes a data URL. Raises :class:`~codex_trio.InvalidInput` naming ``images[i]``. Blocking I/O (it reads
    each file's first bytes, and fetches remote images)."""
    images = tuple(images)
    if len(images) > MAX_IMAGES:
        raise InvalidInput(f"{len(images)} images; at most {MAX_IMAGES} per input", field="images")
    out: list[ImageInput] = []
    for index, image in enumerate(images):
        if image.startswith(IMAGE_URL_PREFIXES):
            out.append(_check_url(index, image))
        else:
            out.append(_check_file(index, image))
    return tuple(out)


# -- the wire --------------------------------------------------------------------------------------------------------


def sandbox_policy(mode: SandboxMode) -> dict[str, JsonValue]:
    """codex's ``SandboxPolicy`` object for a sandbox name (its defaults: no network, no extra writable roots)."""
    return {"type": _SANDBOX_TYPES[mode]}


# -- the store -------------------------------------------------------------------------------------------------------


def encode_payload(options: TurnOptions | None, images: Iterable[ImageInput]) -> str | None:
    """One JSON document for the ``pending.options`` column; None when there is nothing to keep."""
    document: dict[str, object] = {}
    if options is not None:
        document["options"] = {
            "model": options.model,
            "effort": options.effort,
            "summary": options.summary,
            "sandbox": options.sandbox,
            "approval_policy": options.approval_policy,
            "cwd": options.cwd,
            "output_schema": options.output_schema,
        }
    stored_images = [[image.kind, image.value] for image in images]
    if stored_images:
        document["images"] = stored_images
    return json.dumps(document, separators=(",", ":"), allow_nan=False) if document else None


def decode_payload(text: str | None) -> tuple[TurnOptions | None, tuple[ImageInput, ...]]:
    """The options and images :func:`encode_payload` stored. A document this version cannot read raises
    ``ValueError`` (the store is from a newer codex_trio, or damaged)."""
    if text is None:
        return None, ()
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError(f"stored turn options are not a JSON object: {text[:200]!r}")
    options: TurnOptions | None = None
    raw = document.get("options")
    if isinstance(raw, dict):
        options = TurnOptions(**{key: raw.get(key) for key in attrs.fields_dict(TurnOptions)})
    images: list[ImageInput] = []
    for entry in document.get("images") or ():
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in ("url", "local")):
            raise ValueError(f"a stored image is not [kind, value]: {entry!r:.200}")
        images.append(ImageInput(entry[0], str(entry[1])))
    return options, tuple(images)


# -- structured output -----------------------------------------------------------------------------------------------


def parse_output(text: str | None) -> tuple[JsonValue, str | None]:
    """The final message of a turn with an output schema, parsed: ``(value, None)``, or ``(None, why not)``."""
    if text is None:
        return None, "the turn had an output schema but ended without a final message to parse"
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        return None, f"the final message is not valid JSON for the turn's output schema ({exc}): {text[:200]!r}"
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - parse_constant refuses these
        return None, "the final message is not valid JSON for the turn's output schema"
    return value, None


def _refuse_constant(name: str) -> JsonValue:
    raise ValueError(f"{name} is not JSON")
