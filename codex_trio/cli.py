"""The ``codex-trio`` command (also ``python -m codex_trio``).

::

    codex-trio demo                       the offline showcase on the real codex binary (the README's main job)
    codex-trio send TEXT [--source-id ID]  one turn; prints the agent's answer
    codex-trio chat                       an interactive session (also reads piped stdin)
    codex-trio status                     runtimes and their state, from the SQLite database
    codex-trio doctor                     can a runtime start here?

``send`` and ``chat`` use the user's own codex configuration (``CODEX_HOME`` or ``~/.codex``) and the durable
state database by default; ``--offline`` runs them against the bundled scripted model instead, with a
throw-away ``CODEX_HOME``. Results go to stdout; progress and notices go to stderr, so ``send`` composes in
scripts. On a terminal the agent's text streams in live with a little colour; piped, output is plain lines;
``--json`` gives machine-readable output.

Exit status: 0 success, 1 failure (a failed turn, a runtime error, a doctor finding), 2 bad arguments, and
128 + the signal's number when stopped by one: 130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP. The first of
these signals stops the command cleanly (the runtime stops and reaps its codex child); a second one while it
stops does not wait (see :func:`codex_trio.stop_on_signals`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO, get_args

import attrs
import trio

from ._config import RuntimeConfig
from ._errors import BinaryNotFound, CodexTrioError, ConfigError, InvalidInput
from ._events import (
    AgentMessageDelta,
    Event,
    EventStream,
    ItemCompleted,
    Lagged,
    Restarting,
    ServerRequestAnswered,
    StatusChanged,
    SubmissionSettled,
    ThreadLost,
    ThreadReady,
    TurnCompleted,
)
from ._launcher import default_base_dir
from ._paths import resolve_codex_bin
from ._pins import PINNED_CODEX_VERSION
from ._render import ChannelInput
from ._runtime import Runtime, open_runtime
from ._settlement import Settlement
from ._signals import stop_on_signals
from ._state import MemoryStateStore, RuntimeRecord, Snapshot, SqliteStateStore, StateStore, StoredSettlement
from ._turn_options import ReasoningEffort, TurnOptions, check_images, check_options
from ._util import collapse_exception_groups

if TYPE_CHECKING:
    from ._doctor import DoctorReport
    from .testing._mock_model import MockModelServer, Step

__all__ = ["Console", "LiveView", "Progress", "build_parser", "default_db_path", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

PROG: Final = "codex-trio"
#: How often a long wait (spawn, restart backoff) prints a "still waiting" line.
PROGRESS_INTERVAL: Final = 3.0
OFFLINE_NOTE: Final = "the bundled scripted model (canned replies; it does not read your message)"
#: What a CLI user does about a missing codex (the library's own hint names RuntimeConfig.codex_bin instead).
CODEX_BIN_HINT: Final = (
    f"Pass --codex-bin PATH or set CODEX_TRIO_CODEX_BIN=PATH to use a codex you have. To install codex "
    f"{PINNED_CODEX_VERSION}: `npm install @openai/codex@{PINNED_CODEX_VERSION}` (then --codex-bin "
    f"node_modules/.bin/codex), or `./dev setup` in a codex_trio checkout (found there in .codex-npm, also from "
    f"a subdirectory)"
)


class UsageError(Exception):
    """A bad argument found after argparse accepted the command line: exit status 2, like argparse's own."""


class PreflightFailed(Exception):
    """``send``/``chat`` found, before starting codex, that no turn could succeed: exit status 1."""

    def __init__(self, report: DoctorReport) -> None:
        super().__init__("preflight failed")
        self.report = report


class StoppedBySignal(Exception):
    """A stop signal ended the command after a clean stop: exit status 128 + its number."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(signum.name)
        self.signum = signum


def default_db_path() -> Path:
    """``$XDG_STATE_HOME/codex-trio/state.db`` (default ``~/.local/state/codex-trio/state.db``)."""
    return default_base_dir() / "state.db"


def short_temp_root() -> str:
    """A temp root short enough for Unix socket paths: ``/tmp`` when usable (``$TMPDIR`` may be long)."""
    if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK | os.X_OK):
        return "/tmp"
    return tempfile.gettempdir()


# --- output -----------------------------------------------------------------------------------------------

_STYLES: Final = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "cyan": "36"}


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Console:
    """One output stream: whole lines or streamed partial text, ANSI colour only on a terminal.

    Colour is off when the stream is not a TTY, when ``NO_COLOR`` is set, or for ``TERM=dumb``. Every write
    is flushed, so a pipe reader sees each line (and each streamed delta) as it happens.
    """

    def __init__(self, stream: TextIO, *, color: bool | None = None) -> None:
        self.stream = stream
        self.tty = _isatty(stream)
        if color is None:
            color = self.tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        self.color = color
        self._partial = False

    def style(self, text: str, *styles: str) -> str:
        if not self.color or not styles:
            return text
        return f"\x1b[{';'.join(_STYLES[s] for s in styles)}m{text}\x1b[0m"

    def line(self, text: str = "", *styles: str) -> None:
        self.end_partial()
        self._write(self.style(text, *styles) + "\n")

    def partial(self, text: str, *styles: str) -> None:
        """Write without ending the line (streamed agent text)."""
        if text:
            self._write(self.style(text, *styles))
            self._partial = True

    def forget_partial(self) -> None:
        """The line was ended by someone else (the terminal echoing the user's Enter)."""
        self._partial = False

    def end_partial(self) -> None:
        if self._partial:
            self._partial = False
            self._write("\n")

    def json(self, value: Any) -> None:
        self.line(json.dumps(value, default=str, ensure_ascii=False))

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            pass  # `codex-trio ... | head`: the reader left; the exit status still tells the story


def format_duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


class Progress:
    """Prints ``... still <what> (N s)`` every few seconds while a long wait lasts (spawn, restart backoff)."""

    def __init__(self, console: Console | None, nursery: trio.Nursery, *, indent: str = "") -> None:
        self._console = console
        self._nursery = nursery
        self._indent = indent
        self._scope: trio.CancelScope | None = None

    def start(self, what: str, interval: float = PROGRESS_INTERVAL) -> None:
        self.stop()
        if self._console is None:
            return
        scope = self._scope = trio.CancelScope()
        self._nursery.start_soon(self._tick, scope, what, interval)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _tick(self, scope: trio.CancelScope, what: str, interval: float) -> None:
        assert self._console is not None
        started = trio.current_time()
        with scope:
            while True:
                await trio.sleep(interval)
                waited = trio.current_time() - started
                self._console.line(f"{self._indent}... still {what} ({waited:.0f} s)", "dim")


# --- live rendering of runtime events ---------------------------------------------------------------------


def _event_json(event: Event) -> dict[str, Any]:
    kind = {
        StatusChanged: "status",
        Restarting: "restarting",
        ThreadReady: "thread_ready",
        ThreadLost: "thread_lost",
        ServerRequestAnswered: "server_request",
        Lagged: "lagged",
    }.get(type(event), type(event).__name__)
    return {"type": kind, **attrs.asdict(event)}


_NOTICE_EVENTS: Final = (StatusChanged, Restarting, ThreadReady, ThreadLost, ServerRequestAnswered, Lagged)


class LiveView:
    """Shows a runtime's events as they happen, and keeps them so callers can wait for one.

    ``text`` (optional) receives the agent's message deltas, streamed as they arrive after ``label``;
    ``notices`` receives status changes, restarts (with their backoff, and progress while it lasts), thread
    resumes and losses, and declined server requests. With ``json_lines`` the notices are JSON objects, one a
    line, and no text is streamed.
    """

    def __init__(
        self,
        notices: Console | None,
        text: Console | None = None,
        *,
        indent: str = "",
        label: str = "codex> ",
        json_lines: bool = False,
    ) -> None:
        self.notices = notices
        self.text = None if json_lines else text
        self.indent = indent
        self.label = label
        self.json_lines = json_lines
        self.events: list[Event] = []
        self.deltas: dict[str, int] = {}  # agent-message item id -> deltas seen
        self.streamed_turns: set[str] = set()
        self._changed = trio.Event()
        self._streaming: str | None = None  # the item id whose text is being streamed
        self._progress: Progress | None = None

    async def run(self, stream: EventStream, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._progress = Progress(None if self.json_lines else self.notices, nursery, indent=self.indent)
            task_status.started()
            async for event in stream:
                self.events.append(event)
                self._render(event)
                self._changed.set()
                self._changed = trio.Event()
            self._progress.stop()

    def mark(self) -> int:
        """An index into :attr:`events`; pass it to :meth:`wait_for` to look only at later events."""
        return len(self.events)

    async def wait_for(self, predicate: Callable[[Event], bool], start: int = 0) -> Event:
        """The first event at index ``start`` or later that matches (waiting for it if need be)."""
        index = start
        while True:
            while index < len(self.events):
                event = self.events[index]
                if predicate(event):
                    return event
                index += 1
            changed = self._changed
            await changed.wait()

    async def caught_up(self, seq: int) -> None:
        """Return once this view has shown the settlement of submission ``seq`` (and so all its text)."""
        await self.wait_for(lambda e: isinstance(e, SubmissionSettled) and e.settlement.seq == seq)

    # rendering

    def _notice(self, message: str, *styles: str) -> None:
        self._end_text()
        if self.notices is not None:
            self.notices.line(f"{self.indent}{message}", *styles)

    def _end_text(self) -> None:
        if self.text is not None:
            self.text.end_partial()
        self._streaming = None

    def _render(self, event: Event) -> None:
        if isinstance(event, AgentMessageDelta):
            self.deltas[event.item_id] = self.deltas.get(event.item_id, 0) + 1
            self.streamed_turns.add(event.turn_id)
            if self.text is not None:
                if self._streaming != event.item_id:
                    self._end_text()
                    self.text.partial(f"{self.indent}{self.label}", "cyan", "bold")
                    self._streaming = event.item_id
                self.text.partial(event.delta)
            return
        if isinstance(event, (ItemCompleted, TurnCompleted)):
            if isinstance(event, TurnCompleted) or event.item_type == "agentMessage":
                self._end_text()
            return
        if self.json_lines:
            if self.notices is not None and isinstance(event, _NOTICE_EVENTS):
                self.notices.json(_event_json(event))
            return
        self._render_notice(event)

    def _render_notice(self, event: Event) -> None:
        progress = self._progress
        if isinstance(event, StatusChanged):
            styles = {"ready": ("green",), "degraded": ("yellow",), "failed": ("red", "bold")}.get(event.status, ())
            cause = f" ({event.error})" if event.error and event.status in ("degraded", "failed") else ""
            self._notice(f"status: {event.previous} -> {event.status}{cause}", *(styles or ("dim",)))
            if progress is not None:
                if event.status == "starting":
                    progress.start("starting codex app-server")
                elif event.status != "degraded":
                    progress.stop()
        elif isinstance(event, Restarting):
            self._notice(
                f"restart #{event.attempt}: backing off {event.delay:g} s before starting a new app-server",
                "yellow",
            )
            if progress is not None:
                progress.start(f"backing off before restart #{event.attempt}", min(PROGRESS_INTERVAL, 1.0))
        elif isinstance(event, ThreadReady):
            how = "resumed" if event.resumed else "started"
            self._notice(f"thread {event.thread_id} {how} (generation {event.generation})", "green")
        elif isinstance(event, ThreadLost):
            self._notice(
                f"thread {event.old_thread_id} could not be resumed ({event.reason}); "
                f"continuing on a new thread {event.new_thread_id} without its history",
                "red",
            )
        elif isinstance(event, ServerRequestAnswered) and event.rejected:
            self._notice(f"declined {event.method}: {event.summary}", "yellow")
        elif isinstance(event, Lagged):
            self._notice(f"(display fell behind: {event.dropped} streamed event(s) not shown)", "dim")


# --- arguments --------------------------------------------------------------------------------------------


def _add_codex_bin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--codex-bin",
        metavar="PATH",
        help="the codex binary (default: $CODEX_TRIO_CODEX_BIN, else the one `./dev setup` installed in "
        ".codex-npm of this directory or a parent, else `codex` on PATH)",
    )


def _add_no_preflight(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="start without checking first that codex runs, that you are logged in and that the model provider "
        "is reachable (for setups those checks misjudge)",
    )


def _add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def _add_db(p: argparse.ArgumentParser, *, offline: bool = True) -> None:
    offline_note = "; with --offline: none, state is in memory" if offline else ""
    p.add_argument(
        "--db",
        metavar="PATH",
        type=Path,
        help=f"the SQLite state database (default: {default_db_path()}{offline_note})",
    )


def _add_runtime_id(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--runtime-id",
        metavar="ID",
        default=default,
        help=f"the runtime's id in the database (1-64 of [A-Za-z0-9._-]){f'; default {default!r}' if default else ''}",
    )


def _add_offline(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--offline",
        action="store_true",
        help="use the bundled scripted local model and a throw-away CODEX_HOME instead of your codex config",
    )


def _add_cwd(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cwd", metavar="DIR", type=Path, help="codex's working directory (default: the current one)")


def _add_turn_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME", help="the model for the turn(s) (default: codex's configured model)")
    p.add_argument(
        "--effort",
        choices=get_args(ReasoningEffort),
        help="the reasoning effort for the turn(s) (default: the model's)",
    )


def _add_images(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image",
        metavar="PATH",
        action="append",
        dest="images",
        default=[],
        help="an image to send beside the text: a local file (png, jpeg, gif, webp) or a data: URL; repeatable",
    )


def _turn_options(args: argparse.Namespace) -> TurnOptions | None:
    model: str | None = getattr(args, "model", None)
    effort: ReasoningEffort | None = getattr(args, "effort", None)
    if model is None and effort is None:
        return None
    return TurnOptions(model=model, effort=effort)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive, finite number of seconds")
    return value


def _add_ready_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ready-timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=attrs.fields(RuntimeConfig).ready_timeout.default,
        help="how long codex may take from its spawn until it accepts connections, per attempt (default: "
        "%(default)gs; raise it on a heavily loaded machine)",
    )


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="log the runtime's warnings (-vv: debug)")


class _Parser(argparse.ArgumentParser):
    """The top-level parser; remembers its subcommands' parsers so their errors show their own usage."""

    commands: dict[str, argparse.ArgumentParser]


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Run and inspect long-lived Codex app-server runtimes (codex_trio).",
        epilog="Exit status: 0 ok, 1 failure, 2 bad arguments, 130 interrupted.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Not required here: main() reports a missing command itself, after naming any flag it does not know.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="offline showcase on the real codex binary: streaming, a teammate completion, a kill and restart",
        description="Run the offline showcase: the real codex app-server with the bundled scripted model. It "
        "streams a turn, delivers a teammate completion, SIGKILLs the app-server mid-turn, restarts it with "
        "backoff, resumes the thread, and refuses a redelivered message as a duplicate.",
    )
    _add_codex_bin(demo)
    _add_verbose(demo)

    send = sub.add_parser("send", help="run one turn and print the result", description="Run one turn.")
    send.add_argument("text", metavar="TEXT", help="the message to send")
    send.add_argument(
        "--source-id",
        metavar="ID",
        help="dedup key: a message whose id was already accepted is not sent again (default: a fresh id)",
    )
    for add in (_add_offline, _add_db, _add_codex_bin, _add_no_preflight, _add_cwd, _add_ready_timeout, _add_verbose):
        add(send)
    _add_turn_options(send)
    _add_images(send)
    _add_runtime_id(send, "cli")
    _add_json(send, "the result")

    chat = sub.add_parser(
        "chat",
        help="interactive session: type messages, watch replies stream in",
        description="Interactive session. Each line read from stdin is one message; EOF or /quit ends it.",
    )
    for add in (_add_offline, _add_db, _add_codex_bin, _add_no_preflight, _add_cwd, _add_ready_timeout, _add_verbose):
        add(chat)
    _add_turn_options(chat)
    _add_runtime_id(chat, "cli")
    _add_json(chat, "results and notices (one object a line)")

    status = sub.add_parser(
        "status", help="list runtimes and their state from the database", description="List runtimes."
    )
    _add_db(status, offline=False)
    _add_runtime_id(status, None)
    _add_json(status, "the runtimes")

    doctor = sub.add_parser(
        "doctor", help="check that a runtime can start here", description="Check that a runtime can start here."
    )
    for add in (_add_offline, _add_codex_bin, _add_cwd):
        add(doctor)
    _add_json(doctor, "the report")
    parser.commands = {"demo": demo, "send": send, "chat": chat, "status": status, "doctor": doctor}
    return parser


def _validate(args: argparse.Namespace) -> None:
    """Checks argparse cannot express, before anything starts; normalises ``cwd`` and ``db`` to absolute paths.

    Raises :class:`UsageError` (exit status 2).
    """
    runtime_id: str | None = getattr(args, "runtime_id", None)
    if runtime_id is not None:
        try:
            RuntimeConfig(runtime_id=runtime_id)
        except ConfigError as exc:
            raise UsageError(f"--runtime-id: {exc}") from None
    cwd: Path | None = getattr(args, "cwd", None)
    if cwd is not None:
        args.cwd = cwd.expanduser().absolute()
        if not args.cwd.is_dir():
            raise UsageError(f"--cwd {str(cwd)!r}: not a directory")
    db: Path | None = getattr(args, "db", None)
    if db is not None:
        args.db = db.expanduser().absolute()
        if args.db.is_dir():
            raise UsageError(f"--db {str(db)!r}: is a directory, not a database file")
    text: str | None = getattr(args, "text", None)
    if text is not None and not text.strip():
        raise UsageError("TEXT must not be empty")
    # The same checks submit() makes, before codex is started for nothing.
    try:
        check_options(_turn_options(args))
        # Checked (and an http(s) image fetched) once, here: submit() gets the data URLs and absolute paths.
        args.images = [image.value for image in check_images(getattr(args, "images", None) or ())]
    except InvalidInput as exc:
        flag = "--image" if exc.field.startswith("images") else "--" + exc.field.removeprefix("options.")
        raise UsageError(f"{flag}: {exc}") from None


# --- runtimes for send/chat -------------------------------------------------------------------------------


def _offline_reply(n: int) -> Step:
    from .testing._mock_model import Text

    return Text(f"Offline reply #{n} from the bundled scripted model, through the real codex app-server.")


@contextmanager
def _offline_model() -> Iterator[tuple[MockModelServer, Path]]:
    """The mock model plus a throw-away directory holding its ``CODEX_HOME``; both gone afterwards."""
    from .testing._mock_model import MockModelServer, write_codex_home  # the testing kit only when asked for

    base = Path(tempfile.mkdtemp(prefix="codex-trio-", dir=short_temp_root()))
    try:
        with MockModelServer(default=_offline_reply) as model:
            write_codex_home(base / "home", model.url)
            (base / "work").mkdir()
            yield model, base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _open_store(path: Path) -> SqliteStateStore:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CodexTrioError(f"cannot create the state directory {path.parent}: {exc.strerror or exc}") from exc
    return SqliteStateStore(path)


@asynccontextmanager
async def _cli_runtime(args: argparse.Namespace, notices: Console, nursery: trio.Nursery) -> AsyncIterator[Runtime]:
    """The runtime ``send`` and ``chat`` talk to, started with progress lines on ``notices``."""
    runtime_id: str = args.runtime_id
    cwd: Path | None = args.cwd
    db: Path | None = args.db
    async with AsyncExitStack() as stack:
        state: StateStore
        if args.offline:
            model, base = stack.enter_context(_offline_model())
            config = RuntimeConfig(
                runtime_id=runtime_id,
                cwd=cwd or base / "work",
                codex_bin=args.codex_bin,
                codex_home=base / "home",
                sandbox_mode="read-only",
                socket_dir=base / "s",
                state_dir=base / "state",
                spill_dir=base / "spill",
                ready_timeout=args.ready_timeout,
            )
            notices.line(f"offline: {OFFLINE_NOTE} at {model.url}", "dim")
            state = MemoryStateStore()
            if db is not None:
                state = _open_store(db)
        else:
            config = RuntimeConfig(
                runtime_id=runtime_id,
                cwd=cwd or Path.cwd(),
                codex_bin=args.codex_bin,
                ready_timeout=args.ready_timeout,
            )
            state = _open_store(db or default_db_path())
        config = attrs.evolve(config, codex_bin=await _preflight(args, config, notices))
        if isinstance(state, SqliteStateStore):
            await stack.enter_async_context(state)
        progress = Progress(notices, nursery)
        notices.line(f"starting codex app-server for runtime {runtime_id!r} ...", "dim")
        started = trio.current_time()
        progress.start("starting codex app-server")
        try:
            runtime = await stack.enter_async_context(open_runtime(config, state=state))
        finally:
            progress.stop()
        how = "resumed" if runtime.thread_resumed else "started"
        notices.line(
            f"ready in {format_duration(trio.current_time() - started)}: thread {runtime.thread_id} {how}", "green"
        )
        yield runtime


def cli_codex_bin(codex_bin: str | None) -> str:
    """The codex binary a CLI command runs: ``--codex-bin``, ``$CODEX_TRIO_CODEX_BIN``, the project's
    ``.codex-npm`` install (this directory or a parent), ``codex`` on PATH. :class:`BinaryNotFound` otherwise,
    with a hint for a CLI user."""
    return resolve_codex_bin(codex_bin, project_dir=Path.cwd(), configured_as="--codex-bin", hint=CODEX_BIN_HINT)


async def _preflight(args: argparse.Namespace, config: RuntimeConfig, notices: Console) -> str:
    """The codex binary to run, once it is known to run and to have a model it can reach and log in to.

    Without this, a user with no login or no network saw "ready" and then nothing: codex starts fine and only
    retries the model, for ever. :class:`PreflightFailed` (exit 1) says what is wrong and what to do.
    """
    if args.no_preflight:
        return cli_codex_bin(config.codex_bin)
    from ._doctor import doctor

    report = await doctor(
        config, check_model=True, project_dir=Path.cwd(), codex_bin_as="--codex-bin", binary_hint=CODEX_BIN_HINT
    )
    if not report.ok:
        raise PreflightFailed(report)
    assert report.codex_bin is not None
    checked = {f.name: f.detail for f in report.findings}
    notices.line(f"checked: {checked.get('codex version', report.codex_bin)}; {checked.get('model provider')}", "dim")
    return report.codex_bin


def _report_preflight(err: Console, where: str, report: DoctorReport, *, offline: bool) -> None:
    err.line(f"{where}: error: codex cannot run a turn here; nothing was started", "red", "bold")
    for finding in report.errors:
        err.line(f"  {finding.name}: {finding.detail}", "red")
    names = {finding.name for finding in report.errors}
    if "auth" in names:
        err.line("  to log in: `codex login` (ChatGPT account), or set OPENAI_API_KEY")
    if "model provider" in names:
        err.line("  check your network (and HTTPS_PROXY if you need one), or the model provider in config.toml")
    if not offline:
        err.line("  to try codex-trio without a login or network: add --offline (the bundled scripted model)")
    err.line(f"  `{PROG} doctor` checks everything; --no-preflight starts without these checks")


def _settlement_json(
    runtime: Runtime, admission_status: str, source_id: str, settlement: Settlement | None
) -> dict[str, Any]:
    return {
        "runtime_id": runtime.runtime_id,
        "thread_id": runtime.thread_id,
        "source_id": source_id,
        "admission": admission_status,
        "outcome": None if settlement is None else settlement.outcome,
        "turn_id": None if settlement is None else settlement.turn_id,
        "text": None if settlement is None else settlement.text,
        "error": None if settlement is None else settlement.error,
    }


async def _one_turn(
    runtime: Runtime, view: LiveView, args: argparse.Namespace, source_id: str, text: str
) -> tuple[str, Settlement | None]:
    """Submit one message (with the turn options and images of ``args``) and wait until it settled and the view has
    shown all of its text."""
    images: list[str] = getattr(args, "images", None) or []
    admission = await runtime.submit(ChannelInput(source_id, text, images=images), options=_turn_options(args))
    if not admission.accepted:
        return admission.status, None
    settlement = await admission.settled()
    assert admission.seq is not None
    with trio.move_on_after(5):  # the view is a step behind the settlement; never hang on it
        await view.caught_up(admission.seq)
    return admission.status, settlement


def _not_accepted_message(status: str, source_id: str) -> str:
    if status == "duplicate":
        return f"duplicate: a message with source id {source_id!r} was already accepted; not sent again"
    return f"not sent: the runtime answered {status!r}"


async def _send(args: argparse.Namespace, out: Console, err: Console) -> int:
    text: str = args.text
    source_id: str = args.source_id if args.source_id is not None else f"cli:{uuid.uuid4()}"
    stream = out if out.tty and not args.json else None
    async with trio.open_nursery() as nursery:
        async with _cli_runtime(args, err, nursery) as runtime, runtime.events() as events:
            view = LiveView(err, stream)
            await nursery.start(view.run, events)
            status, settlement = await _one_turn(runtime, view, args, source_id, text)
            result = _settlement_json(runtime, status, source_id, settlement)
        nursery.cancel_scope.cancel()
    if args.json:
        out.json(result)
    elif settlement is None:
        err.line(_not_accepted_message(status, source_id), "yellow")
    elif stream is None and settlement.text:
        out.line(settlement.text)
    if settlement is None:
        return EXIT_OK if status == "duplicate" else EXIT_FAILED
    if settlement.outcome != "completed":
        if not args.json:
            err.line(f"turn {settlement.outcome}: {settlement.error or 'no detail'}", "red")
        return EXIT_FAILED
    return EXIT_OK


async def _read_line() -> str | None:
    line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line if line else None


async def _chat(args: argparse.Namespace, out: Console, err: Console) -> int:
    session = uuid.uuid4().hex[:8]
    json_mode: bool = args.json
    interactive = _isatty(sys.stdin) and out.tty and not json_mode
    count = 0
    async with trio.open_nursery() as nursery:
        async with _cli_runtime(args, err, nursery) as runtime, runtime.events() as events:
            view = LiveView(out if json_mode else err, out, json_lines=json_mode)
            await nursery.start(view.run, events)
            if interactive:
                err.line("type a message and press Enter; /quit or Ctrl-D to leave", "dim")
            while True:
                if interactive:
                    out.partial("you> ", "bold")
                line = await _read_line()
                if interactive:
                    out.forget_partial()  # the terminal echoed the user's Enter
                if line is None:
                    break
                message = line.rstrip("\r\n")
                if message.strip() in ("/quit", "/exit"):
                    break
                if not message.strip():
                    continue
                count += 1
                source_id = f"chat:{session}:{count}"
                status, settlement = await _one_turn(runtime, view, args, source_id, message)
                if json_mode:
                    out.json({"type": "result", **_settlement_json(runtime, status, source_id, settlement)})
                elif settlement is None:
                    err.line(_not_accepted_message(status, source_id), "yellow")
                elif settlement.outcome != "completed":
                    err.line(f"turn {settlement.outcome}: {settlement.error or 'no detail'}", "red")
                elif settlement.turn_id not in view.streamed_turns and settlement.text:
                    out.line(f"codex> {settlement.text}")  # a reply that arrived without deltas
        nursery.cancel_scope.cancel()
    if not json_mode:
        err.line(f"bye ({count} message(s) sent)", "dim")
    return EXIT_OK


# --- status -----------------------------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


async def _status(args: argparse.Namespace, out: Console, err: Console) -> int:
    db: Path = args.db or default_db_path()
    wanted: str | None = args.runtime_id
    if not await trio.Path(db).exists():
        # Reading must not create a database as a side effect.
        if args.json:
            out.json({"db": str(db), "exists": False, "runtimes": []})
        else:
            out.line(f"no runtimes: {db} does not exist yet")
        return EXIT_FAILED if wanted is not None else EXIT_OK
    async with SqliteStateStore(db) as store:
        records = [r for r in await store.list_runtimes() if wanted is None or r.runtime_id == wanted]
        details: _Details = []
        for record in records:
            snapshot = await store.load(record.runtime_id)
            settlements = await store.recent_settlements(record.runtime_id, 10) if wanted is not None else []
            details.append((record, snapshot, settlements))
    if args.json:
        out.json(
            {
                "db": str(db),
                "exists": True,
                "runtimes": [
                    {
                        **attrs.asdict(record),
                        "pending": len(snapshot.pending),
                        "lost_threads": [attrs.asdict(lost) for lost in snapshot.lost_threads],
                        **({"recent_settlements": [attrs.asdict(s) for s in recent]} if wanted is not None else {}),
                    }
                    for record, snapshot, recent in details
                ],
            }
        )
    elif wanted is not None and not records:
        err.line(f"no runtime {wanted!r} in {db}", "yellow")
    elif not records:
        out.line(f"no runtimes recorded in {db}")
    else:
        _print_status_table(out, db, details)
    return EXIT_FAILED if wanted is not None and not records else EXIT_OK


_Details = list[tuple[RuntimeRecord, Snapshot, list[StoredSettlement]]]


def _print_status_table(out: Console, db: Path, details: _Details) -> None:
    out.line(f"runtimes in {db}:", "bold")
    rows = [["RUNTIME", "STATUS", "THREAD", "PENDING", "LAST READY", "LAST ACTIVITY", "LAST ERROR"]]
    for record, snapshot, _ in details:
        error = (record.last_error or "-").splitlines()[0] if record.last_error else "-"
        rows.append(
            [
                record.runtime_id,
                record.status,
                record.thread_id or "-",
                str(len(snapshot.pending)),
                _when(record.last_ready_at),
                _when(record.updated_at),
                error if len(error) <= 60 else error[:57] + "...",
            ]
        )
    status_styles = {"ready": ("green",), "failed": ("red",), "degraded": ("yellow",)}
    lines = _table(rows)
    out.line(lines[0], "dim")
    for line, (record, _, _) in zip(lines[1:], details, strict=True):
        out.line(line, *status_styles.get(record.status, ()))
    for record, snapshot, recent in details:
        for lost in snapshot.lost_threads:
            out.line(f"{record.runtime_id}: lost thread {lost.old_thread_id} -> {lost.new_thread_id} ({lost.reason})")
        for s in recent:
            detail = f" ({s.detail})" if s.detail else ""
            out.line(f"{record.runtime_id}: #{s.seq} {s.source_id or '-'} {s.outcome} at {_when(s.at)}{detail}")


# --- doctor -----------------------------------------------------------------------------------------------


async def _doctor(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ._doctor import doctor

    cwd: Path | None = args.cwd
    with ExitStack() as cleanup:
        codex_home = None
        if args.offline:
            base = Path(tempfile.mkdtemp(prefix="codex-trio-", dir=short_temp_root()))
            cleanup.callback(shutil.rmtree, base, ignore_errors=True)
            from .testing._mock_model import write_codex_home

            # No model server is needed to check a set-up; any local URL makes a valid config.toml.
            codex_home = write_codex_home(base / "home", "http://127.0.0.1:9/v1")
        config = RuntimeConfig(codex_bin=args.codex_bin, cwd=cwd, codex_home=codex_home)
        report = await doctor(
            config,
            check_model=not args.offline,
            project_dir=Path.cwd(),
            codex_bin_as="--codex-bin",
            binary_hint=CODEX_BIN_HINT,
        )
    if args.json:
        out.json(report.to_json())
    else:
        for index, line in enumerate(report.render().splitlines()):
            styles: tuple[str, ...] = ()
            if index == 0:
                styles = ("green", "bold") if report.ok else ("red", "bold")
            elif "[error]" in line:
                styles = ("red",)
            elif "[warning]" in line:
                styles = ("yellow",)
            out.line(line, *styles)
    return EXIT_OK if report.ok else EXIT_FAILED


# --- main -------------------------------------------------------------------------------------------------


@contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """The library's log lines on stderr: errors only by default (events already show restarts)."""
    logger = logging.getLogger("codex_trio")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel({0: logging.ERROR, 1: logging.WARNING}.get(verbosity, logging.DEBUG))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _run(args: argparse.Namespace, out: Console, err: Console) -> int:
    command: str = args.command
    _validate(args)
    if command == "demo":
        from ._demo import run_demo_command

        return run_demo_command(args, out, err)
    handler = {"send": _send, "chat": _chat, "status": _status, "doctor": _doctor}[command]

    async def collapsed() -> int:
        with collapse_exception_groups():  # report the error that explains a nursery's failure, not a group
            # SIGTERM (a service manager), SIGHUP (a closed terminal) and SIGINT cancel the command, so its runtime
            # leaves its `async with` block the normal way: the child is reaped and its state settled.
            async with stop_on_signals() as stop:
                return await handler(args, out, err)
        if stop.received is None:  # pragma: no cover - only a signal's cancellation skips the return above
            raise RuntimeError(f"{PROG} {args.command} ended without a result")
        raise StoppedBySignal(stop.received)

    return trio.run(collapsed)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``codex-trio`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.error(
                f"unrecognized arguments: {' '.join(extra)}"
                if extra
                else "the following arguments are required: COMMAND"
            )
        if extra:
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse has printed usage and the error (status 2), or --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_FAILED
    out, err = Console(sys.stdout), Console(sys.stderr)
    where = f"{PROG} {args.command}"
    with _logging(getattr(args, "verbose", 0)):
        try:
            return _run(args, out, err)
        except UsageError as exc:
            err.line(f"{where}: error: {exc}")
            return EXIT_USAGE
        except BinaryNotFound as exc:
            err.line(f"{where}: error: {exc}", "red")
            return EXIT_FAILED
        except PreflightFailed as failed:
            _report_preflight(err, where, failed.report, offline=getattr(args, "offline", False))
            return EXIT_FAILED
        except ConfigError as exc:
            err.line(f"{where}: error: {exc}")
            return EXIT_USAGE
        except (CodexTrioError, OSError) as exc:
            err.line(f"{where}: error: {type(exc).__name__}: {exc}", "red")
            return EXIT_FAILED
        except StoppedBySignal as stopped:
            how = "interrupted" if stopped.signum == signal.SIGINT else f"stopped by {stopped.signum.name}"
            err.line(f"{where}: {how}", "yellow")
            return 128 + int(stopped.signum)
        except KeyboardInterrupt:  # Ctrl-C outside the stop_on_signals block, or a second one while it stops
            err.line(f"{where}: interrupted", "yellow")
            return EXIT_INTERRUPTED
