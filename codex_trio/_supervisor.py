"""The supervisor: runs one session after another, restarting with backoff, and owns the runtime's status.

OTP-style: a session that fails with something a restart can cure (see ``_session.is_restartable``) is
restarted after the :class:`~codex_trio._policy.RestartTracker`'s delay; past the restart intensity the
supervisor gives up and :class:`~codex_trio.RuntimeGaveUp` escalates out of ``open_runtime``. A failure that is
not a session failure — a bug in codex_trio, or a lost lease — is logged with its traceback and raised at once:
restarting would only hide it.

The first start is special: a configuration mistake (a missing binary, a bad socket directory, a codex that exits
with an error status, a rejected config) raises out of ``open_runtime`` at once, and a transient failure (not
ready in time on a loaded host, a handshake timeout, a dropped connection, a killed child) is retried with the
policy's backoff, up to :data:`FIRST_START_ATTEMPTS` attempts in all, before its cause is raised.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Final, Protocol

import trio

from ._errors import (
    AppServerExited,
    AppServerNotReady,
    FrameTooLarge,
    LeaseLost,
    RequestTimeout,
    ServerDraining,
    StateStoreError,
    TransportError,
)
from ._events import EventHub, Restarting, StatusChanged
from ._policy import RestartTracker
from ._session import SessionHost, describe, is_restartable, run_session
from ._state import RuntimeStatus, StateStore
from ._util import leaf_exceptions

__all__ = ["StatusBoard", "Supervisor", "is_transient"]

log = logging.getLogger("codex_trio.runtime")

#: Status transitions remembered, so that wait_status() sees a status held for less than a scheduling round.
_TRANSITIONS: Final = 64
#: A first start tries this often (with the policy's backoff between) before it reports a transient failure: enough
#: for a host that was briefly overloaded, few enough that a codex that cannot start is reported within seconds.
FIRST_START_ATTEMPTS: Final = 3


def is_transient(cause: BaseException) -> bool:
    """Could a first start that failed with ``cause`` succeed if tried again? (Else it is a mistake to report.)"""
    if isinstance(cause, AppServerExited):
        # An error status is codex refusing its configuration; a signal or a clean exit came from outside.
        return cause.returncode is None or cause.returncode <= 0
    if isinstance(cause, FrameTooLarge):
        return False  # max_message_size is configuration
    if isinstance(cause, StateStoreError):
        return not isinstance(cause, LeaseLost)
    return isinstance(cause, (AppServerNotReady, RequestTimeout, TransportError, ServerDraining))


class StatusBoard:
    """The runtime's status: one writer (the supervisor, and the stop path), published and persisted."""

    def __init__(self, runtime_id: str, store: StateStore, hub: EventHub) -> None:
        self.runtime_id = runtime_id
        self._store = store
        self._hub = hub
        self.status: RuntimeStatus = "declared"
        self._changed = trio.Event()
        self._transitions: deque[RuntimeStatus] = deque(maxlen=_TRANSITIONS)
        self._count = 0
        self._error: str | None = None
        self.generation = 0

    async def set(self, status: RuntimeStatus, *, error: str | None = None) -> None:
        previous = self.status
        if status == previous and error == self._error and status != "starting":
            return  # the session said it first (its failure), the supervisor says it again: one transition
        self._error = error
        self.status = status
        self._transitions.append(status)
        self._count += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        fields: dict[str, Any] = {}
        if status == "starting":
            fields["last_started_at"] = time.time()
        elif status == "ready":
            fields["last_ready_at"] = time.time()
            fields["last_error"] = None
        elif error is not None:
            fields["last_error"] = error
        if previous != status:
            self._hub.publish(StatusChanged(status, previous, self.generation, error, runtime_id=self.runtime_id))
        with trio.CancelScope(shield=True):
            try:
                await self._store.set_status(self.runtime_id, status, **fields)
            except LeaseLost:
                if status not in ("stopping", "stopped", "failed"):
                    raise
            except Exception as exc:  # a status write must never take the runtime down
                log.warning("[%s] failed to persist status %s: %r", self.runtime_id, status, exc)

    async def wait(self, *statuses: RuntimeStatus) -> RuntimeStatus:
        """Wait until the status is, or passes through, one of ``statuses``; returns the one reached."""
        if self.status in statuses:
            return self.status
        seen = self._count
        while True:
            await self._changed.wait()
            missed = self._count - seen
            recent = list(self._transitions)[-missed:] if missed <= len(self._transitions) else self._transitions
            for status in recent:
                if status in statuses:
                    return status
            seen = self._count


class SupervisorHost(SessionHost, Protocol):
    board: StatusBoard
    hub: EventHub
    tracker: RestartTracker

    @property
    def stopping(self) -> bool: ...


class Supervisor:
    def __init__(self, host: SupervisorHost) -> None:
        self._host = host
        self.generation = 0
        self.ever_ready = False
        self.done = trio.Event()
        self._started: trio.TaskStatus[None] | None = None
        self._scope: trio.CancelScope | None = None

    def cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def session_ready(self) -> None:
        """The current session is up (called by the runtime once the engine has it)."""
        self.ever_ready = True
        if self._started is not None:
            started, self._started = self._started, None
            started.started()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._started = task_status
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._host.stopping:
                    scope.cancel()
                await self._loop()
        finally:
            self.done.set()

    async def _loop(self) -> None:
        host = self._host
        board = host.board
        tracker = host.tracker
        runtime_id = host.config.runtime_id
        first_attempts = 0
        while True:
            self.generation += 1
            board.generation = self.generation
            tracker.session_started(trio.current_time())
            await board.set("starting")
            try:
                cause = await run_session(host, self.generation)
            except BaseException as exc:
                cause = _classify(exc, runtime_id)
            if host.stopping:
                return
            if cause is None:  # pragma: no cover - a session only ends without a cause when cancelled
                cause = TransportError("the app-server session ended without a reported cause")
            if not self.ever_ready:
                first_attempts += 1
                if not is_transient(cause) or first_attempts >= FIRST_START_ATTEMPTS:
                    await board.set("degraded", error=describe(cause))
                    raise cause
            decision = tracker.session_failed(trio.current_time(), cause)
            if decision.give_up:
                await board.set("failed", error=describe(cause))
                raise decision.to_error()
            log.warning("[%s] %s; restarting in %.3gs", runtime_id, describe(cause), decision.delay)
            await board.set("degraded", error=describe(cause))
            host.hub.publish(
                Restarting(decision.attempt, decision.delay, describe(cause), self.generation, runtime_id=runtime_id)
            )
            await trio.sleep(decision.delay)


def _classify(exc: BaseException, runtime_id: str) -> BaseException:
    """What escaped a session: a restartable cause is returned; anything else is re-raised (logged if a bug)."""
    leaves = leaf_exceptions(exc)
    for leaf in leaves:
        if isinstance(leaf, (KeyboardInterrupt, SystemExit)):
            raise leaf
    meaningful = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    if not meaningful:
        raise exc  # a cancellation: ours (stop) or the caller's
    for leaf in meaningful:
        if not is_restartable(leaf):
            if not isinstance(leaf, LeaseLost):
                log.error("[%s] bug in codex_trio; the runtime stops", runtime_id, exc_info=leaf)
            raise leaf from None
    return meaningful[0]
