"""Chaos on the real codex binary: several runtimes, one mock model, a seeded storm of failures.

A seeded ``random.Random`` drives a bounded number of operations against three runtimes: submits with source ids
from a small pool (so redeliveries happen), SIGKILLs of an app-server's process group, closes of the runtime's
WebSocket, interrupts, releases of hanging model steps, pauses — and, once, host cancellation of one runtime's
whole block in the middle of it all. The model answers most steps at once and hangs on some, so kills and
interrupts land mid-turn. Afterwards:

* every accepted admission settled, exactly once (one ``SubmissionSettled`` per accepted seq, nothing else);
* no source id reached the model twice (as the newest user message of a model request);
* every redelivered id was refused as ``duplicate``, every new one accepted (until its runtime stopped);
* every disruption was survived (one restart each) and every runtime ended ``stopped``;
* no process is left in any group our launchers created, and no socket of ours in the socket directories.

The seed is printed (and taken from ``$CODEX_TRIO_CHAOS_SEED`` when set) so a failing run can be replayed, as
far as the scheduling of real processes allows.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from codex_trio._config import RuntimeConfig
from codex_trio._events import EventStream, Lagged, SubmissionSettled
from codex_trio._launcher import ProcessLauncher
from codex_trio._policy import RestartPolicy
from codex_trio._process import live_pids_in_group
from codex_trio._render import ChannelInput
from codex_trio._runtime import Admission, Runtime, open_runtime
from codex_trio._settlement import Settlement
from codex_trio.testing._mock_model import Hang, MockModelServer, Step, Text, write_codex_home

pytestmark = pytest.mark.real_codex

SEED_ENV = "CODEX_TRIO_CHAOS_SEED"
#: A longer storm for local runs (the CI default stays small and fast).
OPERATIONS_ENV = "CODEX_TRIO_CHAOS_OPERATIONS"
RUNTIMES = 3
OPERATIONS = int(os.environ.get(OPERATIONS_ENV, "") or 40)
#: Source ids per runtime: small, so redeliveries (duplicates) are frequent.
ID_POOL = max(8, OPERATIONS // 6)
#: Share of model steps that hang until released, interrupted or killed.
HANG_SHARE = 0.25
OP_WEIGHTS: dict[str, float] = {
    "submit": 0.42,
    "kill": 0.14,
    "close": 0.10,
    "interrupt": 0.12,
    "release": 0.10,
    "pause": 0.12,
}
TOKEN = re.compile(r"chaos-token:(\S+)")


def message_text(runtime_id: str, source_id: str) -> str:
    # The same text for every (re)delivery of a source id, unique across runtimes: what reaches the model
    # identifies the source id it came from.
    return f"chaos-token:{runtime_id}/{source_id} please answer briefly"


@attrs.define(eq=False)
class Host:
    """One runtime under chaos, and what the driver did to it."""

    index: int
    runtime: Runtime
    launcher: ProcessLauncher
    scope: trio.CancelScope
    stop: trio.Event = attrs.field(factory=trio.Event)
    finished: trio.Event = attrs.field(factory=trio.Event)
    settled_events: list[Settlement] = attrs.field(factory=list)
    lagged: int = 0
    accepted: list[Admission] = attrs.field(factory=list)
    accepted_ids: set[str] = attrs.field(factory=set)
    disrupted: set[int] = attrs.field(factory=set)
    kills: int = 0
    closes: int = 0
    interrupts: int = 0
    submits: int = 0
    duplicates: int = 0
    stopped_answers: int = 0
    cancelled: bool = False

    @property
    def runtime_id(self) -> str:
        return self.runtime.runtime_id


def chaos_seed() -> int:
    raw = os.environ.get(SEED_ENV, "").strip()
    return int(raw) if raw else secrets.randbits(32)


def model_default(seed: int) -> Callable[[int], Step]:
    def step(n: int) -> Step:
        # Decided by the request number alone, so the model's choices do not consume the driver's RNG.
        if random.Random(f"{seed}:{n}").random() < HANG_SHARE:
            return Hang(then=Text(f"released reply {n}", deltas=2))
        return Text(f"reply {n}", deltas=2)

    return step


async def collect_settlements(host: Host, stream: EventStream) -> None:
    async for event in stream:
        if isinstance(event, SubmissionSettled):
            host.settled_events.append(event.settlement)
        elif isinstance(event, Lagged):
            host.lagged += event.dropped


async def run_host(
    index: int,
    config: RuntimeConfig,
    collectors: trio.Nursery,
    *,
    task_status: trio.TaskStatus[Host] = trio.TASK_STATUS_IGNORED,
) -> None:
    launcher = ProcessLauncher(config)
    host: Host | None = None
    try:
        with trio.CancelScope() as scope:
            async with open_runtime(config, launcher=launcher) as runtime:
                host = Host(index, runtime, launcher, scope)
                # In the outer nursery: the stream ends when the runtime has stopped, also after a cancellation.
                collectors.start_soon(collect_settlements, host, runtime.events())
                task_status.started(host)
                await host.stop.wait()
    finally:
        if host is not None:
            host.finished.set()


async def submit(host: Host, rng: random.Random) -> None:
    source_id = f"src-{rng.randrange(ID_POOL)}"
    seen_before = source_id in host.accepted_ids
    admission = await host.runtime.submit(ChannelInput(source_id, message_text(host.runtime_id, source_id)))
    host.submits += 1
    if host.cancelled:
        assert admission.status == "stopped", (host.runtime_id, source_id, admission)
        host.stopped_answers += 1
    elif seen_before:
        assert admission.status == "duplicate", (host.runtime_id, source_id, admission)
        host.duplicates += 1
    else:
        assert admission.status in ("submitted", "queued"), (host.runtime_id, source_id, admission)
        assert admission.accepted
        host.accepted.append(admission)
        host.accepted_ids.add(source_id)


async def disrupt(host: Host, how: str) -> None:
    """SIGKILL the app-server's group or close the WebSocket, at most once per generation (so each one is
    exactly one restart to survive)."""
    runtime = host.runtime
    session = runtime.engine.live
    if host.cancelled or runtime.status != "ready" or session is None or session.generation in host.disrupted:
        return
    pgid = host.launcher.last_pgid
    assert pgid is not None
    if how == "kill":
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return  # died on its own just now; the runtime restarts anyway, but it was not us
        host.kills += 1
    else:
        await session.connection.aclose("chaos: socket closed")
        host.closes += 1
    host.disrupted.add(session.generation)


async def drive(hosts: list[Host], model: MockModelServer, rng: random.Random) -> None:
    ops = list(OP_WEIGHTS)
    weights = [OP_WEIGHTS[o] for o in ops]
    cancel_at = rng.randrange(OPERATIONS // 2, OPERATIONS)
    for step in range(OPERATIONS):
        if step == cancel_at:
            await cancel_one_host_mid_operation(rng.choice(hosts), model, rng)
        host = rng.choice(hosts)
        op = rng.choices(ops, weights)[0]
        if op == "submit":
            await submit(host, rng)
        elif op in ("kill", "close"):
            await disrupt(host, op)
        elif op == "interrupt":
            if not host.cancelled and await host.runtime.interrupt():
                host.interrupts += 1
        elif op == "release":
            model.release()
        else:
            await trio.sleep(rng.uniform(0.2, 0.8))
        await trio.sleep(rng.uniform(0.0, 0.15))


async def cancel_one_host_mid_operation(host: Host, model: MockModelServer, rng: random.Random) -> None:
    """Put the runtime mid-turn with more input behind it, then cancel its whole ``open_runtime`` block."""
    model.enqueue(Hang())  # the next model request hangs (whichever runtime makes it)
    for _ in range(3):
        await submit(host, rng)
    await trio.sleep(rng.uniform(0.0, 0.6))
    host.scope.cancel()
    host.cancelled = True
    with trio.fail_after(30):
        await host.finished.wait()
    assert host.runtime.status == "stopped"


async def wait_recovered(host: Host) -> None:
    """Until a generation we did not disrupt is ready. (Waiting for "ready" alone can return before the
    runtime has even noticed the last disruption.)"""
    while True:
        session = host.runtime.engine.live
        if host.runtime.status == "ready" and session is not None and session.generation not in host.disrupted:
            return
        await trio.sleep(0.02)


def last_user_tokens(model: MockModelServer) -> list[str]:
    """The chaos token of each model request's newest user message (history is re-sent; only the newest
    message is what that request delivered)."""
    tokens: list[str] = []
    for request in model.requests:
        users = [text for role, text in request.input_messages() if role == "user"]
        if users:
            match = TOKEN.search(users[-1])
            if match:
                tokens.append(match.group(1))
    return tokens


async def test_chaos_on_the_real_binary(codex_bin: str, tmp_path: Path, short_socket_dir: Path) -> None:
    seed = chaos_seed()
    print(f"\nchaos seed: {seed} (replay with {SEED_ENV}={seed})")
    rng = random.Random(seed)
    socket_root = short_socket_dir
    started = time.monotonic()
    hosts: list[Host] = []
    with MockModelServer(default=model_default(seed)) as model, trio.fail_after(150):
        for i in range(RUNTIMES):
            (tmp_path / f"work{i}").mkdir()
        configs = [
            RuntimeConfig(
                runtime_id=f"chaos{i}",
                codex_bin=codex_bin,
                codex_home=write_codex_home(tmp_path / f"home{i}", model.url),
                cwd=tmp_path / f"work{i}",
                sandbox_mode="read-only",
                socket_dir=socket_root / str(i),
                log_dir=tmp_path / "logs",
                spill_dir=tmp_path / "spill",
                grace_period=0.2,
                request_timeout=30,
                delivery_mode="queue" if i == 1 else "steer",
                # Generous: every disruption is restarted at once, and the runtime never gives up here.
                restart=RestartPolicy(base_delay=0.05, max_delay=0.2, max_restarts=1000, within=300),
            )
            for i in range(RUNTIMES)
        ]
        try:
            # Two nurseries: the collectors outlive the hosts (their streams end when the runtimes stop).
            async with trio.open_nursery() as collectors, trio.open_nursery() as nursery:
                for i, cfg in enumerate(configs):
                    hosts.append(await nursery.start(run_host, i, cfg, collectors))
                await drive(hosts, model, rng)
                # Wind down: no more hangs, let the survivors come back and finish what they hold.
                model.set_default(lambda n: Text(f"final reply {n}", deltas=2))
                model.release()
                live = [h for h in hosts if not h.cancelled]
                with trio.move_on_after(30) as wind_down:
                    for host in live:
                        await wait_recovered(host)
                        model.release()
                        for admission in host.accepted:
                            await admission.settled()
                for host in live:
                    assert host.runtime.status == "ready", (host.runtime_id, host.runtime.status)
                    host.stop.set()
                # Accepted input outlives restarts: once the storm is over, all of it is delivered and settles.
                assert not wind_down.cancelled_caught, "accepted input did not settle within 30 s after the chaos"
        finally:
            model.release()
    elapsed = time.monotonic() - started

    report_counts(hosts, model, elapsed)
    for host in hosts:
        check_host(host)
    tokens = last_user_tokens(model)
    repeated = {token: n for token, n in Counter(tokens).items() if n > 1}
    assert repeated == {}, f"source ids delivered to the model more than once: {repeated} (seed {seed})"
    assert tokens, "no chaos input reached the model at all"
    known = {f"{h.runtime_id}/{a.source_id}" for h in hosts for a in h.accepted}
    assert set(tokens) <= known, set(tokens) - known
    for host in hosts:
        for pgid in host.launcher.pgids:
            assert live_pids_in_group(pgid) == [], f"{host.runtime_id}: group {pgid} has live processes"
    left = sorted(str(p) for p in socket_root.rglob("*.sock"))
    assert left == [], f"sockets of ours left behind: {left}"
    for directory in sorted(socket_root.glob("*")):
        directory.rmdir()
    socket_root.rmdir()


def check_host(host: Host) -> None:
    runtime = host.runtime
    assert runtime.status == "stopped", (host.runtime_id, runtime.status)
    if not host.cancelled:
        early = [a for a in host.accepted if a.settlement is not None and a.settlement.outcome == "stopped"]
        assert early == [], f"{host.runtime_id}: settled 'stopped' although it ran until all had settled"
    by_seq = Counter(s.seq for s in host.settled_events)
    accepted_seqs = {a.seq for a in host.accepted}
    assert len(accepted_seqs) == len(host.accepted)
    twice = {seq: n for seq, n in by_seq.items() if n > 1}
    assert twice == {}, f"{host.runtime_id}: settled more than once: {twice}"
    assert set(by_seq) == accepted_seqs, (
        f"{host.runtime_id}: settled seqs {sorted(by_seq, key=str)}, accepted {sorted(accepted_seqs, key=str)}"
    )
    for admission in host.accepted:
        settlement = admission.settlement
        assert settlement is not None, f"{host.runtime_id}: {admission} never settled"
        assert settlement.seq == admission.seq and settlement.source_id == admission.source_id
        assert settlement in host.settled_events
    if host.cancelled:
        # Disruptions just before the cancellation may not have reached their restart.
        assert runtime.restarts <= host.kills + host.closes
    else:
        assert runtime.restarts == host.kills + host.closes, (
            f"{host.runtime_id}: {runtime.restarts} restarts for {host.kills} kills + {host.closes} closes"
        )


def report_counts(hosts: list[Host], model: MockModelServer, elapsed: float) -> None:
    outcomes = Counter(a.settlement.outcome for h in hosts for a in h.accepted if a.settlement is not None)
    print(
        f"chaos: {len(hosts)} runtimes, {OPERATIONS} operations in {elapsed:.1f}s; "
        f"disruptions survived (restarts) {sum(h.runtime.restarts for h in hosts)} of "
        f"{sum(h.kills + h.closes for h in hosts)}: SIGKILLs {sum(h.kills for h in hosts)}, "
        f"socket closes {sum(h.closes for h in hosts)}; interrupts {sum(h.interrupts for h in hosts)}, "
        f"submits {sum(h.submits for h in hosts)}, accepted {sum(len(h.accepted) for h in hosts)}, "
        f"duplicates refused {sum(h.duplicates for h in hosts)}, "
        f"refused as stopped after host cancellation {sum(h.stopped_answers for h in hosts)}, "
        f"model requests {len(model.requests)}"
    )
    print(f"chaos: inputs settled by outcome: {dict(sorted(outcomes.items()))}")
    if model.errors:
        print(f"chaos: mock model serving errors: {model.errors!r}")
    for host in hosts:
        print(
            f"chaos: {host.runtime_id}{' (host-cancelled)' if host.cancelled else ''}: kills {host.kills}, "
            f"closes {host.closes}, restarts {host.runtime.restarts}, accepted {len(host.accepted)}, "
            f"duplicates {host.duplicates}, final status {host.runtime.status}"
        )
