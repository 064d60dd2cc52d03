"""The approval policy against the real ``codex app-server`` (0.169) and the mock model: decline, accept, cancel.

The mock model asks for ``touch <tmp>/marker`` with ``require_escalated`` under ``approval_policy=on-request`` and
a read-only sandbox, so codex must ask us before running it (codex-app-server.md §5 "Command approval").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from codex_trio._approvals import ApprovalDecisionRecord, ApprovalPolicy, ApprovalRequest
from codex_trio._connection import Connection
from codex_trio._handshake import initialize
from codex_trio._paths import allocate_socket_path
from codex_trio._process import ChildSpec, app_server_argv, open_app_server
from codex_trio._transport import connect_unix_websocket
from codex_trio.testing._mock_model import ExecCommand, MockModelServer, RawEvents, Step, Text, write_codex_home
from codex_trio.testing._real_codex import require_codex_bin

pytestmark = pytest.mark.real_codex

GUARD = 60
COMMAND_APPROVAL = "item/commandExecution/requestApproval"


@pytest.fixture
def short_dir(short_socket_dir: Path) -> Path:
    """The testing kit's ``short_socket_dir``: pytest's tmp_path can push socket paths past sun_path."""
    return short_socket_dir


@attrs.frozen
class Outcome:
    turn: dict[str, Any]
    items: list[dict[str, Any]]  # every item/completed of the turn, in order
    model: MockModelServer

    def of_type(self, item_type: str) -> list[dict[str, Any]]:
        return [i for i in self.items if i["type"] == item_type]


def touch_script(marker: Path) -> list[Step]:
    return [
        ExecCommand(f"touch {marker}", sandbox_permissions="require_escalated", justification="test"),
        Text("done"),
    ]


async def run_turn(
    tmp_path: Path, short_dir: Path, policy: ApprovalPolicy, script: list[Step], *, features: str = ""
) -> Outcome:
    """One turn of ``script`` on a fresh real app-server (on-request approvals, read-only sandbox).

    ``features`` lines are appended to config.toml's trailing ``[features]`` table.
    """
    codex_bin = require_codex_bin()
    with MockModelServer(script) as model:
        home = write_codex_home(
            tmp_path / "codex-home", model.url, approval_policy="on-request", sandbox_mode="read-only"
        )
        if features:
            config = home / "config.toml"
            config.write_text(config.read_text() + features + "\n")
        socket_path = allocate_socket_path(short_dir, "appr")
        spec = ChildSpec(
            argv=app_server_argv(codex_bin, socket_path),
            env={**os.environ, "CODEX_HOME": str(home), "RUST_LOG": "warn"},
            cwd=None,
            socket_path=socket_path,
            log_dir=tmp_path / "logs",
            runtime_id="appr",
            ready_timeout=20.0,
        )
        with trio.fail_after(GUARD):
            async with open_app_server(spec) as child, trio.open_nursery() as nursery:
                stream = await connect_unix_websocket(nursery, child.connect_path())
                conn = Connection(stream, server_request_handler=policy)
                await nursery.start(conn.run)
                try:
                    await initialize(conn)
                    notes = conn.subscribe(["item/completed", "turn/completed"], buffer=1024)
                    started = await conn.request("thread/start", {"cwd": str(tmp_path)})
                    thread_id = started["thread"]["id"]
                    user_input = [{"type": "text", "text": "go", "text_elements": []}]
                    begun = await conn.request("turn/start", {"threadId": thread_id, "input": user_input})
                    turn_id = begun["turn"]["id"]
                    items: list[dict[str, Any]] = []
                    async for note in notes:
                        if note.method == "item/completed":
                            items.append(note.params["item"])
                        elif note.params["turn"]["id"] == turn_id:
                            return Outcome(note.params["turn"], items, model)
                    raise AssertionError(f"connection closed before the turn completed: {conn.close_reason}")
                finally:
                    await conn.aclose()
                    nursery.cancel_scope.cancel()
    raise AssertionError("unreachable")


async def test_default_policy_declines_and_the_turn_completes(tmp_path: Path, short_dir: Path) -> None:
    records: list[ApprovalDecisionRecord] = []
    marker = tmp_path / "marker"
    outcome = await run_turn(tmp_path, short_dir, ApprovalPolicy(on_decision=records.append), touch_script(marker))
    turn, commands, model = outcome.turn, outcome.of_type("commandExecution"), outcome.model
    assert not marker.exists()
    assert turn["status"] == "completed", turn
    assert [c["status"] for c in commands] == ["declined"], commands
    assert len(records) == 1
    record = records[0]
    assert (record.method, record.kind, record.decision_summary, record.rejected) == (
        COMMAND_APPROVAL,
        "command",
        "decline",
        True,
    )
    assert "touch" in record.summary and str(marker) in record.summary
    assert record.item_id == commands[0]["id"]
    # The model was told, and answered a second time.
    assert len(model.requests) == 2
    outputs = model.requests[1].function_call_outputs()
    assert "rejected by user" in "".join(outputs.values()), outputs
    assert model.errors == []


async def test_accepting_handler_runs_the_command(tmp_path: Path, short_dir: Path) -> None:
    seen: list[ApprovalRequest] = []

    async def accept(request: ApprovalRequest) -> dict[str, Any]:
        seen.append(request)
        return {"decision": "accept"}

    records: list[ApprovalDecisionRecord] = []
    marker = tmp_path / "marker"
    policy = ApprovalPolicy(accept, on_decision=records.append)
    outcome = await run_turn(tmp_path, short_dir, policy, touch_script(marker))
    turn, commands = outcome.turn, outcome.of_type("commandExecution")
    assert turn["status"] == "completed", turn
    # codex's unified exec hands the model a still-running command once its yield time has passed, so on a loaded
    # machine the turn can complete a moment before `touch` has run (seen once at load average 40).
    with trio.move_on_after(60):
        while not marker.exists():
            await trio.sleep(0.05)
    assert marker.exists()
    assert [c["status"] for c in commands] == ["completed"], commands
    assert [r.kind for r in seen] == ["command"]
    assert seen[0].thread_id and seen[0].turn_id == turn["id"]
    assert [(r.decision_summary, r.rejected, r.reason) for r in records] == [("accept", False, "handler")]


async def test_cancel_interrupts_the_turn(tmp_path: Path, short_dir: Path) -> None:
    policy = ApprovalPolicy.from_decisions({COMMAND_APPROVAL: "cancel"})
    marker = tmp_path / "marker"
    outcome = await run_turn(tmp_path, short_dir, policy, touch_script(marker))
    turn, commands, model = outcome.turn, outcome.of_type("commandExecution"), outcome.model
    assert not marker.exists()
    assert turn["status"] == "interrupted", turn
    assert [c["status"] for c in commands] == ["declined"], commands
    assert len(model.requests) == 1  # no second model call after a cancel


async def test_permissions_request_is_answered_with_nothing_granted(tmp_path: Path, short_dir: Path) -> None:
    # The request_permissions tool is behind a feature flag in 0.169; with it the model can ask for more access.
    args = {"permissions": {"file_system": {"write": [str(tmp_path)]}}, "reason": "want write"}
    call = {"type": "function_call", "call_id": "call-p", "name": "request_permissions", "arguments": json.dumps(args)}
    script: list[Step] = [
        RawEvents(
            [
                ("response.created", {"type": "response.created", "response": {"id": "resp-1"}}),
                ("response.output_item.done", {"type": "response.output_item.done", "item": call}),
                ("response.completed", {"type": "response.completed", "response": {"id": "resp-1"}}),
            ]
        ),
        Text("done"),
    ]
    records: list[ApprovalDecisionRecord] = []
    policy = ApprovalPolicy(on_decision=records.append)
    outcome = await run_turn(tmp_path, short_dir, policy, script, features="request_permissions_tool = true")
    assert outcome.turn["status"] == "completed", outcome.turn
    assert [(r.kind, r.decision_summary, r.rejected) for r in records] == [
        ("permissions", "no permissions granted", True)
    ]
    assert "want write" in records[0].summary
    output = json.loads(outcome.model.requests[1].function_call_outputs()["call-p"])
    assert output == {"permissions": {"network": None, "file_system": None}, "scope": "turn"}
