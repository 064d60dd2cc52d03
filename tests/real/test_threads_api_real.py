"""The thread operations of issue 12 on the real codex with the mock model: a fresh thread on demand (in the input
order, recorded like a lost thread, kept across a restart), fork (with and without switching), archive, list,
compaction, and ``Runtime.request`` — the escape hatch for what the library does not wrap."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import codex_trio
from codex_trio import (
    ChannelInput,
    InvalidInput,
    MethodNotSupported,
    RpcError,
    RuntimeConfig,
    SqliteStateStore,
    ThreadLost,
    ThreadReady,
)
from codex_trio.testing import MockModelServer, Text, write_codex_home
from tests.real.test_threads_completions_approvals_real import config as base_config

pytestmark = pytest.mark.real_codex


def config(tmp_path: Path, socket_dir: Path, codex_bin: str, home: Path) -> RuntimeConfig:
    return base_config(tmp_path, socket_dir, codex_bin, home, runtime_id="threads")


def texts_of(model: MockModelServer, n: int) -> list[str]:
    return model.requests[n].input_texts()


async def test_new_thread_splits_the_input_order_and_is_recorded(
    tmp_path: Path, short_socket_dir: Path, codex_bin: str
) -> None:
    with MockModelServer() as model, trio.fail_after(120):
        home = write_codex_home(tmp_path / "home", model.url)
        store = SqliteStateStore(tmp_path / "state.db")
        cfg = config(tmp_path, short_socket_dir, codex_bin, home)
        async with codex_trio.open_runtime(cfg, state=store) as runtime, runtime.events() as events:
            old = runtime.thread_id
            assert old is not None
            before = await runtime.submit(ChannelInput("b1", "before the move"))
            async with trio.open_nursery() as nursery:
                moved: list[str] = []

                async def move() -> None:
                    moved.append(await runtime.new_thread())

                nursery.start_soon(move)
                while not runtime.statistics().core.holds:  # the move is asked for before the next input
                    await trio.sleep(0.01)
                after = await runtime.submit(ChannelInput("a1", "after the move"))
            first = await before.settled()
            second = await after.settled()
            new = moved[0]
            assert new != old and runtime.thread_id == new
            assert first.outcome == "completed" and first.thread_lost is None
            assert second.outcome == "completed" and second.thread_lost is not None
            assert (second.thread_lost.old_thread_id, second.thread_lost.new_thread_id) == (old, new)
            seen = []
            with trio.move_on_after(1):
                async for event in events:
                    if isinstance(event, (ThreadLost, ThreadReady)):
                        seen.append(event)
            assert any(isinstance(e, ThreadLost) and e.new_thread_id == new for e in seen)
            assert any(isinstance(e, ThreadReady) and e.thread_id == new for e in seen)
        # The model saw the first input in the old thread's history only, the second in a fresh history.
        assert "before the move" in texts_of(model, 0)
        assert "after the move" in texts_of(model, 1) and "before the move" not in texts_of(model, 1)
        snapshot = await store.load("threads")
        assert snapshot.record.thread_id == new
        assert [(lt.old_thread_id, lt.new_thread_id) for lt in snapshot.lost_threads] == [(old, new)]
        # A restart resumes the new thread.
        async with codex_trio.open_runtime(cfg, state=store) as runtime:
            assert runtime.thread_id == new and runtime.thread_resumed
            third = await (await runtime.submit(ChannelInput("a2", "third"))).settled()
            assert third.outcome == "completed"
        assert "after the move" in texts_of(model, 2) and "before the move" not in texts_of(model, 2)
        await store.aclose()


async def test_fork_list_archive_and_compact(tmp_path: Path, short_socket_dir: Path, codex_bin: str) -> None:
    with MockModelServer() as model, trio.fail_after(120):
        home = write_codex_home(tmp_path / "home", model.url)
        async with codex_trio.open_runtime(config(tmp_path, short_socket_dir, codex_bin, home)) as runtime:
            original = runtime.thread_id
            assert original is not None
            await (await runtime.submit(ChannelInput("m1", "remember the word kiwi"))).settled()
            fork = await runtime.fork_thread()
            assert fork != original and runtime.thread_id == original
            page = await runtime.list_threads()
            ids = {t.id for t in page.threads}
            assert {original, fork} <= ids
            forked = next(t for t in page.threads if t.id == fork)
            assert forked.preview == "remember the word kiwi"  # the fork carries the history
            await runtime.archive_thread(fork)
            assert fork not in {t.id for t in (await runtime.list_threads()).threads}
            assert fork in {t.id for t in (await runtime.list_threads(archived=True)).threads}
            with pytest.raises(InvalidInput):
                await runtime.archive_thread(original)
            model.enqueue(Text("a summary of the talk about kiwi"))
            asked = len(model.requests)
            await runtime.compact_thread()
            # codex's compaction is a model call of its own, awaited before compact_thread returned
            assert len(model.requests) == asked + 1
            assert "COMPACTION" in model.requests[asked].input_texts()[-1]
            after = await (await runtime.submit(ChannelInput("m2", "and now?"))).settled()
            assert after.outcome == "completed"
            assert any("a summary of the talk about kiwi" in t for t in model.requests[-1].input_texts())
            switched = await runtime.fork_thread(switch=True)
            assert runtime.thread_id == switched
            last = await (await runtime.submit(ChannelInput("m3", "on the fork"))).settled()
            assert last.outcome == "completed" and last.thread_lost is not None
        # The fork holds the history: its turn's request carries the first input.
        assert "remember the word kiwi" in model.requests[-1].input_texts()


async def test_request_escape_hatch(tmp_path: Path, short_socket_dir: Path, codex_bin: str) -> None:
    with MockModelServer() as model, trio.fail_after(120):
        home = write_codex_home(tmp_path / "home", model.url)
        async with codex_trio.open_runtime(config(tmp_path, short_socket_dir, codex_bin, home)) as runtime:
            result = await runtime.request("thread/read", {"threadId": runtime.thread_id})
            assert isinstance(result, dict)
            thread = result.get("thread")
            assert isinstance(thread, dict) and thread.get("id") == runtime.thread_id
            with pytest.raises(MethodNotSupported):
                await runtime.request("no/such/method", {})
            with pytest.raises(RpcError):
                await runtime.request("thread/read", {"threadId": "not-a-thread"})
            with pytest.raises(InvalidInput):
                await runtime.request("initialize", {})
