"""Regressions of issue "Exactly once under concurrency": one test (or more) per measured defect, each of which
failed on the runtime before the session core was rebuilt. Numbers refer to the issue's list."""

from __future__ import annotations

import json
import logging
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import codex_trio
from codex_trio import (
    ChannelInput,
    CodexError,
    CodexRetrying,
    HandshakeTimeout,
    InvalidInput,
    RestartPolicy,
    RpcError,
    RuntimeConfig,
    RuntimeGaveUp,
)
from codex_trio._core import RuntimeCore
from codex_trio._runtime import open_runtime
from codex_trio._state import MemoryStateStore, StoredSubmission
from codex_trio.testing import FakeAppServer, FakeLauncher, TurnScript

LENIENT = RestartPolicy(base_delay=1, max_delay=2, max_restarts=1000, within=100_000)


def config(**kwargs: Any) -> RuntimeConfig:
    kwargs.setdefault("runtime_id", "reg")
    kwargs.setdefault("restart", LENIENT)
    return RuntimeConfig(**kwargs)


async def wait_for(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.01)


def delivered_texts(fake: FakeAppServer) -> list[str]:
    return [
        str(f["params"]["input"][0]["text"])
        for f in fake.received
        if f.get("method") in ("turn/start", "turn/steer") and "id" in f
    ]


# -- 1, 2: admission --------------------------------------------------------------------------------------------


class GatedStore(MemoryStateStore):
    """A memory store whose accept waits for the test's go-ahead (a slow durable write)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None
        self.writing = trio.Event()

    async def accept(self, runtime_id: str, submissions: Any, *, dedup_window: int) -> None:
        if self.gate is not None:
            self.writing.set()
            await self.gate.wait()
        await super().accept(runtime_id, submissions, dedup_window=dedup_window)


async def test_1_twenty_concurrent_submits_all_accepted_and_delivered_in_order(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    with trio.fail_after(100):
        async with open_runtime(config(delivery_mode="queue"), launcher=launcher) as rt:
            admissions: dict[int, codex_trio.Admission] = {}

            async def one(i: int) -> None:
                admissions[i] = await rt.submit(ChannelInput(f"m{i}", f"text {i}"))

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
            assert all(a.accepted for a in admissions.values()), admissions
            outcomes = [(await a.settled()).outcome for a in admissions.values()]
    assert outcomes == ["completed"] * 20
    by_seq = sorted(admissions.values(), key=lambda a: a.seq or 0)
    order = {f"text {int(a.source_id[1:])}": a.seq for a in by_seq if a.seq is not None}
    assert [order[t] for t in delivered_texts(launcher.fake)] == sorted(order.values())


async def test_2_a_caller_cancelled_during_the_durable_write_gets_its_admission(autojump_clock: trio.abc.Clock) -> None:
    store = GatedStore()
    launcher = FakeLauncher()
    with trio.fail_after(100):
        async with open_runtime(config(), launcher=launcher, state=store) as rt:
            store.gate = trio.Event()
            got: list[codex_trio.Admission] = []
            scope = trio.CancelScope()

            async def caller() -> None:
                with scope:
                    got.append(await rt.submit(ChannelInput("x", "written while cancelled")))
                    await trio.sleep_forever()  # the cancellation lands here, after submit returned

            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)
                await store.writing.wait()
                scope.cancel()  # while the durable write is under way
                await trio.sleep(1)
                store.gate.set()
            # The write was under way: the input is accepted, and it is delivered.
            assert got and got[0].accepted
            assert (await got[0].settled()).outcome == "completed"
            assert (await rt.submit(ChannelInput("x", "again"))).status == "duplicate"


async def test_2_a_caller_cancelled_before_its_turn_leaves_no_trace(autojump_clock: trio.abc.Clock) -> None:
    store = GatedStore()
    launcher = FakeLauncher()
    with trio.fail_after(100):
        async with open_runtime(config(), launcher=launcher, state=store) as rt:
            store.gate = trio.Event()
            first: list[codex_trio.Admission] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _append(first, rt.submit(ChannelInput("a", "first"))))
                await store.writing.wait()  # "a" holds the one write; "b" waits for the next batch
                with trio.move_on_after(1):
                    await rt.submit(ChannelInput("b", "cancelled while waiting"))
                store.gate.set()
            assert first[0].accepted
            # No trace of "b": never written, never delivered, and its id is still free.
            snapshot = await store.load("reg")
            assert [p.source_id for p in snapshot.pending if p.source_id == "b"] == []
            again = await rt.submit(ChannelInput("b", "now for real"))
            assert again.accepted
            await again.settled()
    assert "cancelled while waiting" not in delivered_texts(launcher.fake)


async def _append(out: list[codex_trio.Admission], coro: Any) -> None:
    out.append(await coro)


# -- 3: a bug is not a crash ------------------------------------------------------------------------------------


async def test_3_a_bug_is_raised_and_logged_not_restarted(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = RuntimeCore.notification

    def buggy(self: RuntimeCore, method: str, params: Any, now: float) -> None:
        if method == "turn/completed":
            raise TypeError("a bug in the router")
        original(self, method, params, now)

    monkeypatch.setattr(RuntimeCore, "notification", buggy)
    launcher = FakeLauncher()
    caplog.set_level(logging.ERROR, "codex_trio")
    with trio.fail_after(100):
        with pytest.raises(TypeError, match="a bug in the router") as info:
            async with open_runtime(config(), launcher=launcher) as rt:
                admission = await rt.submit(ChannelInput("m", "hello"))
                await admission.settled()
                await trio.sleep_forever()
    assert launcher.launches == 1, "a bug must not be retried as an app-server crash"
    assert admission.settlement is not None and admission.settlement.outcome == "stopped"
    assert info.value.__cause__ is None
    assert not isinstance(info.value, BaseExceptionGroup)


async def test_3_a_bug_during_a_session_start_is_raised_at_once(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("broken thread resolution")

    monkeypatch.setattr("codex_trio._session.resolve_thread", broken)
    launcher = FakeLauncher()
    with trio.fail_after(100):
        with pytest.raises(KeyError):
            async with open_runtime(config(), launcher=launcher):
                pass  # pragma: no cover
    assert launcher.launches == 1


# -- 4: the caller's exceptions pass through untouched ----------------------------------------------------------


async def test_4_the_callers_exception_group_comes_out_as_raised(autojump_clock: trio.abc.Clock) -> None:
    group = ExceptionGroup("mine", [KeyError("k"), ValueError("v")])
    with pytest.raises(ExceptionGroup) as info:
        async with open_runtime(config(), launcher=FakeLauncher()):
            raise group
    assert info.value is group


async def test_4_the_callers_exception_wins_over_the_runtime_failing(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    cfg = config(restart=RestartPolicy(base_delay=0, max_restarts=0))
    with trio.fail_after(100), pytest.raises(ValueError, match="mine") as info:
        async with open_runtime(cfg, launcher=launcher) as rt:
            try:
                launcher.kill()
                await rt.wait_status("failed")
                await trio.sleep_forever()
            finally:
                raise ValueError("mine")
    assert info.value.__cause__ is None


async def test_4_keyboard_interrupt_wins_over_a_library_error(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    cfg = config(restart=RestartPolicy(base_delay=0, max_restarts=0))
    with trio.fail_after(100), pytest.raises(KeyboardInterrupt):
        async with open_runtime(cfg, launcher=launcher) as rt:
            try:
                launcher.kill()
                await rt.wait_status("failed")
                await trio.sleep_forever()
            finally:
                raise KeyboardInterrupt


async def test_4_the_library_error_comes_out_alone_without_a_group_cause(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    cfg = config(restart=RestartPolicy(base_delay=0, max_restarts=0))
    with trio.fail_after(100), pytest.raises(RuntimeGaveUp) as info:
        async with open_runtime(cfg, launcher=launcher):
            launcher.kill()
            await trio.sleep_forever()
    assert info.value.__cause__ is None
    assert not isinstance(info.value.__context__, BaseExceptionGroup)


# -- 5: bounded memory ------------------------------------------------------------------------------------------


def _task_count() -> int:
    count = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def test_5_tasks_and_held_events_stay_bounded_over_many_turns(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    with trio.fail_after(10_000):
        async with open_runtime(config(event_buffer=16), launcher=launcher) as rt:
            unread = rt.events()
            for i in range(30):
                await (await rt.submit(ChannelInput(f"w{i}", "x"))).settled()
            baseline = _task_count()
            for i in range(1000):
                await (await rt.submit(ChannelInput(f"m{i}", "x"))).settled()
                assert unread.buffered <= 32
            assert _task_count() <= baseline + 2  # no task per turn (the deadline is one cancel scope)
            core = rt.engine.core
            assert len(core._seen) <= 1024
            assert rt.statistics().event_subscribers == 0  # the unread stream was cut off, not kept


# -- 6: turn bookkeeping ----------------------------------------------------------------------------------------


async def test_6_a_turn_of_another_thread_never_settles_ours(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer(default_turn=TurnScript(hang=True))
    launcher = FakeLauncher(fake)
    with trio.fail_after(100):
        async with open_runtime(config(), launcher=launcher) as rt:
            admission = await rt.submit(ChannelInput("m", "hello"))
            await wait_for(lambda: bool(fake.active_turns))
            (turn,) = fake.active_turns.values()
            foreign: dict[str, Any] = {"id": turn.id, "items": [], "status": "completed", "error": None}
            await fake.notify_all("turn/completed", {"threadId": "elsewhere", "turn": foreign})
            item = {"type": "agentMessage", "id": "x", "text": "not yours"}
            await fake.notify_all("item/completed", {"threadId": "elsewhere", "turnId": turn.id, "item": item})
            await trio.sleep(1)
            assert admission.settlement is None
            await fake.complete_turn()
            done = await admission.settled()
    assert done.outcome == "completed" and done.text == "fake reply"


async def test_6_a_fatal_error_ends_the_turn_so_queue_mode_moves_on(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer()
    fake.push_turns(TurnScript(error_notification="you are out of credits"))
    with trio.fail_after(100):
        async with open_runtime(config(delivery_mode="queue"), launcher=FakeLauncher(fake)) as rt:
            first = await rt.submit(ChannelInput("a", "one"))
            second = await rt.submit(ChannelInput("b", "two"))
            failed = await first.settled()
            done = await second.settled()
            assert trio.current_time() < 10  # not rescued by the 600 s deadline
    assert (failed.outcome, failed.error) == ("failed", "you are out of credits")
    assert done.outcome == "completed"


async def test_6_a_restart_notice_during_a_restart_counts_for_the_next_session(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer()
    launcher = FakeLauncher(fake)
    cfg = config(restart=RestartPolicy(base_delay=5, max_restarts=10, within=1000))
    with trio.fail_after(100):
        async with open_runtime(cfg, launcher=launcher) as rt:
            launcher.kill()
            await rt.wait_status("degraded")
            during = await rt.system_input("you were restarted")
            assert during.accepted  # "submitted" if the engine had not yet seen the session end, else "queued"
            await rt.wait_status("ready")
            after = await rt.system_input("you were restarted (again)")
            assert after.status == "skipped"
            assert (await during.settled()).outcome == "completed"
    assert delivered_texts(fake).count("you were restarted") == 1
    assert "you were restarted (again)" not in delivered_texts(fake)


# -- 7: codex's own retries are visible -------------------------------------------------------------------------


async def test_7_codex_retries_are_events_and_giving_up_settles_with_its_words(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer(default_turn=TurnScript(hang=True))
    with trio.fail_after(100):
        async with open_runtime(config(), launcher=FakeLauncher(fake)) as rt:
            events = rt.events()
            admission = await rt.submit(ChannelInput("m", "hello"))
            await wait_for(lambda: bool(fake.active_turns))
            (turn,) = fake.active_turns.values()
            base = {"threadId": turn.thread_id, "turnId": turn.id}
            for attempt in (1, 2):
                message = f"Reconnecting... {attempt}/5 (stream disconnected before completion: waiting for network)"
                await fake.notify_all("error", {**base, "error": {"message": message}, "willRetry": True})
            await fake.notify_all(
                "error", {**base, "error": {"message": "no network after 5 tries"}, "willRetry": False}
            )
            done = await admission.settled()
            seen = []
            while events.buffered:
                seen.append(await events.receive())
    retries = [e for e in seen if isinstance(e, CodexRetrying)]
    assert [(e.attempt, e.max_attempts) for e in retries] == [(1, 5), (2, 5)]
    assert [e.message for e in seen if isinstance(e, CodexError)] == ["no network after 5 tries"]
    assert (done.outcome, done.error) == ("failed", "no network after 5 tries")


async def test_7b_a_model_codex_cannot_reach_fails_the_turn_within_the_retry_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    """codex without network retries for ever ("Reconnecting... waiting for network", ever further apart): the turn
    settles failed with codex's words at the configured bound, not at the 600 s deadline, and is interrupted."""
    fake = FakeAppServer(default_turn=TurnScript(hang=True))
    with trio.fail_after(100):
        async with open_runtime(config(model_retry_timeout=20.0), launcher=FakeLauncher(fake)) as rt:
            admission = await rt.submit(ChannelInput("m", "hello"))
            await wait_for(lambda: bool(fake.active_turns))
            (turn,) = fake.active_turns.values()
            base = {"threadId": turn.thread_id, "turnId": turn.id}
            started = trio.current_time()

            async def codex_retries() -> None:
                for delay in (3.0, 8.0, 13.0, 23.0, 47.0):
                    await trio.sleep(delay)
                    message = "Reconnecting... waiting for network"
                    await fake.notify_all("error", {**base, "error": {"message": message}, "willRetry": True})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(codex_retries)
                done = await admission.settled()
                given_up = trio.current_time() - started
                await wait_for(lambda: turn.interrupted)
                nursery.cancel_scope.cancel()
    assert done.outcome == "failed" and done.error is not None
    assert done.error.startswith("Reconnecting... waiting for network (codex could not reach the model: 2 retry")
    assert given_up == pytest.approx(23.0)  # 20 s after the first notice (3 s in), armed by the second (11 s in)


# -- 8: no stall at start ---------------------------------------------------------------------------------------


async def test_8_thousands_of_notifications_during_the_start_do_not_stall_it(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer()
    original = fake._m_thread_start

    async def chatty(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
        for i in range(3000):
            await conn.notify("configWarning", {"summary": f"noise {i}", "details": None})
        return await original(conn, params)

    fake._m_thread_start = chatty  # type: ignore[method-assign]
    with trio.fail_after(1000):
        async with open_runtime(config(request_timeout=30), launcher=FakeLauncher(fake)) as rt:
            assert trio.current_time() < 1  # not after a request timeout
            assert rt.status == "ready"


# -- 9: bad input is refused at the door ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source_id", "text", "field"),
    [("ok", json.loads('"broken \\ud800 text"'), "text"), (json.loads('"id\\udc80"'), "fine", "source_id")],
)
async def test_9_unencodable_input_is_refused_and_hurts_no_one(
    autojump_clock: trio.abc.Clock, source_id: str, text: str, field: str
) -> None:
    fake = FakeAppServer(default_turn=TurnScript(delay=5))
    with trio.fail_after(100):
        async with open_runtime(config(), launcher=FakeLauncher(fake)) as rt:
            innocent = [await rt.submit(ChannelInput(f"i{n}", f"innocent {n}")) for n in range(5)]
            with pytest.raises(InvalidInput) as info:
                await rt.submit(ChannelInput(source_id, text))
            assert info.value.field == field
            outcomes = [(await a.settled()).outcome for a in innocent]
            assert rt.generation == 1
    assert outcomes == ["completed"] * 5


async def test_9_oversize_input_is_refused_and_its_id_stays_free(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(100):
        async with open_runtime(config(), launcher=FakeLauncher()) as rt:
            with pytest.raises(InvalidInput, match="at most 1048576"):
                await rt.submit(ChannelInput("big", "x" * 1_048_577))
            assert (await rt.submit(ChannelInput("big", "smaller"))).accepted


# -- 10: a stray turn/started ----------------------------------------------------------------------------------


async def test_10_a_stray_turn_does_not_wedge_queue_mode(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer()
    with trio.fail_after(10_000):
        async with open_runtime(config(delivery_mode="queue", turn_timeout=30), launcher=FakeLauncher(fake)) as rt:
            assert rt.thread_id is not None
            stray = {"id": "stray-turn", "status": "inProgress", "items": []}
            await fake.notify_all("turn/started", {"threadId": rt.thread_id, "turn": stray})
            await wait_for(lambda: rt.statistics().open_turns == ("stray-turn",))
            admission = await rt.submit(ChannelInput("m", "behind the stray turn"))
            done = await admission.settled()
            # The stray turn had a deadline too: interrupted (codex: "no active turn") and out of the way.
            assert 30 <= trio.current_time() < 100
    assert done.outcome == "completed"
    assert fake.requests("turn/interrupt") == [
        {"threadId": fake.requests("turn/start")[0]["threadId"], "turnId": "stray-turn"}
    ]


# -- 11: the cause reported is the cause (real child processes) -------------------------------------------------


def _fake_codex(tmp_path: Path, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    shim = tmp_path / "codex"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return str(shim), {"FAKE_APP_SERVER_STATE": str(tmp_path / "state.json"), **env}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FAKE_APP_SERVER_HANG": "initialize"}, HandshakeTimeout),
        ({"FAKE_APP_SERVER_REFUSE": "thread/start:config rejected: unknown model"}, RpcError),
    ],
)
async def test_11_a_first_start_reports_its_failure_not_our_reap(
    tmp_path: Path, short_socket_dir: Path, env: dict[str, str], expected: type[BaseException]
) -> None:
    bin, child_env = _fake_codex(tmp_path, env)
    cfg = RuntimeConfig(
        runtime_id="cause",
        codex_bin=bin,
        extra_env=child_env,
        socket_dir=short_socket_dir,
        log_dir=tmp_path / "logs",
        handshake_timeout=2,
        restart=RestartPolicy(base_delay=0.01, max_delay=0.01),
    )
    with trio.fail_after(60), pytest.raises(BaseException) as info:
        async with open_runtime(cfg):
            pass  # pragma: no cover
    assert type(info.value) is expected, repr(info.value)
    assert "exited with status" not in str(info.value) and "SIGTERM" not in str(info.value)


# -- the store sees every accepted input once, even from concurrent callers --------------------------------------


async def test_concurrent_callers_share_one_durable_write(autojump_clock: trio.abc.Clock) -> None:
    writes: list[list[StoredSubmission]] = []

    class CountingStore(GatedStore):
        async def accept(self, runtime_id: str, submissions: Any, *, dedup_window: int) -> None:
            writes.append(list(submissions))
            await super().accept(runtime_id, submissions, dedup_window=dedup_window)

    store = CountingStore()
    with trio.fail_after(100):
        async with open_runtime(config(), launcher=FakeLauncher(), state=store) as rt:
            store.gate = trio.Event()
            admissions: list[codex_trio.Admission] = []
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(_append, admissions, rt.submit(ChannelInput(f"m{i}", "x")))
                await store.writing.wait()
                await trio.sleep(1)
                store.gate.set()
            assert all(a.accepted for a in admissions)
    # The first batch (whoever reached the engine first), then everyone who arrived while it was being written.
    assert len(writes) == 2 and sum(len(batch) for batch in writes) == 20
