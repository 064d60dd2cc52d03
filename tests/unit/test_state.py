"""The state stores: shared semantics (both stores), SQLite specifics, and a model test of SQLite vs memory."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from codex_trio._completions import CompletionLedger, CompletionLedgerSnapshot
from codex_trio._errors import CodexTrioError, StateStoreError
from codex_trio._state import (
    LOST_THREADS_KEEP,
    SCHEMA_VERSION,
    UNSET,
    LostThread,
    MemoryStateStore,
    RuntimeRecord,
    Snapshot,
    SqliteStateStore,
    StateStore,
    StoredSettlement,
    StoredSubmission,
    _apply_migrations,
    open_state_store,
)

GUARD = 10  # seconds; a hang fails the test instead of the run
_T = TypeVar("_T")


class FakeClock:
    """A clock both stores can share, so ``updated_at`` is comparable and predictable."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@attrs.define
class Harness:
    """One store under test, plus how to simulate a host restart (SQLite: close, open a new instance)."""

    kind: str
    clock: FakeClock
    path: Path | None
    store: StateStore

    async def reopen(self) -> StateStore:
        if self.kind == "sqlite":
            await self.store.aclose()
            assert self.path is not None
            self.store = SqliteStateStore(self.path, clock=self.clock)
        return self.store


@pytest.fixture(params=["memory", "sqlite"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    clock = FakeClock()
    if request.param == "memory":
        h = Harness("memory", clock, None, MemoryStateStore(clock=clock))
    else:
        path = tmp_path / "state.db"
        h = Harness("sqlite", clock, path, SqliteStateStore(path, clock=clock))
    try:
        yield h
    finally:
        await h.store.aclose()


def sub(seq: int, source_id: str = "", kind: str = "channel", text: str | None = None) -> StoredSubmission:
    return StoredSubmission(seq, source_id, kind, text if text is not None else f"text {seq}", 50.0 + seq)


def settlement(seq: int, outcome: str = "completed", *, at: float = 0.0) -> StoredSettlement:
    return StoredSettlement(seq, f"src-{seq}", outcome, f"turn-{seq}", None, at or 70.0 + seq)


# --- shared semantics -------------------------------------------------------------------------------------


async def test_new_runtime_loads_fresh_and_is_not_listed(harness: Harness) -> None:
    with trio.fail_after(GUARD):
        snap = await harness.store.load("rt")
        assert snap == Snapshot(RuntimeRecord("rt"), [], [], 1, [], None)
        assert snap.record.status == "declared"
        # load never writes: the runtime is still unknown
        assert await harness.store.list_runtimes() == []
        assert await harness.store.recent_settlements("rt") == []


async def test_status_fields_follow_unset_semantics(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        await store.set_status("rt", "starting", last_started_at=10.0)
        rec = (await store.load("rt")).record
        assert (rec.status, rec.last_started_at, rec.last_ready_at, rec.last_error) == ("starting", 10.0, None, None)
        first_update = rec.updated_at
        assert first_update is not None

        await store.set_status("rt", "ready", last_ready_at=12.5)
        rec = (await store.load("rt")).record
        # last_started_at was UNSET: unchanged
        assert (rec.status, rec.last_started_at, rec.last_ready_at) == ("ready", 10.0, 12.5)
        assert rec.updated_at is not None and rec.updated_at > first_update

        await store.set_status("rt", "degraded", last_error="socket closed")
        assert (await store.load("rt")).record.last_error == "socket closed"

        await store.set_status("rt", "ready")  # UNSET keeps the error
        assert (await store.load("rt")).record.last_error == "socket closed"

        # explicit None clears
        await store.set_status("rt", "stopped", last_error=None, last_ready_at=None, last_started_at=UNSET)
        rec = (await store.load("rt")).record
        assert (rec.status, rec.last_error, rec.last_ready_at, rec.last_started_at) == ("stopped", None, None, 10.0)

        with pytest.raises(ValueError, match="unknown runtime status"):
            await store.set_status("rt", "bogus")  # type: ignore[arg-type]
        assert (await store.load("rt")).record.status == "stopped"

        store = await harness.reopen()
        rec = (await store.load("rt")).record
        assert (rec.status, rec.last_started_at) == ("stopped", 10.0)
        assert [r.runtime_id for r in await store.list_runtimes()] == ["rt"]


async def test_thread_id_and_lost_threads(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        await store.set_thread_id("rt", "t1")
        assert (await store.load("rt")).record.thread_id == "t1"
        lost1 = LostThread("t1", "t2", "thread not found", 5.0)
        lost2 = LostThread("t2", "t3", "rollout missing", 6.0)
        await store.record_lost_thread("rt", lost1)
        snap = await store.load("rt")
        assert snap.record.thread_id == "t2"
        await store.record_lost_thread("rt", lost2)
        store = await harness.reopen()
        snap = await store.load("rt")
        assert snap.record.thread_id == "t3"
        assert snap.lost_threads == [lost1, lost2]


async def test_lost_threads_history_is_bounded(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        for i in range(LOST_THREADS_KEEP + 3):
            await store.record_lost_thread("rt", LostThread(f"t{i}", f"t{i + 1}", "gone", float(i)))
        snap = await store.load("rt")
        assert len(snap.lost_threads) == LOST_THREADS_KEEP
        assert snap.lost_threads[0].old_thread_id == "t3"
        assert snap.lost_threads[-1].new_thread_id == f"t{LOST_THREADS_KEEP + 3}"


async def test_accept_delivered_settle_keep_pending_in_seq_order(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        for seq in (1, 2, 3, 4):
            await store.accept("rt", sub(seq, f"s{seq}"), dedup_window=10)
        assert [p.seq for p in (await store.load("rt")).pending] == [1, 2, 3, 4]

        await store.delivered("rt", 2)
        await store.delivered("rt", 99)  # unknown seq: no-op
        await store.settle("rt", settlement(3, "failed"))  # settled before delivered
        await store.settle("rt", settlement(2))  # settled after delivered
        store = await harness.reopen()
        snap = await store.load("rt")
        assert snap.pending == [sub(1, "s1"), sub(4, "s4")]
        assert snap.next_seq == 5
        assert await store.recent_settlements("rt") == [settlement(3, "failed"), settlement(2)]


async def test_accept_rejects_a_seq_not_above_the_last(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        await store.accept("rt", sub(5, "a"), dedup_window=10)
        await store.delivered("rt", 5)
        for bad in (5, 4, 0):
            with pytest.raises(StateStoreError, match="not above the last accepted seq"):
                await store.accept("rt", sub(bad, "b"), dedup_window=10)
        snap = await store.load("rt")
        # the failed accept changed nothing, not even the dedup window
        assert (snap.pending, snap.dedup_ids, snap.next_seq) == ([], ["a"], 6)
        await store.accept("rt", sub(9), dedup_window=10)  # gaps are fine
        assert (await store.load("rt")).next_seq == 10


async def test_dedup_window_keeps_the_newest_ids(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        for seq, source in enumerate(["a", "b", "", "c", "d"], start=1):
            await store.accept("rt", sub(seq, source), dedup_window=3)
        assert (await store.load("rt")).dedup_ids == ["b", "c", "d"]
        # an id already in the window keeps its place (first sight counts, not recency of use)
        await store.accept("rt", sub(6, "b"), dedup_window=3)
        assert (await store.load("rt")).dedup_ids == ["b", "c", "d"]
        await store.accept("rt", sub(7, "e"), dedup_window=3)
        assert (await store.load("rt")).dedup_ids == ["c", "d", "e"]
        # a smaller window applies on the next accept, even one without an id
        await store.accept("rt", sub(8, ""), dedup_window=1)
        assert (await store.load("rt")).dedup_ids == ["e"]
        await store.accept("rt", sub(9, "f"), dedup_window=0)
        snap = await store.load("rt")
        assert snap.dedup_ids == []
        assert [p.seq for p in snap.pending] == list(range(1, 10))
        await store.accept("rt", sub(10, "g"), dedup_window=-5)  # clamped to 0
        store = await harness.reopen()
        assert (await store.load("rt")).dedup_ids == []


async def test_settlement_history_is_bounded_and_ordered(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        for seq in range(1, 8):
            await store.settle("rt", settlement(seq), keep=5)
        assert [s.seq for s in await store.recent_settlements("rt")] == [3, 4, 5, 6, 7]
        assert [s.seq for s in await store.recent_settlements("rt", limit=2)] == [6, 7]
        assert await store.recent_settlements("rt", limit=0) == []
        await store.settle("rt", settlement(8), keep=0)
        assert await store.recent_settlements("rt") == []
        assert await store.recent_settlements("other") == []


async def test_next_seq_survives_reopen_even_with_nothing_pending(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        for seq in (1, 2, 3):
            await store.accept("rt", sub(seq), dedup_window=10)
            await store.delivered("rt", seq)
        store = await harness.reopen()
        snap = await store.load("rt")
        assert (snap.pending, snap.next_seq) == ([], 4)


async def test_runtimes_are_isolated(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        await store.set_status("a", "ready", last_error="x")
        await store.set_thread_id("b", "tb")
        await store.accept("a", sub(1, "same"), dedup_window=1)
        await store.accept("b", sub(1, "same"), dedup_window=1)  # seqs are per runtime
        await store.accept("b", sub(2, "other"), dedup_window=1)  # trims b's window only
        await store.settle("a", settlement(1), keep=1)
        await store.settle("b", settlement(7), keep=1)
        await store.save_completions("b", CompletionLedgerSnapshot(("x",), (), 3))
        store = await harness.reopen()
        a, b = await store.load("a"), await store.load("b")
        assert (a.record.status, a.record.thread_id, a.record.last_error) == ("ready", None, "x")
        assert (b.record.status, b.record.thread_id, b.record.last_error) == ("declared", "tb", None)
        assert (a.dedup_ids, b.dedup_ids) == (["same"], ["other"])
        assert (a.pending, [p.seq for p in b.pending]) == ([], [1, 2])
        assert (a.next_seq, b.next_seq) == (2, 3)
        assert (a.completions, b.completions) == (None, CompletionLedgerSnapshot(("x",), (), 3))
        assert [s.seq for s in await store.recent_settlements("a")] == [1]
        assert [s.seq for s in await store.recent_settlements("b")] == [7]
        assert [r.runtime_id for r in await store.list_runtimes()] == ["a", "b"]


async def test_completion_ledger_round_trip(harness: Harness) -> None:
    store = harness.store
    ledger = CompletionLedger(limit=3)
    for cid in ("c1", "c2", 'c"3\n', "c4"):
        ledger.mark_injected(cid)
        ledger.next_trigger_source_id(cid)
    ledger.mark_accepted("c2")
    with trio.fail_after(GUARD):
        await store.save_completions("rt", ledger.snapshot())
        await store.save_completions("rt", CompletionLedgerSnapshot((), (), 0))  # replaced, not merged
        await store.save_completions("rt", ledger.snapshot())
        store = await harness.reopen()
        loaded = (await store.load("rt")).completions
        assert loaded == ledger.snapshot()
        assert loaded is not None
        restored = CompletionLedger(limit=3)
        restored.restore(loaded)
        assert restored.snapshot() == ledger.snapshot()
        assert restored.next_trigger_source_id("c5") == "teammate:c5#5"


async def test_odd_strings_round_trip(harness: Harness) -> None:
    # Lone surrogates (JSON can carry them) and NULs must survive like any other text.
    odd = "a\ud800b\x00c\U0001f600"
    store = harness.store
    with trio.fail_after(GUARD):
        await store.accept(odd, sub(1, odd, text=odd), dedup_window=4)
        await store.set_status(odd, "failed", last_error=odd)
        await store.settle(odd, StoredSettlement(2, odd, "failed", odd, odd, 1.0))
        await store.record_lost_thread(odd, LostThread(odd, odd + "2", odd, 2.0))
        store = await harness.reopen()
        snap = await store.load(odd)
        assert snap.pending == [sub(1, odd, text=odd)]
        assert snap.dedup_ids == [odd]
        assert (snap.record.runtime_id, snap.record.last_error, snap.record.thread_id) == (odd, odd, odd + "2")
        assert (await store.recent_settlements(odd))[0].detail == odd
        assert [r.runtime_id for r in await store.list_runtimes()] == [odd]


async def test_every_write_stamps_updated_at(harness: Harness) -> None:
    store = harness.store
    writes: list[Callable[[], Awaitable[None]]] = [
        lambda: store.accept("rt", sub(1), dedup_window=1),
        lambda: store.delivered("rt", 1),
        lambda: store.settle("rt", settlement(1)),
        lambda: store.set_thread_id("rt", "t"),
        lambda: store.record_lost_thread("rt", LostThread("t", "u", "r", 1.0)),
        lambda: store.save_completions("rt", CompletionLedgerSnapshot((), (), 0)),
        lambda: store.set_status("rt", "ready"),
    ]
    with trio.fail_after(GUARD):
        for write in writes:
            await write()
            # the fake clock has just handed this write its time
            assert (await store.load("rt")).record.updated_at == harness.clock.now


async def test_concurrent_accepts_are_all_kept(harness: Harness) -> None:
    store = harness.store

    async def accept_many(offset: int) -> None:
        for i in range(10):
            await store.accept(f"rt{offset}", sub(i + 1, f"{offset}-{i}"), dedup_window=100)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for offset in range(3):
                nursery.start_soon(accept_many, offset)
        for offset in range(3):
            snap = await store.load(f"rt{offset}")
            assert [p.seq for p in snap.pending] == list(range(1, 11))
            assert snap.dedup_ids == [f"{offset}-{i}" for i in range(10)]


async def test_open_state_store_picks_the_store(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        assert isinstance(open_state_store(None), MemoryStateStore)
        assert isinstance(open_state_store(":memory:"), MemoryStateStore)
        store = open_state_store(tmp_path / "s.db")
        assert isinstance(store, SqliteStateStore)
        assert isinstance(store, StateStore)
        await store.aclose()
        assert isinstance(open_state_store(str(tmp_path / "t.db")), SqliteStateStore)


# --- SQLite specifics -------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_sqlite_files_are_owner_only_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old_umask = os.umask(0o022)  # a typical umask would give 0644
    try:
        with trio.fail_after(GUARD):
            store = SqliteStateStore(path)
            assert not path.exists()  # constructing does no I/O
            await store.accept("rt", sub(1), dedup_window=1)
            try:
                assert _mode(path) == 0o600
                for suffix in ("-wal", "-shm"):
                    assert _mode(Path(f"{path}{suffix}")) == 0o600
                raw = sqlite3.connect(path)
                try:
                    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
                finally:
                    raw.close()
            finally:
                await store.aclose()
    finally:
        os.umask(old_umask)


async def test_sqlite_reopens_after_aclose_and_async_with(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.accept("rt", sub(1), dedup_window=1)
            await store.aclose()
            await store.aclose()  # idempotent
            await store.accept("rt", sub(2), dedup_window=1)  # opens again
        async with SqliteStateStore(path) as again:
            assert [p.seq for p in (await again.load("rt")).pending] == [1, 2]


async def test_sqlite_in_memory_path(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        async with SqliteStateStore(":memory:") as store:
            await store.accept("rt", sub(1, "a"), dedup_window=1)
            assert (await store.load("rt")).dedup_ids == ["a"]


def _make_v1_db(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _apply_migrations(conn, str(path), target=1)
        conn.execute(
            "INSERT INTO runtimes (runtime_id, status, thread_id, updated_at, next_seq) "
            "VALUES ('old', 'stopped', 't-old', 1.0, 8)"
        )
        conn.execute(
            "INSERT INTO pending (runtime_id, seq, source_id, kind, text, accepted_at) "
            "VALUES ('old', 7, 'chat:1', 'channel', 'hi', 2.0)"
        )
        conn.execute("INSERT INTO dedup (runtime_id, source_id) VALUES ('old', 'chat:1')")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "completions" not in tables
    finally:
        conn.close()


async def test_sqlite_upgrades_a_v1_database(tmp_path: Path) -> None:
    assert SCHEMA_VERSION >= 2, "this test needs a migration after v1"
    path = tmp_path / "v1.db"
    _make_v1_db(path)
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            snap = await store.load("old")
            assert snap.record.status == "stopped"
            assert snap.record.thread_id == "t-old"
            assert snap.pending == [StoredSubmission(7, "chat:1", "channel", "hi", 2.0)]
            assert (snap.dedup_ids, snap.next_seq, snap.completions) == (["chat:1"], 8, None)
            # the v2 table works
            await store.save_completions("old", CompletionLedgerSnapshot(("a",), ("a",), 1))
            assert (await store.load("old")).completions == CompletionLedgerSnapshot(("a",), ("a",), 1)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.set_status("rt", "ready")
        raw = sqlite3.connect(path)
        try:
            raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
            raw.commit()
        finally:
            raw.close()
        store = SqliteStateStore(path)
        expected = rf"newer codex_trio \(schema {SCHEMA_VERSION + 5} > {SCHEMA_VERSION}\); upgrade codex_trio"
        with pytest.raises(StateStoreError, match=expected):
            await store.load("rt")
        with pytest.raises(StateStoreError, match="newer codex_trio"):
            await store.open()  # still refused: nothing was half-opened
        await store.aclose()


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a database at all, just some bytes" * 100,
        b"SQLite format 3\x00" + b"\xff" * 4000,
    ],
    ids=["garbage", "bad-header"],
)
async def test_sqlite_corrupt_file_raises_state_store_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(content)
    with trio.fail_after(GUARD):
        store = SqliteStateStore(path)
        with pytest.raises(StateStoreError, match="corrupt") as info:
            await store.load("rt")
        assert isinstance(info.value, CodexTrioError)
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
        await store.aclose()
    assert path.read_bytes() == content  # left alone


async def test_sqlite_corrupt_page_raises_state_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            for seq in range(1, 200):
                await store.accept("rt", sub(seq, f"s{seq}", text="x" * 200), dedup_window=1000)
        raw = sqlite3.connect(path)
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page_size = raw.execute("PRAGMA page_size").fetchone()[0]
        finally:
            raw.close()
        data = bytearray(path.read_bytes())
        assert len(data) > 4 * page_size
        data[2 * page_size : 4 * page_size] = b"\xa5" * (2 * page_size)  # trash two b-tree pages
        path.write_bytes(bytes(data))
        with pytest.raises(StateStoreError):
            async with SqliteStateStore(path) as broken:
                await broken.load("rt")


async def test_sqlite_unusable_paths(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        with pytest.raises(StateStoreError, match="directory does not exist"):
            await SqliteStateStore(tmp_path / "missing" / "state.db").open()
        with pytest.raises(StateStoreError):
            await SqliteStateStore(tmp_path).open()  # a directory


async def test_sqlite_refuses_a_foreign_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    raw = sqlite3.connect(path)
    try:
        raw.execute("CREATE TABLE notes (x TEXT)")
        raw.commit()
    finally:
        raw.close()
    with trio.fail_after(GUARD):
        with pytest.raises(StateStoreError, match="did not create"):
            await SqliteStateStore(path).open()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not converted to WAL
    finally:
        raw.close()


async def test_sqlite_two_connections_share_the_file(tmp_path: Path) -> None:
    # The `codex-trio status` command reads while a host writes: a second store on the same file.
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as host, SqliteStateStore(path) as reader:
            await host.set_status("rt", "ready")
            assert [r.status for r in await reader.list_runtimes()] == ["ready"]
            await host.accept("rt", sub(1), dedup_window=1)
            await reader.set_status("other", "stopped")  # the second one may write too
            assert (await reader.load("rt")).next_seq == 2
            assert [r.runtime_id for r in await host.list_runtimes()] == ["other", "rt"]


async def test_sqlite_failed_write_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.accept("rt", sub(1, "a"), dedup_window=5)
            with pytest.raises(StateStoreError):
                await store.accept("rt", sub(1, "b"), dedup_window=5)
            # the same connection is usable, and nothing of the failed call stuck
            await store.accept("rt", sub(2, "c"), dedup_window=5)
            snap = await store.load("rt")
            assert snap.dedup_ids == ["a", "c"]
            assert [p.seq for p in snap.pending] == [1, 2]


# --- model test: SQLite against the memory store -----------------------------------------------------------

RUNTIMES = st.sampled_from(["a", "b"])
SOURCES = st.sampled_from(["", "", "s1", "s2", "s3", "s4", "s5", "\ud800"])
SMALL_TEXT = st.text(max_size=6)
TIMES = st.floats(min_value=0, max_value=1e9, allow_nan=False)
OPT_TEXT = st.none() | SMALL_TEXT


def _run(fn: Callable[[], Awaitable[_T]]) -> _T:
    async def guarded() -> _T:
        with trio.fail_after(GUARD):
            return await fn()

    return trio.run(guarded)


class StoreComparison(RuleBasedStateMachine):
    """Every operation goes to both stores; they must always agree (memory is the reference)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="ct-state-")
        self.path = Path(self.dir) / "state.db"
        self.clock_value = 0.0
        # One clock for both: each operation reads it once per store, so both see the same time.
        self.ref = MemoryStateStore(clock=self._clock)
        self.db = SqliteStateStore(self.path, clock=self._clock)
        self.next_seq = {"a": 1, "b": 1}
        self.seqs_seen: list[int] = [1]

    def _clock(self) -> float:
        return self.clock_value

    def both(self, op: Callable[[StateStore], Awaitable[Any]]) -> None:
        self.clock_value += 1.0
        ref_result, ref_error = self._outcome(self.ref, op)
        db_result, db_error = self._outcome(self.db, op)
        assert type(db_error) is type(ref_error), (ref_error, db_error)
        assert db_result == ref_result

    @staticmethod
    def _outcome(store: StateStore, op: Callable[[StateStore], Awaitable[Any]]) -> tuple[Any, Exception | None]:
        try:
            return _run(lambda: op(store)), None
        except (StateStoreError, ValueError) as exc:
            return None, exc

    @rule(rid=RUNTIMES, status=st.sampled_from(["starting", "ready", "degraded", "stopped", "failed"]), data=st.data())
    def set_status(self, rid: str, status: Any, data: st.DataObject) -> None:
        kwargs: dict[str, Any] = {}
        for name, values in (("last_error", OPT_TEXT), ("last_started_at", TIMES), ("last_ready_at", TIMES)):
            choice = data.draw(st.sampled_from(["unset", "none", "value"]), label=name)
            if choice == "none":
                kwargs[name] = None
            elif choice == "value":
                kwargs[name] = data.draw(values, label=name)
        self.both(lambda s: s.set_status(rid, status, **kwargs))

    @rule(rid=RUNTIMES, thread=SMALL_TEXT)
    def set_thread_id(self, rid: str, thread: str) -> None:
        self.both(lambda s: s.set_thread_id(rid, thread))

    @rule(rid=RUNTIMES, old=SMALL_TEXT, new=SMALL_TEXT, reason=SMALL_TEXT, at=TIMES)
    def lost_thread(self, rid: str, old: str, new: str, reason: str, at: float) -> None:
        self.both(lambda s: s.record_lost_thread(rid, LostThread(old, new, reason, at)))

    @rule(
        rid=RUNTIMES,
        source=SOURCES,
        kind=st.sampled_from(["channel", "system", "trigger"]),
        text=SMALL_TEXT,
        window=st.integers(min_value=-1, max_value=4),
        jump=st.integers(min_value=-1, max_value=2),
    )
    def accept(self, rid: str, source: str, kind: str, text: str, window: int, jump: int) -> None:
        # jump -1 replays an old seq (both must refuse it); otherwise the next seq, maybe with a gap
        seq = self.next_seq[rid] + jump
        self.both(lambda s: s.accept(rid, StoredSubmission(seq, source, kind, text, 1.5), dedup_window=window))
        if jump >= 0:
            self.next_seq[rid] = seq + 1
        self.seqs_seen.append(seq)

    @rule(rid=RUNTIMES, data=st.data())
    def delivered(self, rid: str, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.seqs_seen))
        self.both(lambda s: s.delivered(rid, seq))

    @rule(rid=RUNTIMES, data=st.data(), outcome=st.sampled_from(["completed", "failed"]), keep=st.integers(-1, 4))
    def settle(self, rid: str, data: st.DataObject, outcome: str, keep: int) -> None:
        seq = data.draw(st.sampled_from(self.seqs_seen))
        turn, detail = data.draw(OPT_TEXT), data.draw(OPT_TEXT)
        item = StoredSettlement(seq, "src", outcome, turn, detail, 3.0)
        self.both(lambda s: s.settle(rid, item, keep=keep))

    @rule(
        rid=RUNTIMES,
        accepted=st.lists(SMALL_TEXT, max_size=3),
        injected=st.lists(SMALL_TEXT, max_size=3),
        seq=st.integers(0, 2**40),
    )
    def save_completions(self, rid: str, accepted: list[str], injected: list[str], seq: int) -> None:
        snap = CompletionLedgerSnapshot(tuple(accepted), tuple(injected), seq)
        self.both(lambda s: s.save_completions(rid, snap))

    @rule(limit=st.integers(-1, 6), rid=RUNTIMES)
    def recent(self, rid: str, limit: int) -> None:
        self.both(lambda s: s.recent_settlements(rid, limit))

    @rule()
    def reopen(self) -> None:
        _run(self.db.aclose)
        self.db = SqliteStateStore(self.path, clock=self._clock)

    @invariant()
    def stores_agree(self) -> None:
        for rid in ("a", "b", "never"):

            async def load(store: StateStore, rid: str = rid) -> Snapshot:
                return await store.load(rid)

            self.both(load)
        self.both(lambda s: s.list_runtimes())

    def teardown(self) -> None:
        try:
            _run(self.db.aclose)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


StoreComparison.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreComparison = StoreComparison.TestCase
