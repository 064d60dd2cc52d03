"""Orphan prevention: no app-server child outlives the host process that started it.

Theory of operation
-------------------
Every app-server leads its own session and process group, so that its whole group can be signalled and so that
signals meant for the host's terminal or group do not reach it. That also means nothing ties its life to ours:
a host that was SIGKILLed, died of an unhandled SIGTERM, or was killed together with its children (``docker
stop``, a container or cgroup kill) left its app-servers running with PPID 1, ~130 MiB each. Three layers close
that gap, each covering what the others cannot:

* **The watcher** (the main one). One small process per host process (``python -I -S`` on this very file,
  stdlib only, ~9 MiB), in its own session and not our child (it double-forks), so that killing the host's group
  or the host's children does not reach it. It reads a dead-man's pipe whose only write end the host holds. The
  host registers each child right after the spawn (``R <pgid> <start ticks> <socket path>``) and unregisters it
  after the reap (``U <pgid>``). When the host dies, however it dies, the kernel closes the write end; the
  watcher reads EOF and stops every registered group the way the host would have: SIGTERM, a second SIGTERM
  (codex exits at once, cleanly, on the second even mid-turn), SIGKILL at :data:`_WATCHER_KILL_AFTER`; then it
  removes the two files codex leaves in ``/tmp/codex-daemon-<uid>/`` after a SIGKILL, and our socket symlink.
  ``killpg`` reaches grandchildren (the native codex under the npm node wrapper, codex's helpers). A
  registration is committed once it is in the pipe: the watcher reads what is buffered even after the writer
  is gone, so no acknowledgement (and no round trip) is needed.
* **A marker in the environment.** Every child gets ``CODEX_TRIO_WATCHDOG=<token of this host>``, and the host
  writes ``S`` (a spawn is under way) before each fork. If the host dies between that and the child's
  registration (a window of a millisecond or two), the watcher also sweeps ``/proc/*/environ`` for the token and
  stops those processes' groups: the child, and whatever it started.
* **PR_SET_PDEATHSIG=SIGKILL (the kernel)**, for when the watcher dies with the host (someone kills both; the
  OOM killer). Where util-linux's ``setpriv --pdeathsig`` exists, the child is started through it (one more
  exec, ~3 ms in the child, nothing in the host). Setting it from Python instead needs ``preexec_fn``, which turns
  the spawn's ``vfork`` into a ``fork`` run under the GIL: measured, 10-13 ms (50 MiB host) to 30 ms (300 MiB)
  during which no thread of the host runs, at every spawn; so there is no such fallback. PDEATHSIG belongs to the
  *thread* that forked the child, so every child is forked by one daemon *spawner thread* that lives as long as
  the process: trio spawns from worker threads that exit after 10 s idle, and a child of such a thread is killed
  while its host lives on. It reaches the direct child only (it is cleared on fork).

Each group is checked against the start time recorded at spawn before it is signalled, so a recycled process id
is never hit. Writes to the pipe are single ``write()`` calls below ``PIPE_BUF`` (atomic) on a non-blocking fd: a
watcher that stopped reading cannot block the host; the host then starts a new watcher and replays the registry.
A Python-level ``fork()`` of the host closes the inherited write end in the child (it would otherwise keep the
pipe open after the host's death) and starts afresh there.

What remains uncovered: a child whose host *and* watcher die within the millisecond between its fork and the
``prctl`` in ``setpriv`` (or on a system without ``setpriv``, a child whose host and watcher both die); the
grandchildren of a child whose watcher died with the host (PDEATHSIG reaches the direct child only); and a copy
of the pipe's write end inherited by something that forks without exec outside Python's ``os.fork``, which
delays the EOF until that process exits.

The module is also the watcher program: ``python -I -S _watchdog.py --watch FD TOKEN``.
"""

from __future__ import annotations

# Only what the watcher itself needs is imported here: it is this same file, run with ``python -I -S``, and every
# module it loads costs resident memory for the whole life of the host (9 MiB with these, 16 MiB with the host
# side's). The host side imports the rest where it uses it.
import errno
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import subprocess
    from concurrent.futures import Future

__all__ = [
    "MARKER",
    "codex_daemon_files",
    "group_exists",
    "live_pids_in_group",
    "popen_in_spawner",
    "register",
    "remove_socket_link",
    "remove_stale_daemon_files",
    "run_in_spawner",
    "sigterm_disposition_set",
    "start_ticks",
    "unregister",
    "watcher_pid",
]

T = TypeVar("T")

#: The environment variable every child carries: the token of the host process that started it.
MARKER = "CODEX_TRIO_WATCHDOG"
#: From the host's death (EOF) to SIGKILL of what is left: long enough for codex's clean exit on the second
#: SIGTERM (20-50 ms), short enough that every group is gone well within 2 s.
_WATCHER_KILL_AFTER = 0.5
_WATCHER_SECOND_TERM = 0.025
_WATCHER_RETERM_EVERY = 0.1
#: The watcher gives up waiting for groups to disappear after this long (a process in uninterruptible sleep).
_WATCHER_GIVE_UP = 5.0
#: Messages are one write() each, below PIPE_BUF (4096 on Linux, 512 by POSIX) so that they are atomic.
_MAX_MESSAGE = 512


# --- /proc helpers (shared by the host and the watcher) ---------------------------------------------------------


def _stat_fields(pid: int | str, tid: int | str | None = None) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat (or of its thread ``tid``) after the command name (which may hold spaces
    and parentheses); None once it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, D, T, Z, ...), None once it is gone."""
    fields = _stat_fields(pid)
    return fields[0].decode() if fields else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    return process_state(pid) not in (None, "Z", "X")


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot): with the pid, a unique identity."""
    fields = _stat_fields(pid)
    try:
        return None if fields is None else int(fields[19])
    except (IndexError, ValueError):
        return None


def _has_live_thread(pid: int) -> bool:
    """Whether any thread of ``pid`` is still alive. After a SIGKILL a multi-threaded process (codex) can show
    its main thread as a zombie while its other threads are still exiting, its socket still listening."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        fields = _stat_fields(pid, tid)
        if fields and fields[0] not in (b"Z", b"X"):
            return True
    return False


def live_pids_in_group(pgid: int) -> list[int]:
    """Pids of the live processes in group ``pgid``: not zombies, or zombies whose other threads still run.
    Linux only: it reads every /proc/<pid>/stat, so it is slow (milliseconds) and belongs off the Trio thread."""
    if not os.path.isdir("/proc/self"):
        raise NotImplementedError("live_pids_in_group needs a Linux /proc")
    pids: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None or len(fields) < 3:
            continue  # exited while we looked
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and (state not in (b"Z", b"X") or _has_live_thread(int(name))):
            pids.append(int(name))
    return sorted(pids)


def group_exists(pgid: int) -> bool:
    """Whether any process, zombies included, is in group ``pgid``: one syscall, no /proc scan."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: the group exists, though it is not ours to signal
    return True


def sigterm_disposition_set(pid: int) -> bool | None:
    """Whether ``pid`` catches or ignores SIGTERM (from SigCgt/SigIgn in /proc/<pid>/status); None if unknown.

    codex installs its SIGTERM handler a few milliseconds *after* its socket becomes connectable (3-20 ms
    measured); a SIGTERM before that kills it with the default action and leaves its socket files behind.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            data = f.read()
    except OSError:
        return None
    bit = 1 << (signal.SIGTERM - 1)
    found = False
    for line in data.splitlines():
        if line.startswith((b"SigCgt:", b"SigIgn:")):
            found = True
            try:
                if int(line.split()[1], 16) & bit:
                    return True
            except (IndexError, ValueError):
                return None
    return False if found else None


# --- codex's socket files ---------------------------------------------------------------------------------------


def codex_daemon_files(socket_path: str | os.PathLike[str], daemon_dir: str | None = None) -> tuple[str, str]:
    """Where codex 0.169 really binds when asked for ``socket_path``, and its lock file.

    ``/tmp/codex-daemon-<uid>/<sha256(path)>`` and ``<same>.lock``: a fixed place (codex ignores TMPDIR);
    ``daemon_dir`` replaces it for tests.
    """
    import hashlib

    name = hashlib.sha256(os.fsencode(socket_path)).hexdigest()
    base = os.path.join(daemon_dir or f"/tmp/codex-daemon-{os.geteuid()}", name)
    return base, base + ".lock"


def _listening(path: str) -> bool:
    """Whether someone accepts connections on the Unix socket ``path`` (a non-blocking connect, so a full backlog
    reads as "listening" rather than blocking)."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(path)
    except BlockingIOError:
        return True  # EAGAIN: the backlog is full, so someone is listening
    except OSError:
        return False  # ECONNREFUSED (a stale socket), ENOENT, a path too long for connect(), ...
    else:
        return True
    finally:
        sock.close()


def remove_stale_daemon_files(socket_path: str | os.PathLike[str], daemon_dir: str | None = None) -> list[str]:
    """Remove the socket and lock codex left for ``socket_path`` in ``/tmp/codex-daemon-<uid>/``, if stale.

    codex removes both on a clean exit; after a SIGKILL (ours, the kernel's PDEATHSIG or a crash), or a SIGTERM
    that came before it installed its handler, they stay behind forever, one pair per socket path, and we use a
    fresh path per child. Call this only once the child is certainly dead. Exactly those two files, and only when
    nobody accepts connections on the socket (a live codex on the same path owns them). Returns what it removed.
    Blocking (file system calls): keep it off the Trio thread.
    """
    sock, lock = codex_daemon_files(socket_path, daemon_dir)
    removed: list[str] = []
    try:
        mode = os.lstat(sock).st_mode
    except OSError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode) or _listening(sock):
            return removed  # not what codex makes, or alive: not ours to touch
        try:
            os.unlink(sock)
            removed.append(sock)
        except OSError:
            return removed
    try:
        if stat.S_ISREG(os.lstat(lock).st_mode):
            os.unlink(lock)
            removed.append(lock)
    except OSError:
        pass
    return removed


def remove_socket_link(path: str | os.PathLike[str]) -> None:
    """Unlink ``path`` if it is a symlink or a socket (never a regular file someone put there)."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
            os.unlink(path)
    except OSError:
        pass


# --- the spawner thread -----------------------------------------------------------------------------------------


def _warn(message: str, *args: object) -> None:
    import logging

    logging.getLogger("codex_trio.process").warning(message, *args)


class _Spawner:
    """One daemon thread that runs every spawn, so PDEATHSIG (tied to the forking thread) fires only when the
    process dies: a daemon thread is never joined, it ends with the process."""

    def __init__(self) -> None:
        import queue
        import threading

        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="codex-trio-spawner", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def submit(self, job: Callable[[], object]) -> Future[object]:
        from concurrent.futures import Future

        future: Future[object] = Future()
        self._jobs.put((job, future))
        return future


class _State:
    """Per-process state. Replaced in a forked child: the spawner thread does not exist there, and the inherited
    write end of the pipe must not keep the parent's watcher waiting after the parent died."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.spawner: _Spawner | None = None
        #: the argv prefix that sets PDEATHSIG (``setpriv --pdeathsig KILL --``), or () where it is missing
        self.pdeathsig_prefix: tuple[str, ...] | None = None
        #: what this process's children carry in their environment, for the watcher's sweep
        self.token = f"{os.getpid()}.{os.urandom(8).hex()}"
        self.write_fd: int | None = None
        self.watcher_pid: int | None = None
        self.watcher_failed_at: float | None = None
        #: pgid -> (start ticks, socket path): what a new watcher must be told if the current one dies
        self.registry: dict[int, tuple[int | None, str | None]] = {}


_state: _State | None = None


def _get_state() -> _State:
    global _state
    if _state is None:
        _state = _State()
    return _state


def _after_fork_in_child() -> None:
    global _state
    old, _state = _state, None
    if old is not None and old.write_fd is not None:
        try:
            os.close(old.write_fd)
        except OSError:
            pass


if __name__ != "__main__" and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def run_in_spawner(job: Callable[[], T]) -> T:
    """Run ``job`` on the spawner thread and return its result (blocking: call it from a worker thread)."""
    import threading

    state = _get_state()
    with state.lock:
        if state.spawner is None:
            state.spawner = _Spawner()
        spawner = state.spawner
    if threading.current_thread() is spawner.thread:
        return job()
    return spawner.submit(job).result()  # type: ignore[return-value]


def _pdeathsig_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` if this system's setpriv has it (util-linux >= 2.33), else ()."""
    import shutil
    import subprocess

    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return ()
    prefix = (setpriv, "--pdeathsig", "KILL", "--")
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return prefix if ok else ()


def _check_runnable(argv0: str, env: Mapping[str, str]) -> str:
    """``argv0`` as it will be executed, or the ``OSError`` Popen would have raised for it. With ``setpriv`` in
    front, a missing binary would otherwise be a child that exits 127 rather than an error at the spawn."""
    import shutil

    found = argv0 if os.sep in argv0 else shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None or not os.path.exists(found):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv0)
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), argv0)
    return found


def popen_in_spawner(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    stdout: int,
    stderr: int,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, marked for the watcher and (where possible) with PDEATHSIG=SIGKILL.

    Must run on the spawner thread (see :func:`run_in_spawner`): PDEATHSIG fires when the *thread* that forked
    the child exits. Raises ``FileNotFoundError``/``PermissionError`` (``filename`` = ``argv[0]``) like Popen.
    """
    import subprocess
    import threading

    state = _get_state()
    if state.spawner is None or threading.current_thread() is not state.spawner.thread:
        raise RuntimeError("popen_in_spawner must run on the spawner thread (use run_in_spawner)")
    if state.pdeathsig_prefix is None:
        state.pdeathsig_prefix = _pdeathsig_prefix()
    child_env = dict(env)
    child_env[MARKER] = state.token
    command = list(argv)
    if state.pdeathsig_prefix:
        command = [*state.pdeathsig_prefix, _check_runnable(command[0], child_env), *command[1:]]
    with state.lock:
        # "A spawn is under way": if the host dies before the registration, the watcher sweeps for the marker.
        _send(state, b"S\n")
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=child_env,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        with state.lock:
            _write(state, b"F\n")  # no child after all
        raise


# --- the watcher: host side -------------------------------------------------------------------------------------


def _start_watcher(state: _State) -> bool:
    """Start a watcher and replay the registry into it. Called with ``state.lock`` held."""
    import subprocess

    script = os.path.abspath(__file__)
    if not sys.executable or not os.path.isfile(script):
        _warn("codex_trio: no orphan watcher (no Python executable, or %s is not a file)", script)
        return False
    read_fd, write_fd = os.pipe()  # both close-on-exec: no other child may hold the write end
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", script, "--watch", str(read_fd), state.token],
            pass_fds=(read_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        _warn("codex_trio: cannot start the orphan watcher: %s", exc)
        return False
    os.close(read_fd)
    assert proc.stdout is not None
    with proc.stdout:
        line = proc.stdout.readline()  # the intermediate prints the watcher's pid, then exits
    proc.wait()
    try:
        pid = int(line)
    except ValueError:
        os.close(write_fd)
        _warn("codex_trio: the orphan watcher did not start (exit status %s)", proc.returncode)
        return False
    os.set_blocking(write_fd, False)
    state.write_fd = write_fd
    state.watcher_pid = pid
    return all(_write(state, _register_message(pgid, *entry)) for pgid, entry in state.registry.items())


def _register_message(pgid: int, ticks: int | None, path: str | None) -> bytes:
    shown = "-" if ticks is None else str(ticks)
    message = f"R {pgid} {shown} {'-' if path is None else os.fsencode(path).hex()}\n".encode()
    if len(message) > _MAX_MESSAGE:
        message = f"R {pgid} {shown} -\n".encode()  # a path this long: the group is still covered, not its files
    return message


def _write(state: _State, message: bytes) -> bool:
    fd = state.write_fd
    if fd is None:
        return False
    try:
        os.write(fd, message)
    except OSError:
        # EPIPE: the watcher is gone; EAGAIN: it stopped reading. Either way it cannot be trusted any more.
        try:
            os.close(fd)
        except OSError:
            pass
        state.write_fd = None
        state.watcher_pid = None
        return False
    return True


def _send(state: _State, message: bytes) -> None:
    """Write ``message``, starting a watcher first if there is none (or the last one died). Called with
    ``state.lock`` held. A new watcher is told the whole registry, so a registration is never lost. Starting one
    costs a Python start-up, so a failure is retried at most every few seconds rather than on every spawn."""
    if _write(state, message):
        return
    now = time.monotonic()
    if state.watcher_failed_at is not None and now - state.watcher_failed_at < 5.0:
        return
    if not _start_watcher(state):
        state.watcher_failed_at = now
        return
    state.watcher_failed_at = None
    if not message.startswith(b"R"):  # a registration is in the registry, which _start_watcher replayed
        _write(state, message)


def register(pid: int, socket_path: str | os.PathLike[str] | None) -> str | None:
    """Record a child that leads its own group, right after its spawn; returns its identity ``"pgid:ticks"``.

    From here on, the watcher stops the group (and cleans codex's socket files for ``socket_path``) if this
    process dies before :func:`unregister`. Blocking (reads /proc, may start the watcher): not on the Trio thread.
    """
    ticks = start_ticks(pid)
    path = None if socket_path is None else os.fspath(socket_path)
    state = _get_state()
    with state.lock:
        state.registry[pid] = (ticks, path)
        _send(state, _register_message(pid, ticks, path))
    return None if ticks is None else f"{pid}:{ticks}"


def unregister(pgid: int) -> None:
    """Forget a group once it is reaped and gone (after that its id may be reused by anyone)."""
    state = _get_state()
    with state.lock:
        if state.registry.pop(pgid, None) is not None:
            _write(state, f"U {pgid}\n".encode())


def watcher_pid() -> int | None:
    """The pid of this process's watcher, once one runs."""
    return None if _state is None else _state.watcher_pid


# --- the watcher: its own process -------------------------------------------------------------------------------


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass  # gone, or no longer ours


def _group_alive(pgid: int) -> bool:
    if not group_exists(pgid):
        return False
    try:
        return bool(live_pids_in_group(pgid))
    except NotImplementedError:
        return True


def _marked_groups(token: str) -> dict[int, str | None]:
    """Groups of live processes whose environment carries our host's token, with the socket path of each group's
    leader when it is an app-server (from its ``--listen unix://PATH``)."""
    needle = f"{MARKER}={token}".encode()
    found: dict[int, str | None] = {}
    me = os.getpgrp()
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if needle not in environ:
            continue
        fields = _stat_fields(int(name))
        if fields is None or len(fields) < 3 or fields[0] in (b"Z", b"X"):
            continue
        pgid = int(fields[2])
        if pgid > 1 and pgid != me and pgid not in found:
            found[pgid] = _listen_path(pgid)
    return found


def _listen_path(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        value = argv[argv.index(b"--listen") + 1]
    except (OSError, ValueError, IndexError):
        return None
    return os.fsdecode(value[len(b"unix://") :]) if value.startswith(b"unix://") else None


def _stop_groups(groups: Mapping[int, tuple[int | None, str | None]], token: str | None) -> None:
    """What the host would have done: SIGTERM, a second SIGTERM, SIGKILL, then remove the files codex left."""
    paths: dict[int, str | None] = {}
    for pgid, (ticks, path) in groups.items():
        current = start_ticks(pgid)
        # The leader (our child) is gone once reaped; then any member left is still in *our* group, because a
        # group id stays taken while a member exists. A leader with another start time is a recycled pid.
        if current is not None and ticks is not None and current != ticks:
            continue
        paths[pgid] = path
    start = time.monotonic()
    for pgid in paths:
        _signal_group(pgid, signal.SIGTERM)
    if token:
        # After the first SIGTERM, so that the registered groups do not wait for the sweep.
        for pgid, path in _marked_groups(token).items():
            if pgid not in paths:
                paths[pgid] = path
                _signal_group(pgid, signal.SIGTERM)
    next_term = start + _WATCHER_SECOND_TERM
    live = [pgid for pgid in paths if _group_alive(pgid)]
    while live and time.monotonic() - start < _WATCHER_GIVE_UP:
        time.sleep(0.005)
        now = time.monotonic()
        sig: int | None = None
        if now - start >= _WATCHER_KILL_AFTER:
            sig = signal.SIGKILL
        elif now >= next_term:
            sig = signal.SIGTERM
            next_term = now + _WATCHER_RETERM_EVERY
        if sig is not None:
            for pgid in live:
                _signal_group(pgid, sig)
        live = [pgid for pgid in live if _group_alive(pgid)]
    for pgid, path in paths.items():
        if path is not None and pgid not in live:
            remove_socket_link(path)
            try:
                remove_stale_daemon_files(path)
            except OSError:
                pass


def _parse(line: bytes, groups: dict[int, tuple[int | None, str | None]]) -> bool | None:
    """Apply one message to ``groups``; returns whether a spawn is under way after it (None: no change)."""
    parts = line.split()
    try:
        if parts[0] == b"S":
            return True
        if parts[0] == b"F":
            return False
        if parts[0] == b"R" and len(parts) == 4:
            ticks = None if parts[2] == b"-" else int(parts[2])
            path = None if parts[3] == b"-" else os.fsdecode(bytes.fromhex(parts[3].decode()))
            groups[int(parts[1])] = (ticks, path)
            return False
        if parts[0] == b"U" and len(parts) == 2:
            groups.pop(int(parts[1]), None)
    except (IndexError, ValueError):
        pass
    return None


def _watch(fd: int, token: str | None) -> None:
    groups: dict[int, tuple[int | None, str | None]] = {}
    spawning = False
    pending = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            break
        if not data:
            break  # every write end is closed: the host is gone
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            changed = _parse(line, groups)
            if changed is not None:
                spawning = changed
    # The sweep for the marker only when the host died with a spawn under way (between its fork and its
    # registration): otherwise every child is in the registry, and other processes' environments stay unread.
    _stop_groups(groups, token if spawning else None)


def _watcher_main(argv: Sequence[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] != "--watch":
        print("usage: _watchdog.py --watch FD [TOKEN]", file=sys.stderr)
        return 2
    fd = int(argv[1])
    token = argv[2] if len(argv) == 3 else None
    # Double fork: the watcher must not be the host's child, so that killing the host together with its children
    # (or its process group: we are in our own session) spares it. The intermediate reports the pid and exits.
    pid = os.fork()
    if pid:
        os.write(1, b"%d\n" % pid)
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # let go of the host's status pipe
    os.close(devnull)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    _watch(fd, token)
    return 0


if __name__ == "__main__":
    sys.exit(_watcher_main(sys.argv[1:]))
