"""Recovery: what a runtime takes over from the host that ran it before.

* :func:`load` reads the state store once, reaps an app-server the previous host left running, and turns the
  snapshot into the core's starting point: the dedup window, the next sequence number, the queue of accepted
  input, and the input that was *in doubt* (sent, or being sent, and not yet settled) when that host died.
* :func:`reconcile` settles the in-doubt input against codex's own record, before anything else is delivered.
  codex keeps each user message's ``clientUserMessageId`` as its ``clientId`` (we send the source id, or one
  made from the sequence number), so the thread's recent turns tell, input by input: codex never got it (it is
  sent again, first), or codex has it (it settles with the outcome of the turn that carried it, or
  ``interrupted`` if that turn never ended). Nothing is sent twice and nothing acknowledged is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

from . import _protocol as p
from ._completions import CompletionLedgerSnapshot
from ._connection import Connection
from ._core import Submission, SubmissionKind, outcome_of
from ._errors import RpcError, StateStoreError
from ._process import reap_orphan
from ._settlement import TurnOutcome
from ._state import StateStore, StoredSubmission
from ._turn_options import ImageInput, TurnOptions, decode_payload
from ._usage import TokenUsage

__all__ = ["Restored", "decide", "load", "reconcile"]

log = logging.getLogger("codex_trio.runtime")

#: How many recent turns to search for input a dead host was delivering (it was the last thing it sent).
IN_DOUBT_TURNS: Final = 20


@attrs.frozen
class Restored:
    thread_id: str | None
    next_seq: int
    seen: tuple[str, ...]
    pending: tuple[tuple[int, str, SubmissionKind, str, TurnOptions | None, tuple[ImageInput, ...]], ...]
    in_doubt: tuple[tuple[int, str, SubmissionKind, str, bool, TurnOptions | None, tuple[ImageInput, ...]], ...]
    completions: CompletionLedgerSnapshot | None
    #: the cumulative token usage recorded with the latest settlement
    usage: TokenUsage | None = None


def _kind(value: str) -> SubmissionKind:
    if value in ("channel", "system", "trigger"):
        return value  # type: ignore[return-value]
    return "channel"


def _payload(runtime_id: str, stored: StoredSubmission) -> tuple[TurnOptions | None, tuple[ImageInput, ...]]:
    try:
        return decode_payload(stored.options)
    except ValueError as exc:
        raise StateStoreError(
            f"[{runtime_id}] the stored options of input {stored.seq} cannot be read ({exc}); was the store written "
            f"by a newer codex_trio?"
        ) from exc


async def load(store: StateStore, runtime_id: str, *, thread_id: str | None = None) -> Restored:
    """Read ``runtime_id``'s state; ``thread_id`` (a checkpoint) overrides the stored one."""
    snapshot = await store.load(runtime_id)
    child = snapshot.record.child
    if child is not None and await trio.to_thread.run_sync(reap_orphan, child):
        log.warning("[%s] reaped an app-server left running by a previous host (%s)", runtime_id, child)
    in_doubt = tuple(
        (s.seq, s.source_id, _kind(s.kind), s.text, s.steered, *_payload(runtime_id, s))
        for s in snapshot.pending
        if s.delivering
    )
    pending = tuple(
        (s.seq, s.source_id, _kind(s.kind), s.text, *_payload(runtime_id, s))
        for s in snapshot.pending
        if not s.delivering
    )
    return Restored(
        thread_id=thread_id if thread_id is not None else snapshot.record.thread_id,
        next_seq=snapshot.next_seq,
        seen=tuple(snapshot.dedup_ids),
        pending=pending,
        in_doubt=in_doubt,
        completions=snapshot.completions,
        usage=snapshot.record.token_usage,
    )


def decide(in_doubt: Sequence[Submission], turns: Any) -> tuple[frozenset[int], dict[int, TurnOutcome]]:
    """Pure: given codex's recent turns (``thread/turns/list`` data, newest first), which in-doubt inputs to send
    again, and the outcome of the others.

    An input whose client id codex recorded settles with the outcome of the turn that carried it. One codex has no
    record of is sent again — unless codex may have it after all. codex writes a user message into the thread's
    history a moment before the item that carries its client id (codex 0.169), so a host killed in between leaves
    an input the model has seen with no record that says so. For a ``turn/start`` that shows as a turn, after the
    newest turn with an input codex did record, that holds no input at all; for a ``turn/steer`` it shows as
    nothing, so a steered input codex has no record of is never sent again. Each such input settles
    ``interrupted`` instead (at most once, and said so).
    """
    carriers: dict[str, p.Turn] = {}
    anonymous_since_last_recorded = False
    seen_recorded = False
    for raw in turns if isinstance(turns, list) else []:
        try:
            turn = p.structure(raw, p.Turn)
        except Exception:
            continue
        inputs = [item for item in turn.items if item.type == "userMessage"]
        for item in inputs:
            client_id = item.raw.get("clientId")
            if isinstance(client_id, str):
                carriers.setdefault(client_id, turn)
        if inputs:
            seen_recorded = True
        elif not seen_recorded:
            anonymous_since_last_recorded = True
    resend: set[int] = set()
    outcomes: dict[int, TurnOutcome] = {}
    for sub in in_doubt:
        carrier = carriers.get(sub.client_id)
        if carrier is None:
            if sub.steered:
                outcomes[sub.seq] = TurnOutcome(
                    "interrupted",
                    None,
                    error="the previous host stopped while steering this input into a running turn; codex keeps no "
                    "record of it, but may have it in the turn's history, so it is not sent again",
                )
            elif anonymous_since_last_recorded:
                outcomes[sub.seq] = TurnOutcome(
                    "interrupted",
                    None,
                    error="the previous host stopped while this input was in flight, and codex started a turn it "
                    "did not record an input for: it may have this one, so it is not sent again",
                )
            else:
                resend.add(sub.seq)
        elif carrier.status in ("completed", "failed", "interrupted"):
            outcomes[sub.seq] = outcome_of(carrier, carrier.items)
        else:
            outcomes[sub.seq] = TurnOutcome(
                "interrupted",
                carrier.id,
                error="codex received this input, but the previous host's app-server stopped before its turn ended; "
                "it is not sent again",
            )
    return frozenset(resend), outcomes


async def reconcile(
    connection: Connection, thread_id: str, in_doubt: Sequence[Submission], *, runtime_id: str
) -> tuple[frozenset[int], dict[int, TurnOutcome]]:
    """Ask codex which in-doubt inputs it has (see the module docstring). When codex cannot tell us (an older
    codex without ``thread/turns/list``), nothing is sent again: each settles ``interrupted``."""
    try:
        raw = await connection.request(
            "thread/turns/list",
            {"threadId": thread_id, "limit": IN_DOUBT_TURNS, "itemsView": "full", "sortDirection": "desc"},
        )
    except RpcError as exc:
        log.warning("[%s] cannot check in-doubt input against the thread: %s", runtime_id, exc)
        detail = (
            f"the previous host stopped while delivering this input and codex cannot tell whether it has it ({exc})"
        )
        return frozenset(), {s.seq: TurnOutcome("interrupted", None, error=detail) for s in in_doubt}
    resend, outcomes = decide(in_doubt, raw.get("data") if isinstance(raw, dict) else None)
    if in_doubt:
        log.info(
            "[%s] reconciled %d in-doubt input(s): %d sent again, %d settled from codex's record",
            runtime_id,
            len(in_doubt),
            len(resend),
            len(outcomes),
        )
    return resend, outcomes
