"""A stand-in for ``codex app-server`` in process tests: each flag is one behaviour a real child can show.

    fake_child.py --socket PATH [--real-socket PATH] [--bind-after S] [--stale-first] [--never-bind]
                  [--exit CODE] [--stderr TEXT] [--stdout TEXT] [--ignore-term]
                  [--grandchild PIDFILE] [--pidfile PIDFILE]

Writes go through os.write so nothing sits in a buffer when the process is killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def _write_pidfile(path: str, pid: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, path)  # atomic: the test never reads a half-written pid


def _spawn_grandchild(pidfile: str) -> None:
    # Same process group (no new session), ignores SIGTERM: only a SIGKILL to the group ends it.
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "tmp = sys.argv[1] + '.tmp'\n"
        "open(tmp, 'w').write(str(os.getpid()))\n"
        "os.replace(tmp, sys.argv[1])\n"
        "while True: time.sleep(60)\n"
    )
    subprocess.Popen([sys.executable, "-c", code, pidfile], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(pidfile) and time.monotonic() < deadline:
        time.sleep(0.01)  # so the grandchild has installed its handler before we report anything


def _serve(path: str, real_socket: str | None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        bind_at = real_socket or path
        if os.path.lexists(bind_at):
            os.unlink(bind_at)
        srv.bind(bind_at)
        srv.listen(16)
        if real_socket:
            # what codex 0.169 does: bind elsewhere, make the requested (possibly over-long) path a symlink
            os.symlink(real_socket, path)
        while True:
            conn, _ = srv.accept()
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--real-socket", default=None)
    parser.add_argument("--bind-after", type=float, default=0.0)
    parser.add_argument("--stale-first", action="store_true", help="leave a dead socket file at the path first")
    parser.add_argument("--never-bind", action="store_true")
    parser.add_argument("--exit", type=int, default=None)
    parser.add_argument("--stderr", default="")
    parser.add_argument("--stdout", default="")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild", default=None)
    parser.add_argument("--pidfile", default=None)
    args = parser.parse_args()

    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.stdout:
        os.write(1, args.stdout.encode())
    if args.stderr:
        os.write(2, args.stderr.encode())
    if args.exit is not None:
        os._exit(args.exit)
    if args.grandchild:
        _spawn_grandchild(args.grandchild)
    if args.pidfile:
        _write_pidfile(args.pidfile, os.getpid())
    if args.stale_first:
        # bound but never listening, then closed: the file stays and connect() gets ECONNREFUSED
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(args.socket)
        stale.close()
    if args.never_bind:
        while True:
            time.sleep(60)
    time.sleep(args.bind_after)
    _serve(args.socket, args.real_socket)


if __name__ == "__main__":
    main()
