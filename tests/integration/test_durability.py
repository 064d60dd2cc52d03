"""Host restart on a durable store: the thread is resumed, redelivered ids are duplicates, and input that was
accepted but never reached codex is delivered by the next open_runtime."""

from __future__ import annotations

from pathlib import Path

import trio

import codex_trio
from codex_trio import AppServerExited, ChannelInput, RestartPolicy, RuntimeConfig, SqliteStateStore
from codex_trio.testing import FakeAppServer, FakeLauncher


async def test_host_restart_delivers_pending_and_refuses_redelivery(tmp_path: Path) -> None:
    # Real time, not autojump: SQLite runs in worker threads, and a virtual clock would jump to the next
    # deadline while a write is in flight.
    db = tmp_path / "host.db"
    fake = FakeAppServer()  # the same "codex home" across both hosts: threads survive
    policy = RestartPolicy(base_delay=0.05, max_delay=0.05, max_restarts=1000, within=1.0)
    config = RuntimeConfig(runtime_id="durable", restart=policy)

    # Host 1: one turn completes; then the app-server dies and cannot come back; an input arrives meanwhile.
    launcher = FakeLauncher(fake)
    store = SqliteStateStore(db)
    async with codex_trio.open_runtime(config, state=store, launcher=launcher) as runtime:
        thread_id = runtime.thread_id
        done = await (await runtime.submit(ChannelInput("m1", "first"))).settled()
        assert done.outcome == "completed"
        launcher.fail_next = [AppServerExited("no codex today", returncode=1)] * 1000
        launcher.kill()
        await runtime.wait_status("degraded")
        pending = await runtime.submit(ChannelInput("m2", "while codex is down"))
        assert pending.status == "queued"
    assert (await pending.settled()).outcome == "stopped"
    await store.aclose()
    assert fake.requests("turn/start")[-1]["clientUserMessageId"] == "m1"

    # Host 2, same database: resumes the thread, delivers m2, refuses m1 and m2 as duplicates.
    store = SqliteStateStore(db)
    launcher = FakeLauncher(fake)
    async with codex_trio.open_runtime(config, state=store, launcher=launcher) as runtime:
        assert runtime.thread_id == thread_id and runtime.thread_resumed
        with trio.fail_after(30):
            while len(fake.requests("turn/start")) < 2:
                await trio.sleep(0.1)
        assert fake.requests("turn/start")[-1]["clientUserMessageId"] == "m2"
        assert (await runtime.submit(ChannelInput("m1", "again"))).status == "duplicate"
        assert (await runtime.submit(ChannelInput("m2", "again"))).status == "duplicate"
        fresh = await runtime.submit(ChannelInput("m3", "new"))
        assert (await fresh.settled()).outcome == "completed"
    assert [r["clientUserMessageId"] for r in fake.requests("turn/start")] == ["m1", "m2", "m3"]
    snapshot = await store.load("durable")
    assert snapshot.pending == []
    assert snapshot.record.status == "stopped"
    await store.aclose()


async def test_in_doubt_input_is_resent_only_if_codex_never_got_it(autojump_clock: trio.abc.Clock) -> None:
    """A host died with inputs in doubt (sent, or being sent, and not settled): the next host asks the thread (by
    clientUserMessageId) and re-sends only what codex does not have. Input codex has settles with the outcome
    codex recorded for its turn. Input without a source id is checked too, by the client id made from its seq."""
    from codex_trio._state import StoredSubmission

    fake = FakeAppServer()
    store = codex_trio.MemoryStateStore()
    config = RuntimeConfig(runtime_id="doubt")
    async with codex_trio.open_runtime(config, state=store, launcher=FakeLauncher(fake)) as runtime:
        await (await runtime.submit(ChannelInput("got-it", "codex has this one"))).settled()
    # What a crashed host leaves behind: three inputs marked delivering; codex only has "got-it".
    await store.acquire("doubt")
    rows = [
        StoredSubmission(seq, source_id, "channel", f"text {seq}", 0.0)
        for seq, source_id in ((10, "got-it"), (11, "never-sent"), (12, ""))
    ]
    await store.accept("doubt", rows, dedup_window=1024)
    for row in rows:
        await store.delivering("doubt", row.seq)
    await store.release("doubt")
    async with codex_trio.open_runtime(config, state=store, launcher=FakeLauncher(fake)) as runtime:
        with trio.fail_after(30):
            while len(fake.requests("turn/start")) + len(fake.requests("turn/steer")) < 3:
                await trio.sleep(0.1)
            await trio.sleep(1)
    sent = [
        f["params"].get("clientUserMessageId")
        for f in fake.received
        if f.get("method") in ("turn/start", "turn/steer") and "id" in f
    ]
    # got-it once (before the crash); never-sent and the one without an id re-sent, in their order.
    assert sent == ["got-it", "never-sent", "codex-trio-seq:12"]
    settlements = {s.seq: s for s in await store.recent_settlements("doubt")}
    assert settlements[10].outcome == "completed"  # from codex's own record of its turn
    assert settlements[11].outcome == "completed"
    assert settlements[12].outcome == "completed"
    assert (await store.load("doubt")).pending == []
