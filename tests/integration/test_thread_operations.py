"""Thread operations (``new_thread``, ``fork_thread``, ``compact_thread``, ``list_threads``, ``archive_thread``) and
``Runtime.request`` on the in-process fake, in virtual time: their place in the input order with several callers at
once, an app-server that dies under them, a caller cancelled while it waits, a runtime that stops first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from codex_trio import (
    ChannelInput,
    InvalidInput,
    RequestTimeout,
    RestartPolicy,
    RpcError,
    RuntimeConfig,
    RuntimeStopped,
    Settlement,
)
from codex_trio._runtime import Runtime, open_runtime
from codex_trio._state import MemoryStateStore
from codex_trio.testing._fake_app_server import FakeAppServer, TurnScript
from codex_trio.testing._launchers import FakeLauncher

LENIENT = RestartPolicy(max_restarts=1000, within=100_000)


def config(**kwargs: Any) -> RuntimeConfig:
    kwargs.setdefault("runtime_id", "ops")
    kwargs.setdefault("restart", LENIENT)
    return RuntimeConfig(**kwargs)


class ThreadsFake(FakeAppServer):
    """Records which thread every accepted turn input went to; can kill itself at the n-th ``thread/start``."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[tuple[str, str]] = []  # (thread id, text)
        self.kill_at_start: int | None = None
        self.starts = 0
        self.launcher: FakeLauncher | None = None

    async def _m_turn_start(self, conn: Any, params: dict[str, Any]) -> dict[str, Any]:
        result = await super()._m_turn_start(conn, params)
        self.delivered.append((params["threadId"], params["input"][0]["text"]))
        return result

    async def _m_turn_steer(self, conn: Any, params: dict[str, Any]) -> dict[str, Any]:
        result = await super()._m_turn_steer(conn, params)
        self.delivered.append((params["threadId"], params["input"][0]["text"]))
        return result

    async def _m_thread_start(self, conn: Any, params: dict[str, Any]) -> dict[str, Any]:
        self.starts += 1
        if self.starts == self.kill_at_start and self.launcher is not None:
            self.launcher.kill()  # the app-server dies with our thread/start unanswered
            await trio.sleep_forever()
        return await super()._m_thread_start(conn, params)


def launcher_of(fake: ThreadsFake) -> FakeLauncher:
    launcher = FakeLauncher(fake)
    fake.launcher = launcher
    return launcher


async def wait_for(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.01)


async def test_new_thread_takes_its_place_among_concurrent_submitters(autojump_clock: trio.abc.Clock) -> None:
    """Three submitters and a new_thread() at once: what was accepted before the move went to the old thread,
    what came after to the new one, each input once, and the first settlement after the move says so."""
    fake = ThreadsFake()
    fake.default_turn = TurnScript(text="ok", delay=1.0)
    async with open_runtime(config(), launcher=launcher_of(fake)) as runtime:
        old = runtime.thread_id
        settlements: dict[str, Settlement] = {}
        accepted_seq: dict[str, int] = {}
        moved: list[tuple[int, str]] = []

        async def submitter(name: str) -> None:
            for n in range(4):
                admission = await runtime.submit(ChannelInput(f"{name}-{n}", f"{name}-{n}"))
                assert admission.accepted and admission.seq is not None
                accepted_seq[f"{name}-{n}"] = admission.seq
                settlements[f"{name}-{n}"] = await admission.settled()

        async def mover() -> None:
            await trio.sleep(1.5)
            boundary = runtime.statistics().core.next_seq
            moved.append((boundary, await runtime.new_thread()))

        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(submitter, name)
            nursery.start_soon(mover)
    ((boundary, new),) = moved
    assert new != old
    assert sorted(text for _, text in fake.delivered) == sorted(settlements)  # each once
    for thread_id, text in fake.delivered:
        assert thread_id == (old if accepted_seq[text] < boundary else new), (text, accepted_seq[text], boundary)
    assert all(s.outcome == "completed" for s in settlements.values())
    after = sorted((s for s in settlements.values() if s.seq >= boundary), key=lambda s: s.seq)
    assert after and after[0].thread_lost is not None and after[0].thread_lost.new_thread_id == new
    assert all(s.thread_lost is None for s in settlements.values() if s is not after[0])


async def test_new_thread_survives_the_app_server_dying_under_it(autojump_clock: trio.abc.Clock) -> None:
    fake = ThreadsFake()
    fake.kill_at_start = 2  # the first thread/start is the session's own
    store = MemoryStateStore()
    async with open_runtime(config(), launcher=launcher_of(fake), state=store) as runtime:
        old = runtime.thread_id
        new = await runtime.new_thread()
        assert new not in (old, None) and runtime.thread_id == new and runtime.generation == 2
        settled = await (await runtime.submit(ChannelInput("x", "after"))).settled()
        assert settled.outcome == "completed" and settled.thread_lost is not None
    assert fake.delivered == [(new, "after")]
    assert (await store.load("ops")).record.thread_id == new


async def test_a_cancelled_thread_operation_lets_what_waits_behind_it_go_on(autojump_clock: trio.abc.Clock) -> None:
    fake = ThreadsFake()
    fake.default_turn = TurnScript(text="ok", hang=True)
    async with open_runtime(config(turn_timeout=1000), launcher=launcher_of(fake)) as runtime:
        first = await runtime.submit(ChannelInput("first", "first"))  # its turn hangs
        with trio.move_on_after(5):
            await runtime.new_thread()  # waits for the turn, and is cancelled
        await wait_for(lambda: runtime.statistics().core.holds == 0)
        fake.default_turn = TurnScript(text="ok")
        assert await runtime.interrupt()
        assert (await first.settled()).outcome == "interrupted"
        second = await (await runtime.submit(ChannelInput("second", "second"))).settled()
        assert second.outcome == "completed" and second.thread_lost is None
        assert {thread for thread, _ in fake.delivered} == {runtime.thread_id}


async def test_thread_operations_raise_runtime_stopped_when_the_runtime_stops_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    fake = ThreadsFake()
    fake.default_turn = TurnScript(text="ok", hang=True)
    errors: list[BaseException] = []
    async with open_runtime(config(), launcher=launcher_of(fake)) as runtime:
        await runtime.submit(ChannelInput("first", "first"))

        async def op(fn: Callable[[], Any]) -> None:
            try:
                await fn()
            except RuntimeStopped as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(op, runtime.new_thread)
            nursery.start_soon(op, runtime.compact_thread)
            await wait_for(lambda: runtime.statistics().core.holds == 2)
            await runtime.aclose()
    assert len(errors) == 2
    with pytest.raises(RuntimeStopped):
        await runtime.request("thread/list", {})


async def test_fork_compact_list_archive_on_the_fake(autojump_clock: trio.abc.Clock) -> None:
    fake = ThreadsFake()
    async with open_runtime(config(), launcher=launcher_of(fake)) as runtime:
        own = runtime.thread_id
        await (await runtime.submit(ChannelInput("a", "hello"))).settled()
        fork = await runtime.fork_thread()
        assert runtime.thread_id == own
        await runtime.compact_thread()
        assert fake.compactions == 1
        page = await runtime.list_threads()
        assert {t.id for t in page.threads} == {own, fork}
        assert next(t for t in page.threads if t.id == fork).forked_from == own
        await runtime.archive_thread(fork)
        assert [t.id for t in (await runtime.list_threads(archived=True)).threads] == [fork]
        with pytest.raises(RpcError):
            await runtime.archive_thread(fork)  # codex's own answer, typed
        with pytest.raises(InvalidInput):
            await runtime.archive_thread(own or "")
        switched = await runtime.fork_thread(switch=True)
        settled = await (await runtime.submit(ChannelInput("b", "on the fork"))).settled()
        assert runtime.thread_id == switched and settled.thread_lost is not None
    assert fake.delivered == [(own, "hello"), (switched, "on the fork")]


async def test_request_waits_for_a_session_and_times_out(autojump_clock: trio.abc.Clock) -> None:
    fake = ThreadsFake()
    launcher = launcher_of(fake)
    async with open_runtime(config(), launcher=launcher) as runtime:
        result = await runtime.request("thread/read", {"threadId": runtime.thread_id})
        assert isinstance(result, dict) and isinstance(result["thread"], dict)
        assert result["thread"]["id"] == runtime.thread_id
        with pytest.raises(InvalidInput):
            await runtime.request("initialize")
        with pytest.raises(RpcError):
            await runtime.request("no/such/method", {})

        # A request the app-server never answers: the library's typed timeout.
        async def never(params: Any) -> None:
            await trio.sleep_forever()

        fake.handlers["thread/list"] = never
        with pytest.raises(RequestTimeout):
            await runtime.request("thread/list", {}, timeout=3)


async def test_a_runtime_request_is_not_sent_twice_when_the_session_dies(autojump_clock: trio.abc.Clock) -> None:
    fake = ThreadsFake()
    launcher = launcher_of(fake)
    calls: list[Any] = []

    async def dies(params: Any) -> Any:
        calls.append(params)
        launcher.kill()
        await trio.sleep_forever()

    async with open_runtime(config(), launcher=launcher) as runtime:
        fake.handlers["thread/list"] = dies
        with pytest.raises(Exception) as caught:
            await runtime.request("thread/list", {})
        assert type(caught.value).__name__ == "ConnectionLost" and len(calls) == 1
        # list_threads is read-only: it is asked again in the next session
        del fake.handlers["thread/list"]
        calls.clear()
        runtime_page = await runtime.list_threads()
        assert [t.id for t in runtime_page.threads] == [runtime.thread_id]


def test_runtime_is_the_only_constructor() -> None:
    with pytest.raises(TypeError):
        Runtime()  # type: ignore[call-arg]
