"""Stopping a Trio application cleanly on SIGTERM, SIGHUP and SIGINT.

A runtime stops properly only by leaving its ``async with`` block: that reaps the codex child (which runs in its
own process group, so a signal sent to the application never reaches it), settles what was in flight and records
the state. Trio turns SIGINT into a ``KeyboardInterrupt`` that still unwinds the block, but SIGTERM (what
systemd, Docker, Kubernetes and ``kill`` send) and SIGHUP (a closed terminal) kill the process outright by
default: the child is left running and nothing is settled.

:func:`stop_on_signals` makes each of them a cancellation instead. The block it guards is cancelled on the first
signal, which is recorded, so that everything inside unwinds the normal way (``finally`` blocks, ``__aexit__``,
shielded clean-up) and the block then ends without an exception; the application decides how to exit, usually
with the conventional status ``128 + signal number`` (:attr:`SignalStop.exit_status`).

A second signal while the block is stopping means the user will not wait: it is handed back to whatever handled
that signal before (as if this helper had never been there). Inside ``trio.run`` that means SIGINT raises
``KeyboardInterrupt`` in the main task, even through a shielded wait, and SIGTERM or SIGHUP end the process at
once. Either way the rest of the clean stop is skipped; since the runtime's stop is bounded (its grace period), a
second signal is rarely needed.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, NoReturn, final

import attrs
import trio

__all__ = ["DEFAULT_STOP_SIGNALS", "SignalStop", "stop_on_signals"]

#: The signals a service is asked to stop with: by its supervisor, by a closed terminal, by Ctrl-C.
DEFAULT_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


@final
@attrs.define(eq=False)
class SignalStop:
    """What a :func:`stop_on_signals` block watches for, and which signal (if any) stopped it."""

    #: the signals that stop the block
    signals: tuple[signal.Signals, ...]
    #: the first of them that arrived, or None while none has
    received: signal.Signals | None = None

    @property
    def exit_status(self) -> int | None:
        """The conventional exit status for the received signal (``128 + number``: 130 for SIGINT, 143 for
        SIGTERM, 129 for SIGHUP), or None when no signal stopped the block."""
        return None if self.received is None else 128 + int(self.received)


@asynccontextmanager
async def stop_on_signals(*signals: int) -> AsyncIterator[SignalStop]:
    """Cancel the block on the first of ``signals`` (default: SIGTERM, SIGHUP, SIGINT) and record which.

    ::

        async with codex_trio.stop_on_signals() as stop:
            async with codex_trio.open_runtime(config) as runtime:
                ...  # serve until a signal arrives
        if stop.received is not None:
            sys.exit(stop.exit_status)  # 143 after SIGTERM: the runtime has stopped and reaped its child

    The block ends normally after a signal: the cancellation is caught here, once everything inside has
    unwound. An exception from the block propagates as itself (never in an ExceptionGroup). A second signal
    during the stop is handed back to its previous handler (see the module documentation). Must run in the
    main thread, like :func:`trio.open_signal_receiver`, which it uses.
    """
    watched = tuple(signal.Signals(s) for s in signals) or DEFAULT_STOP_SIGNALS
    stop = SignalStop(watched)
    try:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as block:
                await nursery.start(_watch, stop, block)
                yield stop
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _raise_unwrapped(group)


async def _watch(
    stop: SignalStop, block: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Cancel ``block`` on the first signal; hand a second one back to its previous handler."""
    again: signal.Signals | None = None
    with trio.open_signal_receiver(*stop.signals) as received:
        task_status.started()
        async for signum in received:
            if stop.received is None:
                stop.received = signal.Signals(signum)
                block.cancel()
            else:
                again = signal.Signals(signum)
                break
    if again is not None:
        # The receiver is closed, so the previous handlers are back. Raised from the run loop rather than from
        # this task: Trio's own SIGINT handler then delivers KeyboardInterrupt to the main task (through shields,
        # as Ctrl-C does) instead of raising it here, where it would only wait for the stop like everything else.
        trio.lowlevel.current_trio_token().run_sync_soon(signal.raise_signal, again)


def _raise_unwrapped(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the one exception that explains ``group`` (the block's own), as itself; else the group."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    meaningful = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    chosen = meaningful[0] if len(meaningful) == 1 else leaves[0] if not meaningful else None
    if chosen is None:
        raise group
    # As trio-websocket does: re-raise the leaf with its own context, not "during handling of the group".
    context = chosen.__context__
    try:
        raise chosen
    finally:
        chosen.__context__ = context
        del chosen, context
