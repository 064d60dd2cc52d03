"""Run :class:`FakeAppServer` as a child process, with the command line of ``codex app-server``.

    python -m codex_trio.testing.fake_app_server [app-server] --listen unix://PATH [-c key=value ...]

so process supervision can be tested without codex. ``-c`` overrides are accepted and ignored. The environment
configures it: ``FAKE_APP_SERVER_STATE`` (a JSON file that keeps threads across restarts, so ``thread/resume``
works after a kill), ``FAKE_APP_SERVER_SCRIPT`` (a JSON file: ``{"default": {...}, "turns": [{...}, ...]}`` of
:class:`TurnScript` fields), ``FAKE_APP_SERVER_EXIT`` (``"CODE:MESSAGE"``: print MESSAGE to stderr and exit at
once with CODE, like codex does on a fatal config error), ``FAKE_APP_SERVER_BIND_DELAY`` (seconds before binding;
``never`` never binds), ``FAKE_APP_SERVER_HANG`` (comma-separated methods it never answers) and
``FAKE_APP_SERVER_REFUSE`` (``"METHOD:MESSAGE"``: answer METHOD with that JSON-RPC error). SIGTERM/SIGINT exit
cleanly (status 0); SIGUSR1 exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ._fake_app_server import FakeAppServer, FakeRpcError, TurnScript


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fake_app_server")
    parser.add_argument("command", nargs="?", default="app-server")
    parser.add_argument("--listen", required=True)
    parser.add_argument("-c", dest="overrides", action="append", default=[])
    args, _unknown = parser.parse_known_args(argv)
    if not args.listen.startswith("unix://") or len(args.listen) <= len("unix://"):
        parser.error("only --listen unix://PATH is supported")
    return args


async def _hang(params: object) -> None:
    await trio.sleep_forever()


def _refuser(message: str) -> Callable[[object], Awaitable[None]]:
    async def refuse(params: object) -> None:
        await trio.lowlevel.checkpoint()
        raise FakeRpcError(message)

    return refuse


async def _serve(path: Path) -> int:
    state = os.environ.get("FAKE_APP_SERVER_STATE")
    server = FakeAppServer(state_path=Path(state) if state else None)
    script = os.environ.get("FAKE_APP_SERVER_SCRIPT")
    if script:
        data = json.loads(Path(script).read_text())  # noqa: ASYNC240 - read once at start-up
        if "default" in data:
            server.default_turn = TurnScript.from_json(data["default"])
        server.push_turns(*(TurnScript.from_json(t) for t in data.get("turns", [])))
    for method in filter(None, os.environ.get("FAKE_APP_SERVER_HANG", "").split(",")):
        server.handlers[method] = _hang
    refuse = os.environ.get("FAKE_APP_SERVER_REFUSE")
    if refuse:
        method, _, message = refuse.partition(":")
        server.handlers[method] = _refuser(message)
    delay = os.environ.get("FAKE_APP_SERVER_BIND_DELAY")
    if delay == "never":
        await trio.sleep_forever()
        return 0
    if delay:
        await trio.sleep(float(delay))
    # SIGTERM/SIGINT: a clean exit (status 0); SIGUSR1: a crash-like exit with status 3.
    exit_code = 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_unix, path)
            async for signum in signals:
                exit_code = 3 if signum == signal.SIGUSR1 else 0
                nursery.cancel_scope.cancel()
                break
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    exit_spec = os.environ.get("FAKE_APP_SERVER_EXIT")
    if exit_spec:
        code, _, message = exit_spec.partition(":")
        print(message, file=sys.stderr, flush=True)
        return int(code)
    path = Path(args.listen[len("unix://") :])
    try:
        path.unlink()  # a stale socket from a killed predecessor, like codex replaces it
    except OSError:
        pass
    return trio.run(_serve, path)


if __name__ == "__main__":
    sys.exit(main())
