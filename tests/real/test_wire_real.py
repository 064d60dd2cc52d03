"""Protocol round trips on the real codex 0.169 over the Unix-socket WebSocket: skills/extraRoots/set,
thread/inject_items reaching the next model request, and a single 1.5 MB frame received intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from codex_trio._connection import Connection
from codex_trio._handshake import initialize
from codex_trio._process import ChildSpec, open_app_server
from codex_trio._transport import connect_unix_websocket
from codex_trio.testing import MockModelServer, Text, write_codex_home

pytestmark = pytest.mark.real_codex


async def test_skill_roots_inject_items_and_a_large_frame(tmp_path: Path, codex_bin: str) -> None:
    skills = tmp_path / "skills" / "hello-skill"
    skills.mkdir(parents=True)
    (skills / "SKILL.md").write_text("---\nname: hello-skill\ndescription: says hello\n---\nSay hello.\n")
    big = "B" * 1_500_000
    with MockModelServer() as model, trio.fail_after(60):
        model.enqueue(Text("short", deltas=1), Text(big, deltas=0))
        home = write_codex_home(tmp_path / "home", model.url)
        import os

        spec = ChildSpec(
            argv=[codex_bin, "app-server", "--listen", f"unix://{tmp_path / 's.sock'}"],
            env={**os.environ, "CODEX_HOME": str(home), "RUST_LOG": "warn"},
            cwd=None,
            socket_path=tmp_path / "s.sock",
            log_dir=tmp_path / "logs",
            runtime_id="wire",
        )
        async with open_app_server(spec) as child, trio.open_nursery() as nursery:
            conn = Connection(await connect_unix_websocket(nursery, child.connect_path()))
            await nursery.start(conn.run)
            await initialize(conn)
            with conn.subscribe(["skills/changed", "turn/completed"], lossless=True) as sub:
                assert await conn.request("skills/extraRoots/set", {"extraRoots": [str(skills.parent)]}) == {}
                assert (await sub.receive()).method == "skills/changed"
                listed = await conn.request("skills/list", {"cwds": [str(tmp_path)], "forceReload": True})
                assert "hello-skill" in str(listed)
                thread = (await conn.request("thread/start", {"cwd": str(tmp_path)}))["thread"]["id"]
                note = {
                    "type": "message",
                    "role": "developer",
                    "content": [{"type": "input_text", "text": "TEAMMATE COMPLETION: job 42"}],
                }
                assert await conn.request("thread/inject_items", {"threadId": thread, "items": [note]}) == {}
                params = {"threadId": thread, "input": [{"type": "text", "text": "hi", "text_elements": []}]}
                await conn.request("turn/start", {**params, "clientUserMessageId": "cid-1"})
                assert (await sub.receive()).params["turn"]["status"] == "completed"
                # codex keeps our clientUserMessageId on the user message: how a new host tells whether input a
                # dead host was delivering ever reached codex
                turns = await conn.request("thread/turns/list", {"threadId": thread, "itemsView": "full"})
                users = [i for t in turns["data"] for i in t["items"] if i["type"] == "userMessage"]
                assert [u["clientId"] for u in users] == ["cid-1"]
                assert "TEAMMATE COMPLETION: job 42" in model.requests[0].input_texts()
                await conn.request("turn/start", params)
                done = await sub.receive()
                assert done.params["turn"]["items"][-1]["text"] == big
            await conn.aclose()
            nursery.cancel_scope.cancel()
