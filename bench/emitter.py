"""A purpose-built fake app-server for the benchmarks: it blasts pre-encoded notifications as fast as the OS allows.

    python bench/emitter.py --listen unix://PATH [--deltas N] [--item-bytes B]
    python bench/emitter.py --stdio               [--deltas N] [--item-bytes B]

Stdlib only and deliberately dumb, so that the *emitter* is never what a benchmark measures: it answers
``initialize``, ``thread/start``, ``thread/resume`` and any other request with a plausible result, and on every
``turn/start`` it answers, then writes ``turn/started``, N ``item/agentMessage/delta`` notifications (about 190
bytes each, encoded once, before the client asks), one ``item/completed`` agent message (of ``--item-bytes``
characters when given) and ``turn/completed``, all in one ``sendall``. The WebSocket side is a minimal RFC 6455
server (server frames are unmasked, so a whole turn is one precomputed byte string); the stdio side writes NDJSON.
It serves Unix-socket connections one after another until killed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
THREAD_ID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
DELTA_FRAME_BYTES = 190
_EMITTED_AT = 1_732_540_000_000


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def turn_id_for(number: int) -> str:
    # Fixed width so every turn's blob has the same frame sizes (and can be cached per turn number).
    return f"bench-turn-{number:06d}"


def delta_payloads(turn_id: str, count: int) -> list[bytes]:
    """``count`` agent-message delta frames of exactly DELTA_FRAME_BYTES bytes each (numbered, so not identical)."""
    item_id = "msg-" + turn_id
    probe = _dumps(
        {
            "method": "item/agentMessage/delta",
            "params": {"threadId": THREAD_ID, "turnId": turn_id, "itemId": item_id, "delta": ""},
            "emittedAtMs": _EMITTED_AT,
        }
    )
    filler = max(8, DELTA_FRAME_BYTES - len(probe))
    frames = []
    for i in range(count):
        text = f"{i:07d} " + "lorem ipsum dolor sit amet " * 4
        frames.append(
            _dumps(
                {
                    "method": "item/agentMessage/delta",
                    "params": {"threadId": THREAD_ID, "turnId": turn_id, "itemId": item_id, "delta": text[:filler]},
                    "emittedAtMs": _EMITTED_AT,
                }
            )
        )
    return frames


def turn_payloads(turn_id: str, deltas: int, item_bytes: int) -> list[bytes]:
    """Every notification of one turn, in order (the turn/start answer is sent before these)."""
    item_id = "msg-" + turn_id
    text = "x" * item_bytes if item_bytes else "bench reply"
    note = {"threadId": THREAD_ID, "turnId": turn_id}
    frames = [
        _dumps(
            {
                "method": "turn/started",
                "params": {"threadId": THREAD_ID, "turn": {"id": turn_id, "status": "inProgress", "items": []}},
                "emittedAtMs": _EMITTED_AT,
            }
        ),
        _dumps(
            {
                "method": "item/started",
                "params": {**note, "item": {"type": "agentMessage", "id": item_id, "text": ""}},
                "emittedAtMs": _EMITTED_AT,
            }
        ),
    ]
    frames += delta_payloads(turn_id, deltas)
    frames.append(
        _dumps(
            {
                "method": "item/completed",
                "params": {**note, "item": {"type": "agentMessage", "id": item_id, "text": text}},
                "emittedAtMs": _EMITTED_AT,
            }
        )
    )
    frames.append(
        _dumps(
            {
                "method": "turn/completed",
                "params": {
                    "threadId": THREAD_ID,
                    "turn": {"id": turn_id, "items": [], "itemsView": "summary", "status": "completed", "error": None},
                },
                "emittedAtMs": _EMITTED_AT,
            }
        )
    )
    return frames


def _thread_result() -> dict[str, Any]:
    return {
        "thread": {
            "id": THREAD_ID,
            "preview": "",
            "ephemeral": False,
            "modelProvider": "bench",
            "createdAt": 0,
            "updatedAt": 0,
            "status": {"type": "idle"},
            "path": None,
            "cwd": "/",
            "cliVersion": "0.169.0",
            "source": "appServer",
            "gitInfo": None,
            "name": None,
            "turns": [],
        },
        "model": "bench-model",
        "modelProvider": "bench",
        "cwd": "/",
        "approvalPolicy": "never",
        "approvalsReviewer": "user",
        "sandbox": {"type": "readOnly", "networkAccess": False},
        "reasoningEffort": None,
    }


def _result(method: str, turn_id: str) -> Any:
    if method == "initialize":
        return {
            "userAgent": "bench_emitter/0.169.0 (bench)",
            "codexHome": "/nonexistent/bench-codex-home",
            "platformFamily": "unix",
            "platformOs": "linux",
        }
    if method in ("thread/start", "thread/resume"):
        return _thread_result()
    if method == "turn/start":
        return {"turn": {"id": turn_id, "items": [], "itemsView": "notLoaded", "status": "inProgress", "error": None}}
    if method == "turn/steer":
        return {"turnId": turn_id}
    return {}


class _Responder:
    """The protocol, independent of the framing: request in, list of frames out."""

    def __init__(self, deltas: int, item_bytes: int, encode: Callable[[bytes], bytes]) -> None:
        self.deltas = deltas
        self.item_bytes = item_bytes
        self.encode = encode
        self.turns = 0
        # The first turn's notifications are encoded before any client connects: that is the blast.
        self._next = self._encode_turn(1)

    def _encode_turn(self, number: int) -> bytes:
        return b"".join(self.encode(f) for f in turn_payloads(turn_id_for(number), self.deltas, self.item_bytes))

    def handle(self, data: bytes) -> bytes:
        try:
            msg = json.loads(data)
        except ValueError:
            return b""
        if not isinstance(msg, dict) or "id" not in msg or not isinstance(msg.get("method"), str):
            return b""  # a notification (initialized) or an answer to a server request
        method = msg["method"]
        if method != "turn/start":
            return self.encode(_dumps({"id": msg["id"], "result": _result(method, turn_id_for(self.turns))}))
        self.turns += 1
        blob = self._next if self.turns == 1 else self._encode_turn(self.turns)
        answer = self.encode(_dumps({"id": msg["id"], "result": _result(method, turn_id_for(self.turns))}))
        return answer + blob


# --- WebSocket (RFC 6455, server side, just enough) ----------------------------------------------------------


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def _serve_ws_connection(sock: socket.socket, responder: _Responder) -> None:
    reader = _Reader(sock)
    head = reader.until(b"\r\n\r\n").decode("latin-1")
    key = ""
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
    sock.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    message = b""
    while True:
        b0, b1 = reader.exactly(2)
        opcode = b0 & 0x0F
        size = b1 & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", reader.exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", reader.exactly(8))
        mask = reader.exactly(4) if b1 & 0x80 else b""
        payload = reader.exactly(size)
        if mask:
            payload = _unmask(payload, mask)
        if opcode == 0x8:
            sock.sendall(ws_frame(payload[:2], 0x8))
            return
        if opcode == 0x9:
            sock.sendall(ws_frame(payload, 0xA))
            continue
        if opcode in (0x1, 0x2, 0x0):
            message += payload
            if b0 & 0x80:
                out = responder.handle(message)
                message = b""
                if out:
                    sock.sendall(out)


def serve_unix(path: str, deltas: int, item_bytes: int) -> None:
    responder = _Responder(deltas, item_bytes, ws_frame)
    try:
        os.unlink(path)
    except OSError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    print("ready", flush=True)  # the parent waits for this line before connecting
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                _serve_ws_connection(conn, responder)
            except (EOFError, OSError):
                pass
        # A new connection is a new session: its first turn is the blast again.
        responder.turns = 0


# --- stdio NDJSON ------------------------------------------------------------------------------------------------


def serve_stdio(deltas: int, item_bytes: int) -> None:
    responder = _Responder(deltas, item_bytes, lambda payload: payload + b"\n")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        if not line.strip():
            continue
        out = responder.handle(line)
        if out:
            try:
                stdout.write(out)
                stdout.flush()
            except BrokenPipeError:
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emitter")
    parser.add_argument("--listen", help="unix://PATH")
    parser.add_argument("--stdio", action="store_true")
    parser.add_argument("--deltas", type=int, default=200_000)
    parser.add_argument("--item-bytes", type=int, default=0)
    args = parser.parse_args(argv)
    if args.stdio:
        serve_stdio(args.deltas, args.item_bytes)
    elif args.listen and args.listen.startswith("unix://"):
        serve_unix(args.listen[len("unix://") :], args.deltas, args.item_bytes)
    else:
        parser.error("give --stdio or --listen unix://PATH")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
