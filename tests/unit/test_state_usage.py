"""The runtime's cumulative token usage in the store (migration 5): written with a settlement, in its transaction,
restored by ``load``, on both stores; an old database gains the column."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from codex_trio._recovery import load
from codex_trio._state import SCHEMA_VERSION, SqliteStateStore, StoredSettlement, StoredSubmission
from codex_trio._usage import TokenUsage
from tests.unit import test_state
from tests.unit.test_state import GUARD, Harness, _make_v1_db

harness = test_state.harness  # the fixture: each test runs on both stores

USAGE = TokenUsage(
    input_tokens=300, cached_input_tokens=70, output_tokens=15, reasoning_output_tokens=4, total_tokens=315
)


async def test_usage_is_written_with_the_settlement_and_restored(harness: Harness) -> None:
    store = await harness.own("rt")
    assert (await store.load("rt")).record.token_usage is None
    rows = [StoredSubmission(1, "a", "channel", "hi", 1.0), StoredSubmission(2, "b", "channel", "x", 1.0)]
    await store.accept("rt", rows, dedup_window=10)
    await store.settle("rt", StoredSettlement(1, "a", "completed", "t1", None, 2.0, USAGE))
    assert (await store.load("rt")).record.token_usage == USAGE
    # A settlement without usage (nothing reached the model) keeps the figure.
    await store.settle("rt", StoredSettlement(2, "b", "failed", None, "refused", 3.0))
    store = await harness.reopen()
    assert (await store.load("rt")).record.token_usage == USAGE
    assert (await load(store, "rt")).usage == USAGE
    records = {record.runtime_id: record for record in await store.list_runtimes()}
    assert records["rt"].token_usage == USAGE
    # The history keeps the settlements themselves (the same on both stores), not the runtime's figure.
    assert [s.runtime_usage for s in await store.recent_settlements("rt")] == [None, None]


async def test_an_unreadable_usage_column_is_no_usage(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            await store.acquire("rt")
            await store.accept("rt", [StoredSubmission(1, "a", "channel", "hi", 1.0)], dedup_window=10)
            await store.settle("rt", StoredSettlement(1, "a", "completed", "t1", None, 2.0, USAGE))
    raw = sqlite3.connect(path)
    try:
        raw.execute('UPDATE runtimes SET token_usage = \'{"inputTokens": "many"}\'')
        raw.commit()
    finally:
        raw.close()
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            assert (await store.load("rt")).record.token_usage is None  # a statistic: never fatal


async def test_a_v1_database_gains_the_usage_column(tmp_path: Path) -> None:
    assert SCHEMA_VERSION >= 5
    path = tmp_path / "v1.db"
    _make_v1_db(path)
    with trio.fail_after(GUARD):
        async with SqliteStateStore(path) as store:
            assert (await store.load("old")).record.token_usage is None
            await store.acquire("old")
            await store.settle("old", StoredSettlement(7, "chat:1", "completed", "t1", None, 3.0, USAGE))
            assert (await store.load("old")).record.token_usage == USAGE
    raw = sqlite3.connect(path)
    try:
        columns = {row[1] for row in raw.execute("PRAGMA table_info(runtimes)")}
        assert "token_usage" in columns
    finally:
        raw.close()
