"""open_runtime / Runtime: the public face of a runtime, and how it starts and stops.

Task tree (see docs/architecture.md)::

    open_runtime                      nursery N0, as long as the runtime lives
    ├── engine                        owns the RuntimeCore: inbox -> core -> actions          (_engine.py)
    │   ├── settlement writer         persists settlements, in order
    │   └── batch writes              one group-committed admission batch at a time
    └── supervisor                    one session after another; backoff; give up         (_supervisor.py)
        └── session N1                launch, connect, handshake, thread, watchers, RPCs      (_session.py)

The ``Runtime`` object itself holds no turn state: it checks input at the door, forwards requests to the engine
and answers questions about the status; the core owns the queue and the turns, the supervisor the status, the
session the live connection.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, TypeVar, final

import attrs
import trio

from . import _protocol as p
from ._admission import MAX_INPUT_CHARS, Admission, CompletionResult, check_input
from ._approvals import ApprovalDecisionRecord, ApprovalPolicy
from ._completions import (
    COMPLETION_TRIGGER_TEXT,
    Completion,
    CompletionLedger,
    Plan,
    build_completion_item,
    completion_budget,
    needs_spill,
)
from ._config import RuntimeConfig
from ._connection import ConnectionStatistics, ServerRequestHandler
from ._core import CoreStatistics, RuntimeCore, SubmissionKind
from ._engine import Engine, LiveSession, ThreadHold
from ._errors import (
    CodexTrioError,
    ConfigError,
    ConnectionLost,
    InvalidInput,
    RequestTimeout,
    RpcError,
    RuntimeStopped,
)
from ._events import EventHub, EventStream, ServerRequestAnswered, StatusChanged, ThreadLost, ThreadReady, TurnCompleted
from ._json import JsonValue
from ._jsonrpc import ServerRequest
from ._launcher import Launcher, ProcessLauncher, default_base_dir
from ._policy import RestartStatistics, RestartTracker
from ._recovery import Restored, load
from ._render import ChannelInput, render_channel_input
from ._session import describe
from ._settlement import Settlement
from ._state import LostThread, MemoryStateStore, RuntimeStatus, StateStore
from ._supervisor import StatusBoard, Supervisor
from ._threads import (
    ThreadPage,
    ThreadResolution,
    archive_thread,
    compact_thread,
    fork_thread,
    list_threads,
    start_thread,
)
from ._turn_options import ImageInput, TurnOptions, check_images, check_options
from ._usage import TokenUsage
from ._util import NoPublicConstructor

__all__ = [
    "MAX_INPUT_CHARS",
    "Admission",
    "Checkpoint",
    "CompletionResult",
    "Runtime",
    "RuntimeStatistics",
    "open_runtime",
]

log = logging.getLogger("codex_trio.runtime")

_T = TypeVar("_T")

SystemReason = Literal["restart-notice", "teammate-completion", "runtime-control"]
#: Methods ``Runtime.request`` refuses: the runtime's own session set-up, which a second call would break.
_OWN_METHODS: Final = frozenset({"initialize", "initialized"})
#: Sessions a thread operation tries before it gives up on a crash-looping app-server.
_OPERATION_ATTEMPTS: Final = 3
#: How often a caller waiting for a live session looks again in the moment between "ready" and the engine's view.
_LIVE_POLL: Final = 0.005
_SYSTEM_REASONS: Final = ("restart-notice", "teammate-completion", "runtime-control")


@attrs.frozen
class Checkpoint:
    """Where to resume: ``Checkpoint("codexThread", thread_id)`` (the only kind a Codex runtime has)."""

    kind: str
    id: str


@attrs.frozen
class RuntimeStatistics:
    """A snapshot of a runtime (see :meth:`Runtime.statistics`)."""

    status: RuntimeStatus
    generation: int
    thread_id: str | None
    restarts: int
    queued: int
    in_flight: int
    open_turns: tuple[str, ...]
    waiting_admissions: int
    event_subscribers: int
    #: the runtime's cumulative token usage: every model call of its thread, across restarts (with a durable
    #: store, as of the latest persisted settlement when the runtime last stopped), None before the first
    usage: TokenUsage | None
    core: CoreStatistics
    restart: RestartStatistics
    connection: ConnectionStatistics | None


@attrs.define(eq=False)
class _InflightCompletion:
    """One completion delivery in progress; concurrent duplicates wait on it and share its result."""

    done: trio.Event = attrs.field(factory=trio.Event)
    result: CompletionResult | None = None


@final
class Runtime(metaclass=NoPublicConstructor):
    """A long-lived Codex runtime; :func:`open_runtime` makes one."""

    def __init__(
        self,
        config: RuntimeConfig,
        store: StateStore,
        launcher: Launcher,
        approvals: ServerRequestHandler | None,
        restored: Restored,
        hub: EventHub | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.launcher = launcher
        #: a hub the app passed in is the app's to close; the runtime closes only its own
        self._own_hub = hub is None
        self.hub = hub if hub is not None else EventHub(config.event_buffer)
        self.approvals = self._wire_approvals(approvals)
        self.board = StatusBoard(config.runtime_id, store, self.hub)
        self.tracker = RestartTracker(config.restart)
        core = RuntimeCore(
            runtime_id=config.runtime_id,
            usage=restored.usage,
            delivery_mode=config.delivery_mode,
            dedup_window=config.dedup_window,
            turn_timeout=config.turn_timeout,
            interrupt_timeout=config.request_timeout,
            model_retry_limit=config.model_retry_limit,
            model_retry_timeout=config.model_retry_timeout,
            next_seq=restored.next_seq,
            seen=restored.seen,
            pending=restored.pending,
            in_doubt=restored.in_doubt,
        )
        self.engine = Engine(
            core,
            runtime_id=config.runtime_id,
            store=store,
            hub=self.hub,
            dedup_window=config.dedup_window,
            request_timeout=config.request_timeout,
            on_settled=self._on_settled,
            is_ready=lambda: self.board.status == "ready",
        )
        self.supervisor = Supervisor(self)
        self._thread_id = restored.thread_id
        self._resumed = False
        self._last_result: Settlement | None = None
        self._stopping = False
        self._completions = CompletionLedger()
        if restored.completions is not None:
            self._completions.restore(restored.completions)
        self._completion_inflight: dict[str, _InflightCompletion] = {}

    def _wire_approvals(self, approvals: ServerRequestHandler | None) -> ServerRequestHandler:
        """Answer server requests with ``approvals`` and publish every answer as a ServerRequestAnswered event."""
        if approvals is None:
            approvals = ApprovalPolicy()
        if isinstance(approvals, ApprovalPolicy):
            user_callback = approvals.on_decision

            def on_decision(record: ApprovalDecisionRecord) -> None:
                summary = f"{record.decision_summary}: {record.summary}" if record.summary else record.decision_summary
                self.hub.publish(
                    ServerRequestAnswered(
                        record.method, record.rejected, summary, self.generation, runtime_id=self.runtime_id
                    )
                )
                if user_callback is not None:
                    user_callback(record)

            return attrs.evolve(approvals, on_decision=on_decision)
        handler = approvals

        async def publishing(request: ServerRequest) -> Any:
            try:
                result = await handler(request)
            except BaseException as exc:
                self.hub.publish(
                    ServerRequestAnswered(
                        request.method, True, f"error: {exc}", self.generation, runtime_id=self.runtime_id
                    )
                )
                raise
            self.hub.publish(
                ServerRequestAnswered(request.method, False, "answered", self.generation, runtime_id=self.runtime_id)
            )
            return result

        return publishing

    # == public state ===============================================================================================

    @property
    def runtime_id(self) -> str:
        return self.config.runtime_id

    @property
    def status(self) -> RuntimeStatus:
        return self.board.status

    @property
    def thread_id(self) -> str | None:
        return self._thread_id

    @property
    def thread_resumed(self) -> bool:
        return self._resumed

    @property
    def generation(self) -> int:
        return self.supervisor.generation

    @property
    def restarts(self) -> int:
        return self.tracker.statistics().total_restarts

    @property
    def causes(self) -> list[BaseException]:
        """The most recent session failures (bounded), oldest first."""
        return list(self.tracker.causes)

    @property
    def last_result(self) -> Settlement | None:
        """The latest ``completed`` settlement that carried agent text (the original's ``getLast()``)."""
        return self._last_result

    @property
    def stopping(self) -> bool:
        return self._stopping

    def events(self) -> EventStream:
        """A bounded, typed stream of runtime events (status, turns, items, deltas, usage, settlements).

        It starts now: what happened while ``open_runtime`` started the first session is not in it. To see that
        too, create an :class:`EventHub`, subscribe, and pass it as ``open_runtime(config, events=hub)``. On a hub
        the app passed in, this stream carries every runtime that shares the hub and ends when the app closes it.
        """
        return self.hub.subscribe()

    async def wait_status(self, *statuses: RuntimeStatus) -> RuntimeStatus:
        """Wait until the runtime is in, or passes through, one of ``statuses``; returns the one it reached.

        A status held only briefly (``degraded`` during a zero-length backoff) still counts once it has been
        entered after this call began: transitions are logged, not only the current status compared.
        """
        return await self.board.wait(*statuses)

    def statistics(self) -> RuntimeStatistics:
        core = self.engine.core.statistics()
        live = self.engine.live
        return RuntimeStatistics(
            status=self.status,
            generation=self.generation,
            thread_id=self._thread_id,
            restarts=self.restarts,
            queued=core.queued,
            in_flight=core.in_flight,
            open_turns=core.open_turns,
            waiting_admissions=core.waiting_requests + core.writing,
            event_subscribers=self.hub.subscriber_count,
            usage=self.engine.core.usage,
            core=core,
            restart=self.tracker.statistics(),
            connection=live.connection.statistics() if live is not None else None,
        )

    # == input ======================================================================================================

    async def submit(self, item: ChannelInput, *, options: TurnOptions | None = None) -> Admission:
        """Accept a channel message (deduplicated by ``source_id``) for delivery in acceptance order.

        Raises :class:`~codex_trio.InvalidInput` for input that cannot travel (nothing is recorded): text or id
        that cannot be sent, a bad ``options`` value (named, with what is accepted), a ``cwd`` that is not an
        existing directory, an image that is a bad URL or not a readable image file. Concurrent callers are safe:
        each is accepted or refused whole, in one order. A caller cancelled before its input was taken leaves no
        trace; one cancelled while its input is being made durable gets the admission anyway (the cancellation
        follows at its next checkpoint).

        ``options`` (:class:`~codex_trio.TurnOptions`) and ``item.images`` are stored with the input (they survive
        a restart) and sent on the ``turn/start`` of the turn it starts; images also travel on a ``turn/steer``.
        With ``delivery_mode="steer"``, an input arriving while a turn runs joins that turn only if it sets no
        options or exactly the options that turn was started with: a running turn's model, effort, sandbox, cwd
        or output schema cannot change. Otherwise it waits for that turn to end and starts its own turn — and
        the inputs accepted after it wait behind it, so acceptance order holds. codex keeps the settings (all but
        ``output_schema``) for the thread's later turns. With ``output_schema``, the settlement carries the final
        message parsed as ``Settlement.output`` (not JSON: ``failed``, the text kept).
        """
        if not isinstance(item, ChannelInput):
            raise TypeError(f"submit() takes a ChannelInput (got {type(item).__name__})")
        text = render_channel_input(item)
        checked = check_options(options)  # cwd: one stat, as cheap as the checks next to it
        images: tuple[ImageInput, ...] = ()
        if item.images:
            if all(image.startswith("data:") for image in item.images):
                images = check_images(item.images)  # data URLs only: nothing to read or fetch
            else:
                # Reads each file's first bytes, fetches remote images: a thread, never the Trio thread. Nothing is
                # recorded yet, so a cancelled caller need not wait for it.
                images = await trio.to_thread.run_sync(check_images, item.images, abandon_on_cancel=True)
        return await self._admit(item.source_id, "channel", text, options=checked, images=images)

    async def system_input(self, text: str, reason: SystemReason = "restart-notice") -> Admission:
        """A system notice. ``restart-notice`` is one-shot per session: ``skipped`` once anything else woke the
        session's thread (as in the original). During a restart it is queued for the next session and counts as
        that session's notice. It is not persisted: a notice belongs to a session. Other reasons are always
        delivered (and persisted), without dedup."""
        if reason not in _SYSTEM_REASONS:
            raise ConfigError(
                f"system_input reason={reason!r} is not one of 'restart-notice' | 'teammate-completion' | "
                f"'runtime-control'",
                field="reason",
                value=reason,
            )
        if not isinstance(text, str):
            raise TypeError(f"system_input() takes text as a str (got {type(text).__name__})")
        return await self._admit("", "notice" if reason == "restart-notice" else "system", text)

    async def _admit(
        self,
        source_id: str,
        kind: SubmissionKind,
        text: str,
        *,
        options: TurnOptions | None = None,
        images: tuple[ImageInput, ...] = (),
    ) -> Admission:
        check_input(source_id, text)
        if self._stopping:
            await trio.lowlevel.checkpoint()
            return Admission("stopped", source_id)
        return await self.engine.admit(source_id, kind, text, options=options, images=images)

    async def interrupt(self) -> bool:
        """Interrupt the active turn. Returns False when no turn is active (or codex has none to interrupt)."""
        if self._stopping:
            await trio.lowlevel.checkpoint()
            return False
        return await self.engine.interrupt()

    async def completion_input(self, completion: Completion) -> CompletionResult:
        """Deliver a teammate's completion: inject it into the thread, then wake the thread with a trigger turn.

        Idempotent by ``completion.id``: concurrent duplicates coalesce; an already accepted id answers
        ``accepted`` at once; a retry after a successful inject and a failed trigger does not inject twice.
        """
        if self._completions.plan(completion.id) is Plan.ALREADY_ACCEPTED:
            await trio.lowlevel.checkpoint()
            return CompletionResult("accepted")
        inflight = self._completion_inflight.get(completion.id)
        if inflight is not None:
            await inflight.done.wait()
            # None: the delivering call was cancelled before it had an answer.
            return inflight.result or CompletionResult("failed", reason="the coalesced delivery was cancelled")
        inflight = self._completion_inflight[completion.id] = _InflightCompletion()
        try:
            inflight.result = await self._deliver_completion(completion)
            return inflight.result
        finally:
            del self._completion_inflight[completion.id]
            inflight.done.set()

    async def _deliver_completion(self, completion: Completion) -> CompletionResult:
        if self._stopping:
            return CompletionResult("unsupported", reason="runtime stopped")
        with trio.move_on_after(self.config.request_timeout):
            await self.wait_status("ready", "stopping", "stopped", "failed")
        live = self.engine.live
        if live is None or self.status != "ready":
            return CompletionResult("unsupported", reason=f"runtime is {self.status}")
        if self._completions.plan(completion.id) is Plan.INJECT_AND_TRIGGER:
            spill_dir = (self.config.spill_dir or default_base_dir() / "spill") / self.runtime_id
            try:
                budget = completion_budget(dict(os.environ))
                if needs_spill(completion.result, budget):
                    # Only a spill touches the disk; the common small result needs no thread hop.
                    item = await trio.to_thread.run_sync(build_completion_item, completion, spill_dir, budget)
                else:
                    item = build_completion_item(completion, spill_dir, budget)
                await live.connection.request(
                    "thread/inject_items", p.unstructure(p.ThreadInjectItemsParams(live.thread_id, [item]))
                )
            except (RpcError, OSError, ConnectionLost, RequestTimeout, CodexTrioError) as exc:
                return CompletionResult(
                    "failed",
                    error=exc,
                    reason=f"teammate completion thread/inject_items failed (requires codex 0.137+): {exc}",
                )
            self._completions.mark_injected(completion.id)
            await self.store.save_completions(self.runtime_id, self._completions.snapshot())
        source_id = self._completions.next_trigger_source_id(completion.id)
        admission = await self._admit(source_id, "trigger", COMPLETION_TRIGGER_TEXT)
        if admission.status == "stopped":
            return CompletionResult("unsupported", reason="runtime stopped")
        if not admission.accepted:
            return CompletionResult("failed", error=admission.error, reason=f"trigger {admission.status}")
        self._completions.mark_accepted(completion.id)
        await self.store.save_completions(self.runtime_id, self._completions.snapshot())
        return CompletionResult("accepted")

    # == threads and the escape hatch ==================================================================================

    async def request(
        self, method: str, params: Mapping[str, JsonValue] | None = None, *, timeout: float | None = None
    ) -> JsonValue:
        """Send one JSON-RPC request the library does not wrap to the live app-server; returns codex's result.

        Waits for a live session first (at most ``timeout`` seconds, which also bounds the answer; default
        ``config.request_timeout``). Raises :class:`RpcError` (:class:`MethodNotSupported` for a method this codex
        lacks) as codex answered, :class:`RequestTimeout`, :class:`ConnectionLost` if the session ended with the
        request sent (it is not re-sent: it may have had effects; one that certainly never left is sent in the next
        session), :class:`RuntimeStopped` once the runtime stops. What it does is between you and codex: a turn
        started through it is not one of the runtime's inputs (no dedup, no settlement; its deadline still holds).
        """
        if not isinstance(method, str) or not method:
            raise InvalidInput(f"method must be a non-empty str (got {method!r})", field="method")
        if method in _OWN_METHODS:
            raise InvalidInput(
                f"{method!r} belongs to the runtime's session set-up; it cannot be sent again", field="method"
            )
        wait = self.config.request_timeout if timeout is None else timeout

        async def send(live: LiveSession) -> JsonValue:
            result: JsonValue = await live.connection.request(method, params, timeout=wait)
            return result

        return await self._on_live_session(send, timeout=wait, resend=False)

    async def list_threads(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        archived: bool = False,
        search: str | None = None,
        timeout: float | None = None,
    ) -> ThreadPage:
        """One page of codex's threads, newest first (``archived=True``: the archived ones; ``search``: a substring
        of the title). Read-only, so it is retried in the next session if the app-server dies under it."""
        wait = self.config.request_timeout if timeout is None else timeout

        async def ask(live: LiveSession) -> ThreadPage:
            return await list_threads(live.connection, limit=limit, cursor=cursor, archived=archived, search=search)

        return await self._on_live_session(ask, timeout=wait, resend=True)

    async def archive_thread(self, thread_id: str, *, timeout: float | None = None) -> None:
        """Archive another thread of codex's (not the runtime's own: start a :meth:`new_thread` first)."""
        if not isinstance(thread_id, str) or not thread_id:
            raise InvalidInput(f"thread_id must be a non-empty str (got {thread_id!r})", field="thread_id")
        if thread_id == self._thread_id:
            raise InvalidInput(
                f"thread {thread_id} is the runtime's own thread; call new_thread() first, then archive it",
                field="thread_id",
            )
        wait = self.config.request_timeout if timeout is None else timeout

        async def archive(live: LiveSession) -> None:
            await archive_thread(live.connection, thread_id)

        await self._on_live_session(archive, timeout=wait, resend=False)

    async def new_thread(self) -> str:
        """Move the runtime to a fresh thread, in the input order: everything accepted before this call is delivered
        (and settles) on the old thread, everything after it on the new one. Recorded like a lost thread: the store
        keeps the move (a restart resumes the new thread), a :class:`ThreadLost` event names both threads, and the
        next settlement carries it so its caller knows the earlier conversation is not in context. Returns the new
        thread's id. If the app-server dies during the move, it is done in the next session."""

        async def start(live: LiveSession) -> str:
            return await start_thread(live.connection, self.config)

        return await self._move_thread(start, "a new thread was started on request (Runtime.new_thread)")

    async def fork_thread(self, *, switch: bool = False) -> str:
        """Fork the runtime's thread, in the input order (the fork holds everything accepted before this call) and
        return the fork's id. ``switch=True`` moves the runtime onto the fork, recorded as :meth:`new_thread` does;
        otherwise the runtime stays on its thread and the fork is the application's to use."""

        async def fork(live: LiveSession) -> str:
            return await fork_thread(live.connection, self.config, self._current_thread())

        if switch:
            return await self._move_thread(fork, "the runtime moved to a fork of its thread (Runtime.fork_thread)")
        async with self.engine.hold() as hold:
            return await self._in_hold(hold, fork)

    async def compact_thread(self) -> None:
        """Have codex compact the thread's history (a summary replaces it in the model's context), in the input
        order; returns once codex's compaction turn has ended. Input accepted meanwhile waits for it."""

        async def compact(live: LiveSession) -> None:
            async with self.hub.subscribe() as events:
                await compact_thread(live.connection, self._current_thread())
                with trio.move_on_after(self.config.turn_timeout) as scope:
                    async for event in events:
                        if isinstance(event, TurnCompleted):
                            return
                        if isinstance(event, StatusChanged) and event.status != "ready":
                            raise ConnectionLost(f"the session ended during compaction ({event.status})")
                if scope.cancelled_caught:
                    raise RequestTimeout("thread/compact/start", self.config.turn_timeout, "compaction did not end")
                raise RuntimeStopped("the runtime stopped during compaction")

        async with self.engine.hold() as hold:
            await self._in_hold(hold, compact)

    def _current_thread(self) -> str:
        thread_id = self._thread_id
        assert thread_id is not None, "a live session always has a thread"
        return thread_id

    async def _move_thread(self, make: Callable[[LiveSession], Awaitable[str]], reason: str) -> str:
        async with self.engine.hold() as hold:
            old = self._current_thread()

            async def made(live: LiveSession) -> tuple[str, LiveSession]:
                return await make(live), live

            new_id, live = await self._in_hold(hold, made)
            # No await between the answer and here: a session that starts from now on resumes the new thread.
            self._thread_id = new_id
            hold.switch_to = new_id
            with trio.CancelScope(shield=True):
                await self._moved(old, new_id, reason, live.generation, ready=True)
            return new_id

    async def _in_hold(self, hold: ThreadHold, op: Callable[[LiveSession], Awaitable[_T]]) -> _T:
        """Run ``op`` on the session the hold is offered in; if that session dies under it, again in the next."""
        after = 0
        for attempt in range(1, _OPERATION_ATTEMPTS + 1):
            live = await hold.wait(after=after)
            try:
                result = await op(live)
            except ConnectionLost:
                if attempt == _OPERATION_ATTEMPTS:
                    raise
                after = live.generation
                continue
            if live.closed:  # answered, but the session ended before we could act on it: do it in the next one
                after = live.generation
                continue
            return result
        raise ConnectionLost(f"the app-server session ended {_OPERATION_ATTEMPTS} times during the operation")

    async def _on_live_session(self, op: Callable[[LiveSession], Awaitable[_T]], *, timeout: float, resend: bool) -> _T:
        """Run ``op`` on the live session, waiting up to ``timeout`` for one. ``resend``: the operation is safe to
        repeat, so it is run again in the next session if this one dies under it (else only if it never left)."""
        after = 0
        for attempt in range(1, _OPERATION_ATTEMPTS + 1):
            live = await self._live(timeout, after=after)
            try:
                return await op(live)
            except ConnectionLost as exc:
                if attempt == _OPERATION_ATTEMPTS or not (resend or exc.request_sent is False):
                    raise
                after = live.generation  # this session is ending: the next one
        raise AssertionError("unreachable")  # pragma: no cover

    async def _live(self, timeout: float, *, after: int = 0) -> LiveSession:
        """The live session (of a generation above ``after``), waiting up to ``timeout`` for one."""
        if self._stopping:
            raise RuntimeStopped("the runtime is stopping")
        with trio.move_on_after(timeout):
            while True:
                status = await self.wait_status("ready", "stopping", "stopped", "failed")
                if status != "ready":
                    raise RuntimeStopped(f"the runtime is {status}")
                live = self.engine.live
                if live is not None and live.generation > after and self.status == "ready":
                    return live
                # "ready", but the engine has not taken the session yet, or it has just ended: look again shortly
                await trio.sleep(_LIVE_POLL)
        raise RequestTimeout(
            "(waiting for a live session)", timeout, f"no app-server session was ready within {timeout:g}s"
        )

    # == what the session and the engine report ======================================================================

    async def thread_resolved(self, resolution: ThreadResolution, generation: int) -> None:
        self._resumed = resolution.resumed
        new_id = resolution.thread_id
        if resolution.lost_thread_id is not None:
            reason = resolution.lost_reason or "thread/resume failed"
            await self._moved(resolution.lost_thread_id, new_id, reason, generation, ready=False)
        elif not resolution.resumed:
            await self.store.set_thread_id(self.runtime_id, new_id)
        self._thread_id = new_id
        self.hub.publish(ThreadReady(new_id, resolution.resumed, generation, runtime_id=self.runtime_id))

    async def _moved(self, old: str, new: str, reason: str, generation: int, *, ready: bool) -> None:
        """The runtime left thread ``old`` for ``new``: the store, the next settlement and the subscribers learn it
        (``ready``: the session is already on the new thread, so say so; a starting session says it itself)."""
        await self.store.record_lost_thread(self.runtime_id, LostThread(old, new, reason, time.time()))
        lost = ThreadLost(old, new, reason, generation, runtime_id=self.runtime_id)
        await self.engine.thread_lost(lost)
        self.hub.publish(lost)
        if ready:
            self.hub.publish(ThreadReady(new, False, generation, runtime_id=self.runtime_id))

    async def session_ready(self, generation: int) -> None:
        self.tracker.session_ready(trio.current_time())
        await self.board.set("ready")
        self.supervisor.session_ready()

    async def session_failed(self, generation: int, cause: BaseException) -> None:
        if not self._stopping and self.status == "ready":
            await self.board.set("degraded", error=describe(cause))

    def _on_settled(self, settlement: Settlement) -> None:
        if settlement.outcome == "completed" and settlement.text:
            self._last_result = settlement

    # == stopping =====================================================================================================

    async def aclose(self) -> None:
        """Stop: no new input; open inputs settle ``stopped``; the session is cancelled and its child reaped.

        With a durable store, input accepted but never delivered is delivered, and input that was in flight is
        reconciled with codex, by the next ``open_runtime`` on the same store.
        """
        if self._stopping:
            await trio.lowlevel.checkpoint()
            return
        self._stopping = True
        with trio.CancelScope(shield=True):
            if self.status != "failed":  # a runtime that gave up stays "failed"
                await self.board.set("stopping")
            await self.engine.stop()
            self.supervisor.cancel()
            await self.supervisor.done.wait()
            await self.engine.persisted.wait()
            if self.status != "failed":
                await self.board.set("stopped")
            if self._own_hub:
                self.hub.close()


@asynccontextmanager
async def open_runtime(
    config: RuntimeConfig,
    *,
    state: StateStore | None = None,
    launcher: Launcher | None = None,
    approvals: ServerRequestHandler | None = None,
    checkpoint: Checkpoint | None = None,
    wait_for_owner: float = 0.0,
    events: EventHub | None = None,
) -> AsyncIterator[Runtime]:
    """Start a runtime and keep it alive until the block exits.

    Returns once the first session is ready (the app-server is up, the handshake is done and the thread is
    started or resumed); a configuration mistake in that first start raises here, with its cause, while transient
    failures are retried under the restart policy. Later failures restart the session with backoff; past the
    restart intensity the block is cancelled and :class:`RuntimeGaveUp` raised.

    The runtime takes an exclusive lease on ``(state, config.runtime_id)``: a second opener gets
    :class:`RuntimeBusy` naming the owner, at once or after ``wait_for_owner`` seconds.

    ``events``: an :class:`EventHub` the app created (and closes), to publish into instead of the runtime's own.
    A stream subscribed to it before this call sees the first start (``StatusChanged`` starting -> ready,
    ``ThreadReady``); several runtimes may share it (each event names its ``runtime_id``).

    Exceptions: what the block raises comes out unchanged (an ExceptionGroup of yours stays yours);
    ``KeyboardInterrupt``, ``SystemExit`` and cancellation win over the library's errors; the library's own
    failures come out as one exception, never as an ExceptionGroup.
    """
    if not isinstance(config, RuntimeConfig):
        raise TypeError(f"open_runtime() takes a RuntimeConfig (got {type(config).__name__})")
    if events is not None and not isinstance(events, EventHub):
        raise TypeError(f"open_runtime(events=...) takes an EventHub (got {type(events).__name__})")
    if checkpoint is not None and checkpoint.kind != "codexThread":
        raise ConfigError(
            f"unsupported resume checkpoint for Codex runtime: {checkpoint.kind!r} (expected 'codexThread')",
            field="checkpoint",
            value=checkpoint,
        )
    store = state if state is not None else MemoryStateStore()
    chosen_launcher: Launcher = launcher if launcher is not None else ProcessLauncher(config)
    await store.acquire(config.runtime_id, wait=wait_for_owner)
    try:
        restored = await load(store, config.runtime_id, thread_id=checkpoint.id if checkpoint is not None else None)
        runtime = Runtime._create(config, store, chosen_launcher, approvals, restored, events)
        body: list[BaseException] = []
        chosen: BaseException | None = None
        try:
            async with trio.open_nursery() as n0:
                await n0.start(runtime.engine.run)
                try:
                    await n0.start(runtime.supervisor.run)
                    try:
                        yield runtime
                    except BaseException as exc:
                        body.append(exc)
                        raise
                finally:
                    await runtime.aclose()
        except BaseExceptionGroup as group:
            chosen = _public_exception(group, body[0] if body else None, config.runtime_id)
        if chosen is not None:
            raise chosen
    finally:
        with trio.CancelScope(shield=True):
            try:
                await store.release(config.runtime_id)
            except Exception as exc:
                log.warning("[%s] failed to release the runtime's lease: %r", config.runtime_id, exc)


def _flatten(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``, groups opened up."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    out: list[BaseException] = []
    for inner in exc.exceptions:
        out.extend(_flatten(inner))
    return out


def _public_exception(group: BaseExceptionGroup[Any], body: BaseException | None, runtime_id: str) -> BaseException:
    """The one exception ``open_runtime`` raises for what its nursery raised (see its docstring).

    ``body`` is what the caller's block raised, as raised: Trio re-wraps a group the block raises, so the original
    object is returned from here rather than looked for in ``group``.
    """
    items = _flatten(group)
    for item in [*_flatten(body), *items] if body is not None else items:
        if isinstance(item, (KeyboardInterrupt, SystemExit)):
            return item
    library = [item for item in items if not isinstance(item, trio.Cancelled)]
    if body is not None and not isinstance(body, trio.Cancelled):
        body_items = {id(item) for item in _flatten(body)}
        for item in library:
            if id(item) not in body_items:
                log.error("[%s] runtime failed while the caller's block raised: %r", runtime_id, item, exc_info=item)
        return body
    if library:
        return library[0]
    return body if body is not None else items[0]
