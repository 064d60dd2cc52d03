"""The one final answer an accepted input gets: its :class:`Settlement`."""

from __future__ import annotations

from typing import Literal

import attrs

from ._items import ThreadItem
from ._json import JsonValue
from ._usage import TokenUsage

__all__ = ["Outcome", "Settlement", "ThreadLost", "TurnOutcome"]

Outcome = Literal["completed", "failed", "interrupted", "stopped"]


@attrs.frozen
class ThreadLost:
    """``thread/resume`` failed; the runtime continues on a fresh thread (the old history is not in context).

    An event, and what the next :class:`Settlement` carries (``thread_lost``). Defined here rather than with the
    other events because a settlement holds it (and the events hold settlements).
    """

    old_thread_id: str
    new_thread_id: str
    reason: str
    generation: int
    runtime_id: str


@attrs.frozen
class TurnOutcome:
    """How a codex turn ended, as seen in ``turn/completed`` (or a fatal ``error``, or our deadline)."""

    outcome: Outcome
    turn_id: str | None
    text: str | None = None
    items: tuple[ThreadItem, ...] = ()
    error: str | None = None
    #: the turn's token usage (see :attr:`Settlement.usage`)
    usage: TokenUsage | None = None


@attrs.frozen
class Settlement:
    """The one final answer for one accepted input.

    ``completed``: codex finished the turn that carried it (``text`` is the turn's last agent message, ``items``
    its completed items). ``failed``: codex rejected it or the turn failed (``error`` says why, in codex's words
    where codex gave them). ``interrupted``: the turn was interrupted, or the app-server died while it was in
    flight; it is not re-run (it may have had side effects). ``stopped``: the runtime stopped first; with a
    durable store it is delivered (or reconciled) by the next ``open_runtime`` on that store.
    """

    seq: int
    source_id: str
    outcome: Outcome
    turn_id: str | None = None
    text: str | None = None
    items: tuple[ThreadItem, ...] = ()
    error: str | None = None
    generation: int | None = None
    #: Set on the first settlement after a ``thread/resume`` failed and the runtime moved to a fresh thread, so
    #: the caller learns that the agent no longer has the earlier conversation in context (a ThreadLost event).
    thread_lost: ThreadLost | None = None
    #: With ``TurnOptions.output_schema``: the final message parsed as JSON (``text`` keeps it as sent). A final
    #: message that is not JSON settles ``failed`` instead, with the text kept and ``error`` saying so.
    output: JsonValue = None
    #: The token usage of the turn this input was in, up to the moment it settled: the sum of the ``last`` usage
    #: of every ``thread/tokenUsage/updated`` codex sent for that turn (one per model call, so a turn that ran a
    #: command and then answered counts both calls). Inputs steered into one turn share its usage. None when
    #: codex reported none (the turn never reached the model, or the input never reached a turn).
    usage: TokenUsage | None = None
