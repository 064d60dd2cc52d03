"""The whole runtime on the real codex 0.169 binary, offline, with the scripted mock model.

Proves: start (spawn, handshake, thread/start), a streamed turn, SIGKILL of the app-server mid-turn (the input in
flight settles interrupted and is not re-run), restart and thread/resume of the same thread, a queued input
delivered after the resume, steer and queue delivery during a hanging turn, twenty submits at the same moment (each
mode, each store: every one settles once and reaches the model once, in acceptance order), and that no process of
ours is left.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from codex_trio._admission import Admission
from codex_trio._config import RuntimeConfig
from codex_trio._events import AgentMessageDelta, Restarting
from codex_trio._launcher import ProcessLauncher
from codex_trio._policy import RestartPolicy
from codex_trio._process import live_pids_in_group
from codex_trio._render import ChannelInput
from codex_trio._runtime import Runtime, open_runtime
from codex_trio._state import SqliteStateStore, StateStore
from codex_trio.testing._mock_model import Hang, MockModelServer, Text, write_codex_home
from codex_trio.testing._real_codex import require_codex_bin
from codex_trio.testing.pytest_plugin import short_dir

pytestmark = pytest.mark.real_codex


@asynccontextmanager
async def real_runtime(
    tmp_path: Path, model: MockModelServer, *, state: StateStore | None = None, **config: object
) -> AsyncIterator[tuple[Runtime, ProcessLauncher]]:
    home = write_codex_home(tmp_path / "home", model.url)
    with short_dir() as sockets:
        (tmp_path / "work").mkdir(parents=True, exist_ok=True)
        cfg = RuntimeConfig(
            runtime_id="real",
            codex_bin=require_codex_bin(),
            codex_home=home,
            cwd=tmp_path / "work",
            sandbox_mode="read-only",
            socket_dir=sockets,
            log_dir=tmp_path / "logs",
            spill_dir=tmp_path / "spill",
            restart=RestartPolicy(base_delay=0.2, max_delay=1.0),
            **config,  # type: ignore[arg-type]
        )
        launcher = ProcessLauncher(cfg)
        try:
            async with open_runtime(cfg, state=state, launcher=launcher) as runtime:
                yield runtime, launcher
        finally:
            for pgid in launcher.pgids:
                assert live_pids_in_group(pgid) == [], f"process group {pgid} still has live processes"
            assert not any(sockets.glob("*.sock")), "a socket link of ours was left behind"


async def test_turn_kill_restart_resume_and_queued_delivery(tmp_path: Path) -> None:
    with MockModelServer() as model:
        model.enqueue(Text("Hello from the mock model.", deltas=4))
        hang = Hang()
        model.enqueue(hang)
        with trio.fail_after(90):
            async with real_runtime(tmp_path, model) as (runtime, launcher):
                assert runtime.status == "ready"
                thread_id = runtime.thread_id
                assert thread_id
                async with runtime.events() as events:
                    first = await runtime.submit(ChannelInput("chat:1", "Say hello"))
                    assert first.status == "submitted"
                    settled = await first.settled()
                    assert settled.outcome == "completed"
                    assert settled.text == "Hello from the mock model."
                    deltas = []
                    while True:
                        event = await events.receive()
                        if isinstance(event, AgentMessageDelta):
                            deltas.append(event.delta)
                        if "".join(deltas) == "Hello from the mock model.":
                            break
                assert model.requests[-1].input_texts()[-1] == "Say hello"

                # A turn that hangs in the model; kill the app-server's whole group mid-turn.
                doomed = await runtime.submit(ChannelInput("chat:2", "this one hangs"))
                await trio.to_thread.run_sync(hang.wait_started, 20)
                first_pgid = launcher.last_pgid
                assert first_pgid is not None
                os.killpg(first_pgid, signal.SIGKILL)
                lost = await doomed.settled()
                assert lost.outcome == "interrupted"
                # Submitted during the restart window: accepted, queued, delivered after the resume.
                assert runtime.status != "ready"
                queued = await runtime.submit(ChannelInput("chat:3", "after the restart"))
                assert queued.status == "queued"
                done = await queued.settled()
                assert done.outcome == "completed", done
                assert runtime.generation == 2
                assert runtime.thread_id == thread_id
                assert runtime.thread_resumed
                assert launcher.last_pgid != first_pgid
                assert live_pids_in_group(first_pgid) == []
                # The hanging input was not re-run after the restart; the resumed history reached the model.
                texts = model.last_input_texts()
                assert texts[-1] == "after the restart"
                assert "Say hello" in texts
                assert sum(1 for r in model.requests if r.input_texts()[-1:] == ["this one hangs"]) == 1
                duplicate = await runtime.submit(ChannelInput("chat:1", "Say hello"))
                assert duplicate.status == "duplicate"
        assert runtime.status == "stopped"


@pytest.mark.parametrize("mode", ["steer", "queue"])
async def test_second_input_during_a_hanging_turn(tmp_path: Path, mode: str) -> None:
    with MockModelServer() as model:
        hang = Hang(then=Text("released"))
        model.enqueue(hang)
        with trio.fail_after(90):
            async with real_runtime(tmp_path, model, delivery_mode=mode) as (runtime, _):
                first = await runtime.submit(ChannelInput("a", "first input"))
                await trio.to_thread.run_sync(hang.wait_started, 20)
                second = await runtime.submit(ChannelInput("b", "second input"))
                await trio.sleep(0.5)
                hang.release()
                one = await first.settled()
                two = await second.settled()
                assert one.outcome == "completed"
                assert two.outcome == "completed"
                if mode == "steer":
                    # steered into the running turn: one turn, both inputs settle with it
                    assert one.turn_id == two.turn_id
                else:
                    # queued: the second input got its own turn after the first ended
                    assert one.turn_id != two.turn_id
                    assert model.last_input_texts()[-1] == "second input"


@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.parametrize("mode", ["steer", "queue"])
async def test_twenty_submits_at_once_settle_once_each_in_order_at_the_model(
    tmp_path: Path, mode: str, store: str
) -> None:
    # The concurrency issue's first defect on the real binary: 20 tasks submit at the same moment. Every one is
    # accepted, settles exactly once, and reaches the model exactly once, in the order of acceptance.
    count = 20
    with MockModelServer() as model:
        hang = Hang(then=Text("released"))
        model.enqueue(hang)  # the first turn waits, so the others arrive while a turn is running
        with trio.fail_after(180):
            async with AsyncExitStack() as stack:
                state = None
                if store == "sqlite":
                    state = await stack.enter_async_context(SqliteStateStore(tmp_path / "state.db"))
                runtime, _ = await stack.enter_async_context(
                    real_runtime(tmp_path, model, state=state, delivery_mode=mode)
                )
                admissions: dict[int, Admission] = {}
                go = trio.Event()

                async def submit(i: int) -> None:
                    await go.wait()
                    admissions[i] = await runtime.submit(ChannelInput(f"c{i}", f"input tok{i}."))

                async with trio.open_nursery() as nursery:
                    for i in range(count):
                        nursery.start_soon(submit, i)
                    await trio.testing.wait_all_tasks_blocked()
                    go.set()
                assert sorted(a.status for a in admissions.values()) == ["submitted"] * count
                await trio.to_thread.run_sync(hang.wait_started, 60)
                hang.release()
                settled = {i: await a.settled() for i, a in admissions.items()}
                assert {s.outcome for s in settled.values()} == {"completed"}, settled
                # Once settled, never again: the settlement of each admission is one object.
                assert all(admissions[i].settlement is settled[i] for i in settled)
        by_seq = [f"tok{i}" for i, _ in sorted(admissions.items(), key=lambda item: item[1].seq or 0)]
        history = [
            token
            for role, text in model.requests[-1].input_messages()
            if role == "user"
            for token in re.findall(r"tok\d+", text)
        ]
        assert history == by_seq  # each input once, in acceptance order


async def test_interrupt_and_stop_leave_nothing_behind(tmp_path: Path) -> None:
    with MockModelServer() as model:
        model.enqueue(Hang())
        with trio.fail_after(60):
            async with real_runtime(tmp_path, model) as (runtime, launcher):
                admission = await runtime.submit(ChannelInput("x", "hang please"))
                with trio.fail_after(20):
                    while runtime.statistics().open_turns == ():
                        await trio.sleep(0.05)
                assert await runtime.interrupt()
                assert (await admission.settled()).outcome == "interrupted"
                pgid = launcher.last_pgid
            assert pgid is not None and live_pids_in_group(pgid) == []
            model.release()


async def test_restarts_repeatedly_after_kills(tmp_path: Path) -> None:
    with MockModelServer() as model, trio.fail_after(120):
        async with real_runtime(tmp_path, model) as (runtime, launcher):
            thread_id = runtime.thread_id
            async with runtime.events() as events:
                for round_ in range(3):
                    pgid = launcher.last_pgid
                    assert pgid is not None
                    os.killpg(pgid, signal.SIGKILL)
                    while True:
                        event = await events.receive()
                        if isinstance(event, Restarting):
                            break
                    await runtime.wait_status("ready")
                    assert runtime.thread_id == thread_id
                    result = await (await runtime.submit(ChannelInput(f"r{round_}", f"round {round_}"))).settled()
                    assert result.outcome == "completed"
            assert runtime.restarts == 3


async def test_resume_failure_falls_back_to_a_fresh_thread_and_says_so(tmp_path: Path) -> None:
    from codex_trio._events import ThreadLost

    with MockModelServer() as model, trio.fail_after(90):
        async with real_runtime(tmp_path, model) as (runtime, launcher):
            await (await runtime.submit(ChannelInput("one", "first turn"))).settled()
            old = runtime.thread_id
            async with runtime.events() as events:
                # Lose the rollout (as if CODEX_HOME was wiped), then kill the app-server.
                for rollout in (tmp_path / "home" / "sessions").rglob("rollout-*.jsonl"):
                    rollout.unlink()
                assert launcher.last_pgid is not None
                os.killpg(launcher.last_pgid, signal.SIGKILL)
                while True:
                    event = await events.receive()
                    if isinstance(event, ThreadLost):
                        break
            assert event.old_thread_id == old
            assert event.new_thread_id == runtime.thread_id != old
            assert "thread/resume failed" in event.reason
            await runtime.wait_status("ready")
            after = await (await runtime.submit(ChannelInput("two", "on the new thread"))).settled()
            assert after.outcome == "completed"
            assert not runtime.thread_resumed
