"""Watch a runtime's whole stream, typed: an app that matches on every event and on its settlements.

Type-checked by ``./dev lint`` with ``mypy --strict --disallow-any-expr``: no ``Any`` reaches the app from events,
items or settlements, and the ``match`` is exhaustive (``assert_never``), so an event kind added to the library is
a type error here until the app decides what to do with it.

./dev setup && .venv/bin/python examples/typed_events.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import assert_never

import trio

import codex_trio
from codex_trio import (
    AgentMessageDelta,
    AgentMessageItem,
    CodexError,
    CodexRetrying,
    CodexWarning,
    CommandExecutionItem,
    CommandOutputDelta,
    Event,
    EventHub,
    FileChangeItem,
    FileChangeOutputDelta,
    FileChangePatchUpdated,
    ItemCompleted,
    ItemStarted,
    Lagged,
    McpToolCallItem,
    McpToolCallProgress,
    OtherItem,
    PlanDelta,
    PlanItem,
    PlanUpdated,
    ReasoningItem,
    ReasoningSummaryDelta,
    ReasoningSummaryPartAdded,
    ReasoningTextDelta,
    Restarting,
    ServerRequestAnswered,
    Settlement,
    StatusChanged,
    SubmissionSettled,
    ThreadItem,
    ThreadLost,
    ThreadReady,
    TokenUsage,
    TokenUsageUpdated,
    TurnCompleted,
    TurnDiffUpdated,
    TurnStarted,
    WebSearchItem,
)
from codex_trio.testing import ExecCommand, MockModelServer, Text, Usage, require_codex_bin, write_codex_home


def describe_item(item: ThreadItem) -> str:
    match item:
        case AgentMessageItem(text=text):
            return f"said {text!r}"
        case ReasoningItem(summary=summary):
            return f"reasoned: {' '.join(summary)}"
        case CommandExecutionItem(command=command, status=status, exit_code=code):
            return f"ran {command} ({status}, exit {code})"
        case FileChangeItem(changes=changes, status=status):
            return f"changed {', '.join(f'{c.kind} {c.path}' for c in changes)} ({status})"
        case McpToolCallItem(server=server, tool=tool, error=error):
            return f"called {server}.{tool}" + (f" (failed: {error})" if error else "")
        case WebSearchItem(query=query):
            return f"searched {query!r}"
        case PlanItem(text=text):
            return f"planned {text!r}"
        case OtherItem(type=kind):
            return f"({kind})"
        case _:
            assert_never(item)


def describe(event: Event) -> str | None:
    """One line per event worth a line; None for the streamed chunks (an app would render those)."""
    match event:
        case StatusChanged(status=status, previous=previous):
            return f"[{event.runtime_id}] {previous} -> {status}"
        case ThreadReady(thread_id=thread_id, resumed=resumed):
            return f"[{event.runtime_id}] thread {thread_id} {'resumed' if resumed else 'started'}"
        case ThreadLost(old_thread_id=old, new_thread_id=new):
            return f"[{event.runtime_id}] lost thread {old}, now on {new}"
        case Restarting(attempt=attempt, delay=delay):
            return f"[{event.runtime_id}] restart #{attempt} in {delay:.1f}s"
        case TurnStarted(turn_id=turn_id) | TurnCompleted(turn_id=turn_id):
            return f"[{event.runtime_id}] turn {turn_id}: {type(event).__name__}"
        case ItemStarted():
            return None
        case ItemCompleted(item=item):
            return f"[{event.runtime_id}] {describe_item(item)}"
        case (
            AgentMessageDelta()
            | ReasoningSummaryDelta()
            | ReasoningSummaryPartAdded()
            | ReasoningTextDelta()
            | CommandOutputDelta()
            | FileChangeOutputDelta()
            | FileChangePatchUpdated()
            | PlanDelta()
            | McpToolCallProgress()
            | TurnDiffUpdated()
        ):
            return None
        case PlanUpdated(steps=steps):
            return f"[{event.runtime_id}] plan: " + "; ".join(f"{s.step} ({s.status})" for s in steps)
        case TokenUsageUpdated(last=last, total=total):
            return f"[{event.runtime_id}] model call: {last.total_tokens} tokens ({total.total_tokens} in all)"
        case SubmissionSettled(settlement=settlement):
            return f"[{event.runtime_id}] {summarize(settlement)}"
        case ServerRequestAnswered(method=method, summary=summary):
            return f"[{event.runtime_id}] answered {method}: {summary}"
        case CodexRetrying(message=message) | CodexError(message=message) | CodexWarning(message=message):
            return f"[{event.runtime_id}] codex: {message}"
        case Lagged(dropped=dropped):
            return f"(missed {dropped} chunks)"
        case _:
            assert_never(event)


def summarize(settlement: Settlement) -> str:
    usage: TokenUsage | None = settlement.usage
    tokens = f", {usage.total_tokens} tokens" if usage is not None else ""
    lost = f", thread lost: {settlement.thread_lost.reason}" if settlement.thread_lost is not None else ""
    commands = [i.command for i in settlement.items if isinstance(i, CommandExecutionItem)]
    return (
        f"{settlement.source_id} {settlement.outcome}: {settlement.text!r} ({len(commands)} command(s){tokens}{lost})"
    )


async def main(workdir: Path, codex_bin: str) -> list[str]:
    lines: list[str] = []
    with MockModelServer() as model:
        model.enqueue(ExecCommand("echo hi", reasoning_summary=["Let me look"]), Text("Done.", usage=Usage(10, 2)))
        (workdir / "work").mkdir(exist_ok=True)
        config = codex_trio.RuntimeConfig(
            runtime_id="typed",
            codex_bin=codex_bin,
            codex_home=write_codex_home(workdir / "codex-home", model.url),
            cwd=workdir / "work",
            sandbox_mode="read-only",
            state_dir=workdir / "state",
        )
        async with EventHub() as hub:
            stream = hub.subscribe()  # before the runtime exists: its first start is in the stream
            async with codex_trio.open_runtime(config, events=hub) as runtime:
                settlement = await (await runtime.submit(codex_trio.ChannelInput("chat:1", "look"))).settled()
                usage = runtime.statistics().usage
                lines.append(f"runtime usage: {usage.total_tokens if usage is not None else 0} tokens")
        async for event in stream:
            line = describe(event)
            if line is not None:
                lines.append(line)
        lines.append(summarize(settlement))
    return lines


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for line in trio.run(main, Path(tmp), require_codex_bin()):
            print(line)
