"""The ``codex app-server`` child: spawn, connect-based readiness, and the process-group reap.

Theory of operation
-------------------
:func:`open_app_server` is the only way to run a child, so every child is reaped by the ``finally`` of one
context manager, whatever ends it: a normal exit, an error, or cancellation.

* **Own process group.** The child starts in a new session, so its pid is also its process-group id. The
  npm ``codex`` wrapper (Node 20) runs the native binary as a *child of node in the same group*; signalling
  the group is what reaches that grandchild.
* **Readiness is a successful ``connect()``.** codex 0.169 makes the requested path a symlink to a socket
  under ``/tmp/codex-daemon-<uid>/``, and after a SIGKILL that link and socket stay behind, so "the path
  exists" or even "the path is a socket" is true long before (or without) anyone listening. A path longer
  than ``sun_path`` cannot be passed to ``connect()`` at all; codex accepts such paths, so we connect
  through the link's target.
* **The reap always ends in SIGKILL.** SIGTERM first (an idle codex exits cleanly within milliseconds and
  removes its socket files), a grace period, then SIGKILL to the group regardless: a single SIGTERM never
  ends codex while a turn is running (it drains indefinitely), and a grandchild may outlive its parent. The
  leader is then waited for, so no zombie stays behind, and the reap waits (bounded) until /proc shows no
  live process left in the group: codex itself starts helpers (``git``, ``lsb_release``) in its group. All
  of it runs shielded from cancellation.
* **Logs.** stdout and stderr go straight to two append-only 0600 files (no pipes, so a chatty child never
  blocks on us). Several generations of one runtime append to the same files; each child remembers the
  stderr offset it started at, so error messages quote only what *it* wrote. Empty logs are removed at the
  end.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import stat
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import final

import attrs
import trio

from ._errors import AppServerExited, AppServerNotReady, BinaryNotFound, ProcessError, SocketPathError
from ._paths import SUN_PATH_MAX, ensure_owner_only_dir, path_bytes, sanitize_id
from ._util import masked_env

__all__ = [
    "AppServerChild",
    "ChildSpec",
    "app_server_argv",
    "describe_returncode",
    "live_pids_in_group",
    "log_paths",
    "open_app_server",
]

#: How often readiness retries a refused connect. Short: codex binds within ~30 ms of starting.
_READY_POLL_INTERVAL = 0.02
#: connect() errors that mean "nobody is listening yet": no path yet, a stale socket/link, a full backlog,
#: or (for a long path) a path that is not yet the symlink codex makes.
_NOT_LISTENING_YET = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN, errno.EINVAL, errno.ENOTDIR})
_LOG_SUBDIR = "codex-app-server"
#: How long the reap waits for SIGKILLed grandchildren to disappear; one in uninterruptible sleep may take longer.
_GROUP_EXIT_TIMEOUT = 2.0


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


@final
class AppServerChild:
    """A running ``codex app-server`` child, as yielded by :func:`open_app_server`."""

    def __init__(
        self,
        process: trio.Process,
        socket_path: Path,
        stdout_log_path: Path,
        stderr_log_path: Path,
        stderr_offset: int,
    ) -> None:
        self._process = process
        self.pid: int = process.pid
        # start_new_session=True makes the child a session and group leader: pgid == pid, no racy getpgid().
        self.pgid: int = process.pid
        self.socket_path = socket_path
        self.stdout_log_path = stdout_log_path
        self.stderr_log_path = stderr_log_path
        self._stderr_offset = stderr_offset
        self._reaped = False

    def __repr__(self) -> str:
        state = describe_returncode(self.returncode)
        return f"<AppServerChild pid={self.pid} {state} socket={self.socket_path}>"

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while running."""
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the child to exit and return its exit status (negative: killed by that signal)."""
        return await self._process.wait()

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

    def stderr_tail(self, max_bytes: int = 8192) -> str:
        """The last ``max_bytes`` this child (not an earlier one) wrote to stderr, decoded leniently."""
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

    def exit_error(self) -> AppServerExited:
        """An :class:`AppServerExited` describing how the child ended, with its stderr tail."""
        rc = self.returncode
        return AppServerExited(
            f"codex app-server (pid {self.pid}) {describe_returncode(rc)}",
            returncode=rc,
            stderr_tail=self.stderr_tail(),
        )

    async def _reap(self, grace_period: float) -> None:
        """SIGTERM the group, give the leader ``grace_period`` to exit, SIGKILL the group, reap the leader."""
        if self._reaped:
            return
        with trio.CancelScope(shield=True):
            if self._process.returncode is None:
                _signal_group(self.pgid, signal.SIGTERM)
                with trio.move_on_after(grace_period):
                    await self._process.wait()
            # Always, even when the leader is gone: a grandchild (the native codex under the node wrapper, or
            # a helper that ignores SIGTERM) may still be in the group.
            _signal_group(self.pgid, signal.SIGKILL)
            await self._process.wait()
            await _wait_group_gone(self.pgid)
            self._reaped = True


async def _wait_group_gone(pgid: int) -> None:
    """Wait (bounded) until no live process is left in the group.

    codex starts helpers in its own group (``git ls-remote`` for plugins, ``lsb_release``); once the leader is
    reaped they are init's children, so we cannot wait() for them, and SIGKILL takes effect only when they are
    next scheduled. Without /proc there is nothing to poll and the SIGKILL has to do.
    """
    with trio.move_on_after(_GROUP_EXIT_TIMEOUT):
        while True:
            try:
                if not live_pids_in_group(pgid):
                    return
            except NotImplementedError:
                return
            await trio.sleep(0.01)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is already gone
    except PermissionError:
        pass  # the group is gone and the id now belongs to someone else's process: nothing of ours left


def _open_log(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left by an older, laxer version: codex logs can hold prompts and paths
    except OSError:
        os.close(fd)
        raise
    return fd


def _remove_socket_link(path: Path) -> None:
    """Unlink ``path`` if it is a symlink or a socket (never a regular file someone put there)."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
            os.unlink(path)
    except OSError:
        pass


def _remove_if_empty(path: Path) -> None:
    try:
        if os.stat(path).st_size == 0:
            os.unlink(path)
    except OSError:
        pass


async def _spawn(spec: ChildSpec, stdout_fd: int, stderr_fd: int) -> trio.Process:
    argv0 = spec.argv[0]
    try:
        # Shielded: Popen runs in a thread; a cancellation landing after it succeeded would orphan the child.
        with trio.CancelScope(shield=True):
            process = await trio.lowlevel.open_process(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=stdout_fd,
                stderr=stderr_fd,
                cwd=spec.cwd,
                env=dict(spec.env),
                start_new_session=True,
            )
    except (FileNotFoundError, PermissionError) as exc:
        if exc.filename is None or os.fsdecode(exc.filename) == argv0:
            why = "no such file" if isinstance(exc, FileNotFoundError) else "permission denied"
            raise BinaryNotFound([f"{argv0!r}: {why}"]) from exc
        raise ProcessError(f"cannot start codex app-server {argv0!r}: {exc}") from exc
    except OSError as exc:
        raise ProcessError(f"cannot start codex app-server {argv0!r}: {exc}") from exc
    return process


async def _wait_ready(child: AppServerChild, spec: ChildSpec) -> None:
    """Return once a connect() to the child's socket succeeds; reap the child and raise if it never does."""
    last_error: BaseException | None = None
    with trio.move_on_after(spec.ready_timeout):
        while True:
            if child.returncode is not None:
                await child._reap(spec.grace_period)  # its group may still hold a grandchild
                raise AppServerExited(
                    f"codex app-server (pid {child.pid}) {describe_returncode(child.returncode)} "
                    f"before it accepted connections on {spec.socket_path}",
                    returncode=child.returncode,
                    stderr_tail=child.stderr_tail(),
                )
            try:
                stream = await trio.open_unix_socket(child.connect_path())
            except OSError as exc:
                if exc.errno not in _NOT_LISTENING_YET:
                    await child._reap(spec.grace_period)
                    raise AppServerNotReady(
                        f"codex app-server (pid {child.pid}): connecting to {spec.socket_path} failed: {exc}"
                    ) from exc
                last_error = exc
            else:
                await stream.aclose()
                return
            await trio.sleep(_READY_POLL_INTERVAL)
    await child._reap(spec.grace_period)
    detail = f" (last connect error: {last_error})" if last_error is not None else ""
    tail = child.stderr_tail()
    message = (
        f"codex app-server (pid {child.pid}) did not accept connections on {spec.socket_path} "
        f"within {spec.ready_timeout:g}s{detail}"
    )
    if tail.strip():
        message += "\n--- codex stderr (tail) ---\n" + tail.rstrip()
    raise AppServerNotReady(message)


@asynccontextmanager
async def open_app_server(
    spec: ChildSpec, *, on_spawn: Callable[[int], None] | None = None
) -> AsyncIterator[AppServerChild]:
    """Start ``spec.argv`` in its own process group, wait until its socket accepts a connection, yield it.

    On exit, whether normal, by an exception or by cancellation, the group is reaped (SIGTERM,
    ``grace_period``, SIGKILL), the socket link is removed and empty log files are deleted. Raises
    :class:`AppServerExited` if the child exits before it is ready, :class:`AppServerNotReady` if it is not
    ready within ``ready_timeout``, and :class:`BinaryNotFound` / :class:`ProcessError` if it cannot be
    started; the child is reaped before any of these is raised.
    """
    ensure_owner_only_dir(spec.socket_path.parent)
    # Codex replaces a stale socket itself, but other binaries (and the fake in the tests) would fail to bind.
    _remove_socket_link(spec.socket_path)
    stdout_path, stderr_path = log_paths(spec.log_dir, spec.runtime_id)
    ensure_owner_only_dir(stdout_path.parent)
    if spec.cwd is not None:
        try:
            spec.cwd.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProcessError(f"cannot create the codex working directory {spec.cwd}: {exc}") from exc

    fds: list[int] = []
    try:
        try:
            fds.append(_open_log(stdout_path))
            fds.append(_open_log(stderr_path))
        except OSError as exc:
            raise ProcessError(f"cannot open codex app-server log file: {exc}") from exc
        stderr_offset = os.fstat(fds[1]).st_size
        process = await _spawn(spec, fds[0], fds[1])
    except BaseException:
        _remove_if_empty(stdout_path)
        _remove_if_empty(stderr_path)
        raise
    finally:
        for fd in fds:
            os.close(fd)  # the child has its own copies

    child = AppServerChild(process, spec.socket_path, stdout_path, stderr_path, stderr_offset)
    if on_spawn is not None:
        on_spawn(child.pgid)  # before readiness: owners can account for every group they created
    try:
        await _wait_ready(child, spec)
        yield child
    finally:
        await child._reap(spec.grace_period)
        # Only our link: its target belongs to codex, which cleans it up (or replaces it on the next start).
        _remove_socket_link(spec.socket_path)
        _remove_if_empty(stdout_path)
        _remove_if_empty(stderr_path)


def live_pids_in_group(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in group ``pgid``. Linux only: it reads /proc."""
    if not os.path.isdir("/proc/self"):
        raise NotImplementedError("live_pids_in_group needs a Linux /proc")
    pids: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) < 3:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in (b"Z", b"X"):
            pids.append(int(name))
    return sorted(pids)


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot): with the pid, a unique identity."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the fields after it follow the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def child_identity(pgid: int) -> str | None:
    """``"<pgid>:<start ticks>"`` of a live group leader, to find (and reap) it again after a host crash."""
    ticks = _start_ticks(pgid)
    return None if ticks is None else f"{pgid}:{ticks}"


def reap_orphan(identity: str) -> bool:
    """SIGKILL the group of an app-server a dead host left running, if it is still the same process.

    A killed host cannot reap its child (the child has its own session, so it does not die with the host). The
    start time guards against a recycled pid: only the very process that was recorded is signalled.
    """
    pgid_text, _, ticks_text = identity.partition(":")
    try:
        pgid, ticks = int(pgid_text), int(ticks_text)
    except ValueError:
        return False
    if pgid <= 1 or _start_ticks(pgid) != ticks:
        return False
    _signal_group(pgid, signal.SIGKILL)
    return True
