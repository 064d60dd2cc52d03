"""open_runtime / Runtime: admission, the supervisor, and one session nursery per generation.

Task tree (see docs/architecture.md)::

    open_runtime                      nursery N0, lives as long as the runtime
    └── supervisor                    runs sessions; on a failure asks the RestartPolicy; backoff; again
        └── session nursery N1        one per generation; any failure cancels all of it
            ├── app-server            the launcher's child process (reaped, shielded, on the way out)
            ├── connection reader     JSON-RPC over the WebSocket
            ├── watchers              child exit / connection close -> SessionLost
            ├── router                notifications -> ledger terminals, events        (_turns.py)
            └── turn worker           queue -> turn/start | turn/steer, in acceptance order  (_turns.py)

The ledger (queue, dedup window, settlements) belongs to the runtime, not to N1, so accepted input survives a
restart; what was in flight when a session died settles ``interrupted``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import attrs
import trio

from . import _protocol as p
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
from ._connection import Connection, ServerRequestHandler
from ._errors import (
    CodexTrioError,
    ConfigError,
    ConnectionLost,
    RequestTimeout,
    RpcError,
    RuntimeGaveUp,
)
from ._events import (
    EventHub,
    EventStream,
    Restarting,
    ServerRequestAnswered,
    StatusChanged,
    SubmissionSettled,
    ThreadLost,
    ThreadReady,
)
from ._handshake import client_info, initialize
from ._jsonrpc import ServerRequest
from ._launcher import Launcher, ProcessLauncher, default_base_dir
from ._ledger import Ledger, Settlement, SubmissionKind
from ._policy import RestartTracker
from ._process import child_identity, reap_orphan
from ._render import ChannelInput, render_channel_input
from ._state import LostThread, MemoryStateStore, RuntimeStatus, StateStore, StoredSettlement, StoredSubmission
from ._threads import apply_skill_roots, resolve_thread
from ._turns import Session, SessionLost, TurnWorker, WorkSignal
from ._util import best_effort_write, collapse_exception_groups

__all__ = ["Admission", "Checkpoint", "CompletionResult", "Runtime", "open_runtime"]

log = logging.getLogger("codex_trio.runtime")

#: How long a closed connection waits for the child's exit, to report the exit rather than the close.
_EXIT_AFTER_CLOSE: Final = 0.25
#: How many recent turns to search for input a dead host was delivering (it was the last thing it sent).
_IN_DOUBT_TURNS: Final = 20
#: codex rejects larger turn input with -32602 input_too_large (codex-app-server.md §8); refuse it up front.
MAX_INPUT_CHARS: Final = 1_048_576

_KEPT_CAUSES: Final = 10

AdmissionStatus = Literal["submitted", "queued", "duplicate", "failed", "stopped", "skipped"]
SystemReason = Literal["restart-notice", "teammate-completion", "runtime-control"]


@attrs.frozen
class Checkpoint:
    """Where to resume: ``Checkpoint("codexThread", thread_id)`` (the only kind a Codex runtime has)."""

    kind: str
    id: str


@attrs.define(eq=False)
class Admission:
    """What :meth:`Runtime.submit` answered. Accepted inputs (``submitted``/``queued``) settle exactly once."""

    status: AdmissionStatus
    source_id: str
    seq: int | None = None
    error: BaseException | None = None
    _done: trio.Event | None = attrs.field(default=None, repr=False, alias="_done")
    _settlement: Settlement | None = attrs.field(default=None, repr=False, alias="_settlement")

    @property
    def accepted(self) -> bool:
        return self.status in ("submitted", "queued")

    async def settled(self) -> Settlement:
        """Wait for the settlement: completed / failed / interrupted / stopped (with text, turn id, items)."""
        if self._done is None:
            raise RuntimeError(f"admission {self.status!r} has no settlement (only accepted inputs settle)")
        await self._done.wait()
        assert self._settlement is not None
        return self._settlement

    @property
    def settlement(self) -> Settlement | None:
        return self._settlement


@attrs.frozen
class CompletionResult:
    status: Literal["accepted", "failed", "unsupported"]
    error: BaseException | None = None
    reason: str | None = None


@attrs.define(eq=False)
class _InflightCompletion:
    """One completion delivery in progress; concurrent duplicates wait on it and share its result."""

    done: trio.Event = attrs.field(factory=trio.Event)
    result: CompletionResult | None = None


class Runtime:
    """A long-lived Codex runtime. Create it with :func:`open_runtime`; do not instantiate directly."""

    def __init__(
        self,
        config: RuntimeConfig,
        state: StateStore,
        launcher: Launcher,
        approvals: ServerRequestHandler | None,
    ) -> None:
        self.config = config
        self._state = state
        self._launcher = launcher
        self._approvals = self._wire_approvals(approvals)
        self._ledger = Ledger(dedup_window=config.dedup_window)
        self._hub = EventHub(config.event_buffer)
        self._work = WorkSignal()
        self._turns = self._turn_worker()
        self._tracker = RestartTracker(config.restart)
        self._status: RuntimeStatus = "declared"
        self._status_changed = trio.Event()
        # Recent transitions, so wait_status() sees a status that was held for less than a scheduling round.
        self._transitions: deque[RuntimeStatus] = deque(maxlen=64)
        self._transition_count = 0
        self._thread_id: str | None = None
        self._resumed = False
        self._session: Session | None = None
        self._admissions: dict[int, Admission] = {}
        self._last_result: Settlement | None = None
        self._stopping = False
        self._n0: trio.Nursery | None = None
        self._supervisor_scope: trio.CancelScope | None = None
        self._supervisor_done = trio.Event()
        self._completions = CompletionLedger()
        self._completion_inflight: dict[str, _InflightCompletion] = {}
        self._pending_thread_loss: ThreadLost | None = None
        self._in_doubt: list[StoredSubmission] = []
        self.restarts = 0
        self.causes: list[BaseException] = []

    def _turn_worker(self) -> TurnWorker:
        # Built again whenever the ledger is replaced (loading the state store does that).
        return TurnWorker(
            config=self.config,
            ledger=self._ledger,
            hub=self._hub,
            state=self._state,
            resolve=self._resolve,
            work=self._work,
        )

    def _wire_approvals(self, approvals: ServerRequestHandler | None) -> ServerRequestHandler:
        """Answer server requests with ``approvals`` and publish every answer as a ServerRequestAnswered event."""
        if approvals is None:
            approvals = ApprovalPolicy()
        if isinstance(approvals, ApprovalPolicy):
            user_callback = approvals.on_decision

            def on_decision(record: ApprovalDecisionRecord) -> None:
                self._hub.publish(
                    ServerRequestAnswered(
                        record.method,
                        record.rejected,
                        f"{record.decision_summary}: {record.summary}" if record.summary else record.decision_summary,
                        self._ledger.generation,
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
                self._hub.publish(ServerRequestAnswered(request.method, True, f"error: {exc}", self.generation))
                raise
            self._hub.publish(ServerRequestAnswered(request.method, False, "answered", self.generation))
            return result

        return publishing

    # -- public state --------------------------------------------------------------------------------------

    @property
    def status(self) -> RuntimeStatus:
        return self._status

    @property
    def thread_id(self) -> str | None:
        return self._thread_id

    @property
    def thread_resumed(self) -> bool:
        return self._resumed

    @property
    def generation(self) -> int:
        return self._ledger.generation

    @property
    def last_result(self) -> Settlement | None:
        """The latest ``completed`` settlement that carried agent text (the original's ``getLast()``)."""
        return self._last_result

    @property
    def runtime_id(self) -> str:
        return self.config.runtime_id

    def events(self) -> EventStream:
        """A bounded, typed stream of runtime events (status, turns, items, deltas, settlements)."""
        return self._hub.subscribe()

    async def wait_status(self, *statuses: RuntimeStatus) -> RuntimeStatus:
        """Wait until the runtime is in, or passes through, one of ``statuses``; returns the one it reached.

        A status held only briefly (``degraded`` during a zero-length backoff) still counts once it has been
        entered after this call began: transitions are logged, not only the current status compared.
        """
        if self._status in statuses:
            return self._status
        seen = self._transition_count
        while True:
            event = self._status_changed
            await event.wait()
            recent = list(self._transitions)[-(self._transition_count - seen) :]
            for status in recent:
                if status in statuses:
                    return status
            seen = self._transition_count

    def statistics(self) -> dict[str, Any]:
        session = self._session
        return {
            "status": self._status,
            "generation": self._ledger.generation,
            "restarts": self.restarts,
            "queued": len(self._ledger.queued),
            "in_flight": len(self._ledger.in_flight()),
            "thread_id": self._thread_id,
            "active_turn": session.active_turn if session else None,
            "event_subscribers": self._hub.subscriber_count,
            "connection": attrs.asdict(session.connection.statistics()) if session else None,
        }

    # -- submitting ----------------------------------------------------------------------------------------

    async def submit(self, item: ChannelInput) -> Admission:
        """Accept a channel message (deduplicated by ``source_id``) for delivery in acceptance order."""
        if not isinstance(item, ChannelInput):
            raise TypeError(f"submit() takes a ChannelInput (got {type(item).__name__})")
        return await self._admit(item.source_id, "channel", render_channel_input(item))

    async def system_input(self, text: str, reason: SystemReason = "restart-notice") -> Admission:
        """A system notice. ``restart-notice`` is one-shot per session: skipped once any input arrived in the
        current session (as in the original); other reasons are always delivered, without dedup."""
        if reason not in ("restart-notice", "teammate-completion", "runtime-control"):
            raise ConfigError(
                f"system_input reason={reason!r} is not one of 'restart-notice' | 'teammate-completion' | "
                f"'runtime-control'",
                field="reason",
                value=reason,
            )
        if reason == "restart-notice":
            session = self._session
            if self._stopping:
                return Admission("stopped", "")
            if session is not None and (session.inbound_seen or session.notice_sent):
                return Admission("skipped", "")
            if session is not None:
                session.notice_sent = True
        return await self._admit("", "system", text)

    async def _admit(self, source_id: str, kind: SubmissionKind, text: str) -> Admission:
        if self._stopping or self._ledger.stopped:
            return Admission("stopped", source_id)
        if len(text) > MAX_INPUT_CHARS:
            error = ConfigError(
                f"input is {len(text)} characters; codex accepts at most {MAX_INPUT_CHARS} per turn input",
                field="text",
                value=len(text),
            )
            return Admission("failed", source_id, error=error)
        # Dedup is committed here, before any await. The submission holds the queue until it is durable, so the
        # worker never sends what a host crash could make us forget (and then accept a second time).
        sub = self._ledger.admit(source_id, kind, text, durable=False)
        if sub is None:
            return Admission("duplicate", source_id)
        status: AdmissionStatus = "submitted" if self._status == "ready" else "queued"
        admission = Admission(status, source_id, sub.seq, _done=trio.Event())
        self._admissions[sub.seq] = admission
        if kind != "system" and self._session is not None:
            self._session.inbound_seen = True
        try:
            await self._state.accept(
                self.runtime_id,
                StoredSubmission(sub.seq, source_id, kind, text, time.time()),
                dedup_window=self.config.dedup_window,
            )
        except BaseException as exc:
            # Not durable, so not accepted: settle it failed rather than deliver something we may forget.
            self._resolve([self._ledger.reject(sub, f"state store write failed: {exc!r}")])
            admission.status = "failed"
            admission.error = exc
            if not isinstance(exc, Exception):
                raise
            return admission
        self._ledger.mark_durable(sub)
        self._work.notify()
        return admission

    async def interrupt(self) -> bool:
        """Interrupt the active turn. Returns False when no turn is active."""
        session = self._session
        if session is None or session.active_turn is None:
            return False
        turn_id = session.active_turn
        session.interrupting.setdefault(turn_id, None)
        try:
            await session.connection.request(
                "turn/interrupt",
                p.unstructure(p.TurnInterruptParams(session.thread_id, turn_id)),
                timeout=self.config.request_timeout,
            )
        except (RpcError, ConnectionLost):  # no such turn any more, or the session is going away with it
            if turn_id in session.interrupting and session.interrupting[turn_id] is None:
                del session.interrupting[turn_id]  # ours, not a deadline's: let input join or follow it again
            return False
        return True

    async def completion_input(self, completion: Completion) -> CompletionResult:
        """Deliver a teammate's completion: inject it into the thread, then wake the thread with a trigger turn.

        Idempotent by ``completion.id``: concurrent duplicates coalesce; an already accepted id answers
        ``accepted`` at once; a retry after a successful inject and a failed trigger does not inject twice.
        """
        if self._completions.plan(completion.id) is Plan.ALREADY_ACCEPTED:
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
        session = self._session
        if session is None or self._status != "ready":
            return CompletionResult("unsupported", reason=f"runtime is {self._status}")
        if self._completions.plan(completion.id) is Plan.INJECT_AND_TRIGGER:
            spill_dir = (self.config.spill_dir or default_base_dir() / "spill") / self.runtime_id
            try:
                budget = completion_budget(_environ())
                if needs_spill(completion.result, budget):
                    # Only a spill touches the disk; the common small result needs no thread hop.
                    item = await trio.to_thread.run_sync(build_completion_item, completion, spill_dir, budget)
                else:
                    item = build_completion_item(completion, spill_dir, budget)
                await session.connection.request(
                    "thread/inject_items",
                    p.unstructure(p.ThreadInjectItemsParams(session.thread_id, [item])),
                )
            except (RpcError, OSError, ConnectionLost, RequestTimeout, CodexTrioError) as exc:
                return CompletionResult(
                    "failed",
                    error=exc,
                    reason=f"teammate completion thread/inject_items failed (requires codex 0.137+): {exc}",
                )
            self._completions.mark_injected(completion.id)
            await self._state.save_completions(self.runtime_id, self._completions.snapshot())
        source_id = self._completions.next_trigger_source_id(completion.id)
        admission = await self._admit(source_id, "trigger", COMPLETION_TRIGGER_TEXT)
        if admission.status == "stopped":
            return CompletionResult("unsupported", reason="runtime stopped")
        if not admission.accepted:
            return CompletionResult("failed", error=admission.error, reason=f"trigger {admission.status}")
        self._completions.mark_accepted(completion.id)
        await self._state.save_completions(self.runtime_id, self._completions.snapshot())
        return CompletionResult("accepted")

    # -- status --------------------------------------------------------------------------------------------

    async def _set_status(self, status: RuntimeStatus, *, error: str | None = None, **extras: Any) -> None:
        previous = self._status
        self._status = status
        self._transitions.append(status)
        self._transition_count += 1
        self._status_changed.set()
        self._status_changed = trio.Event()
        fields: dict[str, Any] = {}
        if status == "starting":
            fields["last_started_at"] = time.time()
        elif status == "ready":
            fields["last_ready_at"] = time.time()
            fields["last_error"] = None
        elif error is not None:
            fields["last_error"] = error
        fields.update(extras)
        if previous != status:
            self._hub.publish(StatusChanged(status, previous, self._ledger.generation, error))
        with trio.CancelScope(shield=True):
            try:
                await self._state.set_status(self.runtime_id, status, **fields)
            except Exception as exc:  # a status write must never take the runtime down
                log.warning("[%s] failed to persist status %s: %r", self.runtime_id, status, exc)

    # -- supervisor ----------------------------------------------------------------------------------------

    async def _supervisor_task(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as scope:
                self._supervisor_scope = scope
                if self._stopping:
                    scope.cancel()
                await self._supervise(task_status=task_status)
        finally:
            self._supervisor_done.set()

    async def _supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        first = True
        while True:
            generation = self._ledger.start_generation()
            self._tracker.session_started(trio.current_time())
            await self._set_status("starting")
            ready = trio.Event()
            cause: BaseException
            try:
                await self._run_session(generation, ready, task_status if first else None)
                return  # only when stopping
            except SessionLost as lost:
                cause = lost.cause
            except BaseExceptionGroup as group:
                cause = _session_cause(group)
            except (CodexTrioError, OSError) as exc:
                cause = exc
            finally:
                self._session = None
                # The session's child is reaped by now (shielded, in the launcher): forget it.
                await best_effort_write(
                    self.runtime_id, "forget the child", self._state.set_child, self.runtime_id, None
                )
                if not self._stopping:
                    # When stopping, ledger.stop() settles what was in flight "stopped" instead.
                    self._resolve(self._ledger.session_lost(generation, "app-server session ended"))
            if self._stopping:
                return
            if first and not ready.is_set():
                await self._set_status("degraded", error=_describe(cause))
                raise cause
            first = first and not ready.is_set()
            self.causes.append(cause)
            del self.causes[:-_KEPT_CAUSES]  # a runtime that lives for months must not grow with its crashes
            decision = self._tracker.session_failed(trio.current_time(), cause)
            if decision.give_up:
                await self._set_status("failed", error=_describe(cause))
                raise RuntimeGaveUp(
                    f"runtime {self.runtime_id!r} gave up after {self.restarts} restarts "
                    f"(more than {self.config.restart.max_restarts} within {self.config.restart.within:g}s)",
                    list(decision.causes),
                )
            self.restarts += 1
            log.warning("[%s] %s; restarting in %.3gs", self.runtime_id, _describe(cause), decision.delay)
            await self._set_status("degraded", error=_describe(cause))
            self._hub.publish(Restarting(decision.attempt, decision.delay, _describe(cause), generation))
            await trio.sleep(decision.delay)

    async def _run_session(self, generation: int, ready: trio.Event, task_status: trio.TaskStatus[None] | None) -> None:
        async with trio.open_nursery() as nursery, self._launcher.launch(nursery, generation) as launched:
            connection = Connection(
                launched.stream,
                request_timeout=self.config.request_timeout,
                server_request_handler=self._approvals,
            )
            await nursery.start(connection.run)
            if launched.pgid is not None:
                await best_effort_write(
                    self.runtime_id,
                    "record the child",
                    self._state.set_child,
                    self.runtime_id,
                    child_identity(launched.pgid),
                )
            nursery.start_soon(self._watch_launched, launched.wait_gone)
            nursery.start_soon(self._watch_connection, connection, launched.wait_gone)
            # Subscribe before the first request: codex may notify before it answers.
            notifications = connection.subscribe(buffer=1024, lossless=True)
            await initialize(
                connection,
                info=client_info(self.config.client_name),
                opt_out_notification_methods=self.config.opt_out_notification_methods,
                timeout=self.config.handshake_timeout,
            )
            await apply_skill_roots(connection, self.config)
            thread_id = await self._resolve_thread(connection, generation)
            if self._in_doubt:
                await self._reconcile_in_doubt(connection, thread_id)
            session = Session(generation, connection, thread_id, nursery)
            session.turn_idle.set()
            self._session = session
            nursery.start_soon(self._turns.route, session, notifications)
            nursery.start_soon(self._turns.deliver, session)
            self._tracker.session_ready(trio.current_time())
            await self._set_status("ready")
            ready.set()
            if task_status is not None:
                task_status.started()
            await trio.sleep_forever()

    async def _watch_launched(self, wait_gone: Callable[[], Awaitable[BaseException]]) -> None:
        raise SessionLost(await wait_gone())

    async def _watch_connection(
        self, connection: Connection, wait_gone: Callable[[], Awaitable[BaseException]]
    ) -> None:
        await connection.wait_closed()
        cause: BaseException = connection.close_error or ConnectionLost("connection closed")
        if type(cause) is ConnectionLost:
            # A dying child closes its socket first; its exit status ("killed by SIGABRT") says more than the
            # close it caused (1006), and it is what a crash loop's last_error should show.
            with trio.move_on_after(_EXIT_AFTER_CLOSE):
                cause = await wait_gone()
        raise SessionLost(cause)

    async def _resolve_thread(self, connection: Connection, generation: int) -> str:
        resolution = await resolve_thread(connection, self.config, self._thread_id)
        self._resumed = resolution.resumed
        new_id = resolution.thread_id
        if resolution.lost_thread_id is not None:
            reason = resolution.lost_reason or "thread/resume failed"
            await self._state.record_lost_thread(
                self.runtime_id, LostThread(resolution.lost_thread_id, new_id, reason, time.time())
            )
            lost = ThreadLost(resolution.lost_thread_id, new_id, reason, generation)
            self._pending_thread_loss = lost
            self._hub.publish(lost)
        elif not resolution.resumed:
            await self._state.set_thread_id(self.runtime_id, new_id)
        self._thread_id = new_id
        self._hub.publish(ThreadReady(new_id, resolution.resumed, generation))
        return new_id

    async def _reconcile_in_doubt(self, connection: Connection, thread_id: str) -> None:
        """Settle what a dead host was delivering: re-send what codex never got, never what it has.

        codex records each user message with its ``clientId`` (our clientUserMessageId = source id), so the
        thread's recent turns tell. Input without a source id cannot be checked and is not re-sent (it may have
        had side effects), like input in flight when a child dies.
        """
        received: set[str] = set()
        checked = True
        try:
            raw = await connection.request(
                "thread/turns/list",
                {"threadId": thread_id, "limit": _IN_DOUBT_TURNS, "itemsView": "full", "sortDirection": "desc"},
            )
            for turn in raw.get("data", []) if isinstance(raw, dict) else []:
                for item in turn.get("items", []) if isinstance(turn, dict) else []:
                    if isinstance(item, dict) and item.get("type") == "userMessage" and item.get("clientId"):
                        received.add(str(item["clientId"]))
        except RpcError as exc:
            checked = False
            log.warning("[%s] cannot check in-doubt input against the thread: %s", self.runtime_id, exc)
        resend = [s for s in self._in_doubt if checked and s.source_id and s.source_id not in received]
        for stored in self._in_doubt:
            if stored in resend:
                continue
            detail = (
                "codex received this input before the previous host stopped; it is not sent again"
                if stored.source_id in received
                else "the previous host stopped while delivering this input; it cannot be checked, so it is not "
                "sent again"
            )
            await self._state.settle(
                self.runtime_id,
                StoredSettlement(stored.seq, stored.source_id, "interrupted", None, detail, time.time()),
            )
        for sub in self._ledger.requeue_in_doubt([(s.seq, s.source_id, _kind(s.kind), s.text) for s in resend]):
            self._admissions[sub.seq] = Admission("queued", sub.source_id, sub.seq, _done=trio.Event())
        self._in_doubt = []

    # -- settlements ---------------------------------------------------------------------------------------

    def _resolve(self, settlements: list[Settlement]) -> None:
        for settlement in settlements:
            loss = self._pending_thread_loss
            if loss is not None and settlement.generation is not None and settlement.generation >= loss.generation:
                settlement = attrs.evolve(settlement, thread_lost=loss)
                self._pending_thread_loss = None
            if settlement.outcome == "completed" and settlement.text:
                self._last_result = settlement
            admission = self._admissions.pop(settlement.seq, None)
            if admission is not None:
                admission._settlement = settlement
                assert admission._done is not None
                admission._done.set()
            self._hub.publish(SubmissionSettled(settlement))
            if self._n0 is not None and not (settlement.outcome == "stopped" and settlement.generation is None):
                self._n0.start_soon(self._persist_settlement, settlement)

    async def _persist_settlement(self, settlement: Settlement) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._state.settle(
                    self.runtime_id,
                    StoredSettlement(
                        settlement.seq,
                        settlement.source_id,
                        settlement.outcome,
                        settlement.turn_id,
                        settlement.error,
                        time.time(),
                    ),
                )
            except Exception as exc:
                log.warning("[%s] failed to persist settlement %s: %r", self.runtime_id, settlement.seq, exc)

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def _load(self, checkpoint: Checkpoint | None) -> None:
        snapshot = await self._state.load(self.runtime_id)
        self._thread_id = snapshot.record.thread_id
        if checkpoint is not None:
            self._thread_id = checkpoint.id
        if snapshot.record.child is not None and reap_orphan(snapshot.record.child):
            log.warning(
                "[%s] reaped an app-server left running by a previous host (%s)", self.runtime_id, snapshot.record.child
            )
        self._ledger = Ledger(dedup_window=self.config.dedup_window, next_seq=snapshot.next_seq)
        self._turns = self._turn_worker()
        in_doubt = [s for s in snapshot.pending if s.delivering]
        self._ledger.restore(
            snapshot.dedup_ids,
            [(s.seq, s.source_id, _kind(s.kind), s.text) for s in snapshot.pending if not s.delivering],
        )
        # The previous host died between sending these and codex's answer: the first session asks codex whether
        # it has them (by clientUserMessageId) before anything else is delivered.
        self._in_doubt = in_doubt
        for sub in self._ledger.queued:
            self._admissions[sub.seq] = Admission("queued", sub.source_id, sub.seq, _done=trio.Event())
        if snapshot.completions is not None:
            self._completions.restore(snapshot.completions)

    async def aclose(self) -> None:
        """Stop: no new input; the session is cancelled and its child reaped; open inputs settle ``stopped``.

        Inputs accepted but never delivered stay pending in a durable state store and are delivered by the next
        ``open_runtime`` on the same store.
        """
        if self._stopping:
            return
        self._stopping = True
        with trio.CancelScope(shield=True):
            if self._status != "failed":  # a runtime that gave up stays "failed"
                await self._set_status("stopping")
            if self._supervisor_scope is not None:
                self._supervisor_scope.cancel()


def _kind(value: str) -> SubmissionKind:
    if value in ("channel", "system", "trigger"):
        return value  # type: ignore[return-value]
    return "channel"


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def _describe(cause: BaseException) -> str:
    text = str(cause).strip() or type(cause).__name__
    return text.splitlines()[0] if len(text) > 500 else text


def _session_cause(group: BaseExceptionGroup[Any]) -> BaseException:
    from ._util import leaf_exceptions

    leaves = leaf_exceptions(group)
    for leaf in leaves:
        if isinstance(leaf, (KeyboardInterrupt, SystemExit)):
            raise leaf
    causes = [
        leaf.cause if isinstance(leaf, SessionLost) else leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)
    ]
    if not causes:
        raise group
    # A failing session closes its stream on the way out, so a watcher often reports a ConnectionLost that is
    # only a consequence (of a handshake timeout, a child exit, ...): the first other cause explains more.
    for cause in causes:
        if not isinstance(cause, ConnectionLost):
            return cause
    return causes[0]


@asynccontextmanager
async def open_runtime(
    config: RuntimeConfig,
    *,
    state: StateStore | None = None,
    launcher: Launcher | None = None,
    approvals: ServerRequestHandler | None = None,
    checkpoint: Checkpoint | None = None,
) -> AsyncIterator[Runtime]:
    """Start a runtime and keep it alive until the block exits.

    Returns once the first session is ready (the app-server is up, the handshake is done and the thread is
    started or resumed); a failure of that first start raises here, with its cause. Later failures restart the
    session with backoff; past the restart intensity the block is cancelled and :class:`RuntimeGaveUp` raised.
    No ExceptionGroup escapes.
    """
    if not isinstance(config, RuntimeConfig):
        raise TypeError(f"open_runtime() takes a RuntimeConfig (got {type(config).__name__})")
    if checkpoint is not None and checkpoint.kind != "codexThread":
        raise ConfigError(
            f"unsupported resume checkpoint for Codex runtime: {checkpoint.kind!r} (expected 'codexThread')",
            field="checkpoint",
            value=checkpoint,
        )
    runtime = Runtime(config, state or MemoryStateStore(), launcher or ProcessLauncher(config), approvals)
    await runtime._load(checkpoint)
    with collapse_exception_groups():
        async with trio.open_nursery() as n0:
            runtime._n0 = n0
            try:
                await n0.start(runtime._supervisor_task)
                yield runtime
            finally:
                await runtime.aclose()
                with trio.CancelScope(shield=True):
                    # Wait for the supervisor to unwind (the child is reaped in a shielded finally).
                    await runtime._supervisor_done.wait()
                    runtime._resolve(runtime._ledger.stop())
                    if runtime._status != "failed":
                        await runtime._set_status("stopped")
                    runtime._hub.close()
                n0.cancel_scope.cancel()
