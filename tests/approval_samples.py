"""One realistic params object per server-request kind, shared by the approval tests: the unit tests answer
them, and tests/real/test_approvals_schema_real.py checks them against the schema the pinned codex generates."""

from __future__ import annotations

from typing import Any

THREAD, TURN = "thr-1", "turn-1"

SAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "item/commandExecution/requestApproval": {
        "threadId": THREAD,
        "turnId": TURN,
        "itemId": "call-1",
        "startedAtMs": 1,
        "command": "/bin/bash -lc 'touch /tmp/x'",
        "cwd": "/tmp",
        "reason": "wants to touch",
    },
    "item/fileChange/requestApproval": {
        "threadId": THREAD,
        "turnId": TURN,
        "itemId": "patch-1",
        "startedAtMs": 1,
        "grantRoot": "/srv",
    },
    "item/tool/requestUserInput": {
        "threadId": THREAD,
        "turnId": TURN,
        "itemId": "ask-1",
        "isBlocking": True,
        "questions": [{"id": "q1", "header": "Colour", "question": "Which colour?"}],
    },
    "mcpServer/elicitation/request": {
        "threadId": THREAD,
        "turnId": TURN,
        "serverName": "docs",
        "mode": "url",
        "elicitationId": "e-1",
        "message": "Log in please",
        "url": "https://example.invalid/login",
    },
    "item/permissions/requestApproval": {
        "threadId": THREAD,
        "turnId": TURN,
        "itemId": "perm-1",
        "startedAtMs": 1,
        "cwd": "/tmp",
        "reason": "want write",
        "permissions": {"fileSystem": {"write": ["/tmp/out"]}},
    },
    "item/tool/call": {
        "threadId": THREAD,
        "turnId": TURN,
        "callId": "dyn-1",
        "tool": "lookup",
        "namespace": "crm",
        "arguments": {"q": 1},
    },
    "account/chatgptAuthTokens/refresh": {"reason": "unauthorized"},
    "attestation/generate": {},
    "applyPatchApproval": {
        "conversationId": THREAD,
        "callId": "legacy-patch",
        "fileChanges": {"/tmp/b.txt": {"type": "add", "content": "b"}, "/tmp/a.txt": {"type": "delete", "content": ""}},
    },
    "execCommandApproval": {
        "conversationId": THREAD,
        "callId": "legacy-exec",
        "command": ["rm", "-rf", "/tmp/some dir"],
        "cwd": "/tmp",
        "parsedCmd": [],
    },
}
