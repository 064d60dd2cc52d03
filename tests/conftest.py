"""Suite-wide check: the tests leave ``/tmp`` as they found it.

At the start of the session the entries of the watched directories are listed: ``/tmp`` (and ``$TMPDIR`` when it
is elsewhere), ``codex-trio-<euid>`` in each, and codex's ``/tmp/codex-daemon-<uid>/``. At the end, an entry that
is new *and was made by this pytest process* fails the run (exit status 1), listed with the test that made it.

"Made by this process" is known exactly, not guessed from names: an audit hook (:func:`sys.addaudithook`) records
every path this process creates directly in a watched directory (``mkdir``, ``open`` with ``O_CREAT``, symlink,
link, rename, ``bind``), every Unix socket path it binds or connects to, and every ``unix://PATH`` in the argv of
a child it starts. codex's entries are ``<sha256(PATH)>`` and ``<same>.lock`` (codex-app-server.md §3), so they
are ours exactly when ``PATH`` is one of those socket paths -- or when one of our directories, just before it is
removed (``short_dir``), holds a link to them: that covers a codex started by a child process of ours.

So another process on this shared machine cannot fail the run: not another pytest run of this very suite (its
``ctr-*`` directories have random names this process never made), not a demo, not another user of codex. Those
entries appear at most in a "note" section. The note also catches what this process cannot see: a leftover made
by one of its child processes (a CLI run as a subprocess, a host process of a durability test). pytest's own
``pytest-of-<user>`` is pytest's business and ignored.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterable

import attrs
import pytest

# The testing kit's fixtures (fake_app_server, mock_model, codex_bin, codex_home, short_socket_dir, ...): opt-in,
# as for any user of the package. examples/conftest.py does the same for the examples.
pytest_plugins = ["codex_trio.testing.pytest_plugin"]
#: Name prefixes in /tmp that look like this suite's, for the note about entries this process did not make.
OUR_PREFIXES = ("ctr-", "ctc-", "ctb-", "ctdemo-", "codex-trio-", "ctproc-", "ctlaunch-", "ctlr-", "ctorph-", "ct-")
GRACE = 10.0  # seconds our own background cleaners (watcher processes) get before a leftover counts


def _tmp_roots() -> list[str]:
    roots = ["/tmp"] if os.path.isdir("/tmp") else []
    other = os.path.realpath(tempfile.gettempdir())
    return roots if other in roots else [*roots, other]


def _listdir(directory: str) -> set[str]:
    try:
        return set(os.listdir(directory))
    except OSError:
        return set()


def _abspath(value: object, dir_fd: object = None) -> str | None:
    """``value`` as a normalised absolute path string, or None when it is not a path (an fd, an address tuple, an
    abstract socket name, a path relative to a directory fd). No audited call in here."""
    if not isinstance(value, str | bytes | os.PathLike):
        return None
    path = os.fsdecode(value)
    if not path or path.startswith("\0"):
        return None
    if not os.path.isabs(path):
        if dir_fd not in (None, -1):
            return None
        path = os.path.join(os.getcwd(), path)
    return os.path.normpath(path)


def _listening(path: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(path)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        return True
    finally:
        sock.close()


@attrs.define
class Ledger:
    """What this process made, used and found; fed by the audit hook while ``active``."""

    daemon_dir: str
    watched: list[str]
    before: dict[str, set[str]] = attrs.field(factory=dict)
    active: bool = False
    test: str = "outside any test"
    made: dict[str, str] = attrs.field(factory=dict)  # path directly in a watched directory -> the test
    sockets: dict[str, tuple[str, str]] = attrs.field(factory=dict)  # sha256(socket path) -> (path, test)
    links: dict[str, tuple[str, str]] = attrs.field(factory=dict)  # daemon entry -> (our link to it, test)
    leftovers: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    @classmethod
    def start(cls) -> Ledger:
        roots = _tmp_roots()
        daemon_dir = f"/tmp/codex-daemon-{os.geteuid()}"
        watched = [*roots, *(os.path.join(root, f"codex-trio-{os.geteuid()}") for root in roots), daemon_dir]
        ledger = cls(daemon_dir, watched)
        ledger.before = {directory: _listdir(directory) for directory in watched}
        ledger.active = True
        return ledger

    # --- the audit hook ---------------------------------------------------------------------------------------

    def audit(self, event: str, args: tuple[object, ...]) -> None:
        if not self.active or event not in _EVENTS:
            return
        try:
            self._record(event, args)
        except Exception:  # an audit hook must never break the operation it watches
            pass

    def _record(self, event: str, args: tuple[object, ...]) -> None:
        if event == "os.mkdir":
            self._made(_abspath(args[0], args[2]))
        elif event == "open":
            flags = args[2]
            if isinstance(flags, int) and flags & os.O_CREAT:
                self._made(_abspath(args[0]))
        elif event == "os.symlink":
            self._made(_abspath(args[1], args[2]))
        elif event in ("os.link", "os.rename"):
            self._made(_abspath(args[1], args[3]))
        elif event == "socket.bind":
            path = _abspath(args[1]) if isinstance(args[1], str | bytes) else None
            self._made(path)
            self._socket(path)
        elif event == "socket.connect":
            self._socket(_abspath(args[1]) if isinstance(args[1], str | bytes) else None)
        elif event == "shutil.rmtree":
            self._links(_abspath(args[0], args[1]))
        elif event == "subprocess.Popen":
            argv = args[1]
            items = [argv] if isinstance(argv, str | bytes | os.PathLike) else argv
            for arg in items if isinstance(items, list | tuple) else ():
                text = os.fsdecode(arg) if isinstance(arg, str | bytes | os.PathLike) else ""
                where = text.find("unix://")
                if where >= 0:
                    path = text[where + len("unix://") :]
                    self._socket(path)  # exactly as codex sees it: it hashes that string
                    self._made(_abspath(path))  # codex makes the requested path (a symlink)

    def _made(self, path: str | None) -> None:
        # The hook runs before the call: a path that exists already is not made by it (a mkdir of a fixed name such
        # as codex-trio-<euid> that another process made meanwhile fails), so it is not recorded.
        if path is not None and os.path.dirname(path) in self.watched and not os.path.lexists(path):
            self.made.setdefault(path, self.test)

    def _socket(self, path: str | None) -> None:
        if path:
            self.sockets.setdefault(hashlib.sha256(os.fsencode(path)).hexdigest(), (path, self.test))

    def _links(self, directory: str | None) -> None:
        """Before one of our directories (say a ``short_dir``) is removed: its links into codex's daemon directory
        name their targets, even when the codex behind one was started by a child process of ours."""
        if directory is None or os.path.dirname(directory) not in self.watched:
            return
        for parent, dirs, files in os.walk(directory):
            for name in dirs + files:
                link = os.path.join(parent, name)
                if os.path.islink(link):
                    target = os.path.join(parent, os.readlink(link))
                    if os.path.dirname(target) == self.daemon_dir:
                        self.links.setdefault(os.path.basename(target), (link, self.test))

    # --- the check --------------------------------------------------------------------------------------------

    def new_entries(self) -> Iterable[str]:
        for directory in self.watched:
            for name in sorted(_listdir(directory) - self.before.get(directory, set())):
                if not (directory != self.daemon_dir and name.startswith("pytest-of-")):
                    yield os.path.join(directory, name)

    def why_ours(self, path: str) -> str | None:
        if path in self.made:
            return f"made during {self.made[path]}"
        directory, name = os.path.split(path)
        if directory == self.daemon_dir:
            known = self.sockets.get(name.removesuffix(".lock")) or self.links.get(name.removesuffix(".lock"))
            if known is not None:
                return f"codex's {'lock' if name.endswith('.lock') else 'socket'} for {known[0]}, from {known[1]}"
        return None

    def looks_like_ours(self, path: str) -> bool:
        directory, name = os.path.split(path)
        if directory == self.daemon_dir:  # only what no live codex serves: a stale socket, or its lock
            return not _listening(path.removesuffix(".lock"))
        if os.path.basename(directory).startswith("codex-trio-"):
            try:
                return stat.S_ISLNK(os.lstat(path).st_mode) and not _listening(path)
            except OSError:
                return False
        return name.startswith(OUR_PREFIXES)

    def finish(self, grace: float) -> None:
        self.active = False
        deadline = time.monotonic() + grace
        while True:
            entries = list(self.new_entries())
            ours = [(path, why) for path in entries if (why := self.why_ours(path)) is not None]
            if not ours or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        self.leftovers = [f"{path}  ({why})" for path, why in ours]
        self.notes = [path for path in entries if self.why_ours(path) is None and self.looks_like_ours(path)]


_EVENTS = frozenset(
    {
        "os.mkdir",
        "open",
        "os.symlink",
        "os.link",
        "os.rename",
        "socket.bind",
        "socket.connect",
        "shutil.rmtree",
        "subprocess.Popen",
    }
)
_ledger: Ledger | None = None


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _ledger is not None:
        _ledger.audit(event, args)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _ledger
    _ledger = Ledger.start()
    if not getattr(sys, "_codex_trio_tmp_audit", False):  # audit hooks cannot be removed: install one, once
        sys.addaudithook(_audit)
        sys._codex_trio_tmp_audit = True  # type: ignore[attr-defined]


def pytest_runtest_logstart(nodeid: str) -> None:
    if _ledger is not None:
        _ledger.test = nodeid


def pytest_runtest_logfinish(nodeid: str) -> None:
    if _ledger is not None:
        _ledger.test = f"after {nodeid}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _ledger is None or not _ledger.active:
        return
    _ledger.finish(grace=0.0 if session.exitstatus == pytest.ExitCode.INTERRUPTED else GRACE)
    if _ledger.leftovers and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _ledger is None:
        return
    if _ledger.leftovers:
        terminalreporter.section("left behind in /tmp by this run", sep="=", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(_ledger.leftovers)} new entr{'y' if len(_ledger.leftovers) == 1 else 'ies'} made by this "
            "pytest process (or by codex for its socket paths) still there at the end; the run fails:"
        )
        for line in _ledger.leftovers:
            terminalreporter.write_line(f"  {line}")
    if _ledger.notes:
        terminalreporter.section("note: new entries in /tmp not made by this process", sep="-", yellow=True)
        terminalreporter.write_line(
            "They look like this suite's, but this process did not make them: a child process's (a CLI or host "
            "run as a subprocess) or another run's on this machine. Not counted as a failure:"
        )
        for path in _ledger.notes:
            terminalreporter.write_line(f"  {path}")
