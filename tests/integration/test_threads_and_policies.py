"""Threads (resume, checkpoint, loss made visible), skill roots per generation, and approval events — on the
in-memory fake, in virtual time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import codex_trio
from codex_trio import (
    ChannelInput,
    Checkpoint,
    ConfigError,
    MemoryStateStore,
    RestartPolicy,
    RpcError,
    RuntimeConfig,
    ServerRequestAnswered,
    SkillSource,
    ThreadLost,
)
from codex_trio.testing import FakeLauncher, FakeRpcError, ServerRequestSpec, TurnScript
from codex_trio.testing._fake_app_server import _Thread

FAST = RestartPolicy(base_delay=1, max_delay=1, max_restarts=100)


async def test_thread_loss_is_recorded_published_and_on_the_next_settlement(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher()
    store = MemoryStateStore()
    async with codex_trio.open_runtime(RuntimeConfig(restart=FAST), state=store, launcher=launcher) as runtime:
        old = runtime.thread_id
        assert old is not None
        async with runtime.events() as events:
            launcher.fake.handlers["thread/resume"] = lambda params: FakeRpcError(
                f"no rollout found for thread id {params['threadId']}"
            )
            launcher.kill()
            while not isinstance(event := await events.receive(), ThreadLost):
                pass
        assert event.old_thread_id == old and event.new_thread_id == runtime.thread_id != old
        await runtime.wait_status("ready")
        first = await (await runtime.submit(ChannelInput("a", "hello"))).settled()
        second = await (await runtime.submit(ChannelInput("b", "again"))).settled()
    assert first.thread_lost == event  # the next caller learns that the history is gone ...
    assert second.thread_lost is None  # ... once
    snapshot = await store.load(runtime.runtime_id)
    assert [(t.old_thread_id, t.new_thread_id) for t in snapshot.lost_threads] == [(old, runtime.thread_id)]
    assert snapshot.record.thread_id == runtime.thread_id


async def test_new_threads_are_named_so_codex_records_them(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    async with codex_trio.open_runtime(RuntimeConfig(runtime_id="named"), launcher=launcher) as runtime:
        pass
    assert launcher.fake.requests("thread/name/set") == [{"threadId": runtime.thread_id, "name": "codex_trio:named"}]


async def test_checkpoint_resumes_that_thread_and_a_foreign_kind_is_refused_before_start(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher()
    launcher.fake.threads["thread-from-elsewhere"] = _Thread("thread-from-elsewhere")
    with pytest.raises(ConfigError, match="unsupported resume checkpoint"):
        async with codex_trio.open_runtime(RuntimeConfig(), launcher=launcher, checkpoint=Checkpoint("claude", "x")):
            pass  # pragma: no cover
    assert launcher.launches == 0
    checkpoint = Checkpoint("codexThread", "thread-from-elsewhere")
    async with codex_trio.open_runtime(RuntimeConfig(), launcher=launcher, checkpoint=checkpoint) as runtime:
        assert runtime.thread_id == "thread-from-elsewhere" and runtime.thread_resumed
    assert launcher.fake.requests("thread/resume")[0]["threadId"] == "thread-from-elsewhere"
    assert launcher.fake.requests("thread/start") == []


def skills(tmp_path: Path) -> tuple[SkillSource, ...]:
    return (
        SkillSource("a", tmp_path / "one" / "a" / "SKILL.md"),
        SkillSource("b", tmp_path / "one" / "b" / "SKILL.md"),
        SkillSource("c", tmp_path / "two" / "c" / "SKILL.md"),
        SkillSource("d", tmp_path / "x" / "d", layout="other"),
    )


async def test_skill_roots_are_applied_before_the_thread_on_every_generation(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    launcher = FakeLauncher()
    config = RuntimeConfig(skill_sources=skills(tmp_path), restart=FAST)
    async with codex_trio.open_runtime(config, launcher=launcher) as runtime:
        launcher.kill()
        while runtime.generation < 2 or runtime.status != "ready":
            await trio.sleep(0.5)
    roots = [str(tmp_path / "one" / "a"), str(tmp_path / "one" / "b"), str(tmp_path / "two" / "c")]
    assert launcher.fake.requests("skills/extraRoots/set") == [{"extraRoots": roots}] * 2
    methods = [m for m in launcher.fake.methods() if m in ("skills/extraRoots/set", "thread/start", "thread/resume")]
    assert methods == ["skills/extraRoots/set", "thread/start", "skills/extraRoots/set", "thread/resume"]


async def test_skill_roots_fail_open_only_when_unsupported(
    tmp_path: Path, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    launcher = FakeLauncher()
    launcher.fake.handlers["skills/extraRoots/set"] = lambda params: FakeRpcError(
        "Invalid request: unknown variant `skills/extraRoots/set`, expected one of `initialize`"
    )
    async with codex_trio.open_runtime(RuntimeConfig(skill_sources=skills(tmp_path)), launcher=launcher) as runtime:
        assert runtime.status == "ready"
    assert "continuing skill-blind" in caplog.text

    launcher = FakeLauncher()
    launcher.fake.handlers["skills/extraRoots/set"] = lambda params: FakeRpcError("disk on fire")
    with pytest.raises(RpcError, match="disk on fire"):
        async with codex_trio.open_runtime(RuntimeConfig(skill_sources=skills(tmp_path)), launcher=launcher):
            pass  # pragma: no cover
    assert launcher.fake.requests("thread/start") == []


APPROVAL = ServerRequestSpec(
    "item/commandExecution/requestApproval", {"itemId": "call-1", "command": "touch /etc/x", "reason": "why not"}
)


async def test_default_policy_declines_and_publishes_the_rejection(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    launcher.fake.push_turns(TurnScript(text="done", server_requests=[APPROVAL]))
    async with codex_trio.open_runtime(RuntimeConfig(), launcher=launcher) as runtime, runtime.events() as events:
        settled = await (await runtime.submit(ChannelInput("a", "run it"))).settled()
        answered: list[ServerRequestAnswered] = []
        while not answered:
            event = await events.receive()
            if isinstance(event, ServerRequestAnswered):
                answered.append(event)
    assert settled.outcome == "completed"
    assert answered[0].method == APPROVAL.method and answered[0].rejected
    assert "touch /etc/x" in answered[0].summary
    method, answer = launcher.fake.server_request_answers[-1]
    assert (method, answer["result"]) == (APPROVAL.method, {"decision": "decline"})


async def test_custom_handler_accepts_and_events_say_so(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    launcher.fake.push_turns(TurnScript(text="done", server_requests=[APPROVAL]))
    seen: list[Any] = []

    async def approve(request: codex_trio.ApprovalRequest) -> dict[str, Any]:
        seen.append(request.summary)
        return {"decision": "accept"}

    policy = codex_trio.ApprovalPolicy(approve, on_decision=seen.append)
    async with (
        codex_trio.open_runtime(RuntimeConfig(), launcher=launcher, approvals=policy) as runtime,
        runtime.events() as events,
    ):
        await (await runtime.submit(ChannelInput("a", "run it"))).settled()
        while not isinstance(event := await events.receive(), ServerRequestAnswered):
            pass
    assert not event.rejected
    assert launcher.fake.server_request_answers[-1][1]["result"] == {"decision": "accept"}
    assert len(seen) == 2  # the handler saw the request, and the user's own on_decision still fires


async def test_completion_ledgers_survive_a_host_restart(autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    store = MemoryStateStore()
    launcher = FakeLauncher()
    completion = codex_trio.Completion("job-9", "teammate", "completed", "all good")
    config = RuntimeConfig(spill_dir=tmp_path / "spill")
    async with codex_trio.open_runtime(config, state=store, launcher=launcher) as runtime:
        assert (await runtime.completion_input(completion)).status == "accepted"
        while not launcher.fake.requests("turn/start"):  # the trigger turn reached codex
            await trio.sleep(0.1)
    async with codex_trio.open_runtime(config, state=store, launcher=FakeLauncher(launcher.fake)) as runtime:
        assert (await runtime.completion_input(completion)).status == "accepted"
    injected = [t for t in launcher.fake.threads.values() for _ in t.injected]
    assert len(injected) == 1  # the second host recognised the id: no second inject, no second trigger
    triggers = [r["clientUserMessageId"] for r in launcher.fake.requests("turn/start")]
    assert triggers == ["teammate:job-9#1"]


async def test_completion_after_stop_is_unsupported(autojump_clock: trio.abc.Clock) -> None:
    async with codex_trio.open_runtime(RuntimeConfig(), launcher=FakeLauncher()) as runtime:
        pass
    result = await runtime.completion_input(codex_trio.Completion("j", "s", "completed", "r"))
    assert result.status == "unsupported"
