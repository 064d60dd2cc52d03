"""The state stores: shared semantics (both stores), leases and fencing, batched accept, SQLite specifics and
its error reports, and a model test of SQLite vs memory."""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from codex_trio._completions import CompletionLedger, CompletionLedgerSnapshot
from codex_trio._errors import CodexTrioError, LeaseLost, RuntimeBusy, StateStoreError
from codex_trio._state import (
    LOST_THREADS_KEEP,
    SCHEMA_VERSION,
    UNSET,
    LostThread,
    MemoryStateStore,
    Owner,
    RuntimeRecord,
    Snapshot,
    SqliteStateStore,
    StateStore,
    StoredSettlement,
    StoredSubmission,
    _apply_migrations,
    _lock_name,
    open_state_store,
)
from codex_trio.testing.pytest_plugin import short_dir

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
    owned: list[str] = attrs.Factory(list)

    async def own(self, *runtime_ids: str) -> StateStore:
        """Take the leases of ``runtime_ids`` (writes need them); ``reopen`` takes them again."""
        for runtime_id in runtime_ids:
            await self.store.acquire(runtime_id)
            self.owned.append(runtime_id)
        return self.store

    async def reopen(self) -> StateStore:
        """The host restarts: its leases go with the old store, the new one takes them again."""
        await self.store.aclose()
        if self.kind == "sqlite":
            assert self.path is not None
            self.store = SqliteStateStore(self.path, clock=self.clock)
        for runtime_id in self.owned:
            await self.store.acquire(runtime_id)
        return self.store

    async def bump_token(self, runtime_id: str) -> None:
        """Simulate another owner taking the runtime over behind this store's back (its token moved on)."""
        if isinstance(self.store, MemoryStateStore):
            self.store._tokens[runtime_id] += 1
            return
        assert self.path is not None
        raw = sqlite3.connect(self.path)
        try:
            raw.execute("UPDATE leases SET token = token + 1 WHERE runtime_id = ?", (runtime_id,))
            raw.commit()
        finally:
            raw.close()


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


def subs(*seqs: int) -> list[StoredSubmission]:
    return [sub(seq, f"s{seq}") for seq in seqs]


def settlement(seq: int, outcome: str = "completed", *, at: float = 0.0) -> StoredSettlement:
    return StoredSettlement(seq, f"src-{seq}", outcome, f"turn-{seq}", None, at or 70.0 + seq)


def all_writes(store: StateStore, runtime_id: str) -> list[Callable[[], Awaitable[None]]]:
    """One call of every write method."""
    return [
        lambda: store.accept(runtime_id, [sub(1)], dedup_window=1),
        lambda: store.delivering(runtime_id, 1),
        lambda: store.delivered(runtime_id, 1),
        lambda: store.settle(runtime_id, settlement(1)),
        lambda: store.set_thread_id(runtime_id, "t"),
        lambda: store.record_lost_thread(runtime_id, LostThread("t", "u", "r", 1.0)),
        lambda: store.save_completions(runtime_id, CompletionLedgerSnapshot((), (), 0)),
        lambda: store.set_child(runtime_id, "1:2"),
        lambda: store.set_status(runtime_id, "ready"),
    ]


# --- shared semantics -------------------------------------------------------------------------------------


async def test_new_runtime_loads_fresh_and_is_not_listed(harness: Harness) -> None:
    with trio.fail_after(GUARD):
        snap = await harness.store.load("rt")
        assert snap == Snapshot(RuntimeRecord("rt"), [], [], 1, [], None)
        assert snap.record.status == "declared"
        # load never writes: the runtime is still unknown
        assert await harness.store.list_runtimes() == []
        assert await harness.store.recent_settlements("rt") == []
        # neither does taking the lease
        await harness.own("rt")
        assert await harness.store.list_runtimes() == []


async def test_status_fields_follow_unset_semantics(harness: Harness) -> None:
    store = await harness.own("rt")
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
    store = await harness.own("rt")
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
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        for i in range(LOST_THREADS_KEEP + 3):
            await store.record_lost_thread("rt", LostThread(f"t{i}", f"t{i + 1}", "gone", float(i)))
        snap = await store.load("rt")
        assert len(snap.lost_threads) == LOST_THREADS_KEEP
        assert snap.lost_threads[0].old_thread_id == "t3"
        assert snap.lost_threads[-1].new_thread_id == f"t{LOST_THREADS_KEEP + 3}"


async def test_accept_delivered_settle_keep_pending_in_seq_order(harness: Harness) -> None:
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        for seq in (1, 2, 3, 4):
            await store.accept("rt", [sub(seq, f"s{seq}")], dedup_window=10)
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


async def test_a_pending_inputs_options_survive_a_reopen_and_its_delivery_mark(harness: Harness) -> None:
    store = await harness.own("rt")
    options = '{"options":{"model":"m","effort":"high"},"images":[["local","/a.png"]]}'
    with trio.fail_after(GUARD):
        with_options = attrs.evolve(sub(1, "s1"), options=options)
        await store.accept("rt", [with_options, sub(2, "s2")], dedup_window=10)
        await store.delivering("rt", 1, steered=True)
        store = await harness.reopen()
        snap = await store.load("rt")
        assert snap.pending == [attrs.evolve(with_options, delivering=True, steered=True), sub(2, "s2")]
        assert snap.pending[1].options is None


async def test_accept_rejects_a_seq_not_above_the_last(harness: Harness) -> None:
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        await store.accept("rt", [sub(5, "a")], dedup_window=10)
        await store.delivered("rt", 5)
        for bad in (5, 4, 0):
            with pytest.raises(StateStoreError, match="not above the last accepted seq"):
                await store.accept("rt", [sub(bad, "b")], dedup_window=10)
        snap = await store.load("rt")
        # the failed accept changed nothing, not even the dedup window
        assert (snap.pending, snap.dedup_ids, snap.next_seq) == ([], ["a"], 6)
        await store.accept("rt", [sub(9)], dedup_window=10)  # gaps are fine
        assert (await store.load("rt")).next_seq == 10


async def test_dedup_window_keeps_the_newest_ids(harness: Harness) -> None:
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        for seq, source in enumerate(["a", "b", "", "c", "d"], start=1):
            await store.accept("rt", [sub(seq, source)], dedup_window=3)
        assert (await store.load("rt")).dedup_ids == ["b", "c", "d"]
        # an id already in the window keeps its place (first sight counts, not recency of use)
        await store.accept("rt", [sub(6, "b")], dedup_window=3)
        assert (await store.load("rt")).dedup_ids == ["b", "c", "d"]
        await store.accept("rt", [sub(7, "e")], dedup_window=3)
        assert (await store.load("rt")).dedup_ids == ["c", "d", "e"]
        # a smaller window applies on the next accept, even one without an id
        await store.accept("rt", [sub(8, "")], dedup_window=1)
        assert (await store.load("rt")).dedup_ids == ["e"]
        await store.accept("rt", [sub(9, "f")], dedup_window=0)
        snap = await store.load("rt")
        assert snap.dedup_ids == []
        assert [p.seq for p in snap.pending] == list(range(1, 10))
        await store.accept("rt", [sub(10, "g")], dedup_window=-5)  # clamped to 0
        store = await harness.reopen()
        assert (await store.load("rt")).dedup_ids == []


async def test_settlement_history_is_bounded_and_ordered(harness: Harness) -> None:
    store = await harness.own("rt")
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
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        for seq in (1, 2, 3):
            await store.accept("rt", [sub(seq)], dedup_window=10)
            await store.delivered("rt", seq)
        store = await harness.reopen()
        snap = await store.load("rt")
        assert (snap.pending, snap.next_seq) == ([], 4)


async def test_runtimes_are_isolated(harness: Harness) -> None:
    store = await harness.own("a", "b")
    with trio.fail_after(GUARD):
        await store.set_status("a", "ready", last_error="x")
        await store.set_thread_id("b", "tb")
        await store.accept("a", [sub(1, "same")], dedup_window=1)
        await store.accept("b", [sub(1, "same")], dedup_window=1)  # seqs are per runtime
        await store.accept("b", [sub(2, "other")], dedup_window=1)  # trims b's window only
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
    store = await harness.own("rt")
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
    store = await harness.own(odd)
    with trio.fail_after(GUARD):
        await store.accept(odd, [sub(1, odd, text=odd)], dedup_window=4)
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
        owner = await store.owner(odd)
        assert owner is not None and owner.token == 2  # taken twice: before and after the reopen


async def test_every_write_stamps_updated_at(harness: Harness) -> None:
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        for write in all_writes(store, "rt"):
            await write()
            # the fake clock has just handed this write its time
            assert (await store.load("rt")).record.updated_at == harness.clock.now


async def test_concurrent_accepts_are_all_kept(harness: Harness) -> None:
    store = await harness.own("rt0", "rt1", "rt2")

    async def accept_many(offset: int) -> None:
        for i in range(10):
            await store.accept(f"rt{offset}", [sub(i + 1, f"{offset}-{i}")], dedup_window=100)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for offset in range(3):
                nursery.start_soon(accept_many, offset)
        for offset in range(3):
            snap = await store.load(f"rt{offset}")
            assert [p.seq for p in snap.pending] == list(range(1, 11))
            assert snap.dedup_ids == [f"{offset}-{i}" for i in range(10)]


async def test_concurrent_callers_take_effect_in_call_order(harness: Harness) -> None:
    # Like the runtime's submitters: tasks woken together each take the next seq and call accept at once, so
    # call order is seq order. The store must apply them in call order. (The old memory store checkpointed
    # before its seq check, Trio resumed the callers in a random order, and a lower seq arriving after a
    # higher one was refused with "not above the last accepted seq".)
    store = await harness.own("rt")
    seqs = iter(range(1, 1000))
    with trio.fail_after(GUARD):
        for _ in range(10):
            go = trio.Event()

            async def submitter(go: trio.Event = go) -> None:
                await go.wait()
                await store.accept("rt", [sub(next(seqs))], dedup_window=1)

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(submitter)
                await trio.testing.wait_all_tasks_blocked()
                go.set()
        assert [p.seq for p in (await store.load("rt")).pending] == list(range(1, 51))


async def test_a_cancelled_write_changed_nothing(harness: Harness) -> None:
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.accept("rt", [sub(1, "a")], dedup_window=5)
        assert scope.cancelled_caught
        assert await store.list_runtimes() == []


async def test_open_state_store_picks_the_store(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        assert isinstance(open_state_store(None), MemoryStateStore)
        assert isinstance(open_state_store(":memory:"), MemoryStateStore)
        store = open_state_store(tmp_path / "s.db")
        assert isinstance(store, SqliteStateStore)
        assert isinstance(store, StateStore)
        await store.aclose()
        assert isinstance(open_state_store(str(tmp_path / "t.db")), SqliteStateStore)


# --- batched accept ---------------------------------------------------------------------------------------


async def test_accept_batch_lands_whole(harness: Harness) -> None:
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        await store.accept("rt", subs(1, 2, 5), dedup_window=10)
        snap = await store.load("rt")
        assert (snap.pending, snap.dedup_ids, snap.next_seq) == (subs(1, 2, 5), ["s1", "s2", "s5"], 6)
        store = await harness.reopen()
        assert (await store.load("rt")).pending == subs(1, 2, 5)


@pytest.mark.parametrize(
    ("seqs", "error"),
    [
        ((6, 7, 7), "strictly increasing"),
        ((6, 8, 7), "strictly increasing"),
        ((3, 4), "not above the last accepted seq"),
        ((0,), "not above the last accepted seq"),
    ],
)
async def test_a_bad_batch_writes_nothing(harness: Harness, seqs: tuple[int, ...], error: str) -> None:
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        await store.accept("rt", subs(1, 2, 3), dedup_window=10)
        before = await store.load("rt")
        with pytest.raises(StateStoreError, match=error):
            await store.accept("rt", subs(*seqs), dedup_window=10)
        assert await store.load("rt") == before  # not even updated_at moved


async def test_a_batch_is_the_same_as_accepting_one_by_one(harness: Harness) -> None:
    # The window is applied after each submission, as if each had its own accept: "a" leaves the window of 1
    # when "b" comes in, and coming back later in the same batch counts as new (trimming once at the end of
    # the batch would keep "b" instead).
    store = await harness.own("batch", "single")
    batch = [sub(2, "b"), sub(3, ""), sub(4, "a")]
    with trio.fail_after(GUARD):
        for rid in ("batch", "single"):
            await store.accept(rid, [sub(1, "a")], dedup_window=1)
        await store.accept("batch", batch, dedup_window=1)
        for one in batch:
            await store.accept("single", [one], dedup_window=1)
        at_once, one_by_one = await store.load("batch"), await store.load("single")
        assert at_once.dedup_ids == one_by_one.dedup_ids == ["a"]
        assert at_once.pending == one_by_one.pending
        assert at_once.next_seq == one_by_one.next_seq == 5


async def test_an_empty_batch_writes_nothing(harness: Harness) -> None:
    with trio.fail_after(GUARD):
        with pytest.raises(StateStoreError, match="acquire"):
            await harness.store.accept("rt", [], dedup_window=1)  # still needs the lease
        store = await harness.own("rt")
        await store.accept("rt", [], dedup_window=1)
        assert await store.list_runtimes() == []


async def test_sqlite_a_batch_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.acquire("rt")
            statements: list[str] = []
            assert store._conn is not None  # the one connection every call uses
            store._conn.set_trace_callback(statements.append)
            await store.accept("rt", subs(*range(1, 21)), dedup_window=100)
            store._conn.set_trace_callback(None)
            verbs = [s.split()[0].upper() for s in statements]
            # one commit (one WAL fsync with synchronous=FULL) for twenty submissions
            assert (verbs.count("BEGIN"), verbs.count("COMMIT")) == (1, 1)
            assert len((await store.load("rt")).pending) == 20


async def test_sqlite_a_failure_mid_batch_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.acquire("rt")
            await store.accept("rt", subs(1, 2), dedup_window=100)
            before = await store.load("rt")
            raw = sqlite3.connect(path)
            try:
                # The third insert of the batch fails inside the database, after two have been made.
                raw.execute(
                    "CREATE TRIGGER fail_mid_batch BEFORE INSERT ON pending WHEN NEW.seq = 5 "
                    "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                )
                raw.commit()
                with pytest.raises(StateStoreError, match="injected failure"):
                    await store.accept("rt", subs(3, 4, 5, 6), dedup_window=100)
                assert await store.load("rt") == before
                raw.execute("DROP TRIGGER fail_mid_batch")
                raw.commit()
            finally:
                raw.close()
            await store.accept("rt", subs(3, 4, 5, 6), dedup_window=100)
            assert [p.seq for p in (await store.load("rt")).pending] == [1, 2, 3, 4, 5, 6]


# --- leases: one owner per runtime, fenced writes ---------------------------------------------------------


async def test_writes_need_the_lease(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        for write in all_writes(store, "rt"):
            with pytest.raises(StateStoreError, match=r"call `await store\.acquire\('rt'\)` first") as info:
                await write()
            assert type(info.value) is StateStoreError  # not held is not "lost"
        # reads need none, and nothing was written
        assert await store.load("rt") == Snapshot(RuntimeRecord("rt"), [], [], 1, [], None)
        assert await store.list_runtimes() == []
        assert await store.recent_settlements("rt") == []
        assert await store.owner("rt") is None

        await harness.own("rt")
        for write in all_writes(store, "rt"):
            await write()
        await store.release("rt")
        with pytest.raises(StateStoreError, match="acquire"):
            await store.set_status("rt", "stopped")
        assert (await store.load("rt")).record.status == "ready"


async def test_the_lease_is_exclusive_and_its_token_grows(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        first = await store.acquire("rt")
        assert first == Owner(os.getpid(), socket.gethostname(), harness.clock.now, 1)
        assert await store.owner("rt") == first
        # a second runtime in the same process, on the same store
        with pytest.raises(RuntimeBusy) as info:
            await store.acquire("rt")
        busy = info.value
        assert (busy.runtime_id, busy.pid, busy.host, busy.since) == ("rt", first.pid, first.host, first.since)
        assert f"pid {first.pid} on {first.host}" in str(busy)
        assert await store.acquire("other") == Owner(first.pid, first.host, harness.clock.now, 1)  # per runtime

        await store.release("rt")
        await store.release("rt")  # idempotent
        assert await store.owner("rt") is None
        second = await store.acquire("rt")
        assert second.token == 2
        await store.release("rt")
        store = await harness.reopen()  # a new host: the token keeps growing
        assert (await store.acquire("rt")).token == 3


async def test_acquire_waits_for_a_release(harness: Harness) -> None:
    store = harness.store
    got: list[Owner] = []

    async def second_runtime() -> None:
        got.append(await store.acquire("rt", wait=math.inf))

    with trio.fail_after(GUARD):
        await store.acquire("rt")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(second_runtime)
            await trio.sleep(0.2)
            assert got == []  # still held: it must not have got it
            await store.release("rt")
        assert [o.token for o in got] == [2]
        assert await store.owner("rt") == got[0]


async def test_acquire_gives_up_after_wait_and_is_cancellable(harness: Harness) -> None:
    store = harness.store
    with trio.fail_after(GUARD):
        first = await store.acquire("rt")
        with pytest.raises(RuntimeBusy) as info:
            await store.acquire("rt", wait=0.2)
        assert info.value.pid == first.pid
        with trio.move_on_after(0.2) as scope:
            await store.acquire("rt", wait=math.inf)
        assert scope.cancelled_caught
        assert await store.owner("rt") == first  # the waiters took nothing
        for bad in (-1.0, math.nan):
            with pytest.raises(ValueError, match="wait must be >= 0"):
                await store.acquire("x", wait=bad)


async def test_a_replaced_owner_cannot_write(harness: Harness) -> None:
    store = await harness.own("rt")
    with trio.fail_after(GUARD):
        await store.accept("rt", [sub(1, "a")], dedup_window=5)
        before = await store.load("rt")
        await harness.bump_token("rt")
        for write in all_writes(store, "rt"):
            with pytest.raises(LeaseLost, match=r"lease \(token 1\) was taken over.*the stored token is now 2"):
                await write()
        assert await store.load("rt") == before  # nothing applied, not even updated_at
        # Release never marks a successor's lease; taking it again gives a token above the successor's.
        await store.release("rt")
        assert (await store.acquire("rt")).token == 3
        await store.set_status("rt", "ready")


async def test_aclose_releases_the_leases(harness: Harness) -> None:
    with trio.fail_after(GUARD):
        await harness.store.acquire("rt")
        await harness.store.aclose()
        assert await harness.store.owner("rt") is None
        assert (await harness.store.acquire("rt")).token == 2


# --- leases in SQLite ---------------------------------------------------------------------------------------


async def test_sqlite_two_store_objects_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as a, SqliteStateStore(path) as b:
            held = await a.acquire("rt")
            with pytest.raises(RuntimeBusy) as info:
                await b.acquire("rt")
            assert (info.value.pid, info.value.host, info.value.since) == (held.pid, held.host, held.since)
            assert await b.owner("rt") == held
            with pytest.raises(StateStoreError, match="acquire"):
                await b.set_status("rt", "ready")  # b holds no lease
            await a.release("rt")
            assert await b.owner("rt") is None
            taken = await b.acquire("rt")
            assert taken.token == held.token + 1
            with pytest.raises(StateStoreError, match="acquire"):
                await a.set_status("rt", "ready")
            await b.set_status("rt", "ready")


@pytest.mark.parametrize("before", ["never taken", "released", "crashed"])
async def test_sqlite_busy_names_the_holder_that_has_not_recorded_itself_yet(tmp_path: Path, before: str) -> None:
    # Two hosts race: the winner holds the lock but has not yet written its lease record (a loaded machine can
    # take a while between the two). The loser must name the winner, not the previous owner or nobody.
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as a, SqliteStateStore(path) as b:
            if before != "never taken":
                await a.acquire("rt")
                if before == "released":
                    await a.release("rt")
                else:
                    held = a._held.pop("rt")  # a crash: the lock dies with its process, the record stays
                    os.close(held.fd)

                    def dead(conn: sqlite3.Connection) -> None:
                        conn.execute("UPDATE leases SET pid = 2147483646")  # no such process

                    await a._run(dead)
            fd = await a._offload(a._try_lock, "rt")
            assert fd is not None
            async with trio.open_nursery() as nursery:

                async def lose() -> None:
                    with pytest.raises(RuntimeBusy) as info:
                        await b.acquire("rt")
                    got.append(info.value)

                got: list[RuntimeBusy] = []
                nursery.start_soon(lose)
                await trio.sleep(0.3)  # well past the busy confirmation: b is reading records by now
                winner = await a._take("rt", fd)
            assert [(e.pid, e.host, e.since) for e in got] == [(winner.pid, winner.host, winner.since)]


async def test_sqlite_lock_files_are_private_and_named_safely(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    ids = ["rt", "../../escape", "a/b", "a\ud800", "\x00", "." * 300, "rt "]
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            for runtime_id in ids:
                await store.acquire(runtime_id)
            locks = tmp_path / "state.db.locks"
            names = sorted(p.name for p in locks.iterdir())
            assert len(names) == len(ids)  # one each, none outside the directory
            assert sorted(_lock_name(i) for i in ids) == names
            assert _mode(locks) == 0o700
            assert all(_mode(locks / name) == 0o600 for name in names)
            assert all(len(name) < 100 and name.endswith(".lock") and "/" not in name for name in names)
            assert _listing(tmp_path) <= {
                "state.db",
                "state.db-wal",
                "state.db-shm",
                "state.db.locks",
            }


def _symlinked_locks_dir(tmp_path: Path) -> Path:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state.db.locks").symlink_to(elsewhere)
    return elsewhere


async def test_sqlite_refuses_a_symlinked_lock_directory(tmp_path: Path) -> None:
    elsewhere = _symlinked_locks_dir(tmp_path)
    with trio.fail_after(GUARD):
        async with SqliteStateStore(tmp_path / "state.db") as store:
            with pytest.raises(StateStoreError, match=r"lock directory .*state\.db\.locks is a symbolic link; remove"):
                await store.acquire("rt")
            assert await store.owner("rt") is None
    assert _listing(elsewhere) == set()


async def test_sqlite_lock_file_removed_by_hand_then_fencing_stops_the_old_owner(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as old, SqliteStateStore(path) as new:
            await old.acquire("rt")
            await old.accept("rt", [sub(1, "a")], dedup_window=5)
            # Someone deletes the lock file: the lock no longer keeps a second owner out...
            (tmp_path / "state.db.locks" / _lock_name("rt")).unlink()
            successor = await new.acquire("rt")
            assert successor.token == 2
            # ...but the token stops the old one from writing.
            with pytest.raises(
                LeaseLost, match=rf"token 1\).*the stored token is now 2, last taken by pid {os.getpid()}"
            ):
                await old.accept("rt", [sub(2, "b")], dedup_window=5)
            with pytest.raises(LeaseLost):
                await old.set_status("rt", "failed")
            await new.accept("rt", [sub(2, "c")], dedup_window=5)
            snap = await new.load("rt")
            assert ([p.source_id for p in snap.pending], snap.record.status) == (["a", "c"], "declared")
            await old.release("rt")  # must not mark the successor's lease released
            assert await new.owner("rt") == successor


async def test_sqlite_owner_of_a_crashed_owner_is_none(tmp_path: Path) -> None:
    # The lease record says "held", but the lock died with its process: that owner is not live.
    # (tests/integration/test_lease.py kills a real process; this fakes the record of one.)
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.open()
            raw = sqlite3.connect(path)
            try:
                raw.execute("INSERT INTO leases VALUES ('rt', 7, 999999, 'elsewhere', 5.0, NULL)")
                raw.commit()
            finally:
                raw.close()
            assert await store.owner("rt") is None
            assert (await store.acquire("rt")).token == 8


async def test_sqlite_in_memory_database_leases(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        async with SqliteStateStore(":memory:") as store:
            first = await store.acquire("rt")
            assert await store.owner("rt") == first
            with pytest.raises(RuntimeBusy):
                await store.acquire("rt")
            await store.release("rt")
            assert await store.owner("rt") is None
            assert (await store.acquire("rt")).token == 2
    assert _listing(tmp_path) == set()


# --- SQLite specifics -------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _listing(directory: Path) -> set[str]:
    return set(os.listdir(directory))


async def test_sqlite_files_are_owner_only_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old_umask = os.umask(0o022)  # a typical umask would give 0644
    try:
        with trio.fail_after(GUARD):
            store = SqliteStateStore(path)
            assert not path.exists()  # constructing does no I/O
            await store.acquire("rt")
            await store.accept("rt", [sub(1)], dedup_window=1)
            try:
                assert _mode(path) == 0o600
                for suffix in ("-wal", "-shm"):
                    assert _mode(Path(f"{path}{suffix}")) == 0o600
                assert _mode(Path(f"{path}.locks")) == 0o700
                assert _mode(Path(f"{path}.locks") / _lock_name("rt")) == 0o600
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
            await store.acquire("rt")
            await store.accept("rt", [sub(1)], dedup_window=1)
            await store.aclose()
            await store.aclose()  # idempotent
            await store.acquire("rt")  # aclose released the lease; the store opens again
            await store.accept("rt", [sub(2)], dedup_window=1)
        async with SqliteStateStore(path) as again:
            assert [p.seq for p in (await again.load("rt")).pending] == [1, 2]
            assert await again.owner("rt") is None


async def test_sqlite_in_memory_path(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        async with SqliteStateStore(":memory:") as store:
            await store.acquire("rt")
            await store.accept("rt", [sub(1, "a")], dedup_window=1)
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
    assert SCHEMA_VERSION >= 4, "this test needs migrations after v1, up to the leases"
    path = tmp_path / "v1.db"
    _make_v1_db(path)
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            snap = await store.load("old")
            assert snap.record.status == "stopped"
            assert snap.record.thread_id == "t-old"
            assert snap.pending == [StoredSubmission(7, "chat:1", "channel", "hi", 2.0)]
            assert snap.pending[0].options is None  # v5: the options column of an old row is NULL
            assert (snap.dedup_ids, snap.next_seq, snap.completions) == (["chat:1"], 8, None)
            # the v2 table works, and so do the v4 leases
            assert await store.owner("old") is None
            assert (await store.acquire("old")).token == 1
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
            await store.acquire("rt")
            await store.set_status("rt", "ready")
        raw = sqlite3.connect(path)
        try:
            raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
            raw.commit()
        finally:
            raw.close()
        store = SqliteStateStore(path)
        expected = rf"newer codex_trio \(schema {SCHEMA_VERSION + 5} > {SCHEMA_VERSION}\); upgrade codex_trio"
        with pytest.raises(StateStoreError, match=expected) as info:
            await store.load("rt")
        assert "move it aside" not in str(info.value)
        with pytest.raises(StateStoreError, match="newer codex_trio"):
            await store.open()  # still refused: nothing was half-opened
        with pytest.raises(StateStoreError, match="newer codex_trio"):
            await store.acquire("rt")
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
        with pytest.raises(StateStoreError, match=r"corrupt.*move it aside") as info:
            await store.load("rt")
        assert isinstance(info.value, CodexTrioError)
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
        with pytest.raises(StateStoreError, match="corrupt"):
            await store.acquire("rt")
        await store.aclose()
    assert path.read_bytes() == content  # left alone
    assert f"{path.name}.locks" not in _listing(tmp_path)  # no lock files beside a file we cannot use


async def test_sqlite_corrupt_page_raises_state_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.acquire("rt")
            for seq in range(1, 200):
                await store.accept("rt", [sub(seq, f"s{seq}", text="x" * 200)], dedup_window=1000)
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
        with pytest.raises(StateStoreError, match="corrupt"):
            async with SqliteStateStore(path) as broken:
                await broken.load("rt")


async def test_sqlite_unusable_paths(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        missing = tmp_path / "missing" / "state.db"
        with pytest.raises(StateStoreError, match=r"the directory .*missing does not exist; create it first"):
            await SqliteStateStore(missing).open()
        with pytest.raises(StateStoreError, match="does not exist"):
            await SqliteStateStore(missing).acquire("rt")
        with pytest.raises(StateStoreError, match="is a directory"):
            await SqliteStateStore(tmp_path).open()
    assert _listing(tmp_path) == set()


async def test_sqlite_refuses_a_foreign_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    raw = sqlite3.connect(path)
    try:
        raw.execute("CREATE TABLE notes (x TEXT)")
        raw.commit()
    finally:
        raw.close()
    with trio.fail_after(GUARD):
        with pytest.raises(StateStoreError, match="did not create; it was left untouched") as info:
            await SqliteStateStore(path).open()
        assert "move it aside" not in str(info.value)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not converted to WAL
        raw.execute("PRAGMA application_id = 12345")
        raw.execute("DROP TABLE notes")
        raw.commit()
    finally:
        raw.close()
    with trio.fail_after(GUARD):
        with pytest.raises(StateStoreError, match="belongs to another application"):
            await SqliteStateStore(path).open()


async def test_sqlite_two_connections_share_the_file(tmp_path: Path) -> None:
    # The `codex-trio status` command reads while a host writes: a second store on the same file.
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as host, SqliteStateStore(path) as reader:
            await host.acquire("rt")
            await host.set_status("rt", "ready")
            assert [r.status for r in await reader.list_runtimes()] == ["ready"]
            await host.accept("rt", [sub(1)], dedup_window=1)
            await reader.acquire("other")
            await reader.set_status("other", "stopped")  # the second one may write too, to its own runtime
            assert (await reader.load("rt")).next_seq == 2
            assert [r.runtime_id for r in await host.list_runtimes()] == ["other", "rt"]


async def test_sqlite_failed_write_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.acquire("rt")
            await store.accept("rt", [sub(1, "a")], dedup_window=5)
            with pytest.raises(StateStoreError):
                await store.accept("rt", [sub(1, "b")], dedup_window=5)
            # the same connection is usable, and nothing of the failed call stuck
            await store.accept("rt", [sub(2, "c")], dedup_window=5)
            snap = await store.load("rt")
            assert snap.dedup_ids == ["a", "c"]
            assert [p.seq for p in snap.pending] == [1, 2]


# --- honest errors ----------------------------------------------------------------------------------------


def _assert_not_called_corrupt(error: BaseException) -> None:
    message = str(error)
    assert "corrupt" not in message and "move it aside" not in message and "start fresh" not in message, message


async def _populated(path: Path) -> Snapshot:
    async with SqliteStateStore(path) as store:
        await store.acquire("rt")
        await store.accept("rt", subs(1, 2), dedup_window=10)
        return await store.load("rt")


async def test_sqlite_a_locked_database_is_reported_as_locked(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        before = await _populated(path)
        async with SqliteStateStore(path, busy_timeout=0.2) as store:
            await store.acquire("rt")
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN EXCLUSIVE")  # another process holding a write transaction
                with pytest.raises(StateStoreError, match=r"is locked by another process \(busy for 0\.2s\)") as info:
                    await store.accept("rt", subs(3), dedup_window=10)
                _assert_not_called_corrupt(info.value)
                assert "Nothing was written and the file is fine" in str(info.value)
                assert (await store.load("rt")).pending == before.pending  # reads go on meanwhile (WAL)
            finally:
                other.close()
            await store.accept("rt", subs(3), dedup_window=10)  # and once it lets go, writes do too


async def test_sqlite_locked_at_open_is_not_called_corrupt(tmp_path: Path) -> None:
    # Another program holding the database in exclusive locking mode blocks even reads; the old code reported
    # that after the busy timeout as "corrupt ... move it aside".
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        before = await _populated(path)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("PRAGMA locking_mode = EXCLUSIVE")
            other.execute("BEGIN EXCLUSIVE")
            other.execute("UPDATE runtimes SET updated_at = updated_at")
            store = SqliteStateStore(path, busy_timeout=0.2)
            with pytest.raises(StateStoreError, match="is locked by another process") as info:
                await store.load("rt")
            _assert_not_called_corrupt(info.value)
            await store.aclose()
        finally:
            other.close()
        async with SqliteStateStore(path) as store:
            assert (await store.load("rt")).pending == before.pending


def _open_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on SQLite opens every file read-only, as it does by itself when it may not write one.

    (We run as root, which can write anywhere, so permissions cannot make a file read-only here.)
    """
    real_connect = sqlite3.connect

    def connect(database: str, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = real_connect(f"file:{database}?mode=ro", uri=True, **kwargs)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


async def _read_only_error(path: Path) -> StateStoreError:
    store = SqliteStateStore(path)
    try:
        assert [p.seq for p in (await store.load("rt")).pending] == [1, 2]  # reading a read-only store works
        with pytest.raises(StateStoreError, match=rf"state store {path} is read-only: ") as info:
            await store.acquire("rt")
        _assert_not_called_corrupt(info.value)
        assert "Nothing was written; the data in it is intact" in str(info.value)
        assert await store.owner("rt") is None  # the failed acquire left no lease behind
        return info.value
    finally:
        await store.aclose()


async def test_sqlite_read_only_is_reported_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        await _populated(path)
        _open_read_only(monkeypatch)
        error = await _read_only_error(path)
        assert "SQLite could only open it for reading" in str(error)


async def test_sqlite_read_only_file_system_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.db"
    real_statvfs = os.statvfs

    @attrs.frozen
    class ReadOnlyMount:
        f_flag: int = os.ST_RDONLY
        f_bavail: int = 0
        f_frsize: int = 4096

    def statvfs(where: Any) -> Any:
        return ReadOnlyMount() if os.fspath(where) == str(tmp_path) else real_statvfs(where)

    with trio.fail_after(GUARD):
        await _populated(path)
        _open_read_only(monkeypatch)
        monkeypatch.setattr(os, "statvfs", statvfs)
        error = await _read_only_error(path)
        assert f"it is on a read-only file system; remount {tmp_path} read-write" in str(error)


async def test_sqlite_no_write_permission_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.db"
    real_access = os.access

    def access(where: Any, mode: int, **kwargs: Any) -> bool:
        if os.fspath(where) == str(path) and mode & os.W_OK:
            return False  # what a file owned by someone else, mode 0600, looks like to this user
        return real_access(where, mode, **kwargs)

    with trio.fail_after(GUARD):
        await _populated(path)
        _open_read_only(monkeypatch)
        monkeypatch.setattr(os, "access", access)
        error = await _read_only_error(path)
        assert f"has no write permission on {path}" in str(error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write a file whatever its mode")
async def test_sqlite_read_only_file_by_permission(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        await _populated(path)
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            if (tmp_path / name).exists():
                (tmp_path / name).chmod(0o400)
        try:
            store = SqliteStateStore(path)
            with pytest.raises(StateStoreError, match=r"read-only|no write permission") as info:
                await store.acquire("rt")
            _assert_not_called_corrupt(info.value)
            await store.aclose()
        finally:
            for name in ("state.db", "state.db-wal", "state.db-shm"):
                if (tmp_path / name).exists():
                    (tmp_path / name).chmod(0o600)


async def test_sqlite_disk_full_is_reported_as_such(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.acquire("rt")
            await store.accept("rt", subs(1), dedup_window=10)
            before = await store.load("rt")
            assert store._conn is not None
            # SQLite reports a database at its page limit exactly as a full disk (SQLITE_FULL).
            pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
            store._conn.execute(f"PRAGMA max_page_count = {pages}")
            with pytest.raises(StateStoreError, match="the disk is full") as info:
                await store.accept("rt", [sub(2, "big", text="x" * 200_000)], dedup_window=10)
            _assert_not_called_corrupt(info.value)
            assert "free some space, then retry" in str(info.value)
            assert await store.load("rt") == before
            store._conn.execute("PRAGMA max_page_count = 1073741823")
            await store.accept("rt", [sub(2, "big", text="x" * 200_000)], dedup_window=10)


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


def _error_key(error: Exception | None) -> tuple[Any, ...] | None:
    if error is None:
        return None
    if isinstance(error, RuntimeBusy):
        return (RuntimeBusy, error.pid, error.host, error.since)
    return (type(error),)


class StoreComparison(RuleBasedStateMachine):
    """Every operation goes to both stores; they must always agree (memory is the reference).

    Leases are part of it: acquire and release, writes without the lease, and a takeover behind a holder's
    back (memory: its token moves on; SQLite: the lock file is deleted, another store object acquires and
    goes away), after which the holder's writes must fail with LeaseLost in both.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleanup = ExitStack()  # not a fixture: a directory per Hypothesis example
        self.path = self._cleanup.enter_context(short_dir("state")) / "state.db"
        self.clock_value = 0.0
        # One clock for both: each operation reads it once per store, so both see the same time.
        self.ref = MemoryStateStore(clock=self._clock)
        self.db = SqliteStateStore(self.path, clock=self._clock)
        self.next_seq = {"a": 1, "b": 1}
        self.seqs_seen: list[int] = [1]
        self.held: set[str] = set()

    def _clock(self) -> float:
        return self.clock_value

    def both(self, op: Callable[[StateStore], Awaitable[Any]]) -> Exception | None:
        self.clock_value += 1.0
        ref_result, ref_error = self._outcome(self.ref, op)
        db_result, db_error = self._outcome(self.db, op)
        assert _error_key(db_error) == _error_key(ref_error), (ref_error, db_error)
        assert db_result == ref_result
        event(f"outcome: {type(ref_error).__name__ if ref_error else 'ok'}")  # --hypothesis-show-statistics
        return ref_error

    @staticmethod
    def _outcome(store: StateStore, op: Callable[[StateStore], Awaitable[Any]]) -> tuple[Any, Exception | None]:
        try:
            return _run(lambda: op(store)), None
        except (StateStoreError, RuntimeBusy, ValueError) as exc:
            return None, exc

    @initialize()
    def take_both_runtimes(self) -> None:
        for rid in ("a", "b"):
            self.acquire(rid)

    @rule(rid=RUNTIMES)
    def acquire(self, rid: str) -> None:
        if self.both(lambda s: s.acquire(rid)) is None:
            self.held.add(rid)

    @rule(rid=RUNTIMES)
    def release(self, rid: str) -> None:
        self.both(lambda s: s.release(rid))
        self.held.discard(rid)

    @rule(rid=RUNTIMES)
    def takeover(self, rid: str) -> None:
        self.ref._tokens[rid] = self.ref._tokens.get(rid, 0) + 1

        async def steal() -> None:
            (Path(f"{self.path}.locks") / _lock_name(rid)).unlink(missing_ok=True)
            async with SqliteStateStore(self.path, clock=self._clock) as other:
                await other.acquire(rid)

        _run(steal)

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
        items=st.lists(
            st.tuples(SOURCES, st.sampled_from(["channel", "system", "trigger"]), SMALL_TEXT, st.integers(-1, 2)),
            max_size=3,
        ),
        window=st.integers(min_value=-1, max_value=4),
    )
    def accept(self, rid: str, items: list[tuple[str, str, str, int]], window: int) -> None:
        # Each item's step from the previous seq: -1 replays an old one (refused), 0 repeats it within the
        # batch (refused), else the next seq, maybe with a gap. A refused batch must write nothing in both.
        batch: list[StoredSubmission] = []
        seq = self.next_seq[rid] - 1
        for source, kind, text, step in items:
            seq += step if batch else step + 1
            batch.append(StoredSubmission(seq, source, kind, text, 1.5))
        if self.both(lambda s: s.accept(rid, batch, dedup_window=window)) is None and batch:
            self.next_seq[rid] = batch[-1].seq + 1
        self.seqs_seen.extend(s.seq for s in batch)

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
        """A host restart: both let their leases go; the new host takes the same ones again."""
        _run(self.ref.aclose)
        _run(self.db.aclose)
        self.db = SqliteStateStore(self.path, clock=self._clock)
        for rid in sorted(self.held):
            self.acquire(rid)

    @invariant()
    def stores_agree(self) -> None:
        async def everything(store: StateStore) -> list[Any]:
            # All the reads in one trio.run per store: they are most of this test's time.
            return [
                *[await store.load(rid) for rid in ("a", "b", "never")],
                *[await store.owner(rid) for rid in ("a", "b", "never")],
                await store.list_runtimes(),
            ]

        assert self.both(everything) is None

    def teardown(self) -> None:
        try:
            _run(self.db.aclose)
        finally:
            self._cleanup.close()


StoreComparison.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreComparison = StoreComparison.TestCase


def _open_each(paths: list[str], barrier: Any, answers: Any) -> None:
    """In a separate process: open each fresh file the moment every opener is ready."""
    for path in paths:
        barrier.wait()
        store = SqliteStateStore(path)
        try:
            store._connect()
            answers.put((path, "ok"))
        except StateStoreError as exc:
            answers.put((path, str(exc)))


def test_sqlite_processes_opening_a_fresh_file_at_once(tmp_path: Path) -> None:
    # Two hosts started together on a new database: one creates, converts and migrates it while the others
    # look. Each must open it (before the fix: 10 of 60 rounds had an opener told the file was a stranger's,
    # seen between the migration's steps, or "locked" by SQLite's deadlock-avoiding immediate BUSY).
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    openers, rounds = 3, 40
    paths = [str(tmp_path / f"fresh{i}.db") for i in range(rounds)]
    barrier, answers = ctx.Barrier(openers), ctx.Queue()
    procs = [ctx.Process(target=_open_each, args=(paths, barrier, answers)) for _ in range(openers)]
    for proc in procs:
        proc.start()
    try:
        got = [answers.get(timeout=120) for _ in range(openers * rounds)]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    failed = [(path, answer) for path, answer in got if answer != "ok"]
    assert failed == []
