"""Loop stall: the longest scheduling delay a ticker task sees while, in the same Trio loop, another launcher's child
is SIGKILLed and restarted, again and again.

A ticker sleeps 1 ms at a time and records how late each wake-up is. On a small shared machine that delay is
mostly the kernel preempting our thread (codex's start takes ~100 ms of CPU, on two cores), which no code in the
loop can avoid; so an instrument also times every task step on the Trio thread: its CPU time (code that computes
without yielding), and its wall time split by what interrupted it (``getrusage(RUSAGE_THREAD)``: a voluntary
context switch means the step waited, in a blocking syscall or for the GIL; an involuntary one, that the kernel
preempted it). A separate ticker *process* runs alongside each scenario as a control: what it sees is the machine's
scheduling noise during that scenario, which bounds what any code in our loop can achieve. Three runs, side by
side:

* ``idle``: the ticker alone (the floor: timer granularity and the machine's noise);
* ``ours``: the ticker while a ``ProcessLauncher`` cycles: launch, connect, SIGKILL the group, ``wait_gone``, leave
  (the stop: final SIGKILL, reap, the wait for the group, file clean-up), launch again;
* ``proc_scan_on_loop``: the same cycles plus what the reap used to do on the Trio thread after each kill: scan
  every ``/proc/*/stat`` for the group (at least once; every 10 ms while members remained) and read the stderr log.

The child is the real codex when one is found (``CODEX_TRIO_CODEX_BIN``), else the fake app-server.

It also reports what orphan prevention costs (``watchdog``), measured in a fresh process: the watcher's start-up
(paid once per host process, on the spawner thread), its resident memory, and the latency of one spawn through
the spawner thread with ``setpriv`` and the registration, next to a plain ``Popen`` of the same command.

And, with the real codex only, the stop of an app-server in the middle of a turn (``stop_mid_turn``; the mock
model hangs the turn): ``ours`` (leaving the launch context) against ``old_sequence``, the stop as it was (SIGTERM,
up to ``grace_period`` for the exit, then SIGKILL), alternating, on the same binary: time from the start of the
stop to the exit, exit statuses, and how many stops left codex's socket and lock in ``/tmp/codex-daemon-<uid>/``
(the old sequence's leftovers are removed right after they are counted).

Run it alone with ``python -m bench.stall``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from codex_trio._config import RuntimeConfig, app_server_argv, child_env
from codex_trio._launcher import ProcessLauncher
from codex_trio._paths import allocate_socket_path, ensure_owner_only_dir
from codex_trio._process import ChildSpec, live_pids_in_group, spawn_app_server
from codex_trio._transport import MessageStream, connect_unix_websocket
from codex_trio._watchdog import codex_daemon_files
from codex_trio.testing._mock_model import Hang, MockModelServer, write_codex_home

from ._codex import codex_bin
from ._common import result, write_json

TICK = 0.001
TARGET_MS = 2.0


class Ticker:
    """Sleeps ``TICK`` in a loop; ``delays`` are how late each wake-up was, in seconds."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def run(self) -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(TICK)
            self.delays.append(trio.current_time() - before - TICK)

    def summary(self) -> dict[str, Any]:
        delays = sorted(self.delays)
        if not delays:
            return {"ticks": 0}
        p99 = delays[min(len(delays) - 1, math.ceil(0.99 * len(delays)) - 1)]
        return {
            "ticks": len(delays),
            "max_delay_ms": round(delays[-1] * 1000, 2),
            "p99_delay_ms": round(p99 * 1000, 2),
            "median_delay_ms": round(delays[len(delays) // 2] * 1000, 3),
        }


class StepMeter(trio.abc.Instrument):
    """Times each task step on the Trio thread: wall, thread CPU, and the context switches in between."""

    def __init__(self) -> None:
        self._open: dict[trio.lowlevel.Task, tuple[float, float, int, int]] = {}
        self.longest_cpu = 0.0
        self.longest_blocked = 0.0  # wall time of the longest step that waited (voluntary switch)
        self.longest_blocked_task = ""
        self.longest_preempted = 0.0  # wall time of the longest step the kernel preempted (involuntary only)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        self._open[task] = (time.perf_counter(), time.thread_time(), usage.ru_nvcsw, usage.ru_nivcsw)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        opened = self._open.pop(task, None)
        if opened is None:
            return
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        wall = time.perf_counter() - opened[0]
        self.longest_cpu = max(self.longest_cpu, time.thread_time() - opened[1])
        if usage.ru_nvcsw > opened[2]:
            if wall > self.longest_blocked:
                self.longest_blocked, self.longest_blocked_task = wall, task.name
        elif usage.ru_nivcsw > opened[3]:
            self.longest_preempted = max(self.longest_preempted, wall)

    def summary(self) -> dict[str, Any]:
        return {
            "longest_step_cpu_ms": round(self.longest_cpu * 1000, 2),
            "longest_step_waiting_ms": round(self.longest_blocked * 1000, 2),
            "longest_step_waiting_task": self.longest_blocked_task,
            "longest_step_preempted_ms": round(self.longest_preempted * 1000, 2),
        }


#: The control: a ticker in its own process, until its stdin closes; then it prints its worst delay in ms.
_EXTERNAL_TICKER = r"""
import select, sys, time
worst = 0.0
while True:
    before = time.perf_counter()
    readable, _, _ = select.select([sys.stdin], [], [], 0.001)
    if readable:
        break
    worst = max(worst, time.perf_counter() - before - 0.001)
print(round(worst * 1000, 2), flush=True)
"""


class ExternalTicker:
    """The control ticker process (see the module docstring)."""

    async def __aenter__(self) -> ExternalTicker:
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-S", "-c", _EXTERNAL_TICKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        await self.proc.stdin.aclose()
        output = b""
        while chunk := await self.proc.stdout.receive_some():
            output += chunk
        await self.proc.wait()
        await self.proc.stdout.aclose()
        self.max_delay_ms = float(output or "nan")


def _fake_shim(directory: Path) -> str:
    path = directory / "codex"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m codex_trio.testing.fake_app_server "$@"\n')
    path.chmod(0o755)
    return str(path)


def _old_reap_work(pgid: int, stderr_log: Path) -> None:
    """What the reap did on the Trio thread after a kill: /proc scans until the group was empty, then a log read."""
    while live_pids_in_group(pgid):
        time.sleep(0.01)
    try:
        with open(stderr_log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            f.read()
    except OSError:
        pass


async def _cycles(launcher: ProcessLauncher, cycles: int, *, scan_on_loop: bool) -> None:
    stderr_log = launcher.log_dir / "codex-app-server" / f"{launcher.config.runtime_id}.stderr.log"
    for generation in range(cycles):
        async with launcher.launch(generation) as launched:
            await launched.connect()
            assert launched.pgid is not None
            os.killpg(launched.pgid, signal.SIGKILL)
            await launched.wait_gone()
            if scan_on_loop:
                _old_reap_work(launched.pgid, stderr_log)


async def _measure(config: RuntimeConfig, cycles: int, scenario: str, seconds: float | None) -> dict[str, Any]:
    ticker = Ticker()
    meter = StepMeter()
    external = ExternalTicker()
    started = trio.current_time()
    async with external, trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run)
        await trio.sleep(0.05)  # let the ticker settle
        trio.lowlevel.add_instrument(meter)
        try:
            if scenario == "idle":
                assert seconds is not None
                await trio.sleep(seconds)
            else:
                await _cycles(ProcessLauncher(config), cycles, scan_on_loop=scenario == "proc_scan_on_loop")
        finally:
            trio.lowlevel.remove_instrument(meter)
        nursery.cancel_scope.cancel()
    return {
        **ticker.summary(),
        **meter.summary(),
        "control_process_max_delay_ms": external.max_delay_ms,
        "seconds": round(trio.current_time() - started, 2),
    }


_WATCHDOG_COSTS = r"""
import json, os, signal, statistics, subprocess, time
from codex_trio import _watchdog as w

def spawn():
    started = time.perf_counter()
    proc = w.popen_in_spawner(["/bin/sleep", "30"], env=os.environ, cwd=None, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    spawned = time.perf_counter()
    w.register(proc.pid, None)
    return proc, spawned - started, time.perf_counter() - spawned

def end(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    w.unregister(proc.pid)

proc, first_spawn, first_register = w.run_in_spawner(spawn)  # + setpriv probe; + the watcher's start
end(proc)
ours = []
for _ in range(30):
    started = time.perf_counter()
    proc, _, _ = w.run_in_spawner(spawn)
    ours.append(time.perf_counter() - started)
    end(proc)
plain = []
for _ in range(30):
    started = time.perf_counter()
    proc = subprocess.Popen(["/bin/sleep", "30"], start_new_session=True)
    plain.append(time.perf_counter() - started)
    proc.kill()
    proc.wait()
status = open(f"/proc/{w.watcher_pid()}/status").read()
rss = int(status.split("VmRSS:")[1].split()[0])
try:
    pss = int(open(f"/proc/{w.watcher_pid()}/smaps_rollup").read().split("Pss:")[1].split()[0])
except (OSError, IndexError):
    pss = None
print(json.dumps({
    "watcher_start_ms": round(first_register * 1000, 1),
    "first_spawn_with_setpriv_probe_ms": round(first_spawn * 1000, 1),
    "watcher_rss_kib": rss,
    "watcher_pss_kib": pss,
    "pdeathsig_by": "setpriv" if w._get_state().pdeathsig_prefix else "none (no setpriv --pdeathsig)",
    "spawn_and_register_median_ms": round(statistics.median(ours) * 1000, 2),
    "plain_popen_median_ms": round(statistics.median(plain) * 1000, 2),
}))
"""


def _watchdog_costs() -> dict[str, Any]:
    import json

    out = subprocess.run([sys.executable, "-c", _WATCHDOG_COSTS], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    costs: dict[str, Any] = json.loads(out.stdout)
    return costs


async def stall_bench(cycles: int) -> dict[str, Any]:
    real = codex_bin()
    with tempfile.TemporaryDirectory(prefix="ctb-stall-", dir="/tmp") as d, MockModelServer() as model:
        tmp = Path(d)
        extra: dict[str, Any] = {}
        if real:
            extra = {"codex_bin": real, "codex_home": write_codex_home(tmp / "home", model.url)}
        else:
            extra = {"codex_bin": _fake_shim(tmp)}
        (tmp / "work").mkdir(parents=True, exist_ok=True)
        config = RuntimeConfig(
            runtime_id="stall",
            cwd=tmp / "work",
            sandbox_mode="read-only",
            socket_dir=tmp / "s",
            log_dir=tmp / "logs",
            state_dir=tmp / "state",
            **extra,
        )
        # One cycle first, unmeasured: the one-time costs of a host's first spawn (the spawner thread, the
        # watcher's start, lazy imports) are not what this measures.
        await _cycles(ProcessLauncher(config), 1, scan_on_loop=False)
        ours = await _measure(config, cycles, "ours", None)
        old = await _measure(config, cycles, "proc_scan_on_loop", None)
        idle = await _measure(config, cycles, "idle", ours["seconds"])
        scan_started = time.perf_counter()
        live_pids_in_group(os.getpgrp())
        scan_ms = (time.perf_counter() - scan_started) * 1000
    processes = sum(1 for name in os.listdir("/proc") if name.isdigit())
    return {
        "child": "codex" if real else "fake_app_server",
        "idle": idle,
        "ours": ours,
        "proc_scan_on_loop": old,
        "one_proc_scan_ms": round(scan_ms, 2),
        "processes_on_host": processes,
        "watchdog": await trio.to_thread.run_sync(_watchdog_costs),
    }


# --- the stop in the middle of a turn ---------------------------------------------------------------------------


async def _rpc(stream: MessageStream, request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    await stream.send_message(json.dumps({"id": request_id, "method": method, "params": params}))
    while True:
        message = json.loads(await stream.receive_message())
        if message.get("id") == request_id and "method" not in message:
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result


async def _busy(stream: MessageStream, model: MockModelServer, cwd: Path) -> None:
    """Handshake, a thread, and a turn that hangs in the model call; returns once codex is waiting on the model."""
    await _rpc(stream, 1, "initialize", {"clientInfo": {"name": "bench_stall", "version": "0"}})
    await stream.send_message(json.dumps({"method": "initialized"}))
    thread = (await _rpc(stream, 2, "thread/start", {"cwd": str(cwd)}))["thread"]["id"]
    hang = Hang()
    model.enqueue(hang)
    await _rpc(stream, 3, "turn/start", {"threadId": thread, "input": [{"type": "text", "text": "hang"}]})
    if not await trio.to_thread.run_sync(hang.wait_started, 30):
        raise RuntimeError("codex never called the model")


def _listen_path(pid: int) -> Path:
    for _ in range(1000):  # the command line is empty for a moment while the child execs (setpriv -> codex)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if b"--listen" in argv:
            return Path(os.fsdecode(argv[argv.index(b"--listen") + 1])[len("unix://") :])
        time.sleep(0.001)
    raise RuntimeError(f"no --listen in the command line of pid {pid}")


def _leftovers(sock: Path) -> bool:
    return any(os.path.lexists(p) for p in codex_daemon_files(sock))


async def _stop_ours(config: RuntimeConfig, model: MockModelServer) -> tuple[float, int | None, bool]:
    assert config.cwd is not None
    async with ProcessLauncher(config).launch(1) as launched:
        assert launched.pid is not None
        sock = _listen_path(launched.pid)
        await _busy(await launched.connect(), model, config.cwd)
        started = time.perf_counter()
    elapsed = time.perf_counter() - started
    reason = await launched.wait_gone()
    return elapsed, getattr(reason, "returncode", None), _leftovers(sock)


async def _stop_old_sequence(config: RuntimeConfig, model: MockModelServer) -> tuple[float, int | None, bool]:
    assert config.codex_bin is not None and config.cwd is not None and config.socket_dir and config.log_dir
    socket_dir = await trio.to_thread.run_sync(ensure_owner_only_dir, config.socket_dir)
    sock = allocate_socket_path(socket_dir, config.runtime_id)
    spec = ChildSpec(
        argv=app_server_argv(config, config.codex_bin, sock),
        env=child_env(config),
        cwd=config.cwd,
        socket_path=sock,
        log_dir=config.log_dir,
        runtime_id=config.runtime_id,
        ready_timeout=config.ready_timeout,
        grace_period=config.grace_period,
    )
    child = await spawn_app_server(spec)
    try:
        async with trio.open_nursery() as nursery:
            await child.wait_connectable(child.spawned_at + spec.ready_timeout)
            stream = await connect_unix_websocket(nursery, child.connect_path())
            await _busy(stream, model, config.cwd)
            started = time.perf_counter()
            os.killpg(child.pgid, signal.SIGTERM)
            with trio.move_on_after(config.grace_period):
                await child.wait()
            os.killpg(child.pgid, signal.SIGKILL)  # the leader is not reaped yet: the group id is still ours
            await child.wait()
            elapsed = time.perf_counter() - started
            left = _leftovers(sock)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    finally:
        await child.stop(config.grace_period)  # reaps, and removes what codex left
    return elapsed, child.returncode, left


def _stop_summary(samples: list[tuple[float, int | None, bool]]) -> dict[str, Any]:
    times = sorted(t for t, _, _ in samples)
    codes: dict[str, int] = {}
    for _, code, _ in samples:
        codes[str(code)] = codes.get(str(code), 0) + 1
    return {
        "stops": len(samples),
        "median_ms": round(times[len(times) // 2] * 1000, 1),
        "min_ms": round(times[0] * 1000, 1),
        "max_ms": round(times[-1] * 1000, 1),
        "returncodes": codes,
        "stops_leaving_daemon_files": sum(1 for _, _, left in samples if left),
    }


async def stop_bench(stops: int) -> dict[str, Any]:
    real = codex_bin()
    if not real:
        return {"skipped": "needs the real codex (CODEX_TRIO_CODEX_BIN)"}
    with tempfile.TemporaryDirectory(prefix="ctb-stop-", dir="/tmp") as d, MockModelServer() as model:
        tmp = Path(d)
        (tmp / "work").mkdir(parents=True, exist_ok=True)
        config = RuntimeConfig(
            runtime_id="stop",
            codex_bin=real,
            codex_home=write_codex_home(tmp / "home", model.url),
            cwd=tmp / "work",
            sandbox_mode="read-only",
            socket_dir=tmp / "s",
            log_dir=tmp / "logs",
            state_dir=tmp / "state",
        )
        ours, old = [], []
        for _ in range(stops):
            ours.append(await _stop_ours(config, model))
            old.append(await _stop_old_sequence(config, model))
    return {"grace_period": config.grace_period, "ours": _stop_summary(ours), "old_sequence": _stop_summary(old)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def run(*, quick: bool = False, **_options: Any) -> dict[str, Any]:
    cycles = 2 if quick else 20
    figures = trio.run(stall_bench, cycles)
    figures["stop_mid_turn"] = stop = trio.run(stop_bench, cycles)
    ours, old, idle = (figures[k].get("max_delay_ms") for k in ("ours", "proc_scan_on_loop", "idle"))
    cpu = {k: figures[k].get("longest_step_cpu_ms") for k in ("ours", "proc_scan_on_loop", "idle")}
    ratios = {
        "ours_max/idle_max": _ratio(ours, idle),
        "proc_scan_on_loop_max/ours_max": _ratio(old, ours),
        "proc_scan_on_loop_step_cpu/ours_step_cpu": _ratio(cpu["proc_scan_on_loop"], cpu["ours"]),
        "stop_mid_turn old_sequence/ours (median)": _ratio(
            stop.get("old_sequence", {}).get("median_ms"), stop.get("ours", {}).get("median_ms")
        ),
        "targets": {
            "ours max_delay_ms": f"<= {TARGET_MS}",
            "ours longest_step_cpu_ms": f"<= {TARGET_MS}",
            "stop_mid_turn ours stops_leaving_daemon_files": "0",
        },
    }
    return result("stall", {"cycles": cycles, "tick_ms": TICK * 1000}, figures, ratios)


if __name__ == "__main__":
    write_json(run(quick="--quick" in sys.argv[1:]))
