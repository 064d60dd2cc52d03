"""The engine: the one task that owns the runtime's :class:`~codex_trio._core.RuntimeCore`.

Everything that happens to the runtime arrives in one bounded inbox, in order: callers' admission and interrupt
requests, the live session's notifications (the connection routes them straight in, losslessly), RPC answers,
batches made durable, sessions coming up and going down. The engine feeds each to the core and performs the
actions the core returns. It never awaits anything slow itself: RPCs run as short tasks in the live session's
nursery (so they die with it), batch writes as tasks in the runtime's nursery; both report back through the
inbox. The active turns' deadlines are one cancel scope around the inbox read.

Because every session's items pass through the same inbox, ordering settles which session they belong to: a
session's notifications are all read before its "session down" (its connection is closed by then), and the next
session's turn notifications can only follow its "session up" (nothing is sent to it before).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, Final

import attrs
import trio

from . import _protocol as p
from ._admission import Admission
from ._connection import Connection
from ._core import (
    STREAM_METHODS,
    AdmitRequest,
    Answer,
    FailSession,
    Hold,
    HoldEnded,
    Interrupt,
    InterruptAnswer,
    Publish,
    RuntimeCore,
    Send,
    Settle,
    Submission,
    SubmissionKind,
    Write,
)
from ._errors import ConnectionLost, LeaseLost, ProtocolError, RequestTimeout, RpcError, RuntimeStopped
from ._events import EventHub, SubmissionSettled
from ._jsonrpc import Notification
from ._settlement import Settlement, ThreadLost, TurnOutcome
from ._state import MemoryStateStore, StateStore, StoredSettlement, StoredSubmission
from ._turn_options import ImageInput, TurnOptions, encode_payload, sandbox_policy

__all__ = ["Engine", "LiveSession", "ThreadHold"]

log = logging.getLogger("codex_trio.runtime")

#: The inbox holds at most this many items; a full inbox slows the socket reader (never drops a notification).
_INBOX: Final = 1024
#: Settlements waiting for the store; a full queue slows the engine (the store is the bottleneck then).
_PERSIST_QUEUE: Final = 1024
#: Items the engine takes from an already-filled inbox before it yields to the scheduler.
_YIELD_EVERY: Final = 64


@attrs.define(eq=False)
class LiveSession:
    """What the engine needs of the session that is up: where to send, where to run RPCs, how to end it."""

    generation: int
    connection: Connection
    thread_id: str
    nursery: trio.Nursery
    fail: Callable[[BaseException], None]
    #: set once the session's nursery has exited: no RPC task can start in it any more
    closed: bool = False

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Start an RPC task in the session's nursery; False when the session is already gone."""
        if self.closed:
            return False
        try:
            self.nursery.start_soon(fn, *args)
        except RuntimeError:  # the nursery closed while the session was ending ("closed to new arrivals")
            self.closed = True
            return False
        return True


# -- inbox items (besides Notification and AdmitRequest) ---------------------------------------------------------


@attrs.frozen
class _SessionUp:
    live: LiveSession


@attrs.frozen
class _SessionDown:
    generation: int
    reason: str


@attrs.frozen
class _Reconciled:
    resend: frozenset[int]
    outcomes: dict[int, TurnOutcome]


@attrs.frozen
class _ThreadLost:
    info: ThreadLost


@attrs.frozen
class _Written:
    batch: int
    error: BaseException | None


@attrs.frozen
class _Delivered:
    token: int
    turn_id: str | None = None
    refused: str | None = None
    broken: str | None = None


@attrs.frozen
class _Interrupted:
    token: int
    accepted: bool
    error: str | None = None


@attrs.define(eq=False)
class _InterruptRequest:
    done: trio.Event = attrs.field(factory=trio.Event)
    result: bool = False


@attrs.frozen
class _Stop:
    pass


class ThreadHold:
    """A caller's turn at the thread (see :meth:`Engine.hold`): offered by the core, once or again after a
    restart, until the caller is done with it."""

    def __init__(self) -> None:
        self.token = 0
        self.live: LiveSession | None = None
        self.ended: str | None = None
        #: set by the caller when it moved the runtime to another thread: the core switches when released
        self.switch_to: str | None = None
        self._changed = trio.Event()

    def _offer(self, live: LiveSession | None) -> None:
        self.live = live
        self._wake()

    def _end(self, reason: str) -> None:
        self.ended = reason
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait(self, *, after: int = 0) -> LiveSession:
        """The live session the thread is handed over in (a generation above ``after``: after a session failed
        under the caller, the next one). Raises :class:`RuntimeStopped` if the runtime stops first."""
        while True:
            if self.ended is not None:
                raise RuntimeStopped(f"the runtime stopped before the thread was free ({self.ended})")
            live = self.live
            if live is not None and not live.closed and live.generation > after:
                return live
            await self._changed.wait()


@attrs.frozen
class _HoldAsk:
    hold: ThreadHold


@attrs.frozen
class _HoldDone:
    hold: ThreadHold


@attrs.define(eq=False)
class _Reply:
    done: trio.Event = attrs.field(factory=trio.Event)
    admission: Admission | None = None


@attrs.define(eq=False)
class _Flight:
    """Whether a delivery's request may have left us: False until the request is handed to the connection, and
    False again if the connection says it never sent it. Read when the session ends, even if the RPC task was
    cancelled before it could report."""

    maybe_sent: bool = False


def _stored(sub: Submission, now: float) -> StoredSubmission:
    return StoredSubmission(
        sub.seq, sub.source_id, sub.kind, sub.text, now, options=encode_payload(sub.options, sub.images)
    )


def delivery_params(action: Send) -> dict[str, Any]:
    """The ``turn/start`` or ``turn/steer`` params for ``action``: the text, then the images (both methods take
    them), and on ``turn/start`` the input's options (a steer cannot change the turn's settings; the core only
    steers an input whose options are those of the turn, see ``RuntimeCore._pump``)."""
    sub = action.submission
    inputs: list[p.UserInput] = [p.TextInput(sub.text)]
    for image in sub.images:
        inputs.append(p.ImageUrlInput(image.value) if image.kind == "url" else p.LocalImageInput(image.value))
    if action.method == "turn/steer":
        assert action.expected_turn_id is not None
        return p.unstructure(p.TurnSteerParams(action.thread_id, action.expected_turn_id, inputs, sub.client_id))
    o = sub.options
    if o is None:
        return p.unstructure(p.TurnStartParams(action.thread_id, inputs, sub.client_id))
    params = p.TurnStartParams(
        action.thread_id,
        inputs,
        sub.client_id,
        cwd=o.cwd,
        model=o.model,
        effort=o.effort,
        summary=o.summary,
        approval_policy=o.approval_policy,
        sandbox_policy=sandbox_policy(o.sandbox) if o.sandbox is not None else None,
        output_schema=o.output_schema,
    )
    return p.unstructure(params)


class Engine:
    def __init__(
        self,
        core: RuntimeCore,
        *,
        runtime_id: str,
        store: StateStore,
        hub: EventHub,
        dedup_window: int,
        request_timeout: float,
        on_settled: Callable[[Settlement], None],
        is_ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.core = core
        self.runtime_id = runtime_id
        self._store = store
        self._hub = hub
        self._dedup_window = dedup_window
        self._request_timeout = request_timeout
        self._on_settled = on_settled
        self._is_ready = is_ready
        # The default store never blocks: its writes are applied in place (no task, no scheduler trip per write).
        # A subclass may override the async methods (tests gate them), so only the class itself qualifies.
        self._memory: MemoryStateStore | None = store if type(store) is MemoryStateStore else None
        self._send, self._receive = trio.open_memory_channel[Any](_INBOX)
        self._persist_send, self._persist_receive = trio.open_memory_channel[tuple[Settlement, StoredSettlement]](
            _PERSIST_QUEUE
        )
        self._admissions: dict[int, Admission] = {}
        #: delivery token -> (seq, whether its request may have left us)
        self._flights: dict[int, tuple[int, _Flight]] = {}
        self._live: LiveSession | None = None
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self.done = trio.Event()
        self.persisted = trio.Event()

    @property
    def live(self) -> LiveSession | None:
        """The session that is up, if any."""
        live = self._live
        return live if live is not None and not live.closed else None

    # == what callers and the session use ==========================================================================

    async def admit(
        self,
        source_id: str,
        kind: SubmissionKind,
        text: str,
        *,
        options: TurnOptions | None = None,
        images: tuple[ImageInput, ...] = (),
    ) -> Admission:
        """Ask the core to accept an input; see :class:`~codex_trio._core.AdmitRequest` for the cancel rule.

        Cancelled before the core took the request: nothing happened (Cancelled is raised). Cancelled after: the
        write is under way and completes; the admission is returned, and the cancellation is delivered at the
        caller's next checkpoint — so an id is either accepted or leaves no trace, never half of it.
        """
        reply = _Reply()
        request = AdmitRequest(source_id, kind, text, reply=reply, options=options, images=images)
        try:
            await self._send.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return Admission("stopped", source_id)
        try:
            await reply.done.wait()
        except trio.Cancelled:
            if not request.taken:
                request.withdrawn = True
                raise
            with trio.CancelScope(shield=True):
                await reply.done.wait()
        assert reply.admission is not None
        return reply.admission

    async def interrupt(self) -> bool:
        request = _InterruptRequest()
        try:
            await self._send.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        await request.done.wait()
        return request.result

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[ThreadHold]:
        """Take the thread, in the input order: the hold is offered (``await hold.wait()``) once everything accepted
        before this call has settled and no turn is open; input accepted meanwhile waits until the block exits.
        Leaving the block (however) releases it; set ``hold.switch_to`` first to move the runtime to another
        thread."""
        hold = ThreadHold()
        try:
            await self._send.send(_HoldAsk(hold))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            hold._end("runtime stopped")
        try:
            yield hold
        finally:
            await self._post(_HoldDone(hold))

    def session_inbox(self) -> trio.MemorySendChannel[Any]:
        """A clone of the inbox for a session's connection to route notifications into (closed with it)."""
        return self._send.clone()

    async def session_up(self, live: LiveSession) -> None:
        await self._post(_SessionUp(live))

    async def session_down(self, generation: int, reason: str) -> None:
        await self._post(_SessionDown(generation, reason))

    async def reconciled(self, resend: frozenset[int], outcomes: dict[int, TurnOutcome]) -> None:
        await self._post(_Reconciled(resend, outcomes))

    async def thread_lost(self, info: ThreadLost) -> None:
        await self._post(_ThreadLost(info))

    async def stop(self) -> None:
        """Close admission, let a batch being written finish, settle everything still open ``stopped``."""
        self._stopping = True
        await self._post(_Stop())
        await self.done.wait()

    async def _post(self, item: Any) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._send.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the engine has ended; nothing is left to tell

    # == the task ==================================================================================================

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        core = self.core
        receive = self._receive
        unyielded = 0
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._persist_loop)
                task_status.started()
                try:
                    while True:
                        # Performing may feed the core again (a write applied in place): until nothing is left.
                        while actions := core.take_actions():
                            await self._perform(actions)
                        if core.stopped:
                            break
                        deadline = core.next_deadline()
                        if deadline <= trio.current_time():
                            core.tick(trio.current_time())
                            continue
                        try:
                            # Already queued: no trip through the scheduler per item (notifications come in bursts),
                            # but still a yield now and then so that the rest of the application runs.
                            item = receive.receive_nowait()
                        except trio.WouldBlock:
                            unyielded = 0
                            # One cancel scope carries the open turns' deadlines.
                            with trio.move_on_at(deadline) as scope:
                                item = await receive.receive()
                            if scope.cancelled_caught:
                                continue
                        else:
                            unyielded += 1
                            if unyielded >= _YIELD_EVERY:
                                unyielded = 0
                                await trio.lowlevel.checkpoint()
                        self._feed(item)
                finally:
                    self._persist_send.close()
        finally:
            self._receive.close()
            if not core.stopped:  # cancelled, or a bug: still answer every caller and settle every input
                core.abort("runtime stopped")
            self._perform_now(core.take_actions())
            self.done.set()

    def _feed(self, item: Any) -> None:
        core = self.core
        kind = type(item)
        if kind is Notification:
            if item.method == "item/agentMessage/delta":
                # The hottest notification: nothing to build when nobody reads, and no action list when they do.
                if self._hub.subscriber_count:
                    event = core.delta(item.params)
                    if event is not None:
                        self._hub.publish(event)
                return
            if item.method in STREAM_METHODS:
                # The other streamed notifications (reasoning, command output, plan, ...): no state, same shortcut.
                if self._hub.subscriber_count:
                    streamed = core.stream(item.method, item.params)
                    if streamed is not None:
                        self._hub.publish(streamed)
                return
            core.notification(item.method, item.params, trio.current_time())
        elif kind is AdmitRequest:
            core.request(item)
        elif kind is _Delivered:
            self._flights.pop(item.token, None)
            core.delivery_answered(
                item.token, trio.current_time(), turn_id=item.turn_id, refused=item.refused, broken=item.broken
            )
        elif kind is _Written:
            if item.error is None:
                core.written(item.batch)
            else:
                core.write_failed(item.batch, item.error)
        elif kind is _Interrupted:
            core.interrupt_answered(item.token, trio.current_time(), accepted=item.accepted, error=item.error)
        elif kind is _InterruptRequest:
            core.interrupt(item, trio.current_time())
        elif kind is _SessionUp:
            self._live = item.live
            self._flights.clear()
            core.session_ready(item.live.generation, item.live.thread_id)
        elif kind is _SessionDown:
            unsent = {seq for seq, flight in self._flights.values() if not flight.maybe_sent}
            self._flights.clear()
            if self._live is not None and self._live.generation == item.generation:
                self._live = None
            core.session_lost(item.generation, item.reason, unsent=unsent)
        elif kind is _Reconciled:
            core.reconciled(item.resend, item.outcomes)
        elif kind is _ThreadLost:
            core.thread_lost(item.info)
        elif kind is _HoldAsk:
            item.hold.token = core.hold(item.hold)
        elif kind is _HoldDone:
            core.release(item.hold.token, thread_id=item.hold.switch_to)
        elif kind is _Stop:
            core.stop("runtime stopped")  # waits for a batch being written, if any
        else:  # pragma: no cover - a bug in a producer
            raise AssertionError(f"unexpected inbox item {item!r}")

    # == actions ===================================================================================================

    async def _perform(self, actions: list[Any]) -> None:
        memory = self._memory
        for action in actions:
            if type(action) is Settle and action.persist:
                # Durable first, then told: a caller told "interrupted, not sent again" must never see the next
                # host send it after all because the store still had it in doubt.
                s = action.settlement
                stored = StoredSettlement(s.seq, s.source_id, s.outcome, s.turn_id, s.error, time.time(), action.usage)
                if memory is not None:
                    with self._then_tell(s):
                        memory.settle_now(self.runtime_id, stored)
                else:
                    await self._persist_send.send((s, stored))
            elif type(action) is Write and memory is not None:
                self._write_now(memory, action)
            else:
                self._perform_one(action)

    def _write_now(self, memory: MemoryStateStore, action: Write) -> None:
        now = time.time()
        rows = [_stored(s, now) for s in action.submissions]
        try:
            memory.accept_now(self.runtime_id, rows, dedup_window=self._dedup_window)
        except LeaseLost as exc:
            self.core.write_failed(action.batch, exc)
            raise
        except Exception as exc:
            log.warning("[%s] accepting %d input(s) failed: %r", self.runtime_id, len(rows), exc)
            self.core.write_failed(action.batch, exc)
        else:
            self.core.written(action.batch)

    def _perform_now(self, actions: list[Any]) -> None:
        """Perform without awaiting (the engine is ending): nothing is persisted any more."""
        for action in actions:
            if type(action) is Settle:
                self._settle(action.settlement)
            elif type(action) in (Answer, InterruptAnswer, Publish, HoldEnded):
                self._perform_one(action)

    def _perform_one(self, action: Any) -> None:
        kind = type(action)
        if kind is Publish:
            self._hub.publish(action.event)
        elif kind is Settle:
            self._settle(action.settlement)
        elif kind is Answer:
            self._answer(action)
        elif kind is Send:
            live = self._live
            flight = _Flight()
            self._flights[action.token] = (action.submission.seq, flight)
            if live is not None and live.generation == action.generation:
                live.start_soon(self._deliver, live, action, flight)
            # If it could not start, it was never sent: "session down" (on its way) puts it back at the queue's head.
        elif kind is Interrupt:
            live = self._live
            if live is not None and live.generation == action.generation:
                live.start_soon(self._interrupt, live, action)
        elif kind is InterruptAnswer:
            request: _InterruptRequest = action.requester
            request.result = action.interrupted
            request.done.set()
        elif kind is Hold:
            live = self._live
            hold: ThreadHold = action.requester
            hold._offer(live if live is not None and live.generation == action.generation else None)
        elif kind is HoldEnded:
            action.requester._end(action.reason)
        elif kind is Write:
            assert self._nursery is not None
            self._nursery.start_soon(self._write, action)
        elif kind is FailSession:
            live = self._live
            if live is not None and live.generation == action.generation and not live.closed:
                live.fail(RequestTimeout("turn/interrupt", self._request_timeout, action.reason))
        else:  # pragma: no cover
            raise AssertionError(f"unknown action {action!r}")

    def _answer(self, action: Answer) -> None:
        request = action.request
        reply: _Reply | None = request.reply
        sub = action.submission
        if sub is not None:
            # "submitted" means the runtime was ready, as its status says (the core may not have seen a session end
            # yet that the status already shows).
            status = "queued" if action.status == "submitted" and not self._is_ready() else action.status
            admission = Admission(status, request.source_id, sub.seq, _done=trio.Event())
            self._admissions[sub.seq] = admission
        else:
            admission = Admission(action.status, request.source_id, error=action.error)
        if reply is not None:
            reply.admission = admission
            reply.done.set()

    def _settle(self, settlement: Settlement) -> None:
        admission = self._admissions.pop(settlement.seq, None)
        if admission is not None:
            admission._settle(settlement)
        self._on_settled(settlement)
        self._hub.publish(SubmissionSettled(settlement, runtime_id=self.runtime_id))

    # == tasks the actions start ===================================================================================

    async def _write(self, action: Write) -> None:
        error: BaseException | None = None
        fatal: BaseException | None = None
        with trio.CancelScope(shield=True):  # a durable write is never cut in half; the callers wait for it
            now = time.time()
            try:
                await self._store.accept(
                    self.runtime_id,
                    [_stored(s, now) for s in action.submissions],
                    dedup_window=self._dedup_window,
                )
            except LeaseLost as exc:
                error = fatal = exc
            except Exception as exc:
                log.warning("[%s] accepting %d input(s) failed: %r", self.runtime_id, len(action.submissions), exc)
                error = exc
            await self._post(_Written(action.batch, error))
        if fatal is not None:
            raise fatal  # another owner took this runtime over: it must stop

    async def _deliver(self, live: LiveSession, action: Send, flight: _Flight) -> None:
        sub = action.submission
        if sub.durable:
            # In doubt from here until it settles: a host that dies now must not make the next one send it again
            # without first asking codex whether it has it.
            steered = action.method == "turn/steer"
            if self._memory is not None:
                self._memory.delivering_now(self.runtime_id, sub.seq, steered=steered)
            else:
                await self._best_effort(
                    "mark input in doubt", partial(self._store.delivering, steered=steered), self.runtime_id, sub.seq
                )
        params = delivery_params(action)
        flight.maybe_sent = True
        try:
            raw = await live.connection.request(action.method, params)
        except RpcError as exc:
            answer = _Delivered(action.token, refused=str(exc))
        except RequestTimeout as exc:
            live.fail(exc)
            answer = _Delivered(action.token, broken=str(exc))
        except ConnectionLost as exc:
            if exc.request_sent is False:
                flight.maybe_sent = False  # certainly never left us: the next session sends it
            return  # the session is ending; "session down" settles it
        else:
            try:
                if action.method == "turn/start":
                    turn_id: str | None = p.structure(raw, p.TurnStartResult).turn.id
                else:
                    value = raw.get("turnId") if isinstance(raw, dict) else None
                    turn_id = value if isinstance(value, str) else action.expected_turn_id
            except Exception as exc:
                error = ProtocolError(f"{action.method} returned an answer we cannot read ({exc}): {raw!r:.300}")
                live.fail(error)
                answer = _Delivered(action.token, broken=str(error))
            else:
                answer = _Delivered(action.token, turn_id=turn_id)
        await self._report(answer)

    async def _interrupt(self, live: LiveSession, action: Interrupt) -> None:
        params = p.unstructure(p.TurnInterruptParams(action.thread_id, action.turn_id))
        try:
            await live.connection.request("turn/interrupt", params, timeout=self._request_timeout)
        except RpcError as exc:
            answer = _Interrupted(action.token, False, str(exc))
        except RequestTimeout as exc:
            live.fail(exc)
            return
        except ConnectionLost:
            return
        else:
            answer = _Interrupted(action.token, True)
        await self._report(answer)

    async def _report(self, item: Any) -> None:
        """An RPC task's answer to the engine; dropped when the engine has already ended (the runtime stopped)."""
        try:
            await self._send.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    @contextmanager
    def _then_tell(self, settlement: Settlement) -> Iterator[None]:
        """Around a settlement's durable write: its caller is told after the write, whatever the write did. A lost
        lease still ends the runtime; another failure is logged, and the input stays in doubt in the store for
        the next start to reconcile with codex."""
        try:
            yield
        except LeaseLost:
            self._settle(settlement)
            raise
        except Exception as exc:
            log.warning("[%s] failed to persist settlement %s: %r", self.runtime_id, settlement.seq, exc)
        self._settle(settlement)

    async def _persist_loop(self) -> None:
        """Write settlements in order, and tell each caller once its settlement is durable."""
        try:
            async for settlement, stored in self._persist_receive:
                with self._then_tell(settlement), trio.CancelScope(shield=True):
                    await self._store.settle(self.runtime_id, stored)
        finally:
            # Also when cancelled (the caller of open_runtime was): whoever waits is told now. What was not written
            # stays in doubt in the store, and the next start reconciles it with codex.
            while True:
                try:
                    settlement, _ = self._persist_receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                self._settle(settlement)
            self.persisted.set()

    async def _best_effort(self, what: str, write: Callable[..., Awaitable[None]], *args: Any) -> None:
        with trio.CancelScope(shield=True):
            try:
                await write(*args)
            except LeaseLost:
                raise
            except Exception as exc:
                log.warning("[%s] failed to %s %r: %r", self.runtime_id, what, args[1:], exc)
