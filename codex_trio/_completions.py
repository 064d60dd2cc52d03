"""Teammate completion delivery: the item framing, the spill decision and the idempotence bookkeeping.

Theory of operation
-------------------
A *teammate* is another agent session the model dispatched. When it settles, the host hands the runtime a
:class:`Completion`. Delivery has two steps, both against the current thread:

1. ``thread/inject_items`` with one developer-role message (:func:`build_completion_item`) that carries
   the result inside ``<teammate_session_completion …>``. A result over the inline budget
   (:func:`completion_budget`) is written to an owner-only file and only its path is inlined, so a huge
   result cannot flood the context.
2. A short trigger turn (:data:`COMPLETION_TRIGGER_TEXT`) submitted like any channel input, under the
   source id ``teammate:<id>#<seq>``. The sequence number is fresh for every attempt because the turn dedup
   window never forgets an id, even one whose submission failed; a retry under the old id would be
   dropped as a duplicate.

Delivery must be idempotent: the host may replay a completion (after its own crash, or just twice). The
:class:`CompletionLedger` remembers which ids were *accepted* (trigger submitted: replays answer
"accepted" with no RPC) and which were *injected* (step 1 done: a retry after a failed trigger skips
straight to step 2, so the model never sees the same result twice). Both are bounded FIFO sets of 256 ids,
as in the original runtime.

The Trio driver owns the I/O and follows this protocol (``ledger.plan`` is consulted again inside the
delivery, because another delivery may have changed the state while this one waited)::

    plan = ledger.plan(c.id)                          # ALREADY_ACCEPTED -> answer "accepted"
    if c.id in in_flight: wait for it, return its outcome   # coalesce concurrent duplicates
    ... stopped -> unsupported(DELIVERY_STOPPED_REASON); no thread -> failed(NO_THREAD_ID_MESSAGE)
    if ledger.plan(c.id) is Plan.INJECT_AND_TRIGGER:
        item = await trio.to_thread.run_sync(build_completion_item, c, spill_dir, budget)
        await thread/inject_items(...)                # any error -> failed(INJECT_FAILED_PREFIX + str(cause))
        ledger.mark_injected(c.id)
    outcome = submit(ChannelInput(ledger.next_trigger_source_id(c.id), COMPLETION_TRIGGER_TEXT))
    submitted -> ledger.mark_accepted(c.id), accepted; stopped -> unsupported; failed -> failed (same error);
    duplicate -> failed(TRIGGER_DEDUPLICATED_MESSAGE); skipped -> failed(TRIGGER_SKIPPED_MESSAGE)

Everything here is pure except :func:`resolve_completion_body` and :func:`build_completion_item`, which
write the spill file with blocking ``os`` calls when (and only when) :func:`needs_spill` is true. The
result can be megabytes, so the driver should call them through ``trio.to_thread.run_sync``; it may skip
the thread hop when ``needs_spill`` is false, since then nothing touches the disk.

Lengths are counted in UTF-16 code units, as the original (JavaScript) did, so a result of astral
characters (emoji) spills at exactly the same size it did there; :func:`utf16_length` does the counting.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal, final, get_args

from attrs import field, frozen

from ._errors import ConfigError
from ._paths import ensure_owner_only_dir
from ._render import escape_attr

__all__ = [
    "COMPLETION_BUDGET_DEFAULT",
    "COMPLETION_BUDGET_ENV",
    "COMPLETION_BUDGET_MAX",
    "COMPLETION_ID_CACHE_LIMIT",
    "COMPLETION_TRIGGER_TEXT",
    "DELIVERY_STOPPED_REASON",
    "INJECT_FAILED_PREFIX",
    "NO_THREAD_ID_MESSAGE",
    "SPILL_NOTICE_PREFIX",
    "TRIGGER_DEDUPLICATED_MESSAGE",
    "TRIGGER_SKIPPED_MESSAGE",
    "BoundedIdSet",
    "Completion",
    "CompletionLedger",
    "CompletionLedgerSnapshot",
    "CompletionStatus",
    "Plan",
    "build_completion_item",
    "completion_budget",
    "frame_completion",
    "needs_spill",
    "resolve_completion_body",
    "spill_file_name",
    "spill_path",
    "utf16_length",
]

COMPLETION_TRIGGER_TEXT: Final = (
    "A TeamMate session you dispatched has settled. Its outcome was just delivered "
    "into your context as a <teammate_session_completion> item. Review it and take "
    "any needed follow-up; if nothing is needed, you may end this turn."
)

COMPLETION_BUDGET_ENV: Final = "TASK_MAX_OUTPUT_LENGTH"
COMPLETION_BUDGET_DEFAULT: Final = 32_000
COMPLETION_BUDGET_MAX: Final = 160_000
COMPLETION_ID_CACHE_LIMIT: Final = 256

SPILL_NOTICE_PREFIX: Final = "The output is too long, so the full result was saved to a file: "

# The original runtime's delivery results, word for word, for the driver to use.
DELIVERY_STOPPED_REASON: Final = "dispatcher runtime stopped"
NO_THREAD_ID_MESSAGE: Final = "teammate completion delivery has no thread id"
INJECT_FAILED_PREFIX: Final = "teammate completion thread/inject_items failed (requires codex 0.137+): "
TRIGGER_DEDUPLICATED_MESSAGE: Final = "teammate completion trigger unexpectedly deduplicated"
TRIGGER_SKIPPED_MESSAGE: Final = "teammate completion trigger unexpectedly skipped"

CompletionStatus = Literal["completed", "failed", "stopped"]
_STATUSES: Final = frozenset(get_args(CompletionStatus))

_NAME_MAX: Final = 255
_UNSAFE_NAME_CHAR = re.compile(r"[^A-Za-z0-9._-]")
# JavaScript's String.prototype.trim() set; str.strip() differs at the edges (\x1c-\x1f, \x85, \ufeff).
_JS_WHITESPACE: Final = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def _non_empty_str(name: str) -> Any:
    def check(_inst: object, _attr: object, value: object) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"Completion.{name} must be a non-empty string, got {value!r}", field=name, value=value)

    return check


def _check_status(_inst: object, _attr: object, value: Any) -> None:
    if value not in _STATUSES:
        raise ConfigError(
            f"Completion.status must be one of 'completed', 'failed', 'stopped', got {value!r}",
            field="status",
            value=value,
        )


def _check_result(_inst: object, _attr: object, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(
            f"Completion.result must be a string, got {type(value).__name__}", field="result", value=value
        )


@frozen
class Completion:
    """A settled teammate session, as the host reports it. ``id`` is the idempotence key."""

    id: str = field(validator=_non_empty_str("id"))
    source: str = field(validator=_non_empty_str("source"))
    status: CompletionStatus = field(validator=_check_status)
    result: str = field(validator=_check_result)


# --- budget and spill -------------------------------------------------------------------------------------


def utf16_length(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (JavaScript's ``string.length``)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def completion_budget(env: Mapping[str, str]) -> int:
    """Inline budget (UTF-16 code units) from ``TASK_MAX_OUTPUT_LENGTH`` in ``env``.

    Unset, blank, or not a plain decimal integer -> 32000; zero -> 32000; otherwise capped at 160000. "32k" or
    "-5" are not partially parsed: they fall back to the default.
    """
    raw = env.get(COMPLETION_BUDGET_ENV)
    if raw is None:
        return COMPLETION_BUDGET_DEFAULT
    raw = raw.strip(_JS_WHITESPACE)
    if not re.fullmatch(r"[0-9]+", raw):
        return COMPLETION_BUDGET_DEFAULT
    # Strip zeros and cap by length first: int() refuses strings over 4300 digits, JavaScript just saturates.
    digits = raw.lstrip("0")
    if not digits:
        return COMPLETION_BUDGET_DEFAULT
    if len(digits) > len(str(COMPLETION_BUDGET_MAX)):
        return COMPLETION_BUDGET_MAX
    return min(int(digits), COMPLETION_BUDGET_MAX)


def needs_spill(result: str, budget: int) -> bool:
    """True when ``result`` is longer than ``budget`` UTF-16 code units and so goes to a file."""
    if len(result) > budget:  # every char is at least one code unit
        return True
    if 2 * len(result) <= budget:  # and at most two
        return False
    return utf16_length(result) > budget


def _safe_segment(name: str) -> str:
    # The original regex had no /u flag, so it replaced each UTF-16 code unit: an astral char becomes "__".
    return _UNSAFE_NAME_CHAR.sub(lambda m: "__" if ord(m.group()) > 0xFFFF else "_", name)


def spill_file_name(source: str, completion_id: str) -> str:
    """``teammate-<safe(source)>-<safe(id)>.output``; safe maps each char outside ``[A-Za-z0-9._-]`` to ``_``.

    A name over the 255-byte filesystem limit (which the original would fail to create, forever, for that
    completion) is shortened and made unique again with a hash of the full pair.
    """
    safe_source, safe_id = _safe_segment(source), _safe_segment(completion_id)
    name = f"teammate-{safe_source}-{safe_id}.output"
    if len(name) <= _NAME_MAX:  # ASCII only, so characters are bytes
        return name
    digest = hashlib.sha256(f"{source}\0{completion_id}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"teammate-{safe_source[:100]}-{safe_id[:100]}-{digest}.output"


def spill_path(spill_dir: str | os.PathLike[str], completion: Completion) -> str:
    """Where ``completion``'s result is spilled, normalised like Node's ``path.join``."""
    name = spill_file_name(completion.source, completion.id)
    return os.path.normpath(os.path.join(os.fspath(spill_dir), name))


def _encode_like_node(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (possible in JSON-decoded text): Node writes U+FFFD for each; pairs are recombined.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode("utf-8")


def _dir_error(path: str, problem: str) -> ConfigError:
    return ConfigError(f"refusing to use completion spill directory {path}: {problem}", field="spill_dir", value=path)


def _open_owner_only_dir(path: str) -> tuple[str, int]:
    """The owner-only (0700) directory at or in ``path``, and an ``O_DIRECTORY`` descriptor for it.

    The shared :func:`ensure_owner_only_dir` decides which directory that is (``path``, or a private
    ``codex-trio-<euid>`` inside a shared one such as ``/tmp``, which itself is never changed), creates it, and
    refuses a symlink, a non-directory, a foreign owner or a private directory others can read
    (:class:`~codex_trio.SocketPathError`, a :class:`ConfigError`). The owner and mode are checked again on what
    was actually opened (``O_NOFOLLOW``) and the file is created relative to that descriptor, so swapping the
    path for a symlink after the check gains nothing.
    """
    path = os.fspath(ensure_owner_only_dir(Path(path)))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _dir_error(path, "it is a symlink, not a real directory") from exc
        raise
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me:
            raise _dir_error(path, f"it is owned by uid {st.st_uid}, not the current user (uid {me})")
        if st.st_mode & 0o077:
            raise _dir_error(path, f"its mode is {st.st_mode & 0o777:o}, not 700: others could read spilled results")
    except BaseException:
        os.close(fd)
        raise
    return path, fd


def _write_private_file(dir_fd: int, name: str, data: bytes) -> None:
    # O_TRUNC on an existing file, then fchmod: the creation mode only applies to new files (and the umask).
    # O_NOFOLLOW: never write through a symlink planted at the file name.
    flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def resolve_completion_body(completion: Completion, spill_dir: str | os.PathLike[str], budget: int) -> str:
    """The text inside the completion frame: the result itself, or a pointer to the file holding it.

    Blocking when it spills (see the module docstring). Raises :class:`ConfigError` (in practice its
    subclass :class:`~codex_trio.SocketPathError`, from the shared directory check) for an unusable spill
    directory: symlinked, not a directory, foreign-owned. Raises ``OSError`` when the write fails.
    """
    if not needs_spill(completion.result, budget):
        return completion.result
    name = spill_file_name(completion.source, completion.id)
    directory, dir_fd = _open_owner_only_dir(os.path.normpath(os.fspath(spill_dir)))
    try:
        _write_private_file(dir_fd, name, _encode_like_node(completion.result))
    finally:
        os.close(dir_fd)
    return SPILL_NOTICE_PREFIX + os.path.join(directory, name)


def frame_completion(completion: Completion, inner: str) -> str:
    """``<teammate_session_completion source=… id=… status=…>`` + newline + inner + newline + closing tag.

    Unlike the original, attribute values are XML-escaped (same rules as the channel envelope), so a teammate
    name containing a quote cannot forge attributes. ``inner`` is verbatim.
    """
    return (
        f'<teammate_session_completion source="{escape_attr(completion.source)}" '
        f'id="{escape_attr(completion.id)}" status="{escape_attr(completion.status)}">\n'
        f"{inner}\n</teammate_session_completion>"
    )


def build_completion_item(completion: Completion, spill_dir: str | os.PathLike[str], budget: int) -> dict[str, Any]:
    """The ``thread/inject_items`` item: a developer-role message holding the framed completion.

    Blocking when the result spills; see :func:`resolve_completion_body`.
    """
    text = frame_completion(completion, resolve_completion_body(completion, spill_dir, budget))
    return {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": text}]}


# --- idempotence bookkeeping ------------------------------------------------------------------------------


def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"id cache limit must be a positive integer, got {limit!r}", field="limit", value=limit)
    return limit


@final
class BoundedIdSet:
    """An insertion-ordered set of at most ``limit`` ids; adding one more forgets the oldest.

    Re-adding a present id changes nothing (it keeps its place: recency of *use* does not matter, only of
    first sight). Build one from another's ``items()`` to restore persisted state; the newest ``limit``
    survive.
    """

    __slots__ = ("_items", "_limit")

    def __init__(self, items: Iterable[str] = (), *, limit: int = COMPLETION_ID_CACHE_LIMIT) -> None:
        self._limit = _check_limit(limit)
        self._items: OrderedDict[str, None] = OrderedDict()
        for item in items:
            self.add(item)

    @property
    def limit(self) -> int:
        return self._limit

    def add(self, item: str) -> bool:
        """Remember ``item``; returns False when it was already there."""
        if not isinstance(item, str):
            raise TypeError(f"ids are strings, got {type(item).__name__}")
        if item in self._items:
            return False
        self._items[item] = None
        while len(self._items) > self._limit:
            self._items.popitem(last=False)
        return True

    def items(self) -> tuple[str, ...]:
        """The ids, oldest first (the form to persist)."""
        return tuple(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._items))

    def __repr__(self) -> str:
        return f"BoundedIdSet({list(self._items)!r}, limit={self._limit})"


class Plan(enum.Enum):
    """What the driver must do for a completion id, given what has already happened to it."""

    #: The trigger was submitted before: answer "accepted" at once, no RPC (idempotent replay).
    ALREADY_ACCEPTED = "already_accepted"
    #: Nothing done yet: inject the item, then submit the trigger.
    INJECT_AND_TRIGGER = "inject_and_trigger"
    #: An earlier attempt injected the item but its trigger failed: only submit a new trigger.
    TRIGGER_ONLY = "trigger_only"


@frozen
class CompletionLedgerSnapshot:
    """Persistable state of a :class:`CompletionLedger` (ids oldest first)."""

    accepted: tuple[str, ...]
    injected: tuple[str, ...]
    trigger_seq: int


@final
class CompletionLedger:
    """Sans-IO bookkeeping of completion delivery: ids injected, ids accepted, the attempt counter.

    The driver keeps the in-flight map (coalescing concurrent duplicates needs Trio events); this class keeps
    everything that must survive a restart of the app-server, and can be snapshotted to survive the process.
    """

    __slots__ = ("_accepted", "_injected", "_limit", "_seq")

    def __init__(self, *, limit: int = COMPLETION_ID_CACHE_LIMIT) -> None:
        self._limit = _check_limit(limit)
        self._accepted = BoundedIdSet(limit=limit)
        self._injected = BoundedIdSet(limit=limit)
        self._seq = 0

    def plan(self, completion_id: str) -> Plan:
        if completion_id in self._accepted:
            return Plan.ALREADY_ACCEPTED
        if completion_id in self._injected:
            return Plan.TRIGGER_ONLY
        return Plan.INJECT_AND_TRIGGER

    def is_accepted(self, completion_id: str) -> bool:
        return completion_id in self._accepted

    def is_injected(self, completion_id: str) -> bool:
        return completion_id in self._injected

    def mark_injected(self, completion_id: str) -> None:
        """``thread/inject_items`` succeeded for this id."""
        self._injected.add(completion_id)

    def mark_accepted(self, completion_id: str) -> None:
        """The trigger turn for this id was submitted."""
        self._accepted.add(completion_id)

    def next_trigger_source_id(self, completion_id: str) -> str:
        """``teammate:<id>#<seq>`` with a sequence number never used before by this ledger (starts at 1)."""
        self._seq += 1
        return f"teammate:{completion_id}#{self._seq}"

    @property
    def trigger_seq(self) -> int:
        """The last sequence number handed out (0 before the first)."""
        return self._seq

    def snapshot(self) -> CompletionLedgerSnapshot:
        return CompletionLedgerSnapshot(
            accepted=self._accepted.items(), injected=self._injected.items(), trigger_seq=self._seq
        )

    def restore(self, snapshot: CompletionLedgerSnapshot) -> None:
        """Replace both id sets with the snapshot's.

        The counter only moves forward (max of the two): trigger ids already handed out by this ledger may sit
        in the turn dedup window, and reusing one would make the trigger look like a duplicate.
        """
        self._accepted = BoundedIdSet(snapshot.accepted, limit=self._limit)
        self._injected = BoundedIdSet(snapshot.injected, limit=self._limit)
        self._seq = max(self._seq, snapshot.trigger_seq)
