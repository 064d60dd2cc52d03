"""The runtime's durable state: status, thread id, dedup window, accepted input, settlements, ledgers.

Theory of operation
-------------------
The runtime writes through a :class:`StateStore` at each point where forgetting would lose or repeat work:

* ``accept`` runs *before* submissions are acknowledged to their callers. It records each source id in the
  dedup window and each rendered text in ``pending``, for a whole batch in one transaction (the runtime's
  admission task gathers every ``submit`` waiting at that moment: one commit, one fsync, for all of them).
  Once it returns, a ``kill -9`` of the host cannot lose them: the next start finds them in
  ``Snapshot.pending`` and sends them again.
* ``delivered`` drops it from ``pending`` once codex has it (``turn/start`` answered); ``settle`` records
  how it ended (a bounded history) and drops it from ``pending`` too, in case ``delivered`` never ran.
* ``next_seq`` only grows, even when ``pending`` is empty, so sequence numbers are never reused.

Ownership. Exactly-once delivery needs exactly one writer per runtime: two hosts running the same runtime id
on one database would each send the other's pending input and interleave their conversations. So a store
object must :meth:`~StateStore.acquire` a runtime's *lease* before it writes anything for it, and
:meth:`~StateStore.release` it when done:

* The lease is exclusive. A second ``acquire`` (another process, another store object on the same file, or
  the same object again) waits up to ``wait`` seconds, then raises :class:`RuntimeBusy` naming the owner.
* In :class:`SqliteStateStore` the lease is an OS file lock (``flock``) on a per-runtime file in
  ``<db>.locks/``. The kernel drops it when the owner's process dies, however it dies, so a crashed owner is
  replaced at once: no heartbeat, no timeout, no stale-lock guesswork.
* Each ``acquire`` also bumps a durable *fencing token* for the runtime, and every later write through that
  store object checks, inside its own transaction, that the stored token is still its own. A former owner
  that wakes up late (a stopped process resumed, a lock file deleted by hand) therefore gets
  :class:`LeaseLost` and writes nothing, instead of corrupting its successor's state. The lock keeps two
  owners from *starting*; the token keeps a second one from *writing* if the lock was ever bypassed.

Reads (``load``, ``recent_settlements``, ``list_runtimes``, ``owner``) need no lease, so a status command
can look at a runtime that a host is running.

Two implementations share these semantics exactly (a Hypothesis test holds them to it):
:class:`MemoryStateStore` (dicts; the reference, and the default when nothing needs to survive the process)
and :class:`SqliteStateStore` (stdlib ``sqlite3``; one file can hold many runtimes).

Every write also creates the runtime's record if it is missing (status ``"declared"``) and stamps
``updated_at``, so ``updated_at`` is the time of the last write of any kind: what ``codex-trio status``
shows as "last activity". ``load`` never writes; taking a lease is not a write to the runtime's record.

Ordering and cancellation: each store method takes effect in the order it was *called* and either takes
effect whole or raises without any effect. A method that raises ``Cancelled`` changed nothing; a method
that returned is durable. (The memory store does its work synchronously between a cancel point and a
cancel-shielded schedule point; the SQLite store queues on a fair ``trio.Lock`` before its worker thread,
and that thread is never abandoned.)

SQLite details: WAL journal with ``synchronous=FULL`` (a commit is on disk before it returns), one connection
used by one worker thread at a time (a ``trio.Lock`` around ``trio.to_thread.run_sync``, which is not
abandoned on cancel, so a write is never cut in half by a Trio cancellation), a busy timeout so a second
process (the ``status`` command) can read while a host writes, and versioned migrations keyed on
``PRAGMA user_version``. The file is created owner-only (0600); SQLite gives its ``-wal``/``-shm`` files the
database file's mode. Failures are reported as what they are (locked by another process, read-only, disk
full, missing directory, corrupt, newer schema, not ours), each with what to do; only a file that is really
damaged is ever called corrupt.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import socket
import sqlite3
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar, get_args, runtime_checkable

import attrs
import trio

from ._completions import CompletionLedgerSnapshot
from ._errors import LeaseLost, RuntimeBusy, StateStoreError
from ._usage import TokenUsage, usage_from_json, usage_to_json

__all__ = [
    "LOST_THREADS_KEEP",
    "RUNTIME_STATUSES",
    "SCHEMA_VERSION",
    "UNSET",
    "LostThread",
    "MemoryStateStore",
    "Owner",
    "RuntimeRecord",
    "RuntimeStatus",
    "Snapshot",
    "SqliteStateStore",
    "StateStore",
    "StoredSettlement",
    "StoredSubmission",
    "open_state_store",
]

RuntimeStatus = Literal["declared", "starting", "ready", "degraded", "stopping", "stopped", "failed"]
RUNTIME_STATUSES: Final[frozenset[str]] = frozenset(get_args(RuntimeStatus))

#: Lost-thread history kept per runtime (newest win). A crash-looping runtime must not grow the file forever.
LOST_THREADS_KEEP: Final = 100

_T = TypeVar("_T")


class _Unset(enum.Enum):
    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


#: "Leave this field unchanged" (``None`` means "clear it").
UNSET: Final = _Unset.UNSET


# --- records ----------------------------------------------------------------------------------------------


@attrs.frozen
class StoredSubmission:
    """An accepted submission. ``seq`` is runtime-wide and strictly increasing; ``source_id`` "" = no dedup."""

    seq: int
    source_id: str
    kind: str  # "channel" | "system" | "trigger"
    text: str  # the rendered text sent to codex
    accepted_at: float
    #: set by :meth:`StateStore.delivering` just before the request that carries it is sent, and kept until it
    #: settles: after a host crash such a submission is *in doubt* (codex may have it) and is reconciled with
    #: codex before anything is sent again.
    delivering: bool = False
    #: it was being steered into a running turn (``turn/steer``) rather than starting one
    steered: bool = False
    #: its turn options and images, as one JSON document (``_turn_options.encode_payload``); None: none
    options: str | None = None


@attrs.frozen
class LostThread:
    """Codex no longer had ``old_thread_id``; the runtime continued on ``new_thread_id``."""

    old_thread_id: str
    new_thread_id: str
    reason: str
    at: float


@attrs.frozen
class RuntimeRecord:
    runtime_id: str
    status: RuntimeStatus = "declared"
    thread_id: str | None = None
    last_error: str | None = None
    last_started_at: float | None = None
    last_ready_at: float | None = None
    updated_at: float | None = None
    #: the live app-server child as ``"<pgid>:<start ticks>"`` (see ``_process.child_identity``), so a host that
    #: died without reaping it can have the next host reap it
    child: str | None = None
    #: the runtime's cumulative token usage, as of its latest persisted settlement
    token_usage: TokenUsage | None = None


@attrs.frozen
class StoredSettlement:
    seq: int
    source_id: str
    outcome: str
    turn_id: str | None
    detail: str | None
    at: float
    #: the runtime's cumulative token usage at this settlement: written with it (same transaction) into the
    #: runtime record, so keeping the figure across restarts costs no write of its own
    runtime_usage: TokenUsage | None = None


@attrs.frozen
class Snapshot:
    """Everything the runtime needs to resume, read in one consistent view."""

    record: RuntimeRecord  # a fresh "declared" record when the runtime is new
    dedup_ids: list[str]  # oldest first, at most the window last written
    pending: list[StoredSubmission]  # accepted, not yet delivered to codex, in seq order
    next_seq: int  # 1 + the highest seq ever accepted (1 for a new runtime)
    lost_threads: list[LostThread]  # oldest first
    completions: CompletionLedgerSnapshot | None


@attrs.frozen
class Owner:
    """Who holds a runtime's lease, as the owner recorded itself when it took it."""

    pid: int
    host: str  # socket.gethostname() of the owner
    since: float  # epoch seconds the lease was taken (the store's clock)
    #: the fencing token: strictly increasing per (store, runtime_id) across all owners ever, so a write that
    #: carries an older one is from an owner that has been replaced
    token: int


@runtime_checkable
class StateStore(Protocol):
    async def acquire(self, runtime_id: str, *, wait: float = 0.0) -> Owner:
        """Take the runtime's exclusive lease for this store object; every write for it needs the lease.

        If another live owner holds it (another process, another store object, or this one), wait up to
        ``wait`` seconds (``math.inf``: until it is free; cancellable), then raise :class:`RuntimeBusy`
        naming that owner. An owner that died is replaced at once. Returns the new owner, whose ``token``
        is above every token handed out before for this runtime.
        """
        ...

    async def release(self, runtime_id: str) -> None:
        """Give the lease up (idempotent; shielded from cancellation, so it can run in a ``finally``)."""
        ...

    async def owner(self, runtime_id: str) -> Owner | None:
        """The runtime's current live owner, or None (for a status display; never writes)."""
        ...

    async def load(self, runtime_id: str) -> Snapshot: ...

    async def set_status(
        self,
        runtime_id: str,
        status: RuntimeStatus,
        *,
        last_error: str | _Unset | None = UNSET,
        last_started_at: float | _Unset | None = UNSET,
        last_ready_at: float | _Unset | None = UNSET,
    ) -> None: ...

    async def set_thread_id(self, runtime_id: str, thread_id: str) -> None: ...

    async def record_lost_thread(self, runtime_id: str, lost: LostThread) -> None:
        """Append to the lost-thread history and set ``thread_id`` to ``lost.new_thread_id``."""
        ...

    async def accept(self, runtime_id: str, submissions: Sequence[StoredSubmission], *, dedup_window: int) -> None:
        """Atomically remember each ``source_id`` (unless "") in the dedup window and append to ``pending``.

        All or nothing, in one transaction, with exactly the effect of accepting the submissions one by one
        in order. The window keeps the newest ``dedup_window`` ids by first insertion (0 keeps none); an id
        already in the window keeps its place. Seqs must be strictly increasing within the batch and the
        first at least ``next_seq``, else :class:`StateStoreError` and nothing is written. An empty batch
        writes nothing. Durable when it returns.
        """
        ...

    async def delivering(self, runtime_id: str, seq: int, *, steered: bool = False) -> None:
        """The submission is about to be sent to codex (``steered``: into a running turn): mark it in doubt until
        it settles (no-op when absent). A later call for the same seq replaces the mark."""
        ...

    async def delivered(self, runtime_id: str, seq: int) -> None:
        """The submission reached codex: drop it from ``pending`` (no-op when absent)."""
        ...

    async def set_child(self, runtime_id: str, child: str | None) -> None:
        """Record the live app-server child (or None once it is reaped)."""
        ...

    async def settle(self, runtime_id: str, settlement: StoredSettlement, *, keep: int = 1000) -> None:
        """Record a settlement (keep the newest ``keep``) and drop its seq from ``pending`` if still there."""
        ...

    async def recent_settlements(self, runtime_id: str, limit: int = 100) -> list[StoredSettlement]:
        """The newest ``limit`` settlements, oldest first."""
        ...

    async def save_completions(self, runtime_id: str, snapshot: CompletionLedgerSnapshot) -> None: ...

    async def list_runtimes(self) -> list[RuntimeRecord]:
        """Every runtime ever written, sorted by ``runtime_id``."""
        ...

    async def aclose(self) -> None:
        """Release every lease this store object holds, then close it."""
        ...


def _check_status(status: str) -> None:
    if status not in RUNTIME_STATUSES:
        raise ValueError(f"unknown runtime status {status!r}; expected one of {sorted(RUNTIME_STATUSES)}")


def _check_batch(runtime_id: str, submissions: Sequence[StoredSubmission]) -> None:
    """Seqs strictly increasing within the batch (checked before anything is read or written)."""
    for before, after in itertools.pairwise(submissions):
        if after.seq <= before.seq:
            raise StateStoreError(
                f"runtime {runtime_id!r}: the submissions of one accept must have strictly increasing seqs "
                f"(seq {after.seq} follows {before.seq}); nothing was written"
            )


def _seq_error(runtime_id: str, seq: int, next_seq: int) -> StateStoreError:
    return StateStoreError(
        f"runtime {runtime_id!r}: submission seq {seq} is not above the last accepted seq ({next_seq - 1}); "
        f"nothing was written. The caller handed out a stale seq: seqs must continue from Snapshot.next_seq"
    )


def _not_held(runtime_id: str) -> StateStoreError:
    return StateStoreError(
        f"runtime {runtime_id!r}: this store object does not hold the runtime's lease, so it may not write for "
        f"it; call `await store.acquire({runtime_id!r})` first (open_runtime does), and write only until "
        f"`release`"
    )


def _lease_lost(runtime_id: str, mine: int, stored: int | None, taker: Owner | None = None) -> LeaseLost:
    if stored is None:
        now = "its lease record is gone"
    else:
        now = f"the stored token is now {stored}"
        if taker is not None:
            now += f", last taken by pid {taker.pid} on {taker.host} at {_when(taker.since)}"
    return LeaseLost(
        f"runtime {runtime_id!r}: this store's lease (token {mine}) was taken over by another owner ({now}); "
        f"nothing was written. This owner must stop writing: release the lease and shut the runtime down. "
        f"Did two hosts run it at once, or was its lock file under '.locks' removed while it ran?"
    )


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(epoch))


def _deadline(wait: float) -> float:
    """The Trio-clock deadline for ``acquire(wait=...)``; ``math.inf`` waits forever."""
    if not wait >= 0:  # also refuses NaN
        raise ValueError(f"acquire(wait={wait!r}): wait must be >= 0 seconds (math.inf waits until free)")
    return trio.current_time() + wait if math.isfinite(wait) else math.inf


def _busy(runtime_id: str, owner: Owner | None) -> RuntimeBusy:
    if owner is None:
        return RuntimeBusy(runtime_id, pid=None, host=None, since=None)
    return RuntimeBusy(runtime_id, pid=owner.pid, host=owner.host, since=owner.since)


async def _atomically(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` between a cancel point and a cancel-shielded schedule point (the memory store's methods).

    ``fn`` runs synchronously, when the method is *called*: concurrent callers take effect in call order (with
    a plain ``checkpoint()`` first, Trio may reschedule them in another order, and a submission with a higher
    seq could land before a lower one, which would then be refused). A ``Cancelled`` can only come before
    ``fn`` ran, so a method that raised it changed nothing, and one that changed something returns normally:
    the same promise the SQLite store gives. Trio's own channels use this pattern.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        return fn()
    finally:
        await trio.lowlevel.cancel_shielded_checkpoint()


# --- in memory --------------------------------------------------------------------------------------------


@attrs.define
class _MemRuntime:
    record: RuntimeRecord
    dedup: OrderedDict[str, None] = attrs.Factory(OrderedDict)  # insertion-ordered set; O(1) to drop the oldest
    pending: dict[int, StoredSubmission] = attrs.Factory(dict)
    next_seq: int = 1
    lost: list[LostThread] = attrs.Factory(list)
    settlements: list[StoredSettlement] = attrs.Factory(list)
    completions: CompletionLedgerSnapshot | None = None


class MemoryStateStore:
    """A :class:`StateStore` in plain dicts: nothing survives the process.

    Each method does its work synchronously between one cancel point and one cancel-shielded schedule point
    (see :func:`_atomically`), so every mutation is whole, happens in call order, and a cancelled call did
    nothing. Leases are exclusive within this object (it is the whole "database"): a second ``acquire`` of a
    held runtime is :class:`RuntimeBusy`, and the fencing token grows with every ``acquire``. ``aclose``
    releases the leases but keeps the data: handing the same store to a second runtime after the first
    released simulates a restart of the host.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._runtimes: dict[str, _MemRuntime] = {}
        #: the durable token per runtime (what a database would store); only ``acquire`` raises it
        self._tokens: dict[str, int] = {}
        #: the leases this object holds; a write is allowed while ``held.token == _tokens[runtime_id]``
        self._held: dict[str, Owner] = {}
        self._released: dict[str, trio.Event] = {}

    def _touch(self, runtime_id: str) -> _MemRuntime:
        rt = self._runtimes.get(runtime_id)
        if rt is None:
            rt = self._runtimes[runtime_id] = _MemRuntime(RuntimeRecord(runtime_id))
        rt.record = attrs.evolve(rt.record, updated_at=self._clock())
        return rt

    def _fence(self, runtime_id: str) -> None:
        held = self._held.get(runtime_id)
        if held is None:
            raise _not_held(runtime_id)
        if self._tokens.get(runtime_id, 0) != held.token:
            raise _lease_lost(runtime_id, held.token, self._tokens.get(runtime_id))

    def _writer(self, runtime_id: str) -> _MemRuntime:
        """The runtime's state for a write: fenced, created if missing, ``updated_at`` stamped."""
        self._fence(runtime_id)
        return self._touch(runtime_id)

    # -- ownership ---------------------------------------------------------------------------------------

    async def acquire(self, runtime_id: str, *, wait: float = 0.0) -> Owner:
        deadline = _deadline(wait)
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            holder = self._held.get(runtime_id)
            if holder is None:
                token = self._tokens.get(runtime_id, 0) + 1
                owner = Owner(os.getpid(), socket.gethostname(), self._clock(), token)
                self._tokens[runtime_id] = token
                self._held[runtime_id] = owner
                await trio.lowlevel.cancel_shielded_checkpoint()
                return owner
            if trio.current_time() >= deadline:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise _busy(runtime_id, holder)
            released = self._released.setdefault(runtime_id, trio.Event())
            with trio.move_on_at(deadline):
                await released.wait()

    async def release(self, runtime_id: str) -> None:
        self._held.pop(runtime_id, None)
        released = self._released.pop(runtime_id, None)
        if released is not None:
            released.set()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def owner(self, runtime_id: str) -> Owner | None:
        def current() -> Owner | None:
            held = self._held.get(runtime_id)
            # a lease whose token was overtaken is not the live one any more
            return held if held is not None and self._tokens.get(runtime_id) == held.token else None

        return await _atomically(current)

    # -- reads -------------------------------------------------------------------------------------------

    async def load(self, runtime_id: str) -> Snapshot:
        def read() -> Snapshot:
            rt = self._runtimes.get(runtime_id)
            if rt is None:
                return Snapshot(RuntimeRecord(runtime_id), [], [], 1, [], None)
            return Snapshot(
                record=rt.record,
                dedup_ids=list(rt.dedup),
                pending=[rt.pending[seq] for seq in sorted(rt.pending)],
                next_seq=rt.next_seq,
                lost_threads=list(rt.lost),
                completions=rt.completions,
            )

        return await _atomically(read)

    async def recent_settlements(self, runtime_id: str, limit: int = 100) -> list[StoredSettlement]:
        def read() -> list[StoredSettlement]:
            rt = self._runtimes.get(runtime_id)
            if rt is None or limit <= 0:
                return []
            return rt.settlements[-limit:]

        return await _atomically(read)

    async def list_runtimes(self) -> list[RuntimeRecord]:
        return await _atomically(lambda: [self._runtimes[rid].record for rid in sorted(self._runtimes)])

    # -- writes ------------------------------------------------------------------------------------------

    async def set_status(
        self,
        runtime_id: str,
        status: RuntimeStatus,
        *,
        last_error: str | _Unset | None = UNSET,
        last_started_at: float | _Unset | None = UNSET,
        last_ready_at: float | _Unset | None = UNSET,
    ) -> None:
        _check_status(status)
        changes: dict[str, Any] = {"status": status}
        if last_error is not UNSET:
            changes["last_error"] = last_error
        if last_started_at is not UNSET:
            changes["last_started_at"] = last_started_at
        if last_ready_at is not UNSET:
            changes["last_ready_at"] = last_ready_at

        def write() -> None:
            rt = self._writer(runtime_id)
            rt.record = attrs.evolve(rt.record, **changes)

        await _atomically(write)

    async def set_thread_id(self, runtime_id: str, thread_id: str) -> None:
        def write() -> None:
            rt = self._writer(runtime_id)
            rt.record = attrs.evolve(rt.record, thread_id=thread_id)

        await _atomically(write)

    async def record_lost_thread(self, runtime_id: str, lost: LostThread) -> None:
        def write() -> None:
            rt = self._writer(runtime_id)
            rt.lost.append(lost)
            del rt.lost[:-LOST_THREADS_KEEP]
            rt.record = attrs.evolve(rt.record, thread_id=lost.new_thread_id)

        await _atomically(write)

    async def accept(self, runtime_id: str, submissions: Sequence[StoredSubmission], *, dedup_window: int) -> None:
        batch = list(submissions)
        await _atomically(lambda: self.accept_now(runtime_id, batch, dedup_window=dedup_window))

    # The *_now methods are the writes themselves, applied at once. The async methods above run them between a
    # cancel point and a schedule point; the runtime's engine calls them directly (for a MemoryStateStore, not a
    # subclass), since nothing here can block: no task, no trip through the scheduler per write.

    def accept_now(self, runtime_id: str, batch: Sequence[StoredSubmission], *, dedup_window: int) -> None:
        if runtime_id not in self._held:
            raise _not_held(runtime_id)
        _check_batch(runtime_id, list(batch))
        if not batch:
            return
        self._fence(runtime_id)
        current = self._runtimes.get(runtime_id)
        next_seq = current.next_seq if current is not None else 1
        if batch[0].seq < next_seq:
            raise _seq_error(runtime_id, batch[0].seq, next_seq)
        # Everything is checked: from here on nothing can fail, so the batch lands whole.
        rt = self._touch(runtime_id)
        window = max(0, dedup_window)
        for sub in batch:
            if sub.source_id:
                rt.dedup.setdefault(sub.source_id, None)
            while len(rt.dedup) > window:
                rt.dedup.popitem(last=False)
            rt.pending[sub.seq] = sub
        rt.next_seq = batch[-1].seq + 1

    def delivering_now(self, runtime_id: str, seq: int, *, steered: bool = False) -> None:
        rt = self._writer(runtime_id)
        if seq in rt.pending:
            rt.pending[seq] = attrs.evolve(rt.pending[seq], delivering=True, steered=steered)

    def settle_now(self, runtime_id: str, settlement: StoredSettlement, *, keep: int = 1000) -> None:
        rt = self._writer(runtime_id)
        usage = settlement.runtime_usage
        if usage is not None:
            # The runtime's figure goes to its record; the history keeps the settlement alone (as SQLite does).
            rt.record = attrs.evolve(rt.record, token_usage=usage)
            settlement = attrs.evolve(settlement, runtime_usage=None)
        rt.settlements.append(settlement)
        del rt.settlements[: max(0, len(rt.settlements) - max(0, keep))]
        rt.pending.pop(settlement.seq, None)

    async def delivering(self, runtime_id: str, seq: int, *, steered: bool = False) -> None:
        await _atomically(lambda: self.delivering_now(runtime_id, seq, steered=steered))

    async def delivered(self, runtime_id: str, seq: int) -> None:
        await _atomically(lambda: self._writer(runtime_id).pending.pop(seq, None))

    async def set_child(self, runtime_id: str, child: str | None) -> None:
        def write() -> None:
            rt = self._writer(runtime_id)
            rt.record = attrs.evolve(rt.record, child=child)

        await _atomically(write)

    async def settle(self, runtime_id: str, settlement: StoredSettlement, *, keep: int = 1000) -> None:
        await _atomically(lambda: self.settle_now(runtime_id, settlement, keep=keep))

    async def save_completions(self, runtime_id: str, snapshot: CompletionLedgerSnapshot) -> None:
        def write() -> None:
            self._writer(runtime_id).completions = snapshot

        await _atomically(write)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        for runtime_id in list(self._held):
            await self.release(runtime_id)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def __aenter__(self) -> MemoryStateStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# --- SQLite: schema -----------------------------------------------------------------------------------------

#: Written into the database header so a stranger's SQLite file is recognised and left alone ("ctri").
APPLICATION_ID: Final = 0x63747269

# Each step moves the schema one version up; never edit a released step, append a new one. Step N leaves
# the database at ``user_version = N``.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the runtime record and its histories.
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE runtimes (
            runtime_id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            thread_id TEXT,
            last_error TEXT,
            last_started_at REAL,
            last_ready_at REAL,
            updated_at REAL,
            next_seq INTEGER NOT NULL DEFAULT 1
        )""",
        # ``id`` orders by insertion across runtimes; the window keeps the newest ids of each runtime.
        """CREATE TABLE dedup (
            id INTEGER PRIMARY KEY,
            runtime_id TEXT NOT NULL,
            source_id TEXT NOT NULL,
            UNIQUE (runtime_id, source_id)
        )""",
        "CREATE INDEX dedup_by_runtime ON dedup (runtime_id, id)",
        """CREATE TABLE pending (
            runtime_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            source_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            text TEXT NOT NULL,
            accepted_at REAL NOT NULL,
            PRIMARY KEY (runtime_id, seq)
        )""",
        """CREATE TABLE settlements (
            id INTEGER PRIMARY KEY,
            runtime_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            source_id TEXT NOT NULL,
            outcome TEXT NOT NULL,
            turn_id TEXT,
            detail TEXT,
            at REAL NOT NULL
        )""",
        "CREATE INDEX settlements_by_runtime ON settlements (runtime_id, id)",
        """CREATE TABLE lost_threads (
            id INTEGER PRIMARY KEY,
            runtime_id TEXT NOT NULL,
            old_thread_id TEXT NOT NULL,
            new_thread_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX lost_threads_by_runtime ON lost_threads (runtime_id, id)",
    ),
    # 2: the teammate-completion ledgers (id lists as JSON arrays, oldest first).
    (
        """CREATE TABLE completions (
            runtime_id TEXT PRIMARY KEY,
            accepted TEXT NOT NULL,
            injected TEXT NOT NULL,
            trigger_seq INTEGER NOT NULL
        )""",
    ),
    # 3: in-doubt deliveries survive a host crash; the live app-server child can be reaped by the next host.
    (
        "ALTER TABLE pending ADD COLUMN delivering INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runtimes ADD COLUMN child TEXT",
    ),
    # 4: one owner per runtime. ``token`` is the fencing token, bumped by every acquire and never lowered;
    # pid/host/since describe the owner that took it, ``released_at`` is set when that owner let go.
    (
        """CREATE TABLE leases (
            runtime_id TEXT PRIMARY KEY,
            token INTEGER NOT NULL,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            since REAL NOT NULL,
            released_at REAL
        )""",
    ),
    # 5 (issue 12): what travels beside an input's text: its turn options and images (JSON; NULL = none); the
    # runtime's cumulative token usage (JSON, the wire's camelCase breakdown; NULL = none yet).
    (
        "ALTER TABLE pending ADD COLUMN options TEXT",
        "ALTER TABLE runtimes ADD COLUMN token_usage TEXT",
    ),
)

SCHEMA_VERSION: Final = len(_MIGRATIONS)


def _newer_schema(path: str, found: int) -> StateStoreError:
    return StateStoreError(
        f"state store {path} was created by a newer codex_trio (schema {found} > {SCHEMA_VERSION}); upgrade codex_trio"
    )


def _apply_migrations(conn: sqlite3.Connection, path: str, target: int = SCHEMA_VERSION) -> None:
    """Bring the schema up to ``target`` in one transaction (``target`` < latest only for tests)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated since we looked.
        version = _pragma_int(conn, "user_version")
        if version > SCHEMA_VERSION:
            raise _newer_schema(path, version)
        if version == 0 and _has_tables(conn):
            raise _foreign(path)
        for number in range(version + 1, target + 1):
            for statement in _MIGRATIONS[number - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _has_tables(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])


def _foreign(path: str) -> StateStoreError:
    return StateStoreError(
        f"state store {path} is an SQLite database that codex_trio did not create; it was left untouched. "
        f"Choose another path for the state store"
    )


def _pragma_int(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


# Python's sqlite3 cannot bind a str holding a lone surrogate (possible in JSON-decoded text). Such a value is
# stored as its surrogatepass UTF-8 bytes instead (SQLite keeps a BLOB as is in a TEXT column) and decoded
# on the way out, so every str round-trips exactly, as it does in the memory store.


def _submission(values: list[Any]) -> StoredSubmission:
    seq, source_id, kind, text, accepted_at, delivering, options = values
    # The column holds 0 (not sent yet), 1 (being sent: turn/start) or 2 (being sent: turn/steer).
    return StoredSubmission(seq, source_id, kind, text, accepted_at, bool(delivering), delivering == 2, options)


def _bind(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


def _bind_all(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(_bind(v) for v in values)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


def _row(row: Sequence[Any]) -> list[Any]:
    return [_text(v) for v in row]


def _corrupt(path: str, what: str) -> StateStoreError:
    # The only message that suggests moving the file aside: it is said only when SQLite found real damage.
    return StateStoreError(
        f"state store {path} is corrupt ({what}). Stop every process using it, keep a copy, and move it aside "
        f"(with its -wal and -shm files) to start fresh; accepted but undelivered input in it is lost"
    )


# --- SQLite: what went wrong, honestly -------------------------------------------------------------------

# Primary result codes (the low byte of ``sqlite3.Error.sqlite_errorcode``, an extended code).
_SQLITE_PERM: Final = 3
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14
_SQLITE_NOTADB: Final = 26


def _free_space(directory: str) -> str:
    try:
        st = os.statvfs(directory)
    except OSError:
        return ""
    return f" ({st.f_bavail * st.f_frsize // 1024} KiB free there now)"


def _why_read_only(path: str) -> str:
    """Why SQLite could only open ``path`` read-only, as far as the file system can tell."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return (
                f"it is on a read-only file system; remount {directory} read-write, or give the state store a "
                f"path on a writable file system"
            )
    except OSError:
        pass
    for candidate in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(candidate) and not os.access(candidate, os.W_OK):
            return (
                f"this user (uid {os.getuid()}) has no write permission on {candidate}; run codex_trio as the "
                f"user that owns it, or give that user write access (the files should be mode 0600)"
            )
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"this user (uid {os.getuid()}) has no write permission on the directory {directory}, where SQLite "
            f"must create the -wal and -shm files; give the user write access to it"
        )
    return (
        "SQLite could only open it for reading (the file, its -wal/-shm files or its directory are not writable "
        "by this process, or the file system is mounted read-only); make them writable by this user"
    )


def _os_detail(exc: OSError, directory: str) -> str:
    """What an ``OSError`` on a state file means, and what to do (for messages that already name the file)."""
    code = exc.errno
    if code == errno.ENOENT:
        return f"the directory {directory} does not exist; create it first"
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied: this user (uid {os.getuid()}) may not write in {directory}; give it write "
            f"access, or choose another path"
        )
    if code == errno.EROFS:
        return f"{directory} is on a read-only file system; remount it read-write, or choose another path"
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full" if code == errno.ENOSPC else "the disk quota is exhausted"
        return f"{what}{_free_space(directory)}; free some space, then retry"
    if code == errno.ELOOP:
        return "it is a symbolic link, which codex_trio refuses to follow for its state files; remove the link"
    return exc.strerror or str(exc)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _translate(exc: sqlite3.Error, path: str, busy_timeout: float) -> StateStoreError:
    """One :class:`StateStoreError` per kind of failure, each saying what it is and what to do."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StateStoreError(
            f"state store {path} is locked by another process (busy for {busy_timeout:g}s): another program "
            f"holds a long write transaction or an exclusive lock on it. Nothing was written and the file is "
            f"fine. Find that program (e.g. `fuser {path}`), let it finish or stop it, then retry; or give "
            f"SqliteStateStore a longer busy_timeout"
        )
    if primary == _SQLITE_READONLY:
        return StateStoreError(
            f"state store {path} is read-only: {_why_read_only(path)}. Nothing was written; the data in it is intact"
        )
    if primary == _SQLITE_FULL:
        directory = os.path.dirname(os.path.abspath(path))
        return StateStoreError(
            f"state store {path}: the disk is full, or the database reached its size limit{_free_space(directory)}."
            f" The write was rolled back and the data in it is intact; free some space, then retry"
        )
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return _corrupt(path, f"{exc}; if it is not a codex_trio state store at all, choose another path")
    if primary == _SQLITE_CANTOPEN:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            why = f"the directory {directory} does not exist; create it first"
        elif os.path.isdir(path):
            why = "it is a directory; give the state store a file path"
        else:
            why = _why_read_only(path)
        return StateStoreError(f"cannot open state store {path}: {why}")
    if primary == _SQLITE_IOERR:
        return StateStoreError(
            f"state store {path}: I/O error ({exc}): the disk or file system failed under it (see the system "
            f"log, e.g. `dmesg`). The transaction was rolled back; fix the storage, then retry"
        )
    if primary == _SQLITE_PERM:
        return StateStoreError(f"state store {path}: access denied ({exc}): {_why_read_only(path)}")
    return StateStoreError(f"state store {path}: {exc}")


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run ``fn`` in one write transaction: it commits whole or rolls back whole."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


# --- SQLite: the per-runtime lock files ---------------------------------------------------------------------

#: How long another process's lock must be seen before ``acquire`` reports it busy. ``owner()`` tests the lock
#: by taking it shared for an instant, which a concurrent ``acquire`` must not mistake for a live owner.
_BUSY_CONFIRM: Final = 0.05
_POLL_FIRST: Final = 0.01  # seconds between lock attempts while waiting, doubling up to _POLL_MAX
_POLL_MAX: Final = 0.1
#: How long ``acquire`` waits for a busy lock's holder to record itself before naming no owner (the holder
#: writes its record right after taking the lock; a loaded machine can take a while between the two).
_OWNER_RECORD_WAIT: Final = 5.0


def _may_be_alive(owner: Owner) -> bool:
    """False when ``owner`` is a process of this host that is gone (a crashed owner's stale record)."""
    if owner.host != socket.gethostname():
        return True  # another machine's process: nothing to test it with
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


_NO_FILE: Final = -1  # the "lock" of a ":memory:" database: it has no file, so the object itself excludes

_UNSAFE_CHARS: Final = re.compile(r"[^A-Za-z0-9_.-]+")


def _lock_name(runtime_id: str) -> str:
    """A file name per runtime id: readable prefix for humans, hash of the exact id for uniqueness."""
    digest = hashlib.sha256(runtime_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    readable = _UNSAFE_CHARS.sub("_", runtime_id)[:40].lstrip(".")
    return f"{readable}-{digest}.lock"


def _unlock(fd: int) -> None:
    if fd == _NO_FILE:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)  # in case a forked copy of the descriptor outlives this one
    except OSError:
        pass
    os.close(fd)


@attrs.define
class _Held:
    owner: Owner
    fd: int  # the locked lock file (_NO_FILE for ":memory:")


# --- SQLite: the store --------------------------------------------------------------------------------------

_RECORD_COLUMNS: Final = (
    "runtime_id, status, thread_id, last_error, last_started_at, last_ready_at, updated_at, child, token_usage"
)


class SqliteStateStore:
    """A :class:`StateStore` in one SQLite file (stdlib ``sqlite3``); several runtimes may share it.

    Constructing it does no I/O; the file is opened (created 0600, migrated) on first use, or by
    :meth:`open` to surface a bad path early. After :meth:`aclose` (which releases this object's leases) the
    next call opens it again. Every failure is raised as :class:`StateStoreError` saying what it is.
    ``":memory:"`` gives a private in-memory database (tests only: it is not shared, not durable; its leases
    exclude within the object, like :class:`MemoryStateStore`).

    Leases: ``acquire`` takes ``flock(LOCK_EX | LOCK_NB)`` on ``<db>.locks/<runtime>.lock`` (created 0600 in
    a 0700 directory) and keeps that descriptor open while it holds the lease. ``flock`` locks belong to the
    open file description, so two store objects in one process exclude each other too, and the kernel drops
    the lock when the owning process dies. The database itself is never locked this way: SQLite uses POSIX
    locks on it, which a second lock in the same process would silently break. Lock files are never deleted
    (deleting one while it is held would let a second owner in; the fencing token would still stop it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = trio.Lock()
        self._held: dict[str, _Held] = {}
        self._acquiring: set[str] = set()

    @property
    def path(self) -> str:
        return self._path

    @property
    def _in_memory(self) -> bool:
        return self._path == ":memory:"

    @property
    def _locks_dir(self) -> str:
        return f"{self._path}.locks"

    def _lock_path(self, runtime_id: str) -> str:
        return os.path.join(self._locks_dir, _lock_name(runtime_id))

    # -- plumbing ----------------------------------------------------------------------------------------

    async def _offload(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run blocking ``fn(*args)`` off the Trio thread (not abandoned on cancel). Tests that need every step
        under Trio's deterministic scheduler (Hypothesis, a virtual clock) override it to run inline."""
        return await trio.to_thread.run_sync(fn, *args)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        async with self._lock:
            # Not abandoned on cancel: the transaction finishes (or rolls back) before this returns.
            return await self._offload(self._in_worker, fn)

    def _in_worker(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._connect()
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise _translate(exc, self._path, self._busy_timeout) from exc

    def _token(self, runtime_id: str) -> int:
        """This object's fencing token for ``runtime_id``; a write without the lease fails here, before I/O."""
        held = self._held.get(runtime_id)
        if held is None:
            raise _not_held(runtime_id)
        return held.owner.token

    def _fence(self, conn: sqlite3.Connection, runtime_id: str, token: int) -> None:
        """Inside the write transaction: the stored token must still be ours, else nothing is written."""
        current = _lease_row(conn, _bind(runtime_id))
        if current is None:
            raise _lease_lost(runtime_id, token, None)
        if current[0].token != token:
            raise _lease_lost(runtime_id, token, current[0].token, current[0])

    async def _write(self, runtime_id: str, fn: Callable[[sqlite3.Connection], None]) -> None:
        token = self._token(runtime_id)
        now = self._clock()

        def transaction(conn: sqlite3.Connection) -> None:
            self._fence(conn, runtime_id, token)
            conn.execute(
                "INSERT INTO runtimes (runtime_id, status, updated_at) VALUES (?, 'declared', ?) "
                "ON CONFLICT (runtime_id) DO UPDATE SET updated_at = excluded.updated_at",
                _bind_all((runtime_id, now)),
            )
            fn(conn)

        await self._run(lambda conn: _in_transaction(conn, transaction))

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def transaction(conn: sqlite3.Connection) -> _T:
            # One read transaction, so a load sees one state even while another process writes.
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

        return await self._run(transaction)

    def _create_file(self) -> bool:
        """Create the database file owner-only if it is missing; True when this call created it."""
        if os.path.isdir(self._path):
            raise StateStoreError(f"cannot open state store {self._path}: it is a directory; give it a file path")
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            directory = os.path.dirname(os.path.abspath(self._path))
            raise StateStoreError(f"cannot create state store {self._path}: {_os_detail(exc, directory)}") from exc
        try:
            os.fchmod(fd, 0o600)  # the umask could only have narrowed it; make it exact
        finally:
            os.close(fd)
        return True

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        created = False if self._in_memory else self._create_file()
        try:
            conn = sqlite3.connect(
                self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _translate(exc, self._path, self._busy_timeout) from exc
        try:
            self._prepare(conn)
            if created:
                self._tighten_sidecars()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check the file is ours, switch it to WAL and migrate it, retrying while another opener holds it.

        Several processes may open a fresh file at the same moment: one converts it to WAL and migrates it while
        the others look. SQLite answers some of those collisions with an immediate SQLITE_BUSY that skips the
        busy handler (two connections upgrading their locks at once would deadlock), so the whole step is
        retried here until ``busy_timeout`` has passed, and only then reported as locked."""
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.005
        while True:
            try:
                self._prepare_once(conn)
                return
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise _translate(exc, self._path, self._busy_timeout) from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _prepare_once(self, conn: sqlite3.Connection) -> None:
        path = self._path
        # Look before touching anything: a stranger's or a newer database is not ours to convert to WAL. One
        # statement, so one snapshot: a concurrent opener's migration is seen whole or not at all (read in two
        # steps, "no version" and "tables" could straddle its commit and look like a stranger's file).
        version, app_id, tables = conn.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), "
            "(SELECT application_id FROM pragma_application_id), "
            "(SELECT count(*) FROM sqlite_master)"
        ).fetchone()
        if version > SCHEMA_VERSION:
            raise _newer_schema(path, version)
        if version == 0 and tables:
            raise _foreign(path)
        if app_id not in (0, APPLICATION_ID):
            raise StateStoreError(
                f"state store {path} belongs to another application (SQLite application_id {app_id}); it was "
                f"left untouched. Choose another path for the state store"
            )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = FULL")
        if version < SCHEMA_VERSION:
            _apply_migrations(conn, path)
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise _corrupt(path, "; ".join(str(p) for p in problems[:3]))

    def _tighten_sidecars(self) -> None:
        # SQLite already gives -wal/-shm the database's mode; this guards against a VFS that does not.
        for suffix in ("-wal", "-shm"):
            try:
                os.chmod(self._path + suffix, 0o600)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StateStoreError(f"cannot restrict {self._path}{suffix} to mode 0600: {exc}") from exc

    # -- lock files (run in worker threads: they touch the file system) ----------------------------------

    def _lock_error(self, exc: OSError, what: str, directory: str) -> StateStoreError:
        return StateStoreError(f"state store {self._path}: cannot {what}: {_os_detail(exc, directory)}")

    def _ensure_locks_dir(self) -> None:
        """``<db>.locks``: a real directory (not a symlink someone could point elsewhere), created 0700."""
        where = self._locks_dir
        try:
            os.mkdir(where, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            parent = os.path.dirname(os.path.abspath(where))
            raise self._lock_error(exc, f"create the lock directory {where}", parent) from exc
        try:
            st = os.lstat(where)
        except OSError as exc:
            raise self._lock_error(exc, f"inspect the lock directory {where}", where) from exc
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise StateStoreError(
                f"state store {self._path}: its lock directory {where} is {kind}; remove it (codex_trio creates "
                f"it as a private directory)"
            )

    def _try_lock(self, runtime_id: str) -> int | None:
        """The locked lock file's descriptor, or None while another open file description holds the lock."""
        if self._in_memory:
            return _NO_FILE
        path = self._lock_path(runtime_id)
        self._ensure_locks_dir()
        for _ in range(10):
            try:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                except FileExistsError:
                    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
                else:
                    try:
                        os.fchmod(fd, 0o600)  # the umask could only have narrowed it; make it exact
                    except OSError:
                        os.close(fd)
                        raise
            except FileNotFoundError:
                continue  # removed between the two opens: try again
            except OSError as exc:
                raise self._lock_error(exc, f"open the lock file {path}", self._locks_dir) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except OSError as exc:
                os.close(fd)
                raise self._lock_error(exc, f"lock {path}", self._locks_dir) from exc
            # Locked, but if the file was unlinked (by hand) after our open, we hold a lock nobody else can
            # see: check that the path still names this very file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            _unlock(fd)
        raise StateStoreError(
            f"state store {self._path}: the lock file {path} keeps disappearing; is something deleting files in "
            f"{self._locks_dir}? Stop it: those files are how runtimes keep each other out"
        )

    def _lock_is_held(self, runtime_id: str) -> bool:
        """Whether some open file description holds the runtime's lock (never creates anything)."""
        if self._in_memory:
            return runtime_id in self._held
        path = self._lock_path(runtime_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._lock_error(exc, f"open the lock file {path}", self._locks_dir) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as exc:
            raise self._lock_error(exc, f"test the lock on {path}", self._locks_dir) from exc
        finally:
            os.close(fd)  # also drops the shared lock if we got it
        return False

    # -- ownership ---------------------------------------------------------------------------------------

    async def acquire(self, runtime_id: str, *, wait: float = 0.0) -> Owner:
        deadline = _deadline(wait)
        # A database we may not use (newer schema, foreign, corrupt, unwritable) is reported as such, before
        # any lock file is created beside it.
        await self.open()
        busy_since: float | None = None
        delay = _POLL_FIRST
        while True:
            mine = runtime_id in self._held or runtime_id in self._acquiring
            if not mine:
                self._acquiring.add(runtime_id)
                try:
                    fd = await self._offload(self._try_lock, runtime_id)
                    if fd is not None:
                        return await self._take(runtime_id, fd)
                finally:
                    self._acquiring.discard(runtime_id)
            now = trio.current_time()
            if busy_since is None:
                busy_since = now
            # Held here: certain at once. Held elsewhere: certain once seen for _BUSY_CONFIRM (see there).
            decide_at = max(deadline, busy_since + (0.0 if mine else _BUSY_CONFIRM))
            if now >= decide_at:
                raise _busy(runtime_id, await self._busy_owner(runtime_id))
            await trio.sleep_until(min(now + delay, decide_at))
            delay = min(delay * 2, _POLL_MAX)

    async def _take(self, runtime_id: str, fd: int) -> Owner:
        """We hold the lock: bump the durable token and record ourselves (closing the lock on any failure)."""
        rid = _bind(runtime_id)
        pid, host, since = os.getpid(), socket.gethostname(), self._clock()

        def take(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT token FROM leases WHERE runtime_id = ?", (rid,)).fetchone()
            token = (0 if row is None else int(row[0])) + 1
            conn.execute(
                "INSERT INTO leases (runtime_id, token, pid, host, since, released_at) "
                "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (runtime_id) DO UPDATE SET token = excluded.token, "
                "pid = excluded.pid, host = excluded.host, since = excluded.since, released_at = NULL",
                (rid, token, pid, _bind(host), since),
            )
            return token

        try:
            token = await self._run(lambda conn: _in_transaction(conn, take))
        except BaseException:
            _unlock(fd)
            raise
        owner = Owner(pid, host, since, token)
        self._held[runtime_id] = _Held(owner, fd)
        return owner

    async def _busy_owner(self, runtime_id: str) -> Owner | None:
        """The owner to name in :class:`RuntimeBusy`: the lease record, once it is the lock holder's.

        The holder writes its record just after it takes the lock, so a competitor that lost the race by a
        moment can still read the previous owner's record: released (a clean stop) or naming a process that is
        gone (a crash). Such a record is not the owner; it is read again until the holder's own appears, for
        at most ``_OWNER_RECORD_WAIT`` (then the error says the owner is not known yet)."""
        give_up = trio.current_time() + _OWNER_RECORD_WAIT
        delay = _POLL_FIRST
        while True:
            owner = await self._recorded_owner(runtime_id)
            if owner is not None and _may_be_alive(owner):
                return owner
            if trio.current_time() >= give_up:
                return None
            await trio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    async def _recorded_owner(self, runtime_id: str) -> Owner | None:
        """The owner named by the lease record, unless it released (for :class:`RuntimeBusy`)."""
        held = self._held.get(runtime_id)
        if held is not None:
            return held.owner
        rid = _bind(runtime_id)
        row = await self._read(lambda conn: _lease_row(conn, rid))
        return None if row is None or row[1] else row[0]

    async def release(self, runtime_id: str) -> None:
        held = self._held.pop(runtime_id, None)  # at once: no write of ours may follow this call
        if held is None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        rid, token, now = _bind(runtime_id), held.owner.token, self._clock()

        def mark(conn: sqlite3.Connection) -> None:
            # Fenced like any write: a replaced owner must not mark its successor's lease released.
            conn.execute("UPDATE leases SET released_at = ? WHERE runtime_id = ? AND token = ?", (now, rid, token))

        with trio.CancelScope(shield=True):
            try:
                await self._run(lambda conn: _in_transaction(conn, mark))
            finally:
                # The record is for status displays; the lock is what lets the next owner in, so it goes
                # even when the record could not be written (and then the error is raised).
                await self._offload(_unlock, held.fd)

    async def owner(self, runtime_id: str) -> Owner | None:
        rid = _bind(runtime_id)
        row = await self._read(lambda conn: _lease_row(conn, rid))
        if row is None or row[1]:
            return None  # never taken, or released
        # Recorded as held: alive only if its lock is. A crashed owner never released, but its lock died.
        if not await self._offload(self._lock_is_held, runtime_id):
            return None
        # Read again: another owner may have taken over between the two reads.
        row = await self._read(lambda conn: _lease_row(conn, rid))
        return None if row is None or row[1] else row[0]

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open, create or migrate the database now rather than on first use."""
        await self._run(lambda conn: None)

    async def aclose(self) -> None:
        """Release every lease this object holds, then close the connection (even if a release failed)."""
        with trio.CancelScope(shield=True):
            failure: StateStoreError | None = None
            try:
                for runtime_id in list(self._held):
                    try:
                        await self.release(runtime_id)
                    except StateStoreError as exc:
                        failure = failure or exc
            finally:
                async with self._lock:
                    conn, self._conn = self._conn, None
                    if conn is not None:
                        await self._offload(conn.close)
            if failure is not None:
                raise failure

    async def __aenter__(self) -> SqliteStateStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- reads -------------------------------------------------------------------------------------------

    def _record(self, row: Sequence[Any]) -> RuntimeRecord:
        values = _row(row)
        if values[1] not in RUNTIME_STATUSES:
            raise _corrupt(self._path, f"unknown status {values[1]!r} for runtime {values[0]!r}")
        *fields, usage = values
        record = RuntimeRecord(*fields)
        token_usage = usage_from_json(usage if isinstance(usage, str) else None)
        return record if token_usage is None else attrs.evolve(record, token_usage=token_usage)

    async def load(self, runtime_id: str) -> Snapshot:
        rid = _bind(runtime_id)

        def read(conn: sqlite3.Connection) -> Snapshot:
            row = conn.execute(
                f"SELECT {_RECORD_COLUMNS}, next_seq FROM runtimes WHERE runtime_id = ?", (rid,)
            ).fetchone()
            if row is None:
                return Snapshot(RuntimeRecord(runtime_id), [], [], 1, [], None)
            dedup = [
                _text(r[0])
                for r in conn.execute("SELECT source_id FROM dedup WHERE runtime_id = ? ORDER BY id", (rid,))
            ]
            pending = [
                _submission(_row(r))
                for r in conn.execute(
                    "SELECT seq, source_id, kind, text, accepted_at, delivering, options FROM pending "
                    "WHERE runtime_id = ? ORDER BY seq",
                    (rid,),
                )
            ]
            lost = [
                LostThread(*_row(r))
                for r in conn.execute(
                    "SELECT old_thread_id, new_thread_id, reason, at FROM lost_threads "
                    "WHERE runtime_id = ? ORDER BY id",
                    (rid,),
                )
            ]
            ledger = conn.execute(
                "SELECT accepted, injected, trigger_seq FROM completions WHERE runtime_id = ?", (rid,)
            ).fetchone()
            return Snapshot(
                record=self._record(row[:-1]),
                dedup_ids=dedup,
                pending=pending,
                next_seq=int(row[-1]),
                lost_threads=lost,
                completions=None if ledger is None else self._ledger(ledger),
            )

        return await self._read(read)

    def _ledger(self, row: Sequence[Any]) -> CompletionLedgerSnapshot:
        try:
            accepted, injected = json.loads(_text(row[0])), json.loads(_text(row[1]))
            if not all(isinstance(x, list) and all(isinstance(i, str) for i in x) for x in (accepted, injected)):
                raise ValueError("id lists are not lists of strings")
            return CompletionLedgerSnapshot(tuple(accepted), tuple(injected), int(row[2]))
        except (ValueError, TypeError) as exc:
            raise _corrupt(self._path, f"completion ledger: {exc}") from exc

    async def recent_settlements(self, runtime_id: str, limit: int = 100) -> list[StoredSettlement]:
        rid = _bind(runtime_id)
        count = max(0, limit)

        def read(conn: sqlite3.Connection) -> list[StoredSettlement]:
            rows = conn.execute(
                "SELECT seq, source_id, outcome, turn_id, detail, at FROM settlements "
                "WHERE runtime_id = ? ORDER BY id DESC LIMIT ?",
                (rid, count),
            ).fetchall()
            return [StoredSettlement(*_row(r)) for r in reversed(rows)]

        return await self._read(read)

    async def list_runtimes(self) -> list[RuntimeRecord]:
        def read(conn: sqlite3.Connection) -> list[RuntimeRecord]:
            records = [self._record(r) for r in conn.execute(f"SELECT {_RECORD_COLUMNS} FROM runtimes")]
            # Sorted in Python: SQLite would order a surrogate-bearing id (stored as a BLOB) apart.
            return sorted(records, key=lambda r: r.runtime_id)

        return await self._read(read)

    # -- writes ------------------------------------------------------------------------------------------

    async def set_status(
        self,
        runtime_id: str,
        status: RuntimeStatus,
        *,
        last_error: str | _Unset | None = UNSET,
        last_started_at: float | _Unset | None = UNSET,
        last_ready_at: float | _Unset | None = UNSET,
    ) -> None:
        _check_status(status)
        changes: dict[str, Any] = {"status": status}
        if last_error is not UNSET:
            changes["last_error"] = last_error
        if last_started_at is not UNSET:
            changes["last_started_at"] = last_started_at
        if last_ready_at is not UNSET:
            changes["last_ready_at"] = last_ready_at
        # Column names come from the fixed keys above, never from the caller.
        assignments = ", ".join(f"{column} = ?" for column in changes)
        params = _bind_all([*changes.values(), runtime_id])

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(f"UPDATE runtimes SET {assignments} WHERE runtime_id = ?", params)

        await self._write(runtime_id, write)

    async def set_thread_id(self, runtime_id: str, thread_id: str) -> None:
        params = _bind_all((thread_id, runtime_id))

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE runtimes SET thread_id = ? WHERE runtime_id = ?", params)

        await self._write(runtime_id, write)

    async def record_lost_thread(self, runtime_id: str, lost: LostThread) -> None:
        rid = _bind(runtime_id)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO lost_threads (runtime_id, old_thread_id, new_thread_id, reason, at) "
                "VALUES (?, ?, ?, ?, ?)",
                _bind_all((runtime_id, lost.old_thread_id, lost.new_thread_id, lost.reason, lost.at)),
            )
            _trim(conn, "lost_threads", rid, LOST_THREADS_KEEP)
            conn.execute("UPDATE runtimes SET thread_id = ? WHERE runtime_id = ?", _bind_all((lost.new_thread_id, rid)))

        await self._write(runtime_id, write)

    async def accept(self, runtime_id: str, submissions: Sequence[StoredSubmission], *, dedup_window: int) -> None:
        rid = _bind(runtime_id)
        batch = list(submissions)
        self._token(runtime_id)  # no lease: refused before anything else, as in the memory store
        _check_batch(runtime_id, batch)
        if not batch:
            await trio.lowlevel.checkpoint()
            return

        def write(conn: sqlite3.Connection) -> None:
            next_seq = int(conn.execute("SELECT next_seq FROM runtimes WHERE runtime_id = ?", (rid,)).fetchone()[0])
            if batch[0].seq < next_seq:
                raise _seq_error(runtime_id, batch[0].seq, next_seq)
            # One statement set per submission, the same steps as one accept each, all in this transaction.
            for sub in batch:
                conn.execute(
                    "INSERT INTO pending (runtime_id, seq, source_id, kind, text, accepted_at, options) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    _bind_all((runtime_id, sub.seq, sub.source_id, sub.kind, sub.text, sub.accepted_at, sub.options)),
                )
                if sub.source_id:
                    conn.execute(
                        "INSERT OR IGNORE INTO dedup (runtime_id, source_id) VALUES (?, ?)",
                        _bind_all((runtime_id, sub.source_id)),
                    )
                _trim(conn, "dedup", rid, dedup_window)
            conn.execute("UPDATE runtimes SET next_seq = ? WHERE runtime_id = ?", (batch[-1].seq + 1, rid))

        await self._write(runtime_id, write)

    async def delivering(self, runtime_id: str, seq: int, *, steered: bool = False) -> None:
        rid = _bind(runtime_id)
        mark = 2 if steered else 1

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE pending SET delivering = ? WHERE runtime_id = ? AND seq = ?", (mark, rid, seq))

        await self._write(runtime_id, write)

    async def delivered(self, runtime_id: str, seq: int) -> None:
        rid = _bind(runtime_id)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM pending WHERE runtime_id = ? AND seq = ?", (rid, seq))

        await self._write(runtime_id, write)

    async def set_child(self, runtime_id: str, child: str | None) -> None:
        rid = _bind(runtime_id)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE runtimes SET child = ? WHERE runtime_id = ?", (_bind(child), rid))

        await self._write(runtime_id, write)

    async def settle(self, runtime_id: str, settlement: StoredSettlement, *, keep: int = 1000) -> None:
        rid = _bind(runtime_id)
        s = settlement

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO settlements (runtime_id, seq, source_id, outcome, turn_id, detail, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                _bind_all((runtime_id, s.seq, s.source_id, s.outcome, s.turn_id, s.detail, s.at)),
            )
            _trim(conn, "settlements", rid, keep)
            conn.execute("DELETE FROM pending WHERE runtime_id = ? AND seq = ?", (rid, s.seq))
            if s.runtime_usage is not None:
                conn.execute(
                    "UPDATE runtimes SET token_usage = ? WHERE runtime_id = ?", (usage_to_json(s.runtime_usage), rid)
                )

        await self._write(runtime_id, write)

    async def save_completions(self, runtime_id: str, snapshot: CompletionLedgerSnapshot) -> None:
        params = (
            _bind(runtime_id),
            json.dumps(list(snapshot.accepted)),
            json.dumps(list(snapshot.injected)),
            snapshot.trigger_seq,
        )

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO completions (runtime_id, accepted, injected, trigger_seq) VALUES (?, ?, ?, ?)",
                params,
            )

        await self._write(runtime_id, write)


def _lease_row(conn: sqlite3.Connection, runtime_id: Any) -> tuple[Owner, bool] | None:
    """The recorded owner of ``runtime_id`` and whether it has released (None: never acquired)."""
    row = conn.execute(
        "SELECT pid, host, since, token, released_at FROM leases WHERE runtime_id = ?", (runtime_id,)
    ).fetchone()
    if row is None:
        return None
    return Owner(int(row[0]), str(_text(row[1])), float(row[2]), int(row[3])), row[4] is not None


def _trim(conn: sqlite3.Connection, table: str, runtime_id: Any, keep: int) -> None:
    """Delete all but the newest ``keep`` rows of ``runtime_id`` in ``table`` (by ``id``, insertion order)."""
    # The OFFSET row is the newest one to drop; with fewer rows the subquery is NULL and nothing goes.
    # ``table`` is one of our own names, never input.
    conn.execute(
        f"DELETE FROM {table} WHERE runtime_id = ? AND id <= "
        f"(SELECT id FROM {table} WHERE runtime_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (runtime_id, runtime_id, max(0, keep)),
    )


def open_state_store(path: str | Path | None) -> StateStore:
    """A :class:`MemoryStateStore` for ``None`` or ``":memory:"``, else a :class:`SqliteStateStore` at ``path``."""
    if path is None or os.fspath(path) == ":memory:":
        return MemoryStateStore()
    return SqliteStateStore(path)
