"""Child for test_host_kill.py, in two roles.

``host_kill_child.py host --db DB --mode queue|steer --start N --resubmit FILE ...``
    A host process: a runtime on ``SqliteStateStore(DB)`` whose app-server is this same file in its second
    role (through a ``codex`` shim). It prints, one flushed line each (the parent reads them, then SIGKILLs it):

    ``PGID <pgid>``                    the app-server's process group, after ready and after every restart
    ``THREAD <id> <resumed>``           the thread it runs on (``resumed`` is True/False)
    ``DUP <id> <status>``               the answer to re-submitting an id an earlier host acknowledged
    ``RESUBMITTED <n>``                 all of them were re-submitted
    ``ACK <id> <seq> <status>``         ``submit`` returned an accepted admission: the input is durable now
    ``REFUSED <id> <status>``           ``submit`` did not accept a fresh id (never expected)
    ``SETTLED <id> <outcome>``          a settlement arrived (own inputs, and inputs restored from the store)
    ``DRAINED``                         ``--final`` only: nothing is pending in the store any more

    Without ``--final`` it submits ``m<start>``, ``m<start+1>``, ... forever; with it, it waits until every
    restored input has been delivered and then closes the runtime cleanly.

``host_kill_child.py app-server --listen unix://PATH``
    The fake app-server (``codex_trio.testing.FakeAppServer``) with one addition: every ``turn/start`` and
    ``turn/steer`` it accepts is appended to the journal file ``$HOST_KILL_JOURNAL`` (one JSON line, written
    with ``O_APPEND`` before the answer is sent) — a record of what reached "codex" that survives any kill.
    With ``$HOST_KILL_ON`` set to a source id, it SIGKILLs its host (``$HOST_KILL_PID``) right after
    journalling that id and never answers: the host dies between codex receiving an input and the runtime
    recording that it did. Each entry also says whether the host's store had already committed the input
    (``durable``: its id in the dedup table) when codex received it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import trio

JOURNAL_ENV = "HOST_KILL_JOURNAL"
KILL_ON_ENV = "HOST_KILL_ON"
KILL_PID_ENV = "HOST_KILL_PID"
DB_ENV = "HOST_KILL_DB"
RUNTIME_ENV = "HOST_KILL_RUNTIME"


def emit(line: str) -> None:
    # Flushed per line: whatever the parent reads was printed before the kill; nothing waits in a buffer.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- the app-server role ------------------------------------------------------------------------------------


def _durable(source_id: object) -> bool | None:
    """Whether the host's store had committed ``source_id`` when codex received it (None: not known)."""
    db, runtime_id = os.environ.get(DB_ENV), os.environ.get(RUNTIME_ENV)
    if not db or not runtime_id or not isinstance(source_id, str):
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute(
            "SELECT 1 FROM dedup WHERE runtime_id = ? AND source_id = ?", (runtime_id, source_id)
        ).fetchone()
    finally:
        conn.close()
    return row is not None


def _journal(method: str, params: dict[str, Any]) -> None:
    path = os.environ.get(JOURNAL_ENV)
    if not path:
        return
    source_id = params.get("clientUserMessageId")
    entry = {"method": method, "id": source_id, "host": os.getppid(), "pid": os.getpid()}
    entry["durable"] = _durable(source_id)
    line = json.dumps(entry)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def _after_delivery(params: dict[str, Any]) -> None:
    source_id = params.get("clientUserMessageId")
    if source_id is None or source_id != os.environ.get(KILL_ON_ENV):
        return
    host = int(os.environ.get(KILL_PID_ENV, "0"))
    if host > 1 and os.getppid() == host:  # only ever our own host, never a pid that was reused
        os.kill(host, signal.SIGKILL)
    await trio.sleep_forever()  # no answer: the host must not learn that the input arrived


def _fake_server_class() -> type[Any]:
    from codex_trio.testing._fake_app_server import FakeAppServer, _FakeConnection

    class JournallingFakeAppServer(FakeAppServer):
        def _record_user_message(self, thread: Any, turn_id: str, params: dict[str, Any], texts: list[str]) -> None:
            # Journalled where the fake records the input (its state, which thread/turns/list reports), and first:
            # a kill can never leave an input in the fake's record that the journal does not show as delivered.
            _journal("turn/steer" if "expectedTurnId" in params else "turn/start", params)
            super()._record_user_message(thread, turn_id, params, texts)

        async def _m_turn_start(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
            result = await super()._m_turn_start(conn, params)
            await _after_delivery(params)
            return result

        async def _m_turn_steer(self, conn: _FakeConnection, params: dict[str, Any]) -> dict[str, Any]:
            result = await super()._m_turn_steer(conn, params)  # a refused steer raises: not delivered
            await _after_delivery(params)
            return result

    return JournallingFakeAppServer


async def _serve_fake(path: Path) -> None:
    # The start-up of codex_trio.testing.fake_app_server, with the journalling server class.
    from codex_trio.testing import TurnScript

    state = os.environ.get("FAKE_APP_SERVER_STATE")
    server = _fake_server_class()(state_path=Path(state) if state else None)
    script = os.environ.get("FAKE_APP_SERVER_SCRIPT")
    if script:
        data = json.loads(Path(script).read_text())  # noqa: ASYNC240 - read once at start-up
        server.default_turn = TurnScript.from_json(data.get("default", {}))
        server.push_turns(*(TurnScript.from_json(t) for t in data.get("turns", [])))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_unix, path)
            async for _ in signals:
                nursery.cancel_scope.cancel()


def fake_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="host_kill_child.py app-server")
    parser.add_argument("--listen", required=True)
    parser.add_argument("-c", dest="overrides", action="append", default=[])
    args, _unknown = parser.parse_known_args(argv)
    path = Path(args.listen.removeprefix("unix://"))
    try:
        path.unlink()
    except OSError:
        pass
    trio.run(_serve_fake, path)


# --- the host role ------------------------------------------------------------------------------------------


async def host_main(args: argparse.Namespace) -> None:
    import codex_trio
    from codex_trio import ChannelInput, RestartPolicy, RuntimeConfig, SqliteStateStore, SubmissionSettled

    env = {
        "FAKE_APP_SERVER_STATE": args.fake_state,
        "FAKE_APP_SERVER_SCRIPT": args.script,
        JOURNAL_ENV: args.journal,
        KILL_PID_ENV: str(os.getpid()),
        DB_ENV: args.db,
        RUNTIME_ENV: args.runtime_id,
    }
    if args.kill_on:
        env[KILL_ON_ENV] = args.kill_on
    config = RuntimeConfig(
        runtime_id=args.runtime_id,
        codex_bin=args.codex,
        extra_env=env,
        socket_dir=Path(args.socket_dir),
        log_dir=Path(args.log_dir),
        delivery_mode=args.mode,
        grace_period=0.2,
        # A busy machine may start Python and the app-server slowly: a start that times out would be restarted
        # all the same, but these waits are not what the test is about.
        handshake_timeout=60,
        ready_timeout=60,
        restart=RestartPolicy(base_delay=0.05, max_delay=0.2, max_restarts=20),
    )
    resubmit = json.loads(Path(args.resubmit).read_text())  # noqa: ASYNC240 - before anything runs
    rng = random.Random(args.seed)
    store = SqliteStateStore(args.db)
    launcher = codex_trio.ProcessLauncher(config)
    mine: set[str] = set()
    printed_pgids: set[int] = set()

    def print_pgid() -> None:
        pgid = launcher.last_pgid
        if pgid is not None and pgid not in printed_pgids:
            printed_pgids.add(pgid)
            emit(f"PGID {pgid}")

    async def report(source_id: str, admission: codex_trio.Admission) -> None:
        settlement = await admission.settled()
        emit(f"SETTLED {source_id} {settlement.outcome}")

    async with codex_trio.open_runtime(config, state=store, launcher=launcher) as runtime:
        print_pgid()
        emit(f"THREAD {runtime.thread_id} {runtime.thread_resumed}")
        async with trio.open_nursery() as nursery, runtime.events() as events:

            async def watch() -> None:
                async for event in events:
                    if isinstance(event, codex_trio.StatusChanged) and event.status == "ready":
                        print_pgid()
                    elif isinstance(event, SubmissionSettled) and event.settlement.source_id not in mine:
                        # Restored from the store by _load: no Admission of ours to wait on.
                        emit(f"SETTLED {event.settlement.source_id} {event.settlement.outcome}")

            nursery.start_soon(watch)
            for source_id in resubmit:
                admission = await runtime.submit(ChannelInput(source_id, "redelivered"))
                emit(f"DUP {source_id} {admission.status}")
            emit(f"RESUBMITTED {len(resubmit)}")
            if args.final:
                with trio.fail_after(120):  # a guard against a hang, generous for a loaded machine
                    while (await store.load(args.runtime_id)).pending:
                        await trio.sleep(0.02)
                emit("DRAINED")
                nursery.cancel_scope.cancel()
            else:
                index = args.start
                while True:
                    source_id = f"m{index}"
                    mine.add(source_id)
                    admission = await runtime.submit(ChannelInput(source_id, f"text {index}"))
                    if admission.accepted:
                        emit(f"ACK {source_id} {admission.seq} {admission.status}")
                        nursery.start_soon(report, source_id, admission)
                    else:
                        emit(f"REFUSED {source_id} {admission.status}")
                    index += 1
                    await trio.sleep(rng.uniform(0, 0.04))
    await store.aclose()
    emit("CLOSED")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "app-server":
        fake_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(prog="host_kill_child.py host")
    parser.add_argument("role", choices=["host"])
    for name in ("db", "runtime-id", "codex", "socket-dir", "log-dir", "fake-state", "script", "journal"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--resubmit", required=True, help="a JSON list of source ids to submit again first")
    parser.add_argument("--mode", choices=["queue", "steer"], default="queue")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final", action="store_true")
    parser.add_argument("--kill-on", default=None)
    trio.run(host_main, parser.parse_args())


if __name__ == "__main__":
    main()
