"""The server-request (approval) policy: fail-closed answers, pluggable user handlers, and decision reports.

Theory of operation
-------------------
The app-server asks the client things in the middle of a turn: may this command run, may this patch be applied,
what does the user answer, refresh the auth tokens... Every such *server request* must be answered, or the turn
waits forever. The original runtime answered every one with a JSON-RPC error (original-runtime.md §2.9). We keep
its spirit — nothing is ever granted unless the application says so — but answer each kind the way the protocol
means "no", so the turn goes on as cleanly as the protocol allows.

:class:`ApprovalPolicy` is the :class:`~codex_trio._connection.Connection`'s ``server_request_handler``. The
connection calls it in its own task per request, so a slow handler never blocks the reader. Without a user
handler it answers :func:`fail_closed_answer`. With one, the handler runs under a deadline; its dict is the
result, ``None`` means "use the fail-closed default", and raising, timing out or returning nonsense all fall back
to the fail-closed answer (with a warning saying why). A handler that raises :class:`~codex_trio.RpcError` on
purpose answers with that JSON-RPC error. Every decision is reported to ``on_decision`` as an
:class:`ApprovalDecisionRecord`; the non-accepting ones are also logged as warnings on ``codex_trio.approvals``.

Fail-closed answers, per kind (codex 0.169; the methods of each kind are in :data:`KIND_BY_METHOD`). "observed"
means checked against the real binary (``tests/real/test_approvals_real.py``, codex-app-server.md §5); "schema"
means taken from the generated JSON schema's descriptions; unmarked rows are what the protocol implies.

===============  ==============================================  =======================================================
kind             fail-closed answer                              effect on the turn
===============  ==============================================  =======================================================
command          ``{"decision": "decline"}``                     observed: the item completes ``declined``, the model is
                                                                 told "rejected by user", the turn goes on and
                                                                 completes. (``"cancel"``, observed: item ``declined``,
                                                                 turn ``interrupted``.)
file_change      ``{"decision": "decline"}``                     schema: the change is not applied and the turn goes on
                                                                 (``"cancel"`` would interrupt it).
permissions      ``{"permissions": {}, "scope": "turn"}``        observed: the model's request_permissions call returns
                                                                 ``{"permissions": {"network": null, "file_system":
                                                                 null}, "scope": "turn"}`` and the turn goes on and
                                                                 completes; later commands keep the existing sandbox.
mcp_elicitation  ``{"action": "decline", "content": null}``      the MCP server is told the user declined; what its tool
                                                                 does next is up to it.
user_input       ``{"answers": {}}``                             the tool gets no answer to any question; the turn goes
                                                                 on.
dynamic_tool     ``{"success": false, "contentItems": [...]}``   the model sees a failed tool call whose text says the
                                                                 tool is not available.
auth_refresh     error -32601 (no tokens to give)                the request that needed fresh tokens fails as
                                                                 unauthorized.
attestation      error -32601 (no attestation)                   the request goes on without an attestation token.
legacy_patch     ``{"decision": {"denied": {...}}}``             v1 "denied": the patch is not applied, the agent tries
                                                                 something else (``"abort"`` would stop the turn).
legacy_exec      ``{"decision": {"denied": {...}}}``             v1 "denied" for a command, as above.
unknown          error -32601 naming the method                  whatever codex does with a refused request.
===============  ==============================================  =======================================================
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import trio

from ._errors import ConfigError, RpcError
from ._jsonrpc import INTERNAL_ERROR, METHOD_NOT_FOUND, RequestId, ServerRequest

__all__ = [
    "DEFAULT_APPROVAL_TIMEOUT",
    "KIND_BY_METHOD",
    "Answer",
    "ApprovalDecisionRecord",
    "ApprovalHandler",
    "ApprovalPolicy",
    "ApprovalRequest",
    "fail_closed_answer",
    "kind_of",
]

log = logging.getLogger("codex_trio.approvals")

#: Long enough for a human to click a button, short enough that a forgotten prompt does not hold a turn forever.
DEFAULT_APPROVAL_TIMEOUT: Final = 60.0

#: The kind label of each server-request method of the 0.169 schema; anything else is ``"unknown"``.
KIND_BY_METHOD: Final[Mapping[str, str]] = {
    "item/commandExecution/requestApproval": "command",
    "item/fileChange/requestApproval": "file_change",
    "item/tool/requestUserInput": "user_input",
    "mcpServer/elicitation/request": "mcp_elicitation",
    "item/permissions/requestApproval": "permissions",
    "item/tool/call": "dynamic_tool",
    "account/chatgptAuthTokens/refresh": "auth_refresh",
    "attestation/generate": "attestation",
    "applyPatchApproval": "legacy_patch",
    "execCommandApproval": "legacy_exec",
}

_DECISION_KINDS: Final = frozenset({"command", "file_change", "legacy_patch", "legacy_exec"})
_DENIAL_TEXT: Final = "declined by codex_trio's approval policy"
_SUMMARY_LIMIT: Final = 500


def kind_of(method: str) -> str:
    """The kind label of a server-request method (``"unknown"`` for methods newer than this library)."""
    return KIND_BY_METHOD.get(method, "unknown")


# --- answers ----------------------------------------------------------------------------------------------


def _one_of_result_or_error(instance: Answer, _attr: attrs.Attribute[Any], _value: object) -> None:
    if (instance.result is None) == (instance.error is None):
        raise ValueError("an Answer has exactly one of result and error")


@attrs.frozen
class Answer:
    """How one server request is answered: a ``result`` dict, or an ``error`` ``(code, message)``."""

    kind: str
    result: dict[str, Any] | None = None
    error: tuple[int, str] | None = attrs.field(default=None, validator=_one_of_result_or_error)

    def unwrap(self, method: str) -> dict[str, Any]:
        """The result, or raise the error as the :class:`RpcError` the connection turns into a wire error."""
        if self.error is not None:
            code, message = self.error
            raise RpcError(method, code, message)
        assert self.result is not None
        return self.result


def _declined_error(method: str, why: str) -> tuple[int, str]:
    return METHOD_NOT_FOUND, f"codex_trio declines server request {method!r}: {why}"


def fail_closed_answer(method: str, params: Mapping[str, Any] | None = None) -> Answer:
    """The answer that grants nothing, in the shape the protocol gives each kind (see the module table)."""
    kind = kind_of(method)
    if kind in ("command", "file_change"):
        return Answer(kind, {"decision": "decline"})
    if kind in ("legacy_patch", "legacy_exec"):
        return Answer(kind, {"decision": {"denied": {"rejection": _DENIAL_TEXT}}})
    if kind == "permissions":
        return Answer(kind, {"permissions": {}, "scope": "turn"})
    if kind == "mcp_elicitation":
        return Answer(kind, {"action": "decline", "content": None})
    if kind == "user_input":
        return Answer(kind, {"answers": {}})
    if kind == "dynamic_tool":
        tool = (params or {}).get("tool")
        name = tool if isinstance(tool, str) and tool else "this tool"
        text = f"The tool {name!r} is not available: codex_trio has no handler for dynamic tool calls."
        return Answer(kind, {"success": False, "contentItems": [{"type": "inputText", "text": text}]})
    if kind == "auth_refresh":
        return Answer(kind, error=_declined_error(method, "it does not manage ChatGPT auth tokens"))
    if kind == "attestation":
        return Answer(kind, error=_declined_error(method, "it does not generate attestations"))
    return Answer(kind, error=_declined_error(method, "it does not know this method"))


# --- what the handler sees --------------------------------------------------------------------------------


def _str(params: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = params.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _summarize(kind: str, method: str, params: Mapping[str, Any]) -> str:
    reason = _str(params, "reason")
    if kind == "command":
        return _str(params, "command") or reason or "run a command"
    if kind == "legacy_exec":
        command = params.get("command")
        if isinstance(command, list) and all(isinstance(a, str) for a in command):
            return shlex.join(command)
        return reason or "run a command"
    if kind == "file_change":
        root = _str(params, "grantRoot")
        return f"change files{' under ' + root if root else ''}{': ' + reason if reason else ''}"
    if kind == "legacy_patch":
        changes = params.get("fileChanges")
        paths = sorted(changes) if isinstance(changes, Mapping) else []
        return f"apply a patch to {', '.join(paths)}" if paths else (reason or "apply a patch")
    if kind == "permissions":
        return f"grant additional permissions{': ' + reason if reason else ''}"
    if kind == "mcp_elicitation":
        server = _str(params, "serverName") or "an MCP server"
        message = _str(params, "message")
        return f"{server}: {message}" if message else f"{server} asks for input"
    if kind == "user_input":
        questions = params.get("questions")
        texts = [
            q["question"] for q in questions or [] if isinstance(q, Mapping) and isinstance(q.get("question"), str)
        ]
        return "; ".join(texts) or "answer questions"
    if kind == "dynamic_tool":
        tool = _str(params, "tool") or "?"
        namespace = _str(params, "namespace")
        return f"call tool {namespace + '.' if namespace else ''}{tool}"
    if kind == "auth_refresh":
        return f"refresh ChatGPT auth tokens ({_str(params, 'reason') or 'no reason given'})"
    if kind == "attestation":
        return "generate a client attestation"
    return method


@attrs.frozen
class ApprovalRequest:
    """A typed view of one server request, for user handlers. ``params`` is the request as codex sent it."""

    id: RequestId
    method: str
    kind: str
    params: Mapping[str, Any] = attrs.field(repr=False)
    thread_id: str | None
    turn_id: str | None
    item_id: str | None
    summary: str

    @classmethod
    def from_server_request(cls, request: ServerRequest) -> ApprovalRequest:
        params = request.params if isinstance(request.params, Mapping) else {}
        kind = kind_of(request.method)
        summary = _summarize(kind, request.method, params)
        if len(summary) > _SUMMARY_LIMIT:
            summary = summary[: _SUMMARY_LIMIT - 1] + "…"
        return cls(
            id=request.id,
            method=request.method,
            kind=kind,
            params=params,
            # v1 requests say conversationId/callId where v2 says threadId/itemId.
            thread_id=_str(params, "threadId", "conversationId"),
            turn_id=_str(params, "turnId"),
            item_id=_str(params, "itemId", "callId"),
            summary=summary,
        )


# --- what is reported -------------------------------------------------------------------------------------


@attrs.frozen
class ApprovalDecisionRecord:
    """One answered server request. ``rejected`` is true unless the answer grants what was asked.

    ``reason`` says where the answer came from: ``"no handler"``, ``"handler"``, ``"handler returned None"``,
    ``"handler raised ..."``, ``"handler timed out ..."``, ``"handler returned an invalid result ..."`` or
    ``"handler answered with an error"``.
    """

    method: str
    kind: str
    decision_summary: str
    rejected: bool
    reason: str
    summary: str = ""
    thread_id: str | None = None
    turn_id: str | None = None
    item_id: str | None = None


_ACCEPT_STRINGS: Final = frozenset(
    {"accept", "acceptForSession", "approved", "approved_for_session", "approved_mcp_policy_amendment"}
)
_ACCEPT_KEYS: Final = frozenset({"acceptWithExecpolicyAmendment", "approved_execpolicy_amendment"})


def _decision_accepts(decision: object) -> bool:
    if isinstance(decision, str):
        return decision in _ACCEPT_STRINGS
    if isinstance(decision, Mapping) and len(decision) == 1:
        ((key, value),) = decision.items()
        if key in _ACCEPT_KEYS:
            return True
        if key in ("applyNetworkPolicyAmendment", "network_policy_amendment") and isinstance(value, Mapping):
            amendment = value.get("network_policy_amendment")
            return isinstance(amendment, Mapping) and amendment.get("action") == "allow"
    return False


def _describe(answer: Answer) -> tuple[str, bool]:
    """``(decision_summary, rejected)`` of an answer."""
    if answer.error is not None:
        code, _message = answer.error
        return f"error {code}", True
    result = answer.result or {}
    kind = answer.kind
    if kind in _DECISION_KINDS:
        decision = result.get("decision")
        label = (
            decision
            if isinstance(decision, str)
            else next(iter(decision), "?")
            if isinstance(decision, Mapping)
            else "?"
        )
        return str(label), not _decision_accepts(decision)
    if kind == "mcp_elicitation":
        action = result.get("action")
        return f"action={action}", action != "accept"
    if kind == "permissions":
        granted = result.get("permissions")
        any_grant = isinstance(granted, Mapping) and any(v not in (None, {}, []) for v in granted.values())
        return ("permissions granted" if any_grant else "no permissions granted"), not any_grant
    if kind == "user_input":
        answers = result.get("answers")
        count = len(answers) if isinstance(answers, Mapping) else 0
        return f"{count} answer(s)", count == 0
    if kind == "dynamic_tool":
        success = result.get("success") is True
        return f"success={str(success).lower()}", not success
    return "result", False


# --- the policy -------------------------------------------------------------------------------------------

ApprovalHandler = Callable[[ApprovalRequest], Awaitable[dict[str, Any] | None]]
"""A user decision function: return the result dict, or ``None`` for the fail-closed default."""


def _check_result(kind: str, result: object) -> str | None:
    """Why a handler's result cannot be sent, or None when it can (the check is minimal on purpose)."""
    if not isinstance(result, dict):
        return f"expected a dict, got {type(result).__name__}"
    if kind in _DECISION_KINDS:
        decision = result.get("decision")
        if not isinstance(decision, str | dict):
            return f"'decision' must be a string or an object, got {decision!r:.100}"
    return None


def _check_timeout(_inst: object, _attr: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0) or math.isnan(value):
        raise ConfigError(
            f"ApprovalPolicy.timeout must be a number of seconds > 0 (math.inf to wait forever), got {value!r}",
            field="timeout",
            value=value,
        )


@attrs.define(eq=False)
class ApprovalPolicy:
    """The server-request handler of a connection: ``Connection(stream, server_request_handler=policy)``.

    With no ``handler`` every request gets :func:`fail_closed_answer`. With one, it is awaited for at most
    ``timeout`` seconds; see the module docstring for how its outcome becomes the answer. ``on_decision`` is
    called (synchronously, errors logged and swallowed) with every decision, accepting or not.
    """

    handler: ApprovalHandler | None = None
    timeout: float = attrs.field(default=DEFAULT_APPROVAL_TIMEOUT, kw_only=True, validator=_check_timeout)
    on_decision: Callable[[ApprovalDecisionRecord], None] | None = attrs.field(default=None, kw_only=True)

    @classmethod
    def decline_all(cls, *, on_decision: Callable[[ApprovalDecisionRecord], None] | None = None) -> ApprovalPolicy:
        """Fail closed on everything (the default)."""
        return cls(on_decision=on_decision)

    @classmethod
    def from_decisions(
        cls,
        decisions: Mapping[str, str | Mapping[str, Any]],
        *,
        timeout: float = DEFAULT_APPROVAL_TIMEOUT,
        on_decision: Callable[[ApprovalDecisionRecord], None] | None = None,
    ) -> ApprovalPolicy:
        """A fixed answer per method (or kind label); everything else fails closed.

        A string value is the ``decision`` of approval kinds (``{"item/commandExecution/requestApproval":
        "accept"}``) or the ``action`` of an MCP elicitation; a mapping value is sent as the whole result.
        """
        table: dict[str, dict[str, Any]] = {}
        for key, value in decisions.items():
            kind = KIND_BY_METHOD.get(key, key)
            if isinstance(value, str):
                if kind in _DECISION_KINDS:
                    table[key] = {"decision": value}
                elif kind == "mcp_elicitation":
                    table[key] = {"action": value}
                else:
                    raise ConfigError(
                        f"a plain string decision is only meaningful for approval kinds and MCP elicitations, "
                        f"not {key!r}; give the whole result as a dict",
                        field="decisions",
                        value=value,
                    )
            elif isinstance(value, Mapping):
                table[key] = dict(value)
            else:
                raise ConfigError(
                    f"decision for {key!r} must be a string or a dict, got {value!r}", field="decisions", value=value
                )

        async def decide(request: ApprovalRequest) -> dict[str, Any] | None:
            found = table.get(request.method) or table.get(request.kind)
            return dict(found) if found is not None else None

        return cls(decide, timeout=timeout, on_decision=on_decision)

    async def __call__(self, request: ServerRequest) -> dict[str, Any]:
        """Answer ``request``: the result to send, or raise :class:`RpcError` for an error answer."""
        return (await self.decide(request)).unwrap(request.method)

    async def decide(self, request: ServerRequest) -> Answer:
        """The :class:`Answer` to ``request`` (reports it through logging and ``on_decision``)."""
        view = ApprovalRequest.from_server_request(request)
        answer, reason = await self._run_handler(view)
        self._report(view, answer, reason)
        return answer

    async def _run_handler(self, view: ApprovalRequest) -> tuple[Answer, str]:
        if self.handler is None:
            return fail_closed_answer(view.method, view.params), "no handler"
        try:
            with trio.move_on_after(self.timeout) as scope:
                result = await self.handler(view)
        except RpcError as exc:
            code = exc.code if exc.code is not None else INTERNAL_ERROR
            return Answer(view.kind, error=(code, exc.rpc_message)), "handler answered with an error"
        except Exception as exc:
            return fail_closed_answer(view.method, view.params), f"handler raised {exc!r:.200}"
        if scope.cancelled_caught:
            return fail_closed_answer(view.method, view.params), f"handler timed out after {self.timeout:g}s"
        if result is None:
            return fail_closed_answer(view.method, view.params), "handler returned None"
        problem = _check_result(view.kind, result)
        if problem is not None:
            return fail_closed_answer(view.method, view.params), f"handler returned an invalid result ({problem})"
        return Answer(view.kind, result), "handler"

    def _report(self, view: ApprovalRequest, answer: Answer, reason: str) -> None:
        decision, rejected = _describe(answer)
        record = ApprovalDecisionRecord(
            method=view.method,
            kind=view.kind,
            decision_summary=decision,
            rejected=rejected,
            reason=reason,
            summary=view.summary,
            thread_id=view.thread_id,
            turn_id=view.turn_id,
            item_id=view.item_id,
        )
        if rejected:
            log.warning(
                "server request %s (%s) answered %s [%s]: %s", view.method, view.kind, decision, reason, view.summary
            )
        else:
            log.info(
                "server request %s (%s) answered %s [%s]: %s", view.method, view.kind, decision, reason, view.summary
            )
        if self.on_decision is not None:
            try:
                self.on_decision(record)
            except Exception:
                log.exception("on_decision callback failed for %s", view.method)
