"""The ``codex app-server`` child: spawn, connect-based readiness, a clean and fast stop, and the group reap.

Theory of operation
-------------------
Every child is started by :func:`spawn_app_server` and ended by :meth:`AppServerChild.stop`; the two context
managers built on them (:func:`open_app_server` here, ``ProcessLauncher.launch`` in ``_launcher``) call ``stop``
from a ``finally``, shielded, whatever ends them: a normal exit, an error, or cancellation.

* **Own process group, tied to our life.** The child starts in a new session, so its pid is also its
  process-group id and signalling the group reaches what it starts in it (the npm ``codex`` wrapper under Node 20
  runs the native binary as a *child of node in the same group*). Being its own session also means nothing ties
  it to our life, so ``_watchdog`` does: a small watcher process stops every registered group when this process
  dies, however it dies, and the child gets PDEATHSIG from the long-lived thread that spawns every child.
* **Readiness is a successful ``connect()``**, counted from the spawn (``ready_timeout``). codex 0.169 makes the
  requested path a symlink to a socket under ``/tmp/codex-daemon-<uid>/``, and after a SIGKILL that link and
  socket stay behind, so "the path exists" or even "the path is a socket" is true long before (or without)
  anyone listening. A path longer than ``sun_path`` cannot be passed to ``connect()`` at all; codex accepts such
  paths, so we connect through the link's target.
* **Start slots.** Starting a codex takes ~50-400 ms, mostly CPU; fifty at once on two cores made each one take
  up to 9 s, and under a little more load many missed their 10 s deadline while they fought each other.
  :func:`start_limiter` (per Trio run, sized from the CPU count) bounds how many children are between spawn and
  connectable; the ready deadline starts at the spawn, after the wait for a slot.
* **The stop** (:class:`StopSchedule`, sans-IO, driven by ``stop``): SIGTERM to the group, a second SIGTERM
  25 ms later (a codex running a turn drains forever on the first, and exits at once, cleanly, on the second;
  two back to back can merge into one pending signal, so the first wait matters, and the SIGTERM is repeated
  every 100 ms after that), ``grace_period``, then SIGKILL as the last resort. The first SIGTERM waits until
  codex handles SIGTERM: it installs its handler a few ms *after* its socket first accepts connections (3-20 ms
  measured), and a SIGTERM before that kills it with the default action, leaving its socket files behind. The
  group always gets a final SIGKILL (a grandchild or a helper may outlive the leader), sent while the leader is
  still unreaped so that its id cannot have been reused. Then the leader is reaped, and the reap waits (bounded)
  until no live process is left in the group. Measured mid-turn (20 stops): median 81 ms, exit status 0, against
  1036 ms, SIGKILL and leftover files for SIGTERM, grace period, SIGKILL.
* **No trace in codex's daemon directory.** codex removes its socket, lock and our symlink on a clean exit. After
  a SIGKILL (ours, the kernel's, a crash) or a too-early SIGTERM it leaves ``/tmp/codex-daemon-<uid>/<sha256 of
  our socket path>`` and its ``.lock`` forever (a fresh path per child means nothing reuses them), so once the
  child is certainly dead we remove exactly those two files, if nobody listens on the socket.
* **The Trio thread never blocks.** Waiting for exit uses a pidfd (a plain poll where the kernel has none);
  /proc scans, log and /proc file reads, and file-system clean-up run in worker threads.
* **Logs.** stdout and stderr go straight to two append-only 0600 files (no pipes, so a chatty child never blocks
  on us). Several generations of one runtime append to the same files; each child remembers the stderr offset it
  started at, so error messages quote only what *it* wrote. Empty logs are removed at the end.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Final, final

import attrs
import trio

from . import _watchdog
from ._errors import AppServerExited, AppServerNotReady, BinaryNotFound, ProcessError, SocketPathError
from ._paths import SUN_PATH_MAX, ensure_owner_only_dir, path_bytes, sanitize_id
from ._util import masked_env
from ._watchdog import group_exists, live_pids_in_group, start_ticks

__all__ = [
    "AppServerChild",
    "ChildSpec",
    "StartSlot",
    "StopSchedule",
    "StopStep",
    "acquire_start_slot",
    "app_server_argv",
    "child_identity",
    "describe_returncode",
    "live_pids_in_group",
    "log_paths",
    "open_app_server",
    "reap_orphan",
    "spawn_app_server",
    "start_limiter",
]

#: How often readiness retries a refused connect. Short: codex binds within ~50-150 ms of starting.
_READY_POLL_INTERVAL: Final = 0.02
#: connect() errors that mean "nobody is listening yet": no path yet, a stale socket/link, a full backlog,
#: or (for a long path) a path that is not yet the symlink codex makes.
_NOT_LISTENING_YET = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN, errno.EINVAL, errno.ENOTDIR})
_LOG_SUBDIR: Final = "codex-app-server"
#: How long the reap waits for SIGKILLed group members to disappear; one in uninterruptible sleep may take longer.
_GROUP_EXIT_TIMEOUT: Final = 2.0
#: After the final SIGKILL, how long to wait for the leader before giving up on reaping it (it would have to be
#: stuck in uninterruptible sleep): a stop is bounded even then.
_REAP_TIMEOUT: Final = 10.0
#: Exit polling where the kernel has no pidfd (Linux < 5.3).
_EXIT_POLL_INTERVAL: Final = 0.02

#: The first SIGTERM never goes out sooner than this after the socket first accepted a connection ...
TERM_AFTER_CONNECTABLE: Final = 0.02
#: ... and waits up to this long after it for the leader to handle (or ignore) SIGTERM.
HANDLER_WAIT: Final = 0.25
#: From the first SIGTERM to the second. Not zero: two SIGTERMs sent back to back reach codex as one.
SECOND_TERM_DELAY: Final = 0.025
#: After the second SIGTERM, it is repeated this often until the grace period ends (codex ignores the extras).
RETERM_INTERVAL: Final = 0.1
_HANDLER_POLL: Final = 0.005

#: Slack per queue round for the wait for a start slot, on top of the ready timeout that bounds each holder.
_SPAWN_ALLOWANCE: Final = 5.0


def _to_argv(value: Sequence[str]) -> tuple[str, ...]:
    # A string is a Sequence[str] too; taken as argv it would run its first character. Reject it before tuple().
    if isinstance(value, str) or not value or not all(isinstance(a, str) and a for a in value):
        raise ProcessError(f"ChildSpec.argv must be a non-empty sequence of non-empty strings, got {value!r}")
    return tuple(value)


def _check_socket_path(_inst: object, _attr: attrs.Attribute[Path], value: Path) -> None:
    # The child runs in another cwd, so a relative path would name a different file for it than for us.
    if not value.is_absolute():
        raise SocketPathError(f"socket_path must be absolute, got {value}", field="socket_path", value=str(value))


def _check_duration(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value) or value < 0 or (attr.name == "ready_timeout" and value == 0):
        raise ProcessError(f"ChildSpec.{attr.name} must be a finite number of seconds > 0, got {value!r}")


@attrs.frozen
class ChildSpec:
    """Everything needed to start one app-server child. ``argv`` is executed directly, never by a shell."""

    argv: Sequence[str] = attrs.field(converter=_to_argv)
    env: Mapping[str, str] = attrs.field(repr=masked_env)
    cwd: Path | None
    socket_path: Path = attrs.field(validator=_check_socket_path)
    log_dir: Path
    runtime_id: str
    ready_timeout: float = attrs.field(default=10.0, validator=_check_duration)
    grace_period: float = attrs.field(default=1.0, validator=_check_duration)


def app_server_argv(codex_bin: str, socket_path: Path, extra_args: Sequence[str] = ()) -> list[str]:
    """``<bin> app-server --listen unix://<socket_path> <extra_args...>``."""
    return [codex_bin, "app-server", "--listen", f"unix://{socket_path}", *extra_args]


def log_paths(log_dir: Path, runtime_id: str) -> tuple[Path, Path]:
    """A runtime's (stdout, stderr) logs: ``<log_dir>/codex-app-server/<id>.log`` and ``<id>.stderr.log``."""
    base = log_dir / _LOG_SUBDIR
    name = sanitize_id(runtime_id)
    return base / f"{name}.log", base / f"{name}.stderr.log"


def describe_returncode(returncode: int | None) -> str:
    """``exited with status 1`` / ``was killed by SIGKILL`` / ``is still running``."""
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


# --- the stop schedule (sans-IO) ----------------------------------------------------------------------------------


@attrs.frozen
class StopStep:
    """What to do now: send ``signal`` to the group (if any); then, unless ``done``, wait for the leader to exit
    until ``wait_until`` at the latest and ask again."""

    signal: signal.Signals | None
    wait_until: float
    done: bool = False


@attrs.define
class StopSchedule:
    """When to send which signal to stop a child's group. Times are passed in; nothing is sent from here.

    SIGTERM (not before ``connectable_at + TERM_AFTER_CONNECTABLE``, and not before the leader handles SIGTERM
    unless ``HANDLER_WAIT`` has passed), a second SIGTERM ``SECOND_TERM_DELAY`` later, SIGTERM again every
    ``RETERM_INTERVAL``, and SIGKILL ``grace_period`` after the second SIGTERM. As soon as the leader has exited
    the group gets its final SIGKILL: whatever is left in it (a grandchild, a helper) has no reason to live.
    A child that never accepted a connection gets its SIGTERM at once: it either handles it, or has not bound its
    socket yet, or (the rare case in between) dies leaving files that the stop removes afterwards.
    """

    grace_period: float
    connectable_at: float | None = None
    first_term_at: float | None = None
    last_term_at: float | None = None
    kill_at: float | None = None

    def wants_disposition(self, now: float) -> bool:
        """Whether :meth:`next` would like to know if the leader handles SIGTERM yet."""
        return (
            self.first_term_at is None and self.connectable_at is not None and now < self.connectable_at + HANDLER_WAIT
        )

    def next(self, now: float, *, exited: bool, handles_term: bool | None = None) -> StopStep:
        """The step to take at ``now``. ``handles_term``: whether the leader catches or ignores SIGTERM (None:
        not known, e.g. no /proc; then only the fixed delay after readiness applies)."""
        if exited:
            return StopStep(signal.SIGKILL, now, done=True)
        if self.first_term_at is None:
            if self.connectable_at is not None:
                earliest = self.connectable_at + TERM_AFTER_CONNECTABLE
                if now < earliest:
                    return StopStep(None, earliest)
                handler_deadline = self.connectable_at + HANDLER_WAIT
                if handles_term is False and now < handler_deadline:
                    return StopStep(None, min(now + _HANDLER_POLL, handler_deadline))
            self.first_term_at = self.last_term_at = now
            return StopStep(signal.SIGTERM, now + SECOND_TERM_DELAY)
        assert self.last_term_at is not None
        if self.kill_at is None:
            second_at = self.first_term_at + SECOND_TERM_DELAY
            if now < second_at:
                return StopStep(None, second_at)
            self.last_term_at = now
            self.kill_at = now + self.grace_period
            return StopStep(signal.SIGTERM, min(now + RETERM_INTERVAL, self.kill_at))
        if now >= self.kill_at:
            return StopStep(signal.SIGKILL, now, done=True)
        next_term = self.last_term_at + RETERM_INTERVAL
        if now >= next_term:
            self.last_term_at = now
            return StopStep(signal.SIGTERM, min(now + RETERM_INTERVAL, self.kill_at))
        return StopStep(None, min(next_term, self.kill_at))


# --- start slots --------------------------------------------------------------------------------------------------


@final
class _StartSlots:
    def __init__(self) -> None:
        self.limiter = trio.CapacityLimiter(_default_start_limit())
        self.max_ready_timeout = 0.0


_START_SLOTS: trio.lowlevel.RunVar[_StartSlots] = trio.lowlevel.RunVar("codex_trio_start_slots")


def _default_start_limit() -> int:
    """Two starts per CPU, at least 4: a codex start is mostly CPU, with some I/O (its SQLite files) to overlap.
    Measured on 2 CPUs, 50 launches at once with fresh CODEX_HOMEs: limit 2 -> 15.1 s in all, each child at most
    0.8 s from spawn to connectable; 4 -> 10.1 s, 1.3 s; 8 -> 9.9 s, 2.0 s; no limit -> 9.1 s, 8.7 s (the
    deadline is 10 s, so under a little more load, starts failed)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 2
    return max(4, 2 * cpus)


def _start_slots() -> _StartSlots:
    try:
        return _START_SLOTS.get()
    except LookupError:
        slots = _StartSlots()
        _START_SLOTS.set(slots)
        return slots


def start_limiter() -> trio.CapacityLimiter:
    """How many app-servers of this Trio run may be starting at once (spawned, not yet accepting connections).

    Defaults to twice the number of CPUs this process may run on, at least 4. Set ``start_limiter().total_tokens``
    to change it for the rest of the run.
    """
    return _start_slots().limiter


@final
class StartSlot:
    """One of the :func:`start_limiter` tokens, held from before the spawn until the child accepts connections
    (or fails to). :meth:`release` is idempotent."""

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._held = False

    async def _acquire(self) -> None:
        await self._limiter.acquire_on_behalf_of(self)
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter.release_on_behalf_of(self)


async def acquire_start_slot(ready_timeout: float) -> StartSlot:
    """Wait for a start slot (FIFO). Bounded: every holder lets go within its ready timeout of its spawn, so the
    wait cannot exceed one ready timeout per queue round; past that (spawns that hang) it raises
    :class:`AppServerNotReady` rather than wait forever."""
    slots = _start_slots()
    slots.max_ready_timeout = max(slots.max_ready_timeout, ready_timeout)
    limiter = slots.limiter
    stats = limiter.statistics()
    per_round = limiter.total_tokens if isinstance(limiter.total_tokens, int) else stats.tasks_waiting + 1
    rounds = stats.tasks_waiting // max(1, per_round) + 1
    timeout = rounds * (slots.max_ready_timeout + _SPAWN_ALLOWANCE)
    slot = StartSlot(limiter)
    with trio.move_on_after(timeout):
        await slot._acquire()
        return slot
    raise AppServerNotReady(
        f"no codex app-server start slot within {timeout:g}s: {stats.borrowed_tokens} app-servers were starting "
        f"in this process and {stats.tasks_waiting} waited before this one (limit {limiter.total_tokens}). Each "
        f"start holds its slot at most until its ready timeout, so spawns appear to hang: check the codex binary "
        f"and the machine's load"
    )


# --- the child ----------------------------------------------------------------------------------------------------


@attrs.frozen
class _Spawned:
    popen: subprocess.Popen[bytes]
    pidfd: int | None
    identity: str | None
    stdout_log_path: Path
    stderr_log_path: Path
    stderr_offset: int


def _returncode_of(info: os.waitid_result) -> int:
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


@final
class AppServerChild:
    """A ``codex app-server`` child, from its spawn to its reap (see :func:`spawn_app_server`)."""

    def __init__(self, spawned: _Spawned, socket_path: Path, spawned_at: float) -> None:
        self._popen = spawned.popen
        self._pidfd = spawned.pidfd
        self.pid: int = spawned.popen.pid
        # start_new_session=True makes the child a session and group leader: pgid == pid, no racy getpgid().
        self.pgid: int = self.pid
        #: ``"<pgid>:<start ticks>"`` taken at spawn, to find and reap this group after a host crash
        self.identity: str | None = spawned.identity
        self.socket_path = socket_path
        self.stdout_log_path = spawned.stdout_log_path
        self.stderr_log_path = spawned.stderr_log_path
        self._stderr_offset = spawned.stderr_offset
        #: Trio time of the spawn (the ready deadline counts from here) and of the first accepted connection
        self.spawned_at = spawned_at
        self.connectable_at: float | None = None
        self._returncode: int | None = None
        self._reaped = False
        self._stopped = False
        self._wait_lock = trio.Lock()
        self._stop_lock = trio.Lock()

    def __repr__(self) -> str:
        state = describe_returncode(self.returncode)
        return f"<AppServerChild pid={self.pid} {state} socket={self.socket_path}>"

    # -- exit ----------------------------------------------------------------------------------------------------

    def poll(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while running. Does not reap: while the
        leader is a zombie its pid, and so the group id, cannot be reused, which keeps signalling the group safe."""
        if self._returncode is None and not self._reaped:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                # Reaped behind our back (SIGCHLD ignored, or a stray waitpid(-1)): gone, status unknown.
                self._returncode = 255
                self._reaped = True
            else:
                if info is not None:
                    self._returncode = _returncode_of(info)
        return self._returncode

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while running."""
        return self.poll()

    async def wait(self) -> int:
        """Wait for the child to exit and return its exit status (negative: killed by that signal). Several tasks
        may wait at once."""
        async with self._wait_lock:  # one task at a time on the pidfd; trio refuses two readers of one fd
            while (rc := self.poll()) is None:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                else:
                    await trio.sleep(_EXIT_POLL_INTERVAL)
        return rc

    def _reap(self) -> None:
        """waitpid() the leader; call only once it has exited (then it is a zombie and this returns at once)."""
        if self._reaped or self.poll() is None:
            return
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        else:
            self._returncode = os.waitstatus_to_exitcode(status)
        self._reaped = True
        self._popen.returncode = self._returncode  # so Popen's finaliser does not track it as running
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    # -- errors --------------------------------------------------------------------------------------------------

    def stderr_tail(self, max_bytes: int = 8192) -> str:
        """The last ``max_bytes`` this child (not an earlier one) wrote to stderr, decoded leniently. Reads a file:
        from Trio, use ``await trio.to_thread.run_sync(child.stderr_tail)`` or :meth:`exit_reason`."""
        try:
            with open(self.stderr_log_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                # min(): a log truncated by someone else makes our offset meaningless; read what is there.
                own_start = min(self._stderr_offset, size)
                start = max(own_start, size - max_bytes)
                f.seek(start)
                data = f.read(max_bytes)
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        if start > own_start and "\n" in text:
            text = text.split("\n", 1)[1]  # drop the cut-off first line
        return text

    def exit_error(self, context: str = "", stderr_tail: str | None = None) -> AppServerExited:
        """An :class:`AppServerExited` describing how the child ended, with its stderr tail."""
        rc = self.returncode
        return AppServerExited(
            f"codex app-server (pid {self.pid}) {describe_returncode(rc)}{context}",
            returncode=rc,
            stderr_tail=self.stderr_tail() if stderr_tail is None else stderr_tail,
        )

    async def exit_reason(self, context: str = "") -> AppServerExited:
        """:meth:`exit_error`, reading the log off the Trio thread."""
        tail = await trio.to_thread.run_sync(self.stderr_tail)
        return self.exit_error(context, tail)

    # -- readiness -----------------------------------------------------------------------------------------------

    def connect_path(self) -> str:
        """The path to ``connect()`` to: ``socket_path``, or the target of codex's symlink when the path is
        longer than ``sun_path`` allows. Raises ``OSError`` while that symlink does not exist yet."""
        path = str(self.socket_path)
        if path_bytes(path) <= SUN_PATH_MAX:
            return path
        target = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
        if path_bytes(target) > SUN_PATH_MAX:
            raise SocketPathError(
                f"cannot connect to {path}: it is {path_bytes(path)} bytes, over the {SUN_PATH_MAX}-byte "
                f"sun_path limit, and so is its target {target}; configure a shorter socket_dir",
                field="socket_dir",
                value=path,
            )
        return target

    async def wait_connectable(self, deadline: float) -> None:
        """Return once a ``connect()`` to the socket succeeds (recording :attr:`connectable_at`).

        Raises :class:`AppServerExited` if the child exits first and :class:`AppServerNotReady` at ``deadline``
        (Trio time) or on a connect error that waiting cannot cure. The child is left running: stop it.
        """
        last_error: OSError | None = None
        while True:
            if self.poll() is not None:
                raise await self.exit_reason(f" before it accepted connections on {self.socket_path}")
            if trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline):
                try:
                    stream = await trio.open_unix_socket(self.connect_path())
                except OSError as exc:
                    if exc.errno not in _NOT_LISTENING_YET:
                        raise AppServerNotReady(
                            f"codex app-server (pid {self.pid}): connecting to {self.socket_path} failed: {exc}"
                        ) from exc
                    last_error = exc
                else:
                    self.connectable_at = trio.current_time()
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                    return
                # Sleep until the next try, waking at once if the child exits meanwhile.
                with trio.move_on_after(_READY_POLL_INTERVAL):
                    await self.wait()
        detail = f" (last connect error: {last_error})" if last_error is not None else ""
        message = (
            f"codex app-server (pid {self.pid}) did not accept connections on {self.socket_path} "
            f"within {deadline - self.spawned_at:g}s of its start{detail}"
        )
        tail = await trio.to_thread.run_sync(self.stderr_tail)
        if tail.strip():
            message += "\n--- codex stderr (tail) ---\n" + tail.rstrip()
        raise AppServerNotReady(message)

    async def _probe_once(self) -> None:
        """One ``connect()``; on success, record now as :attr:`connectable_at` (the true moment was earlier, so
        every wait counted from it is at least as long as it should be)."""
        with trio.move_on_after(_READY_POLL_INTERVAL):
            try:
                stream = await trio.open_unix_socket(self.connect_path())
            except OSError:
                return
            self.connectable_at = trio.current_time()
            await stream.aclose()

    # -- stop ----------------------------------------------------------------------------------------------------

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._reaped:
            return  # the group id may belong to someone else by now
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass  # the whole group is already gone
        except PermissionError:
            pass  # a member turned into someone else's (setuid exec): nothing we may touch

    async def stop(self, grace_period: float) -> None:
        """Stop and reap the child's group, then remove what it left behind. Idempotent; shielded from
        cancellation; bounded (about ``grace_period`` + 2.1 s at worst, unless the kernel cannot kill a process).

        See :class:`StopSchedule` for the signals. Afterwards: the leader is reaped, no live process is left in the
        group (or 2 s passed), our socket link, codex's stale socket files and empty logs are removed, and the
        group is unregistered from the orphan watcher.
        """
        with trio.CancelScope(shield=True):
            async with self._stop_lock:
                if self._stopped:
                    return
                if self.connectable_at is None and self.poll() is None:
                    # Readiness may not have been probed since the child bound its socket; if it has, the first
                    # SIGTERM must wait for its handler like after any readiness.
                    await self._probe_once()
                schedule = StopSchedule(grace_period, connectable_at=self.connectable_at)
                while True:
                    now = trio.current_time()
                    handles_term = None
                    if schedule.wants_disposition(now):
                        handles_term = await trio.to_thread.run_sync(_watchdog.sigterm_disposition_set, self.pid)
                        now = trio.current_time()
                    step = schedule.next(now, exited=self.poll() is not None, handles_term=handles_term)
                    if step.signal is not None:
                        self._signal_group(step.signal)
                    if step.done:
                        break
                    with trio.move_on_at(step.wait_until):
                        await self.wait()
                with trio.move_on_after(_REAP_TIMEOUT):
                    await self.wait()
                self._reap()
                if self._reaped:
                    await _wait_group_gone(self.pgid)
                await trio.to_thread.run_sync(self._clean_up, self._reaped)
                self._stopped = True

    def _clean_up(self, reaped: bool) -> None:
        # Only our link: its target belongs to codex, which removes it on a clean exit; after an unclean one, the
        # two stale files are removed here (the child is dead: nobody else uses a fresh path's files).
        _watchdog.remove_socket_link(self.socket_path)
        if reaped:
            _watchdog.remove_stale_daemon_files(self.socket_path)
            _watchdog.unregister(self.pgid)
        _remove_if_empty(self.stdout_log_path)
        _remove_if_empty(self.stderr_log_path)


async def _wait_group_gone(pgid: int, timeout: float = _GROUP_EXIT_TIMEOUT) -> None:
    """Wait (bounded) until no live process is left in the group.

    codex starts helpers in its own group (``git ls-remote`` for plugins, ``lsb_release``); once the leader is
    reaped they are init's children, so we cannot wait() for them, and SIGKILL takes effect only when they are
    next scheduled. One ``killpg(0)`` answers the common case (nothing left) without a /proc scan; otherwise the
    scan runs in a worker thread and we wait on pidfds of what it found.
    """
    with trio.move_on_after(timeout):
        while group_exists(pgid):
            try:
                pids = await trio.to_thread.run_sync(live_pids_in_group, pgid)
            except NotImplementedError:
                return  # no /proc: the SIGKILL has to do
            if not pids:
                return  # only zombies left, waiting for init to reap them
            await _wait_all_exit(pids)


async def _wait_all_exit(pids: Sequence[int]) -> None:
    waited = False
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            continue  # gone already, or no pidfd support
        try:
            await trio.lowlevel.wait_readable(fd)
            waited = True
        finally:
            os.close(fd)
    if not waited:
        await trio.sleep(0.01)


def _remove_if_empty(path: Path) -> None:
    try:
        if os.stat(path).st_size == 0:
            os.unlink(path)
    except OSError:
        pass


def _open_log(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left by an older, laxer version: codex logs can hold prompts and paths
    except OSError:
        os.close(fd)
        raise
    return fd


def _spawn_job(spec: ChildSpec) -> _Spawned:
    """Prepare the directories and logs, start the child, register it with the orphan watcher. Runs on the
    spawner thread (PDEATHSIG belongs to the thread that forks), never on the Trio thread."""
    socket_dir = spec.socket_path.parent
    private = ensure_owner_only_dir(socket_dir)
    if private != socket_dir:
        # The directory is shared (say /tmp): anyone who can reach the socket can drive codex, which runs
        # commands as this user. The path is in the child's argv already, so it cannot move by itself.
        raise SocketPathError(
            f"the codex socket {spec.socket_path} would be in {socket_dir}, a directory shared with other users; "
            f"put it in a private directory such as {private}",
            field="socket_path",
            value=str(spec.socket_path),
        )
    # Codex replaces a stale socket itself, but other binaries (and the fakes in the tests) would fail to bind.
    _watchdog.remove_socket_link(spec.socket_path)
    stdout_path, stderr_path = log_paths(spec.log_dir, spec.runtime_id)
    log_dir = ensure_owner_only_dir(stdout_path.parent)  # a private subdirectory if that one is shared
    stdout_path, stderr_path = log_dir / stdout_path.name, log_dir / stderr_path.name
    if spec.cwd is not None:
        try:
            spec.cwd.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProcessError(f"cannot create the codex working directory {spec.cwd}: {exc}") from exc
    argv0 = spec.argv[0]
    fds: list[int] = []
    try:
        try:
            fds.append(_open_log(stdout_path))
            fds.append(_open_log(stderr_path))
        except OSError as exc:
            raise ProcessError(f"cannot open codex app-server log file: {exc}") from exc
        stderr_offset = os.fstat(fds[1]).st_size
        try:
            popen = _watchdog.popen_in_spawner(
                spec.argv,
                env=spec.env,
                cwd=None if spec.cwd is None else str(spec.cwd),
                stdout=fds[0],
                stderr=fds[1],
            )
        except (FileNotFoundError, PermissionError) as exc:
            if exc.filename is None or os.fsdecode(exc.filename) == argv0:
                why = "no such file" if isinstance(exc, FileNotFoundError) else "permission denied"
                raise BinaryNotFound([f"{argv0!r}: {why}"]) from exc
            raise ProcessError(f"cannot start codex app-server {argv0!r}: {exc}") from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise ProcessError(f"cannot start codex app-server {argv0!r}: {exc}") from exc
    except BaseException:
        _remove_if_empty(stdout_path)
        _remove_if_empty(stderr_path)
        raise
    finally:
        for fd in fds:
            os.close(fd)  # the child has its own copies
    try:
        identity = _watchdog.register(popen.pid, spec.socket_path)
        try:
            pidfd: int | None = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            pidfd = None
    except BaseException:
        os.killpg(popen.pid, signal.SIGKILL)  # never leave a child nobody knows about
        popen.wait()
        raise
    return _Spawned(popen, pidfd, identity, stdout_path, stderr_path, stderr_offset)


async def spawn_app_server(spec: ChildSpec) -> AppServerChild:
    """Start ``spec.argv`` in its own process group and return at once (no readiness wait).

    The caller owns the child and must ``await child.stop(grace_period)`` whatever happens; prefer
    :func:`open_app_server` or ``ProcessLauncher``. Raises :class:`BinaryNotFound` / :class:`ProcessError` (and
    :class:`SocketPathError` for an unusable socket directory) when the child cannot be started.
    """
    # Shielded: the spawn runs in a thread, and a cancellation landing after it succeeded would orphan the child.
    with trio.CancelScope(shield=True):
        spawned = await trio.to_thread.run_sync(_watchdog.run_in_spawner, partial(_spawn_job, spec))
    return AppServerChild(spawned, spec.socket_path, trio.current_time())


@asynccontextmanager
async def open_app_server(
    spec: ChildSpec, *, on_spawn: Callable[[int], None] | None = None
) -> AsyncIterator[AppServerChild]:
    """Start ``spec.argv`` in its own process group, wait until its socket accepts a connection, yield it.

    Waits for a start slot first (:func:`start_limiter`); ``ready_timeout`` counts from the spawn. On exit,
    whether normal, by an exception or by cancellation, the child is stopped (:meth:`AppServerChild.stop`).
    Raises :class:`AppServerExited` if the child exits before it is ready, :class:`AppServerNotReady` if it is not
    ready within ``ready_timeout``, and :class:`BinaryNotFound` / :class:`ProcessError` if it cannot be started;
    the child is stopped before any of these leaves.
    """
    slot = await acquire_start_slot(spec.ready_timeout)
    try:
        child = await spawn_app_server(spec)
    except BaseException:
        slot.release()
        raise
    try:
        if on_spawn is not None:
            on_spawn(child.pgid)  # before readiness: owners can account for every group they created
        try:
            await child.wait_connectable(child.spawned_at + spec.ready_timeout)
        finally:
            slot.release()
        yield child
    finally:
        await child.stop(spec.grace_period)


# --- after a host crash -------------------------------------------------------------------------------------------


def child_identity(pgid: int) -> str | None:
    """``"<pgid>:<start ticks>"`` of a live group leader, to find (and reap) it again after a host crash."""
    ticks = start_ticks(pgid)
    return None if ticks is None else f"{pgid}:{ticks}"


def reap_orphan(identity: str) -> bool:
    """SIGKILL the group of an app-server a dead host left running, if it is still the same process.

    The orphan watcher normally stops a dead host's children within a second; this is the last resort for when
    it could not (it was killed too, or the children were started by an older version). The start time guards
    against a recycled pid: only the very process that was recorded is signalled.
    """
    pgid_text, _, ticks_text = identity.partition(":")
    try:
        pgid, ticks = int(pgid_text), int(ticks_text)
    except ValueError:
        return False
    if pgid <= 1 or start_ticks(pgid) != ticks:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
