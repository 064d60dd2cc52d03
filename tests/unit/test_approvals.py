"""The approval policy: fail-closed answers, user handlers, deadlines, reports, and a free reader.

That the fail-closed answers (and the sample requests here) are valid by the schema the pinned codex generates is
checked with the binary, in tests/real/test_approvals_schema_real.py.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import trio
import trio.testing

from codex_trio._approvals import (
    KIND_BY_METHOD,
    Answer,
    ApprovalDecisionRecord,
    ApprovalPolicy,
    ApprovalRequest,
    fail_closed_answer,
    kind_of,
)
from codex_trio._connection import Connection
from codex_trio._errors import ConfigError, RpcError
from codex_trio._jsonrpc import ServerRequest
from codex_trio._protocol import SERVER_REQUEST_METHODS
from codex_trio._transport import memory_message_stream_pair
from codex_trio.testing._fake_app_server import FakeAppServer
from tests.approval_samples import SAMPLE_PARAMS, THREAD, TURN

GUARD = 10

# --- the fail-closed table ----------------------------------------------------------------------------------


def test_every_known_method_has_a_kind() -> None:
    assert set(KIND_BY_METHOD) == set(SERVER_REQUEST_METHODS)
    assert len(set(KIND_BY_METHOD.values())) == len(KIND_BY_METHOD)
    assert kind_of("some/future/request") == "unknown"


def test_fail_closed_answers_grant_nothing() -> None:
    """The same table without the binary: every answer is a refusal of its kind."""
    expected: dict[str, Any] = {
        "item/commandExecution/requestApproval": {"decision": "decline"},
        "item/fileChange/requestApproval": {"decision": "decline"},
        "item/tool/requestUserInput": {"answers": {}},
        "mcpServer/elicitation/request": {"action": "decline", "content": None},
        "item/permissions/requestApproval": {"permissions": {}, "scope": "turn"},
        "applyPatchApproval": {"decision": {"denied": {"rejection": "declined by codex_trio's approval policy"}}},
        "execCommandApproval": {"decision": {"denied": {"rejection": "declined by codex_trio's approval policy"}}},
    }
    for method, result in expected.items():
        assert fail_closed_answer(method, SAMPLE_PARAMS[method]).result == result
    dynamic = fail_closed_answer("item/tool/call", SAMPLE_PARAMS["item/tool/call"]).result
    assert dynamic is not None and dynamic["success"] is False
    [item] = dynamic["contentItems"]
    assert item["type"] == "inputText" and "'lookup' is not available" in item["text"]


def test_unknown_method_is_a_method_not_found_error() -> None:
    answer = fail_closed_answer("item/teleport/requestApproval", {"x": 1})
    assert answer.kind == "unknown" and answer.result is None
    assert answer.error is not None
    code, message = answer.error
    assert code == -32601
    assert "'item/teleport/requestApproval'" in message and "codex_trio declines" in message
    with pytest.raises(RpcError) as info:
        answer.unwrap("item/teleport/requestApproval")
    assert (info.value.code, info.value.rpc_message) == (-32601, message)


def test_answer_has_exactly_one_of_result_and_error() -> None:
    with pytest.raises(ValueError):
        Answer("command")
    with pytest.raises(ValueError):
        Answer("command", {"decision": "decline"}, (-32601, "no"))


# --- the typed view -----------------------------------------------------------------------------------------


def view(method: str, params: dict[str, Any] | None = None) -> ApprovalRequest:
    return ApprovalRequest.from_server_request(
        ServerRequest(7, method, SAMPLE_PARAMS[method] if params is None else params)
    )


def test_approval_request_views() -> None:
    command = view("item/commandExecution/requestApproval")
    assert (command.id, command.kind, command.thread_id, command.turn_id, command.item_id) == (
        7,
        "command",
        THREAD,
        TURN,
        "call-1",
    )
    assert command.summary == "/bin/bash -lc 'touch /tmp/x'"
    legacy = view("execCommandApproval")
    assert (legacy.thread_id, legacy.turn_id, legacy.item_id) == (THREAD, None, "legacy-exec")
    assert legacy.summary == "rm -rf '/tmp/some dir'"
    assert view("applyPatchApproval").summary == "apply a patch to /tmp/a.txt, /tmp/b.txt"
    assert view("item/fileChange/requestApproval").summary == "change files under /srv"
    assert view("mcpServer/elicitation/request").summary == "docs: Log in please"
    assert view("item/tool/requestUserInput").summary == "Which colour?"
    assert view("item/tool/call").summary == "call tool crm.lookup"
    assert view("item/permissions/requestApproval").summary == "grant additional permissions: want write"
    assert view("account/chatgptAuthTokens/refresh").summary == "refresh ChatGPT auth tokens (unauthorized)"
    assert view("some/new/thing", {}).summary == "some/new/thing"


def test_summary_is_bounded() -> None:
    long = view("item/commandExecution/requestApproval", {"command": "x" * 10_000})
    assert len(long.summary) == 500 and long.summary.endswith("…")


# --- the policy ---------------------------------------------------------------------------------------------

COMMAND = "item/commandExecution/requestApproval"


def request(method: str = COMMAND, request_id: int = 0) -> ServerRequest:
    return ServerRequest(request_id, method, dict(SAMPLE_PARAMS.get(method, {})))


async def test_no_handler_fails_closed_and_reports() -> None:
    records: list[ApprovalDecisionRecord] = []
    policy = ApprovalPolicy(on_decision=records.append)
    assert await policy(request()) == {"decision": "decline"}
    [record] = records
    assert (record.method, record.kind, record.decision_summary, record.rejected, record.reason) == (
        COMMAND,
        "command",
        "decline",
        True,
        "no handler",
    )
    assert (record.thread_id, record.turn_id, record.item_id) == (THREAD, TURN, "call-1")
    assert "touch" in record.summary


async def test_decline_all_is_the_default() -> None:
    policy = ApprovalPolicy.decline_all()
    for method in SERVER_REQUEST_METHODS:
        answer = await policy.decide(request(method))
        assert answer == fail_closed_answer(method, SAMPLE_PARAMS[method])


async def test_unknown_method_answers_with_an_error() -> None:
    with pytest.raises(RpcError) as info:
        await ApprovalPolicy()(request("brand/new/request"))
    assert info.value.code == -32601 and "brand/new/request" in info.value.rpc_message


async def test_handler_accept_is_sent_and_reported_as_not_rejected(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[ApprovalRequest] = []

    async def accept(req: ApprovalRequest) -> dict[str, Any]:
        seen.append(req)
        return {"decision": "accept"}

    records: list[ApprovalDecisionRecord] = []
    with caplog.at_level(logging.INFO, logger="codex_trio.approvals"):
        assert await ApprovalPolicy(accept, on_decision=records.append)(request()) == {"decision": "accept"}
    assert [r.kind for r in seen] == ["command"]
    assert [(r.decision_summary, r.rejected, r.reason) for r in records] == [("accept", False, "handler")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_handler_none_means_fail_closed() -> None:
    async def undecided(req: ApprovalRequest) -> None:
        return None

    records: list[ApprovalDecisionRecord] = []
    policy = ApprovalPolicy(undecided, on_decision=records.append)
    assert await policy(request("mcpServer/elicitation/request")) == {"action": "decline", "content": None}
    assert [(r.rejected, r.reason) for r in records] == [(True, "handler returned None")]


async def test_handler_raising_fails_closed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(req: ApprovalRequest) -> dict[str, Any]:
        raise KeyError("boom")

    records: list[ApprovalDecisionRecord] = []
    with caplog.at_level(logging.WARNING, logger="codex_trio.approvals"):
        result = await ApprovalPolicy(broken, on_decision=records.append)(request())
    assert result == {"decision": "decline"}
    assert records[0].rejected and records[0].reason.startswith("handler raised KeyError")
    [warning] = [r for r in caplog.records if r.name == "codex_trio.approvals"]
    assert warning.levelno == logging.WARNING and "boom" in warning.getMessage()


async def test_handler_hanging_fails_closed_after_the_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def hang(req: ApprovalRequest) -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    records: list[ApprovalDecisionRecord] = []
    policy = ApprovalPolicy(hang, timeout=5, on_decision=records.append)
    start = trio.current_time()
    with trio.fail_after(60):
        assert (
            await policy(request("item/tool/call")) == fail_closed_answer("item/tool/call", {"tool": "lookup"}).result
        )
    assert trio.current_time() - start == pytest.approx(5)
    assert records[0].reason == "handler timed out after 5s" and records[0].rejected


@pytest.mark.parametrize("bad", [{"decision": 1}, {"decision": None}, {}, ["accept"], "accept"])
async def test_handler_invalid_decision_fails_closed(bad: Any) -> None:
    async def nonsense(req: ApprovalRequest) -> Any:
        return bad

    records: list[ApprovalDecisionRecord] = []
    assert await ApprovalPolicy(nonsense, on_decision=records.append)(request()) == {"decision": "decline"}
    assert records[0].reason.startswith("handler returned an invalid result")


async def test_handler_decision_objects_are_allowed() -> None:
    amendment = {"acceptWithExecpolicyAmendment": {"execpolicy_amendment": ["touch"]}}

    async def amend(req: ApprovalRequest) -> dict[str, Any]:
        return {"decision": amendment}

    records: list[ApprovalDecisionRecord] = []
    assert await ApprovalPolicy(amend, on_decision=records.append)(request()) == {"decision": amendment}
    assert (records[0].decision_summary, records[0].rejected) == ("acceptWithExecpolicyAmendment", False)


async def test_handler_rpc_error_is_sent_as_that_error() -> None:
    async def refuse(req: ApprovalRequest) -> dict[str, Any]:
        raise RpcError(req.method, -32000, "no tokens today")

    records: list[ApprovalDecisionRecord] = []
    with pytest.raises(RpcError) as info:
        await ApprovalPolicy(refuse, on_decision=records.append)(request("account/chatgptAuthTokens/refresh"))
    assert (info.value.code, info.value.rpc_message) == (-32000, "no tokens today")
    assert (records[0].decision_summary, records[0].rejected) == ("error -32000", True)


async def test_handler_may_answer_any_kind() -> None:
    async def answer(req: ApprovalRequest) -> dict[str, Any]:
        return {"answers": {"q1": {"answers": ["blue"]}}}

    records: list[ApprovalDecisionRecord] = []
    policy = ApprovalPolicy(answer, on_decision=records.append)
    assert await policy(request("item/tool/requestUserInput")) == {"answers": {"q1": {"answers": ["blue"]}}}
    assert (records[0].decision_summary, records[0].rejected) == ("1 answer(s)", False)


async def test_on_decision_failure_does_not_change_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    def explode(record: ApprovalDecisionRecord) -> None:
        raise RuntimeError("listener bug")

    with caplog.at_level(logging.ERROR, logger="codex_trio.approvals"):
        assert await ApprovalPolicy(on_decision=explode)(request()) == {"decision": "decline"}
    assert any("on_decision callback failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("timeout", [0, -1, math.nan, True])
def test_timeout_must_be_positive(timeout: Any) -> None:
    with pytest.raises(ConfigError):
        ApprovalPolicy(timeout=timeout)


async def test_from_decisions() -> None:
    policy = ApprovalPolicy.from_decisions(
        {
            COMMAND: "accept",
            "mcp_elicitation": "cancel",  # a kind label works too
            "item/tool/call": {"success": True, "contentItems": []},
        }
    )
    assert await policy(request(COMMAND)) == {"decision": "accept"}
    assert await policy(request("mcpServer/elicitation/request")) == {"action": "cancel"}
    assert await policy(request("item/tool/call")) == {"success": True, "contentItems": []}
    assert await policy(request("item/fileChange/requestApproval")) == {"decision": "decline"}
    with pytest.raises(ConfigError):
        ApprovalPolicy.from_decisions({"item/tool/call": "accept"})
    with pytest.raises(ConfigError):
        ApprovalPolicy.from_decisions({COMMAND: 3})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("method", "result", "rejected"),
    [
        (COMMAND, {"decision": "acceptForSession"}, False),
        (COMMAND, {"decision": "cancel"}, True),
        (
            COMMAND,
            {"decision": {"applyNetworkPolicyAmendment": {"network_policy_amendment": {"action": "deny"}}}},
            True,
        ),
        (
            COMMAND,
            {"decision": {"applyNetworkPolicyAmendment": {"network_policy_amendment": {"action": "allow"}}}},
            False,
        ),
        ("execCommandApproval", {"decision": "approved"}, False),
        ("execCommandApproval", {"decision": "abort"}, True),
        ("item/permissions/requestApproval", {"permissions": {"network": {"enabled": True}}}, False),
        ("item/permissions/requestApproval", {"permissions": {"network": None, "fileSystem": None}}, True),
        ("item/tool/call", {"success": True, "contentItems": []}, False),
        ("attestation/generate", {"token": "t"}, False),
    ],
)
async def test_rejected_flag(method: str, result: dict[str, Any], rejected: bool) -> None:
    async def give(req: ApprovalRequest) -> dict[str, Any]:
        return result

    records: list[ApprovalDecisionRecord] = []
    assert await ApprovalPolicy(give, on_decision=records.append)(request(method)) == result
    assert records[0].rejected is rejected


# --- through a real Connection ------------------------------------------------------------------------------


async def test_a_slow_handler_does_not_block_the_reader() -> None:
    release = trio.Event()

    async def handler(req: ApprovalRequest) -> dict[str, Any] | None:
        if req.kind == "file_change":
            await release.wait()
            return {"decision": "accept"}
        return None

    fake = FakeAppServer()
    client, server = memory_message_stream_pair()
    conn = Connection(client, server_request_handler=ApprovalPolicy(handler, timeout=math.inf))
    slow_answers: list[list[dict[str, Any]]] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.serve_stream, server)
            await nursery.start(conn.run)
            await trio.testing.wait_all_tasks_blocked()

            async def slow() -> None:
                slow_answers.append(
                    await fake.request_all(
                        "item/fileChange/requestApproval", SAMPLE_PARAMS["item/fileChange/requestApproval"]
                    )
                )

            nursery.start_soon(slow)
            await trio.testing.wait_all_tasks_blocked()
            # While the file-change handler waits, other requests (and their answers) still flow.
            [fast] = await fake.request_all(COMMAND, SAMPLE_PARAMS[COMMAND])
            [unknown] = await fake.request_all("brand/new/request", {})
            assert slow_answers == []
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            [[accepted]] = slow_answers
            await conn.aclose()
    assert fast == {"id": 1, "result": {"decision": "decline"}}
    assert accepted == {"id": 0, "result": {"decision": "accept"}}
    assert unknown["id"] == 2 and unknown["error"]["code"] == -32601
    assert "brand/new/request" in unknown["error"]["message"]
