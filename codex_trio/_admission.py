"""What a caller gets back from ``submit``: the :class:`Admission`, and the checks an input passes at the door.

An input is refused *before* anything is recorded when it cannot travel: text or a source id that cannot be
encoded as UTF-8 (a lone surrogate, as ``json.loads('"\\ud800"')`` yields, or an undecodable byte smuggled in by
``surrogateescape``), text over codex's per-input limit, an over-long source id; and (``_turn_options.py``) a
turn option outside codex's values, a ``cwd`` that is not a directory, an image that is not a readable image file
or a ``data:`` URL. The caller gets
:class:`~codex_trio.InvalidInput` naming the field; the id stays unused, so the fixed input can be submitted again
with the same id. Nothing a caller sends can then fail on the wire and take the session down for the others.
"""

from __future__ import annotations

from typing import Final, Literal, final

import attrs
import trio

from ._errors import InvalidInput, NotAccepted
from ._settlement import Settlement

__all__ = [
    "MAX_INPUT_CHARS",
    "MAX_SOURCE_ID_CHARS",
    "Admission",
    "AdmissionStatus",
    "CompletionResult",
    "check_input",
]

#: codex rejects larger turn input with -32602 input_too_large (codex-app-server.md §8); refuse it up front.
MAX_INPUT_CHARS: Final = 1_048_576
#: A source id travels as codex's ``clientUserMessageId`` and is kept in the dedup window; bound it.
MAX_SOURCE_ID_CHARS: Final = 4096

AdmissionStatus = Literal["submitted", "queued", "duplicate", "failed", "stopped", "skipped"]


def _unencodable(value: str) -> int | None:
    """Index of the first character that UTF-8 cannot encode (a surrogate), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_input(source_id: str, text: str) -> None:
    """Raise :class:`InvalidInput` if ``source_id`` or ``text`` cannot be delivered as they are."""
    if not isinstance(source_id, str):
        raise InvalidInput(f"source_id must be a str, got {type(source_id).__name__}", field="source_id")
    if len(source_id) > MAX_SOURCE_ID_CHARS:
        raise InvalidInput(
            f"source_id is {len(source_id)} characters; at most {MAX_SOURCE_ID_CHARS} are accepted (use a hash of "
            f"a longer id)",
            field="source_id",
        )
    where = _unencodable(source_id)
    if where is not None:
        raise InvalidInput(
            f"source_id {source_id!r} holds a character UTF-8 cannot encode at index {where} (a lone surrogate, "
            f"often an undecodable byte); pass valid text",
            field="source_id",
        )
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidInput(
            f"input is {len(text)} characters; codex accepts at most {MAX_INPUT_CHARS} per turn input (split it, or "
            f"send a path to a file instead)",
            field="text",
        )
    where = _unencodable(text)
    if where is not None:
        excerpt = text[max(0, where - 20) : where + 20]
        raise InvalidInput(
            f"input text holds a character UTF-8 cannot encode at index {where} (a lone surrogate, often an "
            f"undecodable byte), near {excerpt!r}; repair the text (e.g. decode bytes with errors='replace')",
            field="text",
        )


@final
@attrs.define(eq=False)
class Admission:
    """What :meth:`Runtime.submit` answered. Accepted inputs (``submitted``/``queued``) settle exactly once.

    ``submitted``: accepted while a session was up; ``queued``: accepted during a (re)start, delivered once the
    session is up; ``duplicate``: the source id is in the dedup window; ``skipped``: a restart notice after
    something else already woke the thread; ``failed``: not accepted (``error`` says why; the id stays unused);
    ``stopped``: the runtime is stopping.
    """

    status: AdmissionStatus
    source_id: str
    seq: int | None = None
    error: BaseException | None = None
    _done: trio.Event | None = attrs.field(default=None, repr=False, alias="_done")
    _settlement: Settlement | None = attrs.field(default=None, repr=False, alias="_settlement")

    @property
    def accepted(self) -> bool:
        return self.status in ("submitted", "queued")

    async def settled(self) -> Settlement:
        """Wait for the settlement: completed / failed / interrupted / stopped (with text, turn id, items).

        Raises :class:`~codex_trio.NotAccepted` when the input was not accepted (check :attr:`accepted` first).
        """
        if self._done is None:
            raise NotAccepted(self.status, self.source_id)
        await self._done.wait()
        assert self._settlement is not None
        return self._settlement

    @property
    def settlement(self) -> Settlement | None:
        return self._settlement

    def _settle(self, settlement: Settlement) -> None:
        self._settlement = settlement
        if self._done is not None:
            self._done.set()


@attrs.frozen
class CompletionResult:
    status: Literal["accepted", "failed", "unsupported"]
    error: BaseException | None = None
    reason: str | None = None
