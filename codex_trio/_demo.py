"""``codex-trio demo``: the offline showcase on the real codex binary (the README's main command).

Everything is real except the model: the real ``codex app-server`` child, spawned and supervised by the
runtime, talks to :class:`~codex_trio.testing.MockModelServer` on 127.0.0.1 (a scripted Responses API), with a
throw-away ``CODEX_HOME``, socket directory and SQLite state database under one temp directory that is removed
at the end. No network, no login.

The five steps each check what they show, so the demo doubles as an end-to-end smoke test: any surprise
raises :class:`DemoFailed` and the command exits 1.

1. start the runtime (spawn, connect-based readiness, handshake, ``thread/start``);
2. a turn whose reply streams in as deltas;
3. a teammate completion: injected into the thread, then a trigger turn; the model's next request carries it;
4. a turn whose model step hangs; the app-server's process group gets SIGKILL mid-turn; the input settles
   ``interrupted``; the supervisor restarts the child after a short backoff and resumes the same thread; a
   turn after the resume sees the earlier conversation;
5. redelivered source ids (one from before the kill) are refused as ``duplicate`` and never reach codex.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import trio

from ._completions import Completion
from ._config import RuntimeConfig
from ._errors import BinaryNotFound, CodexTrioError
from ._events import AgentMessageDelta, Event, Restarting, StatusChanged, SubmissionSettled
from ._launcher import ProcessLauncher
from ._policy import RestartPolicy
from ._render import ChannelInput
from ._runtime import Runtime, open_runtime
from ._settlement import Settlement
from ._signals import stop_on_signals
from ._state import SqliteStateStore
from ._util import collapse_exception_groups
from .cli import (
    EXIT_FAILED,
    EXIT_OK,
    Console,
    LiveView,
    Progress,
    StoppedBySignal,
    cli_codex_bin,
    format_duration,
    short_temp_root,
)
from .testing._mock_model import Hang, MockModelServer, Text, write_codex_home

__all__ = ["DemoFailed", "DemoReport", "run_demo", "run_demo_command"]

TOTAL_STEPS: Final = 5
#: Generous per-step ceilings: the machine may be slow and shared; the whole demo normally takes a few seconds.
STEP_TIMEOUT: Final = 30.0
DEMO_TIMEOUT: Final = 120.0
#: A quick backoff so the restart is visible without a long wait (the library default starts at 1 s).
DEMO_RESTART = RestartPolicy(base_delay=0.5, max_delay=2.0)
INDENT: Final = "      "

HELLO_ID: Final = "demo:hello"
HELLO_PROMPT: Final = "Say hello to the people watching this demo."
GREETING: Final = (
    "Hello, everyone! This reply comes from the bundled scripted model and streams to you word by word "
    "through the real codex app-server."
)
TEAMMATE = Completion(
    id="job-42",
    source="teammate-ana",
    status="completed",
    result="Fixed the 3 flaky tests in tests/test_sync.py; CI is green again.",
)
TEAMMATE_REPLY: Final = "Thanks, Ana! Your fix is in my context now; nothing else to do here."
LONG_ID: Final = "demo:long"
LONG_PROMPT: Final = "Run the long database migration."
AFTER_ID: Final = "demo:after"
AFTER_PROMPT: Final = "Are you still there?"
AFTER_REPLY: Final = "Still here: same thread, and I still remember what you asked before the crash."


class DemoFailed(CodexTrioError):
    """The demo saw something other than what it sets out to show (or a step did not finish in time)."""


@attrs.define
class DemoReport:
    steps: list[tuple[str, float]] = attrs.field(factory=list)
    restarts: int = 0
    thread_id: str | None = None
    generations: int = 0
    duplicates: int = 0
    stop_seconds: float = 0.0
    settlements: dict[str, int] = attrs.field(factory=dict)
    total_seconds: float = 0.0


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


def _codex_side_files(socket_dir: Path) -> list[Path]:
    """The real socket and lock codex made for our socket links (``/tmp/codex-daemon-<uid>/<sha256>``).

    codex removes them on a clean exit but not after a SIGKILL, and nothing reuses our random socket paths,
    so the demo removes what its killed child left behind.
    """
    found: list[Path] = []
    try:
        names = os.listdir(socket_dir)
    except OSError:
        return found
    for name in names:
        link = socket_dir / name
        try:
            target = Path(os.path.normpath(socket_dir / os.readlink(link)))
        except OSError:
            continue
        found += [target, target.with_name(target.name + ".lock")]
    return found


class _Demo:
    def __init__(self, out: Console, codex_bin: str, base: Path, model: MockModelServer) -> None:
        self.out = out
        self.codex_bin = codex_bin
        self.base = base
        self.model = model
        self.report = DemoReport()
        self.leftovers: list[Path] = []
        self.socket_dir = base / "s"

    def say(self, text: str, *styles: str) -> None:
        self.out.line(f"{INDENT}{text}", *styles)

    def begin(self, number: int, title: str) -> float:
        self.out.line(f"[{number}/{TOTAL_STEPS}] {title}", "bold")
        return trio.current_time()

    def done(self, title: str, started: float) -> None:
        elapsed = trio.current_time() - started
        self.report.steps.append((title, elapsed))
        self.out.line(f"{INDENT}done in {format_duration(elapsed)}", "green")

    @asynccontextmanager
    async def step(self, number: int, title: str) -> AsyncIterator[None]:
        started = self.begin(number, title)
        with trio.move_on_after(STEP_TIMEOUT) as scope:
            yield
        if scope.cancelled_caught:
            raise DemoFailed(f"step {number} ({title}) did not finish within {STEP_TIMEOUT:g} s")
        self.done(title, started)

    async def run(self, nursery: trio.Nursery) -> DemoReport:
        started = trio.current_time()
        await self.header()
        (self.base / "state").mkdir(mode=0o700)
        (self.base / "work").mkdir()
        config = RuntimeConfig(
            runtime_id="demo",
            cwd=self.base / "work",
            codex_bin=self.codex_bin,
            codex_home=write_codex_home(self.base / "home", self.model.url),
            sandbox_mode="read-only",
            socket_dir=self.socket_dir,
            state_dir=self.base / "state",
            spill_dir=self.base / "spill",
            restart=DEMO_RESTART,
            ready_timeout=STEP_TIMEOUT,
        )
        launcher = ProcessLauncher(config)
        title = "start the runtime: spawn codex app-server, handshake, thread/start"
        started_step = self.begin(1, title)
        progress = Progress(self.out, nursery, indent=INDENT)
        progress.start("starting codex app-server")
        # open_runtime bounds its own start (ready, handshake and request timeouts); a step scope around it
        # would have to span the whole block, since the runtime's nursery lives until the block ends.
        async with SqliteStateStore(self.base / "state" / "state.db") as store:
            async with open_runtime(config, state=store, launcher=launcher) as runtime, runtime.events() as events:
                progress.stop()
                self.leftovers += _codex_side_files(self.socket_dir)
                self.say(
                    f"ready: app-server pid {launcher.last_pgid} (its own process group), "
                    f"thread {runtime.thread_id}, generation {runtime.generation}"
                )
                self.done(title, started_step)
                view = LiveView(self.out, self.out, indent=INDENT)
                await nursery.start(view.run, events)
                await self.streamed_turn(runtime, view)
                await self.teammate_completion(runtime, view)
                await self.kill_and_restart(runtime, view, launcher)
                await self.duplicates(runtime)
                self.report.restarts = runtime.restarts
                self.report.thread_id = runtime.thread_id
                self.report.generations = runtime.generation
                stopping = trio.current_time()
            self.report.stop_seconds = trio.current_time() - stopping
            for settlement in await store.recent_settlements("demo"):
                self.report.settlements[settlement.outcome] = self.report.settlements.get(settlement.outcome, 0) + 1
            records = {r.runtime_id: r for r in await store.list_runtimes()}
        self.report.total_seconds = trio.current_time() - started
        self.summary(records["demo"].status if "demo" in records else "missing")
        return self.report

    async def header(self) -> None:
        version = "version unknown"
        with trio.move_on_after(15):
            done = await trio.run_process([self.codex_bin, "--version"], capture_stdout=True, check=False)
            if done.returncode == 0:
                version = done.stdout.decode(errors="replace").strip()
        self.out.line("codex-trio demo: a runtime on the real codex app-server, offline", "bold")
        self.out.line(f"  codex    {self.codex_bin} ({version})")
        self.out.line(f"  model    {self.model.url} (the bundled scripted model: no network, no login)")
        self.out.line(f"  scratch  {self.base} (CODEX_HOME, socket, state.db; removed at the end)")

    async def turn(self, runtime: Runtime, view: LiveView, source_id: str, prompt: str) -> Settlement:
        self.out.line(f"{INDENT}you> {prompt}", "bold")
        admission = await runtime.submit(ChannelInput(source_id, prompt))
        _expect(admission.accepted, f"submit({source_id!r}) was not accepted: {admission.status}")
        settlement = await admission.settled()
        assert admission.seq is not None
        await view.caught_up(admission.seq)
        return settlement

    async def streamed_turn(self, runtime: Runtime, view: LiveView) -> None:
        async with self.step(2, "a turn, its reply streamed live as agent-message deltas"):
            self.model.enqueue(Text(GREETING))
            mark = view.mark()
            settlement = await self.turn(runtime, view, HELLO_ID, HELLO_PROMPT)
            _expect(
                settlement.outcome == "completed" and settlement.text == GREETING,
                f"the greeting turn ended {settlement.outcome} with {settlement.text!r} ({settlement.error})",
            )
            deltas = sum(1 for e in view.events[mark:] if isinstance(e, AgentMessageDelta))
            _expect(deltas > 1, f"expected the reply in several deltas, saw {deltas}")
            self.say(f"completed: turn {settlement.turn_id}; {deltas} deltas, settled with the full text")

    async def teammate_completion(self, runtime: Runtime, view: LiveView) -> None:
        async with self.step(3, "a teammate completion: thread/inject_items, then a trigger turn"):
            self.model.enqueue(Text(TEAMMATE_REPLY))
            before = len(self.model.requests)
            mark = view.mark()
            result = await runtime.completion_input(TEAMMATE)
            _expect(result.status == "accepted", f"completion_input answered {result.status}: {result.reason}")
            self.say(f"completion_input({TEAMMATE.id!r} from {TEAMMATE.source!r}) -> accepted")
            event = await view.wait_for(lambda e: isinstance(e, SubmissionSettled), mark)
            assert isinstance(event, SubmissionSettled)
            trigger = event.settlement
            _expect(trigger.outcome == "completed", f"the trigger turn ended {trigger.outcome}: {trigger.error}")
            requests = self.model.requests
            _expect(len(requests) > before, "the model received no request for the trigger turn")
            messages = requests[before].input_messages()
            carried = [text for role, text in messages if role == "developer" and TEAMMATE.result in text]
            _expect(bool(carried), "the model's next request did not carry the teammate's result")
            self.say(f"the model's next request carried it as a developer message: {carried[0].splitlines()[0]}")
            again = await runtime.completion_input(TEAMMATE)
            _expect(
                again.status == "accepted" and len(self.model.requests) == len(requests),
                f"a repeated completion was not idempotent ({again.status})",
            )
            self.say("delivered again -> accepted at once, not injected twice (idempotent by completion id)")

    async def kill_and_restart(self, runtime: Runtime, view: LiveView, launcher: ProcessLauncher) -> None:
        async with self.step(4, "SIGKILL the app-server mid-turn: restart with backoff, resume the thread"):
            hang = Hang()
            self.model.enqueue(hang)
            thread_before = runtime.thread_id
            self.out.line(f"{INDENT}you> {LONG_PROMPT}", "bold")
            admission = await runtime.submit(ChannelInput(LONG_ID, LONG_PROMPT))
            _expect(admission.accepted, f"submit({LONG_ID!r}) was not accepted: {admission.status}")
            started = await trio.to_thread.run_sync(hang.wait_started, STEP_TIMEOUT, abandon_on_cancel=True)
            _expect(started, "the model never received the long turn's request")
            self.say("turn in flight: the model is hanging mid-response")
            pgid = launcher.last_pgid
            assert pgid is not None
            self.leftovers += _codex_side_files(self.socket_dir)
            mark = view.mark()
            killed_at = trio.current_time()
            os.killpg(pgid, signal.SIGKILL)
            self.say(f"SIGKILL -> process group {pgid}", "red", "bold")
            settlement = await admission.settled()
            _expect(settlement.outcome == "interrupted", f"the killed turn settled {settlement.outcome}")
            self.say(f"{LONG_ID!r} settled interrupted ({settlement.error}); not re-run: it may have had side effects")
            restart = await view.wait_for(lambda e: isinstance(e, Restarting), mark)
            assert isinstance(restart, Restarting)
            await view.wait_for(_is_ready, mark)
            back = trio.current_time() - killed_at
            _expect(runtime.thread_id == thread_before, f"thread changed: {thread_before} -> {runtime.thread_id}")
            _expect(runtime.thread_resumed, "the thread was started afresh, not resumed")
            self.say(
                f"ready again {format_duration(back)} after the kill (backoff {restart.delay:g} s): "
                f"new app-server pid {launcher.last_pgid}, generation {runtime.generation}, same thread resumed",
                "green",
            )
            self.leftovers += _codex_side_files(self.socket_dir)
            self.model.enqueue(Text(AFTER_REPLY))
            after = await self.turn(runtime, view, AFTER_ID, AFTER_PROMPT)
            _expect(after.outcome == "completed", f"the turn after the restart ended {after.outcome}: {after.error}")
            _expect(
                HELLO_PROMPT in self.model.last_request().input_texts(),
                "the request after the restart did not carry the conversation from before it",
            )
            self.say("the model's request after the restart still carried the conversation from before the kill")

    async def duplicates(self, runtime: Runtime) -> None:
        async with self.step(5, "redeliver messages that were already accepted"):
            before = len(self.model.requests)
            for source_id, prompt, when in (
                (HELLO_ID, HELLO_PROMPT, "accepted before the kill"),
                (LONG_ID, LONG_PROMPT, "interrupted by the kill"),
            ):
                admission = await runtime.submit(ChannelInput(source_id, prompt))
                _expect(admission.status == "duplicate", f"redelivered {source_id!r} was {admission.status}")
                self.report.duplicates += 1
                self.say(f"submit(source_id={source_id!r}, {when}) again -> duplicate", "yellow")
            stats = runtime.statistics()
            _expect(
                stats.queued == 0 and stats.in_flight == 0 and len(self.model.requests) == before,
                "a duplicate reached codex",
            )
            self.say("neither reached codex: the dedup window belongs to the runtime, not to one app-server")

    def summary(self, stored_status: str) -> None:
        report = self.report
        self.out.line("summary", "bold")
        width = max(len(title) for title, _ in report.steps)
        for number, (title, seconds) in enumerate(report.steps, 1):
            self.out.line(f"  {number}. {title.ljust(width)}  {format_duration(seconds):>9}")
        self.out.line(f"  stop: runtime closed, app-server reaped in {format_duration(report.stop_seconds)}")
        outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(report.settlements.items()))
        self.out.line(f"  state.db: runtime 'demo' {stored_status}, thread {report.thread_id}, settlements: {outcomes}")
        self.out.line(
            f"demo ok in {format_duration(report.total_seconds)}: {report.restarts} restart, thread resumed, "
            f"{report.duplicates} duplicates refused",
            "green",
            "bold",
        )


def _is_ready(event: Event) -> bool:
    return isinstance(event, StatusChanged) and event.status == "ready"


def _remove_files(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except OSError:
            pass  # codex already removed it (a clean exit) or it was never made


async def run_demo(codex_bin: str, out: Console) -> DemoReport:
    """Run the demo against ``codex_bin``; raises :class:`DemoFailed` (or the runtime's error) on failure."""
    base = Path(tempfile.mkdtemp(prefix="ctdemo-", dir=short_temp_root()))
    demo: _Demo | None = None
    try:
        with MockModelServer() as model, collapse_exception_groups():
            demo = _Demo(out, codex_bin, base, model)
            with trio.move_on_after(DEMO_TIMEOUT) as scope:
                async with trio.open_nursery() as nursery:
                    report = await demo.run(nursery)
                    nursery.cancel_scope.cancel()
            if scope.cancelled_caught:
                raise DemoFailed(f"the demo did not finish within {DEMO_TIMEOUT:g} s")
            errors = model.errors
            _expect(not errors, f"the mock model failed while serving: {errors[:1]}")
            return report
    finally:
        if demo is not None:
            _remove_files(demo.leftovers)
        shutil.rmtree(base, ignore_errors=True)


def run_demo_command(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``codex-trio demo``: exit 0 when every step showed what it should, 1 otherwise."""
    try:
        codex_bin = cli_codex_bin(args.codex_bin)
    except BinaryNotFound as exc:
        err.line(f"codex-trio demo: error: {exc}", "red")
        return EXIT_FAILED

    async def stoppable() -> None:
        # SIGTERM/SIGHUP stop the demo as Ctrl-C does: its runtime leaves its block, the child is reaped.
        async with stop_on_signals() as stop:
            await run_demo(codex_bin, out)
            return
        if stop.received is not None:
            raise StoppedBySignal(stop.received)

    try:
        trio.run(stoppable)
    except CodexTrioError as exc:
        out.end_partial()
        err.line(f"codex-trio demo: FAILED: {type(exc).__name__}: {exc}", "red", "bold")
        return EXIT_FAILED
    return EXIT_OK
