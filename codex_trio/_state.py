"""The runtime's durable state: status, thread id, dedup window, accepted input, settlements, ledgers.

Theory of operation
-------------------
The runtime writes through a :class:`StateStore` at each point where forgetting would lose or repeat work:

* ``accept`` runs *before* the submission is acknowledged to its caller. It records the source id in the
  dedup window and the rendered text in ``pending``, in one transaction. Once it returns, a ``kill -9`` of
  the host cannot lose the submission: the next start finds it in ``Snapshot.pending`` and sends it again.
* ``delivered`` drops it from ``pending`` once codex has it (``turn/start`` answered); ``settle`` records
  how it ended (a bounded history) and drops it from ``pending`` too, in case ``delivered`` never ran.
* ``next_seq`` only grows, even when ``pending`` is empty, so sequence numbers are never reused.

Two implementations share these semantics exactly (a Hypothesis test holds them to it):
:class:`MemoryStateStore` (dicts; the reference, and the default when nothing needs to survive the process)
and :class:`SqliteStateStore` (stdlib ``sqlite3``; one file can hold many runtimes).

Every write also creates the runtime's record if it is missing (status ``"declared"``) and stamps
``updated_at``, so ``updated_at`` is the time of the last write of any kind: what ``codex-trio status``
shows as "last activity". ``load`` never writes.

SQLite details: WAL journal with ``synchronous=FULL`` (a commit is on disk before it returns), one connection
used by one worker thread at a time (a ``trio.Lock`` around ``trio.to_thread.run_sync``, which is not
abandoned on cancel, so a write is never cut in half by a Trio cancellation), a busy timeout so a second
process (the ``status`` command) can read while a host writes, and versioned migrations keyed on
``PRAGMA user_version``. The file is created owner-only (0600); SQLite gives its ``-wal``/``-shm`` files the
database file's mode.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar, get_args, runtime_checkable

import attrs
import trio

from ._completions import CompletionLedgerSnapshot
from ._errors import StateStoreError

__all__ = [
    "LOST_THREADS_KEEP",
    "RUNTIME_STATUSES",
    "SCHEMA_VERSION",
    "UNSET",
    "LostThread",
    "MemoryStateStore",
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
    #: set by :meth:`StateStore.delivering` just before the request that carries it is sent: after a host crash
    #: such a submission is *in doubt* (codex may have it) and must not be sent again.
    delivering: bool = False


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


@attrs.frozen
class StoredSettlement:
    seq: int
    source_id: str
    outcome: str
    turn_id: str | None
    detail: str | None
    at: float


@attrs.frozen
class Snapshot:
    """Everything the runtime needs to resume, read in one consistent view."""

    record: RuntimeRecord  # a fresh "declared" record when the runtime is new
    dedup_ids: list[str]  # oldest first, at most the window last written
    pending: list[StoredSubmission]  # accepted, not yet delivered to codex, in seq order
    next_seq: int  # 1 + the highest seq ever accepted (1 for a new runtime)
    lost_threads: list[LostThread]  # oldest first
    completions: CompletionLedgerSnapshot | None


@runtime_checkable
class StateStore(Protocol):
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

    async def accept(self, runtime_id: str, submission: StoredSubmission, *, dedup_window: int) -> None:
        """Atomically remember ``source_id`` (unless "") in the dedup window and append to ``pending``.

        The window keeps the newest ``dedup_window`` ids by first insertion (0 keeps none); an id already
        in the window keeps its place. ``submission.seq`` must be at least ``next_seq``, else
        :class:`StateStoreError`. Durable when it returns.
        """
        ...

    async def delivering(self, runtime_id: str, seq: int) -> None:
        """The submission is about to be sent to codex: mark it in doubt until ``delivered`` (no-op when absent)."""
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

    async def aclose(self) -> None: ...


def _check_status(status: str) -> None:
    if status not in RUNTIME_STATUSES:
        raise ValueError(f"unknown runtime status {status!r}; expected one of {sorted(RUNTIME_STATUSES)}")


def _seq_error(runtime_id: str, seq: int, next_seq: int) -> StateStoreError:
    return StateStoreError(
        f"runtime {runtime_id!r}: submission seq {seq} is not above the last accepted seq ({next_seq - 1}); "
        f"is another process running the same runtime?"
    )


# --- in memory --------------------------------------------------------------------------------------------


@attrs.define
class _MemRuntime:
    record: RuntimeRecord
    dedup: dict[str, None] = attrs.Factory(dict)  # insertion-ordered set
    pending: dict[int, StoredSubmission] = attrs.Factory(dict)
    next_seq: int = 1
    lost: list[LostThread] = attrs.Factory(list)
    settlements: list[StoredSettlement] = attrs.Factory(list)
    completions: CompletionLedgerSnapshot | None = None


class MemoryStateStore:
    """A :class:`StateStore` in plain dicts: nothing survives the process.

    Each method checkpoints once, before it touches anything, so every mutation runs without an await in the
    middle and concurrent Trio tasks see it whole. ``aclose`` keeps the data: handing the same store to a
    second runtime simulates a restart of the host.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._runtimes: dict[str, _MemRuntime] = {}

    def _touch(self, runtime_id: str) -> _MemRuntime:
        rt = self._runtimes.get(runtime_id)
        if rt is None:
            rt = self._runtimes[runtime_id] = _MemRuntime(RuntimeRecord(runtime_id))
        rt.record = attrs.evolve(rt.record, updated_at=self._clock())
        return rt

    async def load(self, runtime_id: str) -> Snapshot:
        await trio.lowlevel.checkpoint()
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
        await trio.lowlevel.checkpoint()
        rt = self._touch(runtime_id)
        changes: dict[str, Any] = {"status": status}
        if last_error is not UNSET:
            changes["last_error"] = last_error
        if last_started_at is not UNSET:
            changes["last_started_at"] = last_started_at
        if last_ready_at is not UNSET:
            changes["last_ready_at"] = last_ready_at
        rt.record = attrs.evolve(rt.record, **changes)

    async def set_thread_id(self, runtime_id: str, thread_id: str) -> None:
        await trio.lowlevel.checkpoint()
        rt = self._touch(runtime_id)
        rt.record = attrs.evolve(rt.record, thread_id=thread_id)

    async def record_lost_thread(self, runtime_id: str, lost: LostThread) -> None:
        await trio.lowlevel.checkpoint()
        rt = self._touch(runtime_id)
        rt.lost.append(lost)
        del rt.lost[:-LOST_THREADS_KEEP]
        rt.record = attrs.evolve(rt.record, thread_id=lost.new_thread_id)

    async def accept(self, runtime_id: str, submission: StoredSubmission, *, dedup_window: int) -> None:
        await trio.lowlevel.checkpoint()
        current = self._runtimes.get(runtime_id)
        next_seq = current.next_seq if current is not None else 1
        if submission.seq < next_seq:
            raise _seq_error(runtime_id, submission.seq, next_seq)
        rt = self._touch(runtime_id)
        if submission.source_id:
            rt.dedup.setdefault(submission.source_id, None)
        excess = len(rt.dedup) - max(0, dedup_window)
        for old in list(rt.dedup)[: max(0, excess)]:
            del rt.dedup[old]
        rt.pending[submission.seq] = submission
        rt.next_seq = submission.seq + 1

    async def delivering(self, runtime_id: str, seq: int) -> None:
        await trio.lowlevel.checkpoint()
        rt = self._touch(runtime_id)
        if seq in rt.pending:
            rt.pending[seq] = attrs.evolve(rt.pending[seq], delivering=True)

    async def delivered(self, runtime_id: str, seq: int) -> None:
        await trio.lowlevel.checkpoint()
        self._touch(runtime_id).pending.pop(seq, None)

    async def set_child(self, runtime_id: str, child: str | None) -> None:
        await trio.lowlevel.checkpoint()
        rt = self._touch(runtime_id)
        rt.record = attrs.evolve(rt.record, child=child)

    async def settle(self, runtime_id: str, settlement: StoredSettlement, *, keep: int = 1000) -> None:
        await trio.lowlevel.checkpoint()
        rt = self._touch(runtime_id)
        rt.settlements.append(settlement)
        keep = max(0, keep)
        del rt.settlements[: max(0, len(rt.settlements) - keep)]
        rt.pending.pop(settlement.seq, None)

    async def recent_settlements(self, runtime_id: str, limit: int = 100) -> list[StoredSettlement]:
        await trio.lowlevel.checkpoint()
        rt = self._runtimes.get(runtime_id)
        if rt is None or limit <= 0:
            return []
        return rt.settlements[-limit:]

    async def save_completions(self, runtime_id: str, snapshot: CompletionLedgerSnapshot) -> None:
        await trio.lowlevel.checkpoint()
        self._touch(runtime_id).completions = snapshot

    async def list_runtimes(self) -> list[RuntimeRecord]:
        await trio.lowlevel.checkpoint()
        return [self._runtimes[rid].record for rid in sorted(self._runtimes)]

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

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
        f"state store {path} is an SQLite database that codex_trio did not create; choose another path"
    )


def _pragma_int(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


# Python's sqlite3 cannot bind a str holding a lone surrogate (possible in JSON-decoded text). Such a value is
# stored as its surrogatepass UTF-8 bytes instead (SQLite keeps a BLOB as is in a TEXT column) and decoded
# on the way out, so every str round-trips exactly, as it does in the memory store.


def _submission(values: list[Any]) -> StoredSubmission:
    seq, source_id, kind, text, accepted_at, delivering = values
    return StoredSubmission(seq, source_id, kind, text, accepted_at, bool(delivering))


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
    return StateStoreError(f"state store {path} is corrupt ({what}); move it aside to start fresh")


# --- SQLite: the store --------------------------------------------------------------------------------------

_RECORD_COLUMNS: Final = "runtime_id, status, thread_id, last_error, last_started_at, last_ready_at, updated_at, child"


class SqliteStateStore:
    """A :class:`StateStore` in one SQLite file (stdlib ``sqlite3``); several runtimes may share it.

    Constructing it does no I/O; the file is opened (created 0600, migrated) on first use, or by
    :meth:`open` to surface a bad path early. After :meth:`aclose` the next call opens it again. Every
    ``sqlite3`` failure is raised as :class:`StateStoreError`. ``":memory:"`` gives a private in-memory
    database (tests only: it is not shared, not durable).
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

    @property
    def path(self) -> str:
        return self._path

    # -- plumbing ----------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        async with self._lock:
            # Not abandoned on cancel: the transaction finishes (or rolls back) before this returns.
            return await trio.to_thread.run_sync(self._in_worker, fn)

    def _in_worker(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._connect()
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise StateStoreError(f"state store {self._path}: {exc}") from exc

    async def _write(self, runtime_id: str, fn: Callable[[sqlite3.Connection], None]) -> None:
        now = self._clock()

        def transaction(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO runtimes (runtime_id, status, updated_at) VALUES (?, 'declared', ?) "
                    "ON CONFLICT (runtime_id) DO UPDATE SET updated_at = excluded.updated_at",
                    _bind_all((runtime_id, now)),
                )
                fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(transaction)

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
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            detail = "its directory does not exist" if exc.errno == errno.ENOENT else exc.strerror
            raise StateStoreError(f"cannot create state store {self._path}: {detail}") from exc
        try:
            os.fchmod(fd, 0o600)  # the umask could only have narrowed it; make it exact
        finally:
            os.close(fd)
        return True

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        in_memory = self._path == ":memory:"
        created = False if in_memory else self._create_file()
        try:
            conn = sqlite3.connect(
                self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StateStoreError(f"cannot open state store {self._path}: {exc}") from exc
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
        path = self._path
        try:
            # Look before touching anything: a stranger's or a newer database is not ours to convert to WAL.
            version = _pragma_int(conn, "user_version")
            app_id = _pragma_int(conn, "application_id")
            foreign = version == 0 and _has_tables(conn)
        except sqlite3.DatabaseError as exc:
            raise StateStoreError(
                f"cannot read state store {path}: {exc} (the file is corrupt or not a codex_trio state "
                f"database; move it aside to start fresh)"
            ) from exc
        if version > SCHEMA_VERSION:
            raise _newer_schema(path, version)
        if foreign:
            raise _foreign(path)
        if app_id not in (0, APPLICATION_ID):
            raise StateStoreError(f"state store {path} belongs to another application (application_id {app_id})")
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
            if version < SCHEMA_VERSION:
                _apply_migrations(conn, path)
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            raise StateStoreError(f"cannot open state store {path}: {exc}") from exc
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

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open, create or migrate the database now rather than on first use."""
        await self._run(lambda conn: None)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    await trio.to_thread.run_sync(conn.close)

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
        return RuntimeRecord(*values)

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
                    "SELECT seq, source_id, kind, text, accepted_at, delivering FROM pending "
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

    async def accept(self, runtime_id: str, submission: StoredSubmission, *, dedup_window: int) -> None:
        rid = _bind(runtime_id)
        sub = submission

        def write(conn: sqlite3.Connection) -> None:
            next_seq = int(conn.execute("SELECT next_seq FROM runtimes WHERE runtime_id = ?", (rid,)).fetchone()[0])
            if sub.seq < next_seq:
                raise _seq_error(runtime_id, sub.seq, next_seq)
            conn.execute(
                "INSERT INTO pending (runtime_id, seq, source_id, kind, text, accepted_at) VALUES (?, ?, ?, ?, ?, ?)",
                _bind_all((runtime_id, sub.seq, sub.source_id, sub.kind, sub.text, sub.accepted_at)),
            )
            if sub.source_id:
                conn.execute(
                    "INSERT OR IGNORE INTO dedup (runtime_id, source_id) VALUES (?, ?)",
                    _bind_all((runtime_id, sub.source_id)),
                )
            _trim(conn, "dedup", rid, dedup_window)
            conn.execute("UPDATE runtimes SET next_seq = ? WHERE runtime_id = ?", (sub.seq + 1, rid))

        await self._write(runtime_id, write)

    async def delivering(self, runtime_id: str, seq: int) -> None:
        rid = _bind(runtime_id)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE pending SET delivering = 1 WHERE runtime_id = ? AND seq = ?", (rid, seq))

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
