"""FakeAppServer: an in-process, scriptable app-server speaking the wire protocol of the pinned codex (``_pins``).

It serves the same dialect as the real binary (no ``jsonrpc`` member, ``emittedAtMs`` on notifications,
server-request ids from 0, ``-32600`` for nearly every error with codex's own message texts) over a WebSocket on a
Unix socket or over in-memory message streams, and it records every frame it receives. Turns follow a script:
each ``turn/start`` takes the next :class:`TurnScript` (or the default one).
"""

from __future__ import annotations

import itertools
import json
import os
import socket as _socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from .._errors import ConnectionLost
from .._pins import PINNED_CODEX_VERSION
from .._transport import DEFAULT_MAX_MESSAGE_SIZE, MessageStream, WebSocketMessageStream

__all__ = ["FakeAppServer", "FakeRpcError", "ServerRequestSpec", "TurnScript"]

_KNOWN_METHODS = (
    "initialize",
    "thread/start",
    "thread/resume",
    "thread/read",
    "turn/start",
    "turn/steer",
    "turn/interrupt",
    "thread/inject_items",
    "skills/extraRoots/set",
    "thread/name/set",
    "thread/turns/list",
    "thread/fork",
    "thread/list",
    "thread/archive",
    "thread/compact/start",
)


class FakeRpcError(Exception):
    """Raise from a custom handler to answer with a JSON-RPC error."""

    def __init__(self, message: str, code: int = -32600, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


@attrs.define
class ServerRequestSpec:
    """A server request the fake sends in the middle of a turn (an approval, a user-input request, ...)."""

    method: str
    params: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class TurnScript:
    """How one turn plays out.

    ``text`` arrives as ``deltas`` agent-message deltas then one ``agentMessage`` item; ``delay`` seconds pass
    before completion; ``fail`` completes the turn with status ``failed`` and that error message;
    ``error_notification`` sends an ``error`` notification with ``willRetry: false`` instead; ``hang`` keeps the
    turn open until it is interrupted; ``server_requests`` are sent (and answered) before the reply.
    """

    text: str = "fake reply"
    deltas: int = 3
    delay: float = 0.0
    fail: str | None = None
    error_notification: str | None = None
    hang: bool = False
    server_requests: list[ServerRequestSpec] = attrs.field(factory=list)
    extra_items: list[dict[str, Any]] = attrs.field(factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TurnScript:
        requests = [ServerRequestSpec(r["method"], dict(r.get("params", {}))) for r in data.get("server_requests", [])]
        fields = {k: v for k, v in data.items() if k != "server_requests"}
        return cls(**fields, server_requests=requests)


@attrs.define(eq=False)
class _Thread:
    id: str
    turns: list[dict[str, Any]] = attrs.field(factory=list)  # completed turns
    injected: list[dict[str, Any]] = attrs.field(factory=list)
    #: every user message as codex records it the moment it accepts it: {"turnId", "clientId", "text"}
    user_messages: list[dict[str, Any]] = attrs.field(factory=list)
    name: str | None = None
    archived: bool = False
    forked_from: str | None = None
    created_at: int = attrs.field(factory=lambda: int(time.time()))


@attrs.define(eq=False)
class _ActiveTurn:
    id: str
    thread_id: str
    script: TurnScript
    inputs: list[str]
    done: trio.Event = attrs.field(factory=trio.Event)
    interrupted: bool = False


class _FakeConnection:
    def __init__(self, server: FakeAppServer, stream: MessageStream, nursery: trio.Nursery) -> None:
        self.server = server
        self.stream = stream
        self.nursery = nursery
        self.initialized = False
        self._next_request_id = itertools.count(0)
        self.pending_requests: dict[int, trio.Event] = {}
        self.answers: dict[int, dict[str, Any]] = {}

    async def send(self, obj: Mapping[str, Any]) -> None:
        await self.stream.send_message(json.dumps(obj, separators=(",", ":")))

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        await self.send({"method": method, "params": dict(params), "emittedAtMs": int(time.time() * 1000)})

    async def server_request(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        request_id = next(self._next_request_id)
        event = trio.Event()
        self.pending_requests[request_id] = event
        await self.send({"id": request_id, "method": method, "params": dict(params)})
        await event.wait()
        return self.answers.pop(request_id)


class FakeAppServer:
    """A scriptable fake of ``codex app-server``. See the module docstring."""

    def __init__(
        self,
        *,
        default_turn: TurnScript | None = None,
        state_path: Path | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.default_turn = default_turn or TurnScript()
        self.script: deque[TurnScript] = deque()
        self.received: list[dict[str, Any]] = []
        self.received_raw: list[str | bytes] = []
        self.threads: dict[str, _Thread] = {}
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.server_request_answers: list[tuple[str, dict[str, Any]]] = []
        self.connections: list[_FakeConnection] = []
        self.active_turns: dict[str, _ActiveTurn] = {}
        self.turns_started = 0
        self.compactions = 0
        self.connection_count = 0
        self._state_path = state_path
        self._max_message_size = max_message_size
        self._load_state()

    # -- scripting ---------------------------------------------------------------------------------------------

    def push_turns(self, *turns: TurnScript) -> None:
        self.script.extend(turns)

    def requests(self, method: str) -> list[dict[str, Any]]:
        """The params of every request received with ``method``, in arrival order."""
        return [f.get("params", {}) for f in self.received if f.get("method") == method and "id" in f]

    def methods(self) -> list[str]:
        return [f["method"] for f in self.received if isinstance(f.get("method"), str)]

    async def notify_all(self, method: str, params: Mapping[str, Any]) -> None:
        for conn in list(self.connections):
            try:
                await conn.notify(method, params)
            except ConnectionLost:
                pass

    async def send_raw_all(self, text: str) -> None:
        """Send ``text`` as-is (garbage, a bogus response, ...) on every connection."""
        for conn in list(self.connections):
            try:
                await conn.stream.send_message(text)
            except ConnectionLost:
                pass

    async def request_all(self, method: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Send a server request on every connection and return the answers."""
        return [await conn.server_request(method, params) for conn in list(self.connections)]

    async def close_all(self) -> None:
        for conn in list(self.connections):
            await conn.stream.aclose()

    async def complete_turn(self, turn_id: str | None = None) -> None:
        """Release a hanging turn (the active one when ``turn_id`` is None) so it completes normally."""
        for turn in list(self.active_turns.values()):
            if turn_id is None or turn.id == turn_id:
                turn.script = attrs.evolve(turn.script, hang=False)
                turn.done.set()

    # -- serving -----------------------------------------------------------------------------------------------

    async def serve_stream(self, stream: MessageStream) -> None:
        """Serve one connection until it closes."""
        self.connection_count += 1
        async with trio.open_nursery() as nursery:
            conn = _FakeConnection(self, stream, nursery)
            self.connections.append(conn)
            try:
                while True:
                    try:
                        frame = await stream.receive_message()
                    except ConnectionLost:
                        break
                    await self._handle_frame(conn, frame)
            finally:
                self.connections.remove(conn)
                nursery.cancel_scope.cancel()

    async def serve_unix(
        self, path: Path | str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen for WebSocket connections on a Unix socket at ``path`` (removed again on exit)."""
        path = os.fspath(path)
        sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            sock.listen(64)
            listener = trio.SocketListener(sock)
        except BaseException:
            sock.close()
            raise
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._serve_websocket, stream)
        finally:
            sock.close()
            try:
                os.unlink(path)
            except OSError:
                pass

    async def _serve_websocket(self, stream: trio.SocketStream) -> None:
        async with trio.open_nursery() as nursery:
            try:
                request = await trio_websocket.wrap_server_stream(
                    nursery, stream, max_message_size=self._max_message_size, message_queue_size=256
                )
                ws = await request.accept()
            except (trio_websocket.HandshakeError, trio.BrokenResourceError, trio_websocket.ConnectionClosed):
                await stream.aclose()
                nursery.cancel_scope.cancel()
                return
            try:
                await self.serve_stream(WebSocketMessageStream(ws, "fake client", self._max_message_size))
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await stream.aclose()  # ours to close: trio-websocket leaves the socket to the collector

    # -- protocol ----------------------------------------------------------------------------------------------

    async def _handle_frame(self, conn: _FakeConnection, frame: str | bytes) -> None:
        self.received_raw.append(frame)
        try:
            msg = json.loads(frame)
        except ValueError:
            return  # codex ignores a garbage text frame and keeps the connection
        if not isinstance(msg, dict):
            return
        self.received.append(msg)
        method = msg.get("method")
        if "id" in msg and method is None:
            request_id = msg["id"]
            if isinstance(request_id, int) and request_id in conn.pending_requests:
                conn.answers[request_id] = msg
                self.server_request_answers.append((str(request_id), msg))
                conn.pending_requests.pop(request_id).set()
            return
        if not isinstance(method, str):
            return
        if "id" not in msg:
            if method == "initialized":
                conn.initialized = True
            return
        request_id = msg["id"]
        try:
            if "params" not in msg:
                raise FakeRpcError("Invalid request: missing field `params`")
            result = await self._dispatch(conn, method, msg["params"])
        except FakeRpcError as exc:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                error["data"] = exc.data
            await self._safe_send(conn, {"id": request_id, "error": error})
        else:
            await self._safe_send(conn, {"id": request_id, "result": result})

    async def _safe_send(self, conn: _FakeConnection, obj: Mapping[str, Any]) -> None:
        try:
            await conn.send(obj)
        except ConnectionLost:
            pass

    async def _dispatch(self, conn: _FakeConnection, method: str, params: Any) -> Any:
        if method in self.handlers:
            result = self.handlers[method](params)
            if isinstance(result, Exception):
                raise result
            if hasattr(result, "__await__"):
                result = await result
            return result
        if method == "initialize":
            return self._initialize(conn)
        if not conn.initialized and method not in ("initialize",):
            # codex accepts requests between the initialize answer and the initialized notification only in
            # practice because clients send them in order; we are strict like the real "Not initialized".
            raise FakeRpcError("Not initialized")
        handler = getattr(self, "_m_" + method.replace("/", "_"), None)
        if handler is None or method not in _KNOWN_METHODS:
            raise FakeRpcError(
                f"Invalid request: unknown variant `{method}`, expected one of "
                + ", ".join(f"`{m}`" for m in _KNOWN_METHODS)
            )
        return await handler(conn, params)

    def _initialize(self, conn: _FakeConnection) -> dict[str, Any]:
        if getattr(conn, "_did_initialize", False):
            raise FakeRpcError("Already initialized")
        conn._did_initialize = True  # type: ignore[attr-defined]
        return {
            "userAgent": f"codex_trio_fake/{PINNED_CODEX_VERSION} (fake)",
            "codexHome": "/nonexistent/fake-codex-home",
            "platformFamily": "unix",
            "platformOs": "linux",
        }

    def _thread_payload(self, thread: _Thread) -> dict[str, Any]:
        return {
            "thread": {"id": thread.id, "status": {"type": "idle"}, "turns": [], "cliVersion": PINNED_CODEX_VERSION},
            "model": "fake-model",
            "modelProvider": "fake",
            "cwd": "/",
            "approvalPolicy": "never",
            "approvalsReviewer": "user",
            "sandbox": {"type": "readOnly", "networkAccess": False},
        }

    async def _m_thread_start(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread = _Thread(str(uuid.uuid4()))
        self.threads[thread.id] = thread
        self._save_state()
        payload = self._thread_payload(thread)
        conn.nursery.start_soon(conn.notify, "thread/started", {"thread": payload["thread"]})
        return payload

    async def _m_thread_resume(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread_id = params.get("threadId")
        thread = self.threads.get(thread_id) if isinstance(thread_id, str) else None
        if thread is None:
            raise FakeRpcError(f"no rollout found for thread id {thread_id}")
        return self._thread_payload(thread)

    async def _m_thread_read(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._thread(params)
        return {"thread": {"id": thread.id, "turns": thread.turns}}

    def _thread(self, params: dict[str, Any]) -> _Thread:
        thread_id = params.get("threadId")
        if not isinstance(thread_id, str) or thread_id not in self.threads:
            raise FakeRpcError(f"thread not found: {thread_id}")
        return self.threads[thread_id]

    @staticmethod
    def _input_texts(params: dict[str, Any]) -> list[str]:
        items = params.get("input")
        if not isinstance(items, list) or not items:
            raise FakeRpcError("Invalid request: missing field `input`")
        # Images (``image``, ``localImage``) travel beside the text; the fake's turns only echo the text.
        return [str(i.get("text", "")) for i in items if isinstance(i, dict) and i.get("type", "text") == "text"]

    async def _m_turn_start(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._thread(params)
        texts = self._input_texts(params)
        if thread.id in self.active_turns:
            raise FakeRpcError("a turn is already active on this thread; use turn/steer")
        script = self.script.popleft() if self.script else self.default_turn
        turn = _ActiveTurn(str(uuid.uuid4()), thread.id, script, texts)
        self.active_turns[thread.id] = turn
        self.turns_started += 1
        self._record_user_message(thread, turn.id, params, texts)
        conn.nursery.start_soon(self._run_turn, conn, turn)
        return {
            "turn": {
                "id": turn.id,
                "items": [],
                "itemsView": "notLoaded",
                "status": "inProgress",
                "error": None,
            }
        }

    async def _m_turn_steer(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._thread(params)
        texts = self._input_texts(params)
        active = self.active_turns.get(thread.id)
        expected = params.get("expectedTurnId")
        if active is None:
            raise FakeRpcError("no active turn to steer")
        if expected != active.id:
            raise FakeRpcError(f"expected turn {expected} is not the active turn {active.id}")
        active.inputs.extend(texts)
        self._record_user_message(thread, active.id, params, texts)
        return {"turnId": active.id}

    def _record_user_message(self, thread: _Thread, turn_id: str, params: dict[str, Any], texts: list[str]) -> None:
        client_id = params.get("clientUserMessageId")
        thread.user_messages.append({"turnId": turn_id, "clientId": client_id, "text": "\n".join(texts)})
        self._save_state()

    async def _m_thread_turns_list(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        """Newest first, like codex: each turn with its userMessage items (``clientId`` = clientUserMessageId)."""
        thread = self._thread(params)
        order: list[str] = []
        for message in thread.user_messages:
            if message["turnId"] not in order:
                order.append(message["turnId"])
        done = {t["id"]: t for t in thread.turns}
        data: list[dict[str, Any]] = []
        for turn_id in reversed(order):
            items = [
                {
                    "type": "userMessage",
                    "id": f"user-{i}",
                    "clientId": m["clientId"],
                    "content": [{"type": "text", "text": m["text"]}],
                }
                for i, m in enumerate(thread.user_messages)
                if m["turnId"] == turn_id
            ]
            status = done[turn_id]["status"] if turn_id in done else "inProgress"
            data.append({"id": turn_id, "items": items, "itemsView": "full", "status": status, "error": None})
        limit = params.get("limit")
        if isinstance(limit, int) and limit > 0:
            data = data[:limit]
        return {"data": data, "nextCursor": None}

    async def _m_turn_interrupt(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._thread(params)
        active = self.active_turns.get(thread.id)
        if active is None or active.id != params.get("turnId"):
            raise FakeRpcError("no active turn to interrupt")
        active.interrupted = True
        active.done.set()
        return {}

    async def _m_thread_inject_items(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._thread(params)
        items = params.get("items")
        if not isinstance(items, list):
            raise FakeRpcError("Invalid request: missing field `items`")
        for index, item in enumerate(items):
            if not isinstance(item, dict) or "type" not in item:
                raise FakeRpcError(f"items[{index}] is not a valid response item: missing field `type`")
        thread.injected.extend(items)
        return {}

    async def _m_thread_name_set(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._thread(params)
        name = params.get("name")
        thread.name = name if isinstance(name, str) else None
        return {}

    async def _m_thread_fork(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        source = self._thread(params)
        thread = _Thread(
            str(uuid.uuid4()),
            [dict(turn) for turn in source.turns],
            user_messages=[dict(m) for m in source.user_messages],
            forked_from=source.id,
        )
        self.threads[thread.id] = thread
        self._save_state()
        return self._thread_payload(thread)

    async def _m_thread_list(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        archived = bool(params.get("archived"))
        threads = sorted(self.threads.values(), key=lambda t: t.created_at, reverse=True)
        data: list[dict[str, Any]] = []
        for thread in threads:
            if thread.archived != archived:
                continue
            first = thread.user_messages[0]["text"] if thread.user_messages else ""
            data.append(
                {
                    "id": thread.id,
                    "name": thread.name,
                    "preview": first,
                    "createdAt": thread.created_at,
                    "updatedAt": thread.created_at,
                    "cwd": "/",
                    "forkedFromId": thread.forked_from,
                    "status": {"type": "idle"},
                    "turns": [],
                }
            )
        return {"data": data, "nextCursor": None}

    async def _m_thread_archive(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._thread(params)
        if thread.archived:
            raise FakeRpcError(f"thread {thread.id} is already archived")
        thread.archived = True
        return {}

    async def _m_thread_compact_start(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._thread(params)
        if thread.id in self.active_turns:
            raise FakeRpcError("a turn is already active on this thread")
        self.compactions += 1
        conn.nursery.start_soon(self._compact, conn, thread)
        return {}

    async def _compact(self, conn: _FakeConnection, thread: _Thread) -> None:
        # codex compacts in a turn of its own: turn/started, a contextCompaction item, turn/completed
        turn_id = str(uuid.uuid4())
        item = {"type": "contextCompaction", "id": str(uuid.uuid4())}
        try:
            await conn.notify(
                "turn/started", {"threadId": thread.id, "turn": {"id": turn_id, "status": "inProgress", "items": []}}
            )
            await conn.notify("item/completed", {"threadId": thread.id, "turnId": turn_id, "item": item})
            record = {"id": turn_id, "items": [item], "itemsView": "summary", "status": "completed", "error": None}
            await conn.notify("turn/completed", {"threadId": thread.id, "turn": record})
        except ConnectionLost:
            pass

    async def _m_skills_extraRoots_set(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
        roots = params.get("extraRoots")
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise FakeRpcError("Invalid request: missing field `extraRoots`")
        if any(not os.path.isabs(r) for r in roots):
            raise FakeRpcError("Invalid request: AbsolutePathBuf deserialized without a base path")
        conn.nursery.start_soon(conn.notify, "skills/changed", {})
        return {}

    async def _run_turn(self, conn: _FakeConnection, turn: _ActiveTurn) -> None:
        script = turn.script
        base = {"threadId": turn.thread_id, "turnId": turn.id}
        status = "completed"
        error: dict[str, Any] | None = None
        items: list[dict[str, Any]] = []
        try:
            await conn.notify(
                "turn/started",
                {"threadId": turn.thread_id, "turn": {"id": turn.id, "status": "inProgress", "items": []}},
            )
            user_item = {
                "type": "userMessage",
                "id": str(uuid.uuid4()),
                "content": [{"type": "text", "text": t} for t in turn.inputs],
            }
            await conn.notify("item/completed", {**base, "item": user_item, "completedAtMs": int(time.time() * 1000)})
            for spec in script.server_requests:
                answer = await conn.server_request(spec.method, {**base, **spec.params})
                self.server_request_answers.append((spec.method, answer))
                if answer.get("result", {}).get("decision") == "cancel":
                    turn.interrupted = True
                    turn.done.set()
            if script.hang and not turn.done.is_set():
                await turn.done.wait()
            elif script.delay and not turn.done.is_set():
                with trio.move_on_after(script.delay):
                    await turn.done.wait()
            if turn.interrupted:
                status = "interrupted"
            elif script.error_notification is not None:
                await conn.notify(
                    "error", {**base, "error": {"message": script.error_notification}, "willRetry": False}
                )
                status = "failed"
                error = {"message": script.error_notification}
            elif script.fail is not None:
                status = "failed"
                error = {"message": script.fail}
            else:
                item_id = "msg-" + turn.id[:8]
                await conn.notify("item/started", {**base, "item": {"type": "agentMessage", "id": item_id, "text": ""}})
                for chunk in _chunks(script.text, script.deltas):
                    await conn.notify("item/agentMessage/delta", {**base, "itemId": item_id, "delta": chunk})
                message = {"type": "agentMessage", "id": item_id, "text": script.text}
                for extra in script.extra_items:
                    await conn.notify(
                        "item/completed", {**base, "item": extra, "completedAtMs": int(time.time() * 1000)}
                    )
                await conn.notify("item/completed", {**base, "item": message, "completedAtMs": int(time.time() * 1000)})
                items = [message]
            self.active_turns.pop(turn.thread_id, None)
            record = {"id": turn.id, "items": items, "itemsView": "summary", "status": status, "error": error}
            thread = self.threads.get(turn.thread_id)
            if thread is not None:
                thread.turns.append({**record, "inputs": turn.inputs})
                self._save_state()
            await conn.notify("turn/completed", {"threadId": turn.thread_id, "turn": record})
        except ConnectionLost:
            pass
        finally:
            if self.active_turns.get(turn.thread_id) is turn:
                del self.active_turns[turn.thread_id]

    # -- persistence (for the child-process mode, so thread/resume works across restarts) ----------------------

    def _load_state(self) -> None:
        if self._state_path is None or not self._state_path.exists():
            return
        data = json.loads(self._state_path.read_text())
        messages = data.get("user_messages", {})
        for thread_id, turns in data.get("threads", {}).items():
            self.threads[thread_id] = _Thread(thread_id, list(turns), user_messages=list(messages.get(thread_id, [])))

    def _save_state(self) -> None:
        if self._state_path is None:
            return
        data = {
            "threads": {t.id: t.turns for t in self.threads.values()},
            "user_messages": {t.id: t.user_messages for t in self.threads.values()},
        }
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._state_path)


def _chunks(text: str, count: int) -> list[str]:
    if count <= 0 or not text:
        return []
    size = max(1, -(-len(text) // count))
    return [text[i : i + size] for i in range(0, len(text), size)]
