"""Sans-IO JSON-RPC peer for the codex app-server dialect.

Theory of operation
-------------------
The app-server speaks a JSON-RPC 2.0 *dialect*: no ``jsonrpc`` member (tolerated when present), integer request
ids that we allocate from 1, ``params`` mandatory on requests, a top-level ``emittedAtMs`` on notifications, and
server-to-client requests in their own id space (starting at 0). This module owns everything about that dialect
that does not need I/O:

* encoding outgoing requests, notifications, results and errors (:meth:`JsonRpcPeer.request` & co.);
* the table of pending request ids and the method each one was for;
* classifying each incoming frame into exactly one of :class:`Response`, :class:`ErrorResponse`,
  :class:`Notification`, :class:`ServerRequest` or :class:`IgnoredResponse` — anything else is garbage and raises
  :class:`~codex_trio.ProtocolError`, after which the connection must be closed;
* mapping JSON-RPC errors to the small typed tree in ``_errors`` (``MethodNotSupported``, ``ServerDraining``).

The Trio driver (``_connection``) moves text between a message stream and this object and wakes waiters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import attrs

from ._errors import MethodNotSupported, ProtocolError, RpcError, ServerDraining

__all__ = [
    "ErrorResponse",
    "IgnoredResponse",
    "Incoming",
    "JsonRpcPeer",
    "Notification",
    "Response",
    "ServerRequest",
    "error_from_wire",
    "is_method_not_supported",
]

RequestId: TypeAlias = int | str

METHOD_NOT_FOUND: Final = -32601
INVALID_REQUEST: Final = -32600
INTERNAL_ERROR: Final = -32603

# The app-server answers almost every failure with -32600, so "this method does not exist" has to be recognised
# by message as well as by code. These are the patterns of the original runtime's isUnsupportedRpcMethodError;
# codex 0.169 says ``Invalid request: unknown variant `no/such/method`, expected one of ...``.
_UNSUPPORTED_PATTERNS: Final = (
    "unknown variant",
    "method not found",
    "unknown method",
    "no such method",
    "unsupported method",
)


@attrs.frozen
class Response:
    """A successful answer to one of our requests."""

    id: int
    method: str
    result: Any


@attrs.frozen
class ErrorResponse:
    """An error answer to one of our requests; ``error`` is the typed exception to raise in the caller."""

    id: int
    method: str
    error: RpcError


@attrs.frozen
class IgnoredResponse:
    """A response whose id matches no pending request (late, after a timeout, or bogus). Counted, then dropped."""

    id: RequestId


@attrs.frozen
class Notification:
    """A server notification. ``emitted_at_ms`` is codex's top-level ``emittedAtMs`` when present."""

    method: str
    params: dict[str, Any]
    emitted_at_ms: int | None = None


@attrs.frozen
class ServerRequest:
    """A request from the server (approvals and the like) that must be answered with a result or an error."""

    id: RequestId
    method: str
    params: dict[str, Any]


Incoming: TypeAlias = Response | ErrorResponse | IgnoredResponse | Notification | ServerRequest


def is_method_not_supported(code: int | None, message: str) -> bool:
    """True when an error means "the server does not know this method" (by code or by codex's message)."""
    if code == METHOD_NOT_FOUND:
        return True
    lowered = message.lower()
    return any(pattern in lowered for pattern in _UNSUPPORTED_PATTERNS)


def error_from_wire(method: str | None, error: object) -> RpcError:
    """Build the typed exception for a wire ``error`` object, keeping code, message and data."""
    if not isinstance(error, Mapping):
        return RpcError(method, None, f"malformed error object: {error!r}")
    raw_code = error.get("code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    raw_message = error.get("message")
    message = raw_message if isinstance(raw_message, str) else repr(raw_message)
    data = error.get("data")
    if is_method_not_supported(code, message):
        return MethodNotSupported(method, code, message, data)
    if isinstance(data, Mapping) and data.get("reason") == "serverShuttingDown":
        return ServerDraining(method, code, message, data)
    return RpcError(method, code, message, data)


def _is_int_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dumps(obj: object) -> str:
    # Compact separators: frames are small and numerous; ensure_ascii=False keeps non-ASCII text one byte-cheap.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


_raw_decode = json.JSONDecoder().raw_decode


def _loads(frame: str | bytes) -> Any:
    """``json.loads(frame)``, minus its per-call overhead for the frames codex sends (UTF-8 objects).

    ``json.loads`` sniffs a bytes frame's encoding (UTF-16/32 and BOMs) on every call; a frame that starts with
    ``{`` followed by a non-NUL byte is UTF-8 by the same rules, so it is decoded the way json.loads would
    (``surrogatepass``) and parsed directly. Everything else goes through json.loads unchanged.
    """
    text: str
    if type(frame) is bytes:
        if frame[:1] != b"{" or frame[1:2] == b"\x00":
            return json.loads(frame)
        text = frame.decode("utf-8", "surrogatepass")
    elif type(frame) is str and frame[:1] == "{":
        text = frame
    else:
        return json.loads(frame)
    # raw_decode skips json.loads' two whitespace scans; trailing text of any kind (whitespace, or the
    # "Extra data" error) is left to json.loads itself.
    obj, end = _raw_decode(text)
    if end != len(text):
        return json.loads(text)
    return obj


@attrs.define
class PeerStatistics:
    requests_sent: int = 0
    notifications_sent: int = 0
    frames_received: int = 0
    ignored_responses: int = 0
    pending: int = 0


class JsonRpcPeer:
    """The pure half of a JSON-RPC connection. Not thread-safe; one per connection."""

    def __init__(self) -> None:
        self._next_id = 1
        self._pending: dict[int, str] = {}
        self._requests_sent = 0
        self._notifications_sent = 0
        self._frames_received = 0
        self._ignored = 0

    # -- outgoing ------------------------------------------------------------------------------------------

    def request(self, method: str, params: Mapping[str, Any] | None = None) -> tuple[int, str]:
        """Allocate an id, remember it as pending, and return ``(id, frame_text)``.

        ``params`` is always sent (codex rejects a request without it), as ``{}`` when not given.
        """
        request_id = self._next_id
        self._next_id += 1
        self._pending[request_id] = method
        self._requests_sent += 1
        return request_id, _dumps({"id": request_id, "method": method, "params": dict(params or {})})

    def notification(self, method: str, params: Mapping[str, Any] | None = None) -> str:
        """Encode a notification. ``params`` is omitted when ``None`` (``{"method":"initialized"}``)."""
        self._notifications_sent += 1
        if params is None:
            return _dumps({"method": method})
        return _dumps({"method": method, "params": dict(params)})

    @staticmethod
    def result(request_id: RequestId, result: Any) -> str:
        return _dumps({"id": request_id, "result": result})

    @staticmethod
    def error(request_id: RequestId, code: int, message: str, data: Any = None) -> str:
        err: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            err["data"] = data
        return _dumps({"id": request_id, "error": err})

    def forget(self, request_id: int) -> None:
        """Stop waiting for ``request_id`` (it timed out or its caller was cancelled); a late answer is ignored."""
        self._pending.pop(request_id, None)

    def drain_pending(self) -> dict[int, str]:
        """Remove and return every pending request (id → method); used when the connection closes."""
        pending, self._pending = self._pending, {}
        return pending

    def is_pending(self, request_id: int) -> bool:
        return request_id in self._pending

    # -- incoming ------------------------------------------------------------------------------------------

    def receive(self, frame: str | bytes) -> Incoming:
        """Classify one incoming frame. Raises :class:`ProtocolError` for anything that is not a valid frame."""
        self._frames_received += 1
        try:
            envelope = _loads(frame)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ProtocolError(f"app-server sent a non-JSON frame: {exc}") from None
        if type(envelope) is not dict:
            if not isinstance(envelope, dict):
                raise ProtocolError(f"app-server sent a non-object envelope ({type(envelope).__name__})")
            return self.classify(envelope)
        # classify()'s notification case, inlined: it is nearly every frame codex sends.
        method = envelope.get("method")
        if type(method) is str and "id" not in envelope:
            params = envelope.get("params")
            if type(params) is dict:
                emitted = envelope.get("emittedAtMs")
                if type(emitted) is not int and not _is_int_id(emitted):
                    emitted = None
                return Notification(method, params, emitted)
        return self.classify(envelope)

    def classify(self, envelope: dict[str, Any]) -> Incoming:
        method = envelope.get("method")
        has_id = "id" in envelope
        if isinstance(method, str):
            params = envelope.get("params")
            if params is None:
                params = {}
            elif not isinstance(params, dict):
                raise ProtocolError(f"app-server sent {method!r} with non-object params ({type(params).__name__})")
            if has_id:
                request_id = envelope["id"]
                if not (_is_int_id(request_id) or isinstance(request_id, str)):
                    raise ProtocolError(f"app-server sent request {method!r} with an invalid id {request_id!r}")
                return ServerRequest(request_id, method, params)
            emitted = envelope.get("emittedAtMs")
            if type(emitted) is not int and not _is_int_id(emitted):
                emitted = None
            return Notification(method, params, emitted)
        if method is not None:
            raise ProtocolError(f"app-server sent a frame whose method is not a string: {method!r}")
        if has_id and ("result" in envelope or "error" in envelope):
            return self._response(envelope["id"], envelope)
        raise ProtocolError("app-server sent an envelope with neither id nor method")

    def _response(self, raw_id: object, envelope: dict[str, Any]) -> Incoming:
        request_id = self._match_id(raw_id)
        if request_id is None:
            self._ignored += 1
            return IgnoredResponse(raw_id if isinstance(raw_id, (int, str)) else repr(raw_id))
        method = self._pending.pop(request_id)
        if "error" in envelope and envelope["error"] is not None:
            return ErrorResponse(request_id, method, error_from_wire(method, envelope["error"]))
        return Response(request_id, method, envelope.get("result"))

    def _match_id(self, raw_id: object) -> int | None:
        if _is_int_id(raw_id):
            assert isinstance(raw_id, int)
            return raw_id if raw_id in self._pending else None
        # We only send integer ids, but a server that echoes them as strings is still answering us.
        if isinstance(raw_id, str) and raw_id.isdigit() and len(raw_id) < 20:
            candidate = int(raw_id)
            return candidate if candidate in self._pending else None
        return None

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            requests_sent=self._requests_sent,
            notifications_sent=self._notifications_sent,
            frames_received=self._frames_received,
            ignored_responses=self._ignored,
            pending=len(self._pending),
        )
