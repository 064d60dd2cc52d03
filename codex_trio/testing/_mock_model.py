"""A scriptable mock of the OpenAI Responses API, so the real ``codex app-server`` runs offline.

Codex makes one kind of model call: ``POST {base_url}/responses`` with ``stream: true``, once per model
step, and reads Server-Sent Events back (``event: <type>\\ndata: <json>\\n\\n``). The event shapes mirror
openai/codex ``codex-rs/core/tests/common/responses.rs``, as observed against codex 0.169.0.

The server is a stdlib :class:`~http.server.ThreadingHTTPServer` on ``127.0.0.1:0`` in a daemon thread rather
than a Trio task: the real codex is another process, and the same mock serves sync tests, Trio tests and
subprocess tests alike without needing a running event loop. Trio code that wants to block on it should go
through ``trio.to_thread.run_sync`` (e.g. ``await trio.to_thread.run_sync(model.wait_for_requests, 2)``).

Script it with a queue of steps, consumed one per request::

    with MockModelServer([Text("hello"), ExecCommand("ls"), Text("done")]) as model:
        write_codex_home(home, model.url)
        ...
        assert "hi" in model.last_input_texts()
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import re
import sys
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeAlias

import attrs

from .._errors import ConfigError

__all__ = [
    "ExecCommand",
    "Fail",
    "Hang",
    "MockModelServer",
    "RawEvents",
    "RecordedRequest",
    "Step",
    "Text",
    "Usage",
    "codex_config_toml",
    "format_sse",
    "toml_string",
    "write_codex_home",
]

SseEvent: TypeAlias = tuple[str, dict[str, Any]]

# Codex drops the HTTP stream on turn/interrupt (and may drop it on shutdown); these are normal, not failures.
_DISCONNECT_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


# --- steps ------------------------------------------------------------------------------------------------


def _word_chunks(text: str) -> list[str]:
    # "Hello from the mock" -> ["Hello ", "from ", "the ", "mock"]: looks like real token streaming and keeps
    # the concatenation equal to the text.
    return [m.group(0) for m in re.finditer(r"\S+\s*|\s+", text)]


def _even_chunks(text: str, n: int) -> list[str]:
    if n <= 0 or not text:
        return []
    size = math.ceil(len(text) / n)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _normalize_deltas(value: int | Sequence[str] | None) -> int | tuple[str, ...] | None:
    # A tuple keeps the frozen step hashable and safe from later mutation of the caller's list.
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str):
        raise TypeError("Text.deltas must be an int or a list of strings, not a single string")
    return tuple(value)


@attrs.frozen
class Usage:
    """The token usage a step reports in its ``response.completed`` (the Responses API's ``usage`` object).

    ``total_tokens`` defaults to input + output, as the API computes it. codex reports it back as
    ``thread/tokenUsage/updated`` (``last`` = this model call, ``total`` = the thread's sum).
    """

    input_tokens: int = 42
    output_tokens: int = 7
    cached_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    total_tokens: int | None = None

    @property
    def total(self) -> int:
        return self.total_tokens if self.total_tokens is not None else self.input_tokens + self.output_tokens

    def wire(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_input_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_output_tokens},
            "total_tokens": self.total,
        }


#: What a step reports when it says nothing else: 42 in, 7 out, 49 in all.
DEFAULT_USAGE: Final = Usage()


def _tuple_of_str(value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("expected a list of strings, not a single string")
    return tuple(value)


def _reasoning_events(n: int, summary: Sequence[str], content: Sequence[str]) -> list[SseEvent]:
    """A reasoning output item streamed before the message: one summary part per ``summary`` entry and one
    content part per ``content`` entry, each sent as word-sized deltas (shapes of codex's own test kit)."""
    if not summary and not content:
        return []
    item_id = f"rs-{n}"
    added = {"type": "reasoning", "id": item_id, "summary": []}
    events: list[SseEvent] = [("response.output_item.added", {"type": "response.output_item.added", "item": added})]
    for index, text in enumerate(summary):
        part = {"type": "response.reasoning_summary_part.added", "item_id": item_id, "summary_index": index}
        events.append(("response.reasoning_summary_part.added", {**part, "part": {"type": "summary_text", "text": ""}}))
        events += [
            (
                "response.reasoning_summary_text.delta",
                {
                    "type": "response.reasoning_summary_text.delta",
                    "item_id": item_id,
                    "summary_index": index,
                    "delta": c,
                },
            )
            for c in _word_chunks(text)
        ]
    for index, text in enumerate(content):
        events += [
            (
                "response.reasoning_text.delta",
                {"type": "response.reasoning_text.delta", "item_id": item_id, "content_index": index, "delta": c},
            )
            for c in _word_chunks(text)
        ]
    done = {
        "type": "reasoning",
        "id": item_id,
        "summary": [{"type": "summary_text", "text": t} for t in summary],
        "content": [{"type": "reasoning_text", "text": t} for t in content],
        "encrypted_content": None,
    }
    events.append(("response.output_item.done", {"type": "response.output_item.done", "item": done}))
    return events


@attrs.frozen
class Text:
    """One assistant message, streamed as deltas.

    ``deltas`` is ``None`` for word-sized chunks, an int for that many roughly equal chunks (0 = no deltas,
    only the final item), or an explicit list of chunks (sent as given, even if they do not add up to
    ``text``).
    ``item_id`` defaults to ``msg-<request number>``; codex uses it as the agentMessage item id.
    ``reasoning_summary`` / ``reasoning_content``: a reasoning item streamed before the text (summary parts and
    raw content parts, as deltas). ``usage``: what ``response.completed`` reports (default :data:`DEFAULT_USAGE`).
    """

    text: str
    deltas: int | tuple[str, ...] | None = attrs.field(default=None, converter=_normalize_deltas)
    item_id: str | None = None
    reasoning_summary: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    reasoning_content: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    usage: Usage = DEFAULT_USAGE

    @classmethod
    def json(cls, value: Any, *, deltas: int | Sequence[str] | None = None) -> Text:
        """A message that answers ``value`` as JSON text (what a turn with an output schema expects)."""
        return cls(json.dumps(value), deltas=deltas)

    def delta_chunks(self) -> list[str]:
        if self.deltas is None:
            return _word_chunks(self.text)
        if isinstance(self.deltas, int):
            return _even_chunks(self.text, self.deltas)
        return list(self.deltas)

    def events(self, n: int) -> list[SseEvent]:
        """Every event of this step except ``response.created``; ``n`` is the request number."""
        item_id = self.item_id or f"msg-{n}"
        added = {
            "type": "message",
            "role": "assistant",
            "id": item_id,
            "content": [{"type": "output_text", "text": ""}],
        }
        done = {
            "type": "message",
            "role": "assistant",
            "id": item_id,
            "content": [{"type": "output_text", "text": self.text}],
        }
        events = _reasoning_events(n, self.reasoning_summary, self.reasoning_content)
        events.append(("response.output_item.added", {"type": "response.output_item.added", "item": added}))
        events += [
            ("response.output_text.delta", {"type": "response.output_text.delta", "delta": chunk})
            for chunk in self.delta_chunks()
        ]
        events.append(("response.output_item.done", {"type": "response.output_item.done", "item": done}))
        events.append(_completed(n, self.usage))
        return events


@attrs.frozen
class ExecCommand:
    """A call of codex 0.169's ``exec_command`` tool (unified exec; ``shell`` is gone).

    Codex runs the command and POSTs again with a ``function_call_output`` item, so script the next step too.
    ``sandbox_permissions`` is ``"use_default"`` or ``"require_escalated"``; ``None`` fields are left out.
    """

    cmd: str
    sandbox_permissions: str | None = None
    justification: str | None = None
    workdir: str | None = None
    yield_time_ms: int | None = 1000
    call_id: str | None = None
    extra_args: Mapping[str, Any] = attrs.field(factory=dict)
    #: reasoning streamed before the call (see :class:`Text`), and what ``response.completed`` reports
    reasoning_summary: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    reasoning_content: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    usage: Usage = DEFAULT_USAGE

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"cmd": self.cmd}
        optional = {
            "workdir": self.workdir,
            "yield_time_ms": self.yield_time_ms,
            "sandbox_permissions": self.sandbox_permissions,
            "justification": self.justification,
        }
        args.update({k: v for k, v in optional.items() if v is not None})
        args.update(self.extra_args)
        return args

    def events(self, n: int) -> list[SseEvent]:
        item = {
            "type": "function_call",
            "call_id": self.call_id or f"call-{n}",
            "name": "exec_command",
            "arguments": json.dumps(self.arguments()),
        }
        done = {"type": "response.output_item.done", "item": item}
        reasoning = _reasoning_events(n, self.reasoning_summary, self.reasoning_content)
        return [*reasoning, ("response.output_item.done", done), _completed(n, self.usage)]


@attrs.define(eq=False)
class Hang:
    """Send ``response.created``, then only ``: keepalive`` comments until released or the client goes away.

    Used to hold a turn in flight (for ``turn/interrupt``, drain, restart tests). After :meth:`release` the
    stream finishes with ``then`` (default: a short :class:`Text`). A Hang is single-use: once released it
    stays released. :meth:`wait_started` tells a test that codex is now blocked on this step.
    """

    then: Text | ExecCommand | None = None
    _started: threading.Event = attrs.field(factory=threading.Event, init=False, repr=False)
    _released: threading.Event = attrs.field(factory=threading.Event, init=False, repr=False)
    _disconnected: threading.Event = attrs.field(factory=threading.Event, init=False, repr=False)

    def release(self) -> None:
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    @property
    def started(self) -> bool:
        return self._started.is_set()

    @property
    def disconnected(self) -> bool:
        """True once the client dropped the stream while this step was hanging (codex does on interrupt)."""
        return self._disconnected.is_set()

    def wait_started(self, timeout: float | None = None) -> bool:
        return self._started.wait(timeout)

    def wait_disconnected(self, timeout: float | None = None) -> bool:
        return self._disconnected.wait(timeout)

    def finish_events(self, n: int) -> list[SseEvent]:
        return (self.then or Text(f"released {n}")).events(n)


@attrs.frozen
class Fail:
    """An HTTP error instead of a stream. With ``request_max_retries = 0``, codex fails the turn."""

    status: int = 500
    message: str = "mock model failure"


@attrs.frozen
class RawEvents:
    """Send exactly these ``(event type, data)`` pairs, for shapes the other steps do not cover.

    ``response.created`` is not added; include it if you want it.
    """

    events: Sequence[SseEvent]


Step: TypeAlias = Text | ExecCommand | Hang | Fail | RawEvents
DefaultStep: TypeAlias = Step | Callable[[int], Step]


def _created(n: int) -> SseEvent:
    return ("response.created", {"type": "response.created", "response": {"id": f"resp-{n}"}})


def _completed(n: int, usage: Usage = DEFAULT_USAGE) -> SseEvent:
    response = {"id": f"resp-{n}", "usage": usage.wire()}
    return ("response.completed", {"type": "response.completed", "response": response})


def format_sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# --- recorded requests ------------------------------------------------------------------------------------


def _part_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]


@attrs.frozen
class RecordedRequest:
    """One model request as codex sent it. ``number`` counts from 1; header names are lower-case."""

    number: int
    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    step: Step

    @property
    def input(self) -> list[dict[str, Any]]:
        items = self.body.get("input") if isinstance(self.body, dict) else None
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    def input_texts(self) -> list[str]:
        """Every text part of every message in ``input``, in order (one string per content part)."""
        return [t for item in self.input if _is_message(item) for t in _part_texts(item.get("content"))]

    def input_messages(self) -> list[tuple[str, str]]:
        """``(role, text)`` per message in ``input``; the parts of one message are joined."""
        return [
            (str(item.get("role")), "".join(_part_texts(item.get("content"))))
            for item in self.input
            if _is_message(item)
        ]

    @property
    def model(self) -> str | None:
        """The model codex asked for (``TurnOptions.model``, or config.toml's ``model``)."""
        value = self.body.get("model") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None

    @property
    def reasoning(self) -> dict[str, Any]:
        """The request's ``reasoning`` object (``effort``, ``summary``), empty when codex sent none."""
        value = self.body.get("reasoning") if isinstance(self.body, dict) else None
        return value if isinstance(value, dict) else {}

    @property
    def reasoning_effort(self) -> str | None:
        value = self.reasoning.get("effort")
        return value if isinstance(value, str) else None

    @property
    def reasoning_summary(self) -> str | None:
        value = self.reasoning.get("summary")
        return value if isinstance(value, str) else None

    @property
    def output_schema(self) -> Any:
        """The JSON schema of ``text.format`` (a turn's ``outputSchema``), or None."""
        text = self.body.get("text") if isinstance(self.body, dict) else None
        fmt = text.get("format") if isinstance(text, dict) else None
        return fmt.get("schema") if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None

    def input_images(self) -> list[str]:
        """The ``image_url`` of every ``input_image`` part of the user messages, in order. codex sends a local
        image (``localImage``) as a data URL too, between ``<image ... path="...">`` text parts."""
        return [
            str(part["image_url"])
            for item in self.input
            if _is_message(item) and item.get("role") == "user" and isinstance(item.get("content"), list)
            for part in item["content"]
            if isinstance(part, dict) and part.get("type") == "input_image" and "image_url" in part
        ]

    def last_user_images(self) -> list[str]:
        """The ``input_image`` URLs of the newest user message only (the input this turn added)."""
        users = [i for i in self.input if _is_message(i) and i.get("role") == "user"]
        if not users or not isinstance(users[-1].get("content"), list):
            return []
        return [
            str(part["image_url"])
            for part in users[-1]["content"]
            if isinstance(part, dict) and part.get("type") == "input_image" and "image_url" in part
        ]

    def function_call_outputs(self) -> dict[str, str]:
        """``call_id -> output`` of every ``function_call_output`` item (what a tool call returned)."""
        out: dict[str, str] = {}
        for item in self.input:
            if item.get("type") == "function_call_output":
                output = item.get("output")
                out[str(item.get("call_id"))] = output if isinstance(output, str) else json.dumps(output)
        return out


def _is_message(item: Mapping[str, Any]) -> bool:
    return item.get("type", "message") == "message" and "role" in item


# --- the server -------------------------------------------------------------------------------------------


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Codex keeps pooled connections idle; joining their threads on close would hang, so close() shuts the
    # sockets down itself instead.
    block_on_close = False
    mock: MockModelServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECT_ERRORS):
            return
        self.mock._record_error(exc)
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request on stderr is noise in test output

    def setup(self) -> None:
        super().setup()
        self.server.mock._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the peer may already be gone
            super().finish()
        self.server.mock._track(self.connection, add=False)

    def handle(self) -> None:
        with contextlib.suppress(*_DISCONNECT_ERRORS):
            super().handle()

    def do_GET(self) -> None:
        self._send_json(404, {"error": {"type": "not_found", "message": f"mock model: no GET {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?", 1)[0].rstrip("/") != "/v1/responses":
            self._send_json(404, {"error": {"type": "not_found", "message": f"mock model: no {self.path}"}})
            return
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        n, step = self.server.mock._next_step(self.command, self.path, headers, body)
        self._serve_step(n, step)

    def _serve_step(self, n: int, step: Step) -> None:
        mock = self.server.mock
        if isinstance(step, Fail):
            error = {"type": "server_error", "code": None, "message": step.message}
            self._send_json(step.status, {"error": error})
            return
        self._start_stream()
        if isinstance(step, RawEvents):
            self._write_events(step.events)
        elif isinstance(step, Hang):
            self._write_events([_created(n)])
            step._started.set()
            while not step._released.wait(mock.keepalive_interval):
                if mock._closing.is_set():
                    return
                try:
                    self._write_chunk(b": keepalive\n\n")
                except _DISCONNECT_ERRORS:
                    step._disconnected.set()
                    raise
            self._write_events(step.finish_events(n))
        else:
            self._write_events([_created(n), *step.events(n)])
        self._write_chunk(b"")  # the terminating zero-length chunk

    def _send_json(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        # Chunked, so each event is flushed as it is written and Hang can hold the stream open indefinitely.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_events(self, events: Iterable[SseEvent]) -> None:
        for event, data in events:
            self._write_chunk(format_sse(event, data))

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _default_text(n: int) -> Step:
    return Text(f"mock reply {n}")


class MockModelServer:
    """The mock Responses API. See the module docstring; all methods are thread-safe.

    ``steps`` is the initial script. When it runs out, ``default`` answers (a step, or a callable taking the
    1-based request number; default: ``Text("mock reply N")``). ``keepalive_interval`` paces Hang's comments.
    ``port`` (default: any free one) lets a test bring a model back where codex saw none.
    """

    def __init__(
        self,
        steps: Iterable[Step] = (),
        *,
        default: DefaultStep | None = None,
        keepalive_interval: float = 0.1,
        port: int = 0,
    ) -> None:
        self.keepalive_interval = keepalive_interval
        self._port = port
        self._default: DefaultStep = default if default is not None else _default_text
        self._cond = threading.Condition()
        self._queue: deque[Step] = deque(steps)
        self._requests: list[RecordedRequest] = []
        self._errors: list[BaseException] = []
        self._hangs: list[Hang] = []
        self._connections: set[Any] = set()
        self._closing = threading.Event()
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("MockModelServer already started")
        server = _HttpServer(("127.0.0.1", self._port), _Handler)
        server.mock = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="mock-model", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, end every hanging stream and drop open connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()
        server.shutdown()
        server.server_close()
        with self._cond:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(2)  # SHUT_RDWR: wakes handler threads blocked reading a kept-alive connection
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MockModelServer is not running; call start() or use it as a context manager")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The ``base_url`` for codex's model provider: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # scripting

    def enqueue(self, *steps: Step) -> None:
        """Append steps to the script; each later request takes the next one."""
        with self._cond:
            self._queue.extend(steps)

    def set_default(self, default: DefaultStep) -> None:
        with self._cond:
            self._default = default

    @property
    def pending_steps(self) -> int:
        with self._cond:
            return len(self._queue)

    def release(self) -> None:
        """Release every Hang that is hanging now or still queued."""
        with self._cond:
            hangs = [*self._hangs, *(s for s in self._queue if isinstance(s, Hang))]
        for hang in hangs:
            hang.release()

    # inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the model requests so far, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected exceptions raised while serving (disconnects do not count); tests may assert none."""
        with self._cond:
            return list(self._errors)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests arrived and return them; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"mock model got {len(self._requests)} request(s), expected {n} within {timeout:g}s"
                    )
                self._cond.wait(remaining)
            return list(self._requests)

    def last_request(self) -> RecordedRequest:
        with self._cond:
            if not self._requests:
                raise LookupError("the mock model has received no request yet")
            return self._requests[-1]

    def last_input_texts(self) -> list[str]:
        """The text parts of the latest request's ``input`` (e.g. to see an injected developer message)."""
        return self.last_request().input_texts()

    # called from handler threads

    def _next_step(self, method: str, path: str, headers: Mapping[str, str], body: Any) -> tuple[int, Step]:
        with self._cond:
            n = len(self._requests) + 1
            if self._queue:
                step = self._queue.popleft()
            else:
                step = self._default(n) if callable(self._default) else self._default
            if isinstance(step, Hang):
                self._hangs.append(step)
            self._requests.append(RecordedRequest(n, method, path, dict(headers), body, step))
            self._cond.notify_all()
            return n, step

    def _record_error(self, exc: BaseException | None) -> None:
        if exc is not None:
            with self._cond:
                self._errors.append(exc)

    def _track(self, conn: Any, *, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


# --- CODEX_HOME -------------------------------------------------------------------------------------------

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (escapes quotes, backslashes and every control character)."""
    out = []
    for ch in value:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ConfigError(f"cannot write a lone surrogate to TOML: {value!r}", value=value)
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def codex_config_toml(
    model_url: str,
    *,
    approval_policy: str = "never",
    sandbox_mode: str = "read-only",
    extra_toml: str = "",
) -> str:
    """The config.toml text that points codex at the mock model (reference doc §4).

    ``extra_toml`` goes after the top-level keys and before the first table, so it may hold more top-level
    keys (e.g. ``model_reasoning_effort = "low"``) and whole new tables. Redefining a key or table that this
    config already sets is invalid TOML and raises :class:`ConfigError`.
    """
    text = (
        f'model = "mock-model"\n'
        f'model_provider = "mock"\n'
        f"approval_policy = {toml_string(approval_policy)}\n"
        f"sandbox_mode = {toml_string(sandbox_mode)}\n"
        + (extra_toml.rstrip("\n") + "\n" if extra_toml.strip() else "")
        + "\n"
        "[model_providers.mock]\n"
        'name = "Mock provider"\n'
        f"base_url = {toml_string(model_url)}\n"
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
        "\n"
        "[analytics]\n"
        "enabled = false\n"
        "\n"
        "[features]\n"
        "# stops the curated-plugins sync (git ls-remote github.com, api.github.com, chatgpt.com)\n"
        "plugins = false\n"
    )
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"extra_toml makes config.toml invalid: {exc}", field="extra_toml", value=extra_toml) from exc
    return text


def write_codex_home(
    home: Path,
    model_url: str,
    *,
    approval_policy: str = "never",
    sandbox_mode: str = "read-only",
    extra_toml: str = "",
) -> Path:
    """Create ``home`` (mode 0700) holding a ``config.toml`` for the mock model at ``model_url``.

    Returns ``home``.

    Use the result as ``CODEX_HOME``. No login or API key is needed: the provider has no ``env_key``.
    ``approval_policy = "untrusted"`` is fatal at startup in codex 0.169 (handy to test a failing start).
    """
    text = codex_config_toml(
        model_url, approval_policy=approval_policy, sandbox_mode=sandbox_mode, extra_toml=extra_toml
    )
    home = Path(home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)  # mkdir's mode is masked by the umask and ignored for an existing directory
    (home / "config.toml").write_text(text, encoding="utf-8")
    return home
