"""One small exception tree for everything codex_trio raises.

Every error a user can see derives from :class:`CodexTrioError`, so ``except CodexTrioError`` is enough to catch
the library's failures and nothing else. Messages say what was wrong and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._pins import PINNED_CODEX_VERSION

__all__ = [
    "AppServerExited",
    "AppServerNotReady",
    "BinaryNotFound",
    "CodexTrioError",
    "ConfigError",
    "ConnectionLost",
    "EventStreamOverflow",
    "FrameTooLarge",
    "HandshakeTimeout",
    "InvalidInput",
    "LeaseLost",
    "MethodNotSupported",
    "NotAccepted",
    "ProcessError",
    "ProtocolError",
    "RequestTimeout",
    "RpcError",
    "RuntimeBusy",
    "RuntimeGaveUp",
    "RuntimeStopped",
    "ServerDraining",
    "SocketPathError",
    "StateStoreError",
    "TransportError",
]


class CodexTrioError(Exception):
    """Base class of every error raised by codex_trio."""


class ConfigError(CodexTrioError, ValueError):
    """A configuration value is invalid. The message names the field, the value and what is allowed."""

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


# --- transport and protocol -------------------------------------------------------------------------------


class TransportError(CodexTrioError):
    """The byte or message stream to the app-server failed."""


class ConnectionLost(TransportError):
    """The connection to the app-server is closed; every pending request fails with this one error.

    ``reason`` is a short human description of why (socket closed, child exited, protocol error, caller closed).
    ``request_sent`` tells a failed request whether its frame left us: ``False`` means the app-server certainly
    never saw it (safe to send again elsewhere), ``True`` that it was sent and the answer never came.
    """

    def __init__(self, reason: str, *, request_sent: bool | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_sent = request_sent


class FrameTooLarge(TransportError):
    """A frame or NDJSON line exceeded the configured maximum size."""

    def __init__(self, size: int, limit: int, what: str = "frame") -> None:
        super().__init__(
            f"app-server sent a {what} of at least {size} bytes, over the limit of {limit} bytes; "
            f"raise max_message_size if such messages are expected"
        )
        self.size = size
        self.limit = limit


class ProtocolError(CodexTrioError):
    """The peer sent something that is not a valid app-server JSON-RPC frame. The connection is closed."""


class RpcError(CodexTrioError):
    """The app-server answered a request with a JSON-RPC error. Keeps ``code``, ``message`` and ``data``."""

    def __init__(self, method: str | None, code: int | None, message: str, data: Any = None) -> None:
        where = f"{method}: " if method else ""
        code_part = f" (code {code})" if code is not None else ""
        super().__init__(f"{where}{message}{code_part}")
        self.method = method
        self.code = code
        self.rpc_message = message
        self.data = data


class MethodNotSupported(RpcError):
    """The app-server does not know this method (code -32601, or codex's ``unknown variant`` message)."""


class ServerDraining(RpcError):
    """The app-server is shutting down (``data.reason == "serverShuttingDown"``); retry after reconnecting."""


class RequestTimeout(CodexTrioError, TimeoutError):
    """A request got no answer within its deadline."""

    def __init__(self, method: str, timeout: float, message: str | None = None) -> None:
        super().__init__(message or f"app-server did not answer {method!r} within {timeout:g}s")
        self.method = method
        self.timeout = timeout


class HandshakeTimeout(RequestTimeout):
    """``initialize`` got no answer in time."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            "initialize",
            timeout,
            f"codex initialize handshake did not respond within {timeout:g}s — the daemon may be hung, "
            f"crashed mid-response, or speaking an incompatible protocol",
        )


# --- the child process ------------------------------------------------------------------------------------


class ProcessError(CodexTrioError):
    """Starting or supervising the ``codex app-server`` child failed."""


#: What a library user does about a missing codex binary (the CLI says the same in its own words).
BINARY_HINT = (
    f"Install it with `npm install @openai/codex@{PINNED_CODEX_VERSION}`, set RuntimeConfig.codex_bin, "
    f"or set CODEX_TRIO_CODEX_BIN"
)


class BinaryNotFound(ProcessError):
    """No runnable codex binary was found; the message lists every place that was tried, then ``hint``."""

    def __init__(self, tried: Sequence[str], detail: str = "", *, hint: str = BINARY_HINT) -> None:
        lines = "; ".join(tried)
        super().__init__(f"no runnable codex binary found (tried: {lines}){': ' + detail if detail else ''}. {hint}")
        self.tried = list(tried)
        self.detail = detail


class AppServerExited(ProcessError):
    """The app-server child exited (before it was ready, or later). Carries its exit status and stderr tail."""

    def __init__(self, message: str, *, returncode: int | None, stderr_tail: str = "") -> None:
        full = message
        if stderr_tail.strip():
            full += "\n--- codex stderr (tail) ---\n" + stderr_tail.rstrip()
        super().__init__(full)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class AppServerNotReady(ProcessError):
    """The app-server child did not accept a connection on its socket in time."""


class SocketPathError(ProcessError, ConfigError):
    """The socket directory or path is unusable (symlinked, foreign-owned, too long for ``sun_path``)."""


# --- runtime ----------------------------------------------------------------------------------------------


class RuntimeGaveUp(CodexTrioError):
    """The restart intensity was exceeded: the supervisor stopped restarting (OTP escalation).

    ``causes`` holds the most recent session failures, oldest first.
    """

    def __init__(self, message: str, causes: Sequence[BaseException]) -> None:
        detail = "; ".join(f"{type(c).__name__}: {c}" for c in causes[-5:])
        super().__init__(f"{message} (last causes: {detail})" if detail else message)
        self.causes = list(causes)


class StateStoreError(CodexTrioError):
    """The state store failed to read or write."""


class LeaseLost(StateStoreError):
    """This runtime's lease on its state store is gone (another owner took it over): it must not write again.

    Raised by a write carrying a fencing token older than the store's current one, so that a former owner that
    wakes up late (a frozen process, a lock file removed by hand, a network partition) cannot corrupt the state
    its successor is writing.
    """


class RuntimeBusy(CodexTrioError):
    """Another live owner holds the runtime (same ``runtime_id`` on the same state store).

    ``pid``, ``host`` and ``since`` (epoch seconds) name that owner, as it recorded itself when it took the lease.
    """

    def __init__(self, runtime_id: str, *, pid: int | None, host: str | None, since: float | None) -> None:
        import time

        when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(since)) if since is not None else "an unknown time"
        who = f"pid {pid} on {host or 'an unknown host'}" if pid is not None else "another owner"
        super().__init__(
            f"runtime {runtime_id!r} is already running ({who}, since {when}); stop that owner first, or pass "
            f"wait_for_owner=SECONDS to open_runtime to wait for it to finish"
        )
        self.runtime_id = runtime_id
        self.pid = pid
        self.host = host
        self.since = since


class InvalidInput(CodexTrioError, ValueError):
    """An input that cannot be delivered as given (unencodable text or id, over codex's size limit, ...).

    Raised by ``submit`` before anything is accepted: nothing was recorded and the source id stays unused, so the
    caller can fix the input and submit it again with the same id. ``field`` names what was wrong.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


_NOT_ACCEPTED_WHY = {
    "duplicate": "a message with this source id was already accepted (by this runtime or, with a durable store, an "
    "earlier run) and is not sent again; its settlement is the one the first submit got",
    "skipped": "a restart notice is skipped once something else has woken the thread",
    "failed": "it could not be recorded (admission.error says why); the id stays unused, so submit it again",
    "stopped": "the runtime is stopping",
}


class NotAccepted(CodexTrioError):
    """``Admission.settled()`` on an input that was not accepted (``duplicate``, ``skipped``, ``failed``,
    ``stopped``): only accepted inputs settle. Check ``admission.accepted`` (or ``.status``) first.

    ``status`` and ``source_id`` name the admission.
    """

    def __init__(self, status: str, source_id: str) -> None:
        why = _NOT_ACCEPTED_WHY.get(status, "only submitted or queued inputs settle")
        super().__init__(
            f"submission {source_id!r} was not accepted ({status}), so it has no settlement: {why}. Check "
            f"admission.accepted before awaiting admission.settled()"
        )
        self.status = status
        self.source_id = source_id


class EventStreamOverflow(CodexTrioError):
    """An event stream's reader fell so far behind that events which may not be dropped no longer fit its buffer.

    The stream is closed (the runtime goes on without it); open a new one with ``runtime.events()`` and read
    ``runtime.status`` / the settlements you wait on to catch up, or raise ``RuntimeConfig.event_buffer``.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(
            f"event stream overflowed: more than {capacity} undroppable events (status changes, turn and settlement "
            f"events) waited unread; the stream is closed. Read events faster, or raise RuntimeConfig.event_buffer"
        )
        self.capacity = capacity


class RuntimeStopped(CodexTrioError):
    """The runtime stopped (or is stopping) before the operation could be carried out; nothing of it was done."""
