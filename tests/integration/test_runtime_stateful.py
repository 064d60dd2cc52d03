"""Random concurrent programs against the whole runtime (engine, core, session, supervisor) and the fake.

Hypothesis draws several *submitter* tasks (each a list of submits with ids from a small pool, so repeats happen,
some of them cancelled after a random number of scheduler steps), and one *chaos* task (child kills, dropped
connections, turns completing, failing or ending in a fatal ``error``, notifications about another thread,
interrupts, restart notices, an early stop). They all run at once in one ``trio.run`` on a MockClock with
autojump. Under Hypothesis, Trio's scheduler is deterministic and seeded by Hypothesis (Trio registers its
scheduling random with it), so the interleavings are explored, replayed and shrunk like any other input.

Both stores: the memory store, and SQLite (run on the Trio thread here, so that it is deterministic too).

The invariants, checked against what the fake actually accepted and what the store holds:

* an admission that answered accepted settles exactly once (and one SubmissionSettled event says so);
* a source id is accepted at most once; a submit that raised Cancelled left no trace (its text never reached
  codex or the store, and if no attempt of that id was accepted, the id is still free afterwards);
* codex receives inputs in acceptance order, each at most once; ``completed`` only for what codex received;
* after stop no RPC is sent, and every accepted input is either settled in the store or still pending there;
* thread operations (``new_thread``, run by the chaos task beside the submitters, some cancelled) keep their place:
  in acceptance order, inputs go to the threads in the order the moves made them, never back to an older one, and
  never to a thread the runtime did not move to; a move that raised left the runtime where it was.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings, strategies as st

from codex_trio._admission import Admission
from codex_trio._config import DeliveryMode, RuntimeConfig
from codex_trio._errors import ConnectionLost, RuntimeStopped
from codex_trio._events import SubmissionSettled, ThreadLost
from codex_trio._policy import RestartPolicy
from codex_trio._render import ChannelInput
from codex_trio._runtime import Runtime, open_runtime
from codex_trio._state import MemoryStateStore, SqliteStateStore, StateStore
from codex_trio.testing._fake_app_server import FakeAppServer, TurnScript
from codex_trio.testing._launchers import FakeLauncher

POOL = ["a", "b", "c", "d", "e", "f", ""]  # "" disables dedup

StoreKind = Literal["memory", "sqlite"]


class InlineSqliteStore(SqliteStateStore):
    """SQLite on the Trio thread: the same transactions, but no worker thread for the virtual clock to jump over
    and no thread scheduling outside Hypothesis's control."""

    async def _offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)


class Recording(FakeAppServer):
    """Records every turn input the fake *accepted*, in order (a refused turn/steer delivered nothing)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.accepted: list[dict[str, Any]] = []
        self.answer_delay = 0.0
        self.runtime: Runtime | None = None
        #: (the thread an input went to, the runtime's thread at that moment) where they differ
        self.elsewhere: list[tuple[str, str | None]] = []

    def _check_thread(self, params: dict[str, Any]) -> None:
        if self.runtime is not None and params["threadId"] != self.runtime.thread_id:
            self.elsewhere.append((params["threadId"], self.runtime.thread_id))

    async def _m_turn_start(self, conn: Any, params: dict[str, Any]) -> dict[str, Any]:
        self._check_thread(params)
        result = await super()._m_turn_start(conn, params)
        self.accepted.append(params)
        await trio.sleep(self.answer_delay)
        return result

    async def _m_turn_steer(self, conn: Any, params: dict[str, Any]) -> dict[str, Any]:
        self._check_thread(params)
        result = await super()._m_turn_steer(conn, params)
        self.accepted.append(params)
        await trio.sleep(self.answer_delay)
        return result

    async def _handle_frame(self, conn: Any, frame: str | bytes) -> None:
        # Like codex, go on serving requests while a turn is being interrupted (which takes a moment).
        if b"turn/interrupt" in (frame if isinstance(frame, bytes) else frame.encode()):
            conn.nursery.start_soon(super()._handle_frame, conn, frame)
        else:
            await super()._handle_frame(conn, frame)


# -- programs ------------------------------------------------------------------------------------------------

#: (source id, cancel after this many scheduler steps or never, pause after)
submit_op = st.tuples(
    st.sampled_from(POOL),
    st.one_of(st.none(), st.none(), st.integers(min_value=0, max_value=12)),
    st.sampled_from([0.0, 0.0, 0.001, 0.1, 1.0]),
)
submitter = st.lists(submit_op, min_size=1, max_size=8)
chaos_op = st.tuples(
    st.sampled_from([0.0, 0.0, 0.001, 0.05, 0.5, 2.0, 7.0]),
    st.sampled_from(
        [
            "complete",
            "complete",
            "fail",
            "fatal",
            "quick",
            "quick",
            "kill",
            "drop",
            "foreign",
            "interrupt",
            "notice",
            "lag",
            "unlag",
            "move",
            "move-cancelled",
            "stop",
        ]
    ),
)


@attrs.define
class Attempt:
    source_id: str
    text: str
    admission: Admission | None = None  # None: the submit raised Cancelled


@attrs.define
class World:
    rt: Runtime
    fake: Recording
    launcher: FakeLauncher
    attempts: list[Attempt] = attrs.field(factory=list)
    stopped_early: bool = False
    nursery: trio.Nursery | None = None
    #: the thread the runtime started on, and the ones new_thread() returned
    threads: list[str] = attrs.field(factory=list)
    moved: list[str] = attrs.field(factory=list)


async def _cancel_after(scope: trio.CancelScope, steps: int) -> None:
    for _ in range(steps):
        await trio.lowlevel.checkpoint()
    scope.cancel()


async def run_submitter(world: World, plan: list[tuple[str, int | None, float]], numbers: Any) -> None:
    for source_id, cancel_after, pause in plan:
        attempt = Attempt(source_id, f"{source_id or '-'}#{next(numbers)}")
        world.attempts.append(attempt)
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                if cancel_after is not None:
                    nursery.start_soon(_cancel_after, scope, cancel_after)
                attempt.admission = await world.rt.submit(ChannelInput(source_id, attempt.text))
            nursery.cancel_scope.cancel()
        await trio.sleep(pause)


async def run_move(world: World, cancel_after: int | None) -> None:
    with trio.CancelScope() as scope:
        if cancel_after is not None:
            assert world.nursery is not None
            world.nursery.start_soon(_cancel_after, scope, cancel_after)
        try:
            world.moved.append(await world.rt.new_thread())
        except (RuntimeStopped, ConnectionLost):
            pass


async def run_chaos(world: World, plan: list[tuple[float, str]]) -> None:
    fake, launcher, rt = world.fake, world.launcher, world.rt
    for delay, action in plan:
        await trio.sleep(delay)
        if action == "complete":
            await fake.complete_turn()
        elif action == "fail":
            for turn in list(fake.active_turns.values()):
                turn.script = attrs.evolve(turn.script, hang=False, fail="scripted failure")
                turn.done.set()
        elif action == "fatal":
            for turn in list(fake.active_turns.values()):
                turn.script = attrs.evolve(turn.script, hang=False, error_notification="fatal: out of credits")
                turn.done.set()
        elif action == "quick":
            fake.push_turns(TurnScript(text="quick", deltas=1))
        elif action == "kill":
            launcher.kill()
        elif action == "drop":
            await launcher.drop_connection()
        elif action == "foreign":
            # Our own turn id, another thread: nothing of ours may end or change because of it.
            for turn in list(fake.active_turns.values()):
                record: dict[str, Any] = {"id": turn.id, "items": [], "status": "completed", "error": None}
                await fake.notify_all("turn/completed", {"threadId": "another-thread", "turn": record})
                await fake.notify_all(
                    "error",
                    {"threadId": "another-thread", "turnId": turn.id, "error": {"message": "x"}, "willRetry": False},
                )
        elif action == "interrupt":
            await rt.interrupt()
        elif action == "notice":
            await rt.system_input("wake up", reason="restart-notice")
        elif action == "lag":
            fake.answer_delay = 0.2
        elif action == "unlag":
            fake.answer_delay = 0.0
        elif action in ("move", "move-cancelled"):
            assert world.nursery is not None
            world.nursery.start_soon(run_move, world, 3 if action == "move-cancelled" else None)
        elif action == "stop":
            world.stopped_early = True
            await rt.aclose()
            return
        else:  # pragma: no cover
            raise AssertionError(action)


async def drain(world: World) -> None:
    """Liveness: once codex answers promptly and turns end, every accepted input settles well within one turn
    deadline (a worker stuck on a turn that already ended, rescued only by the deadline, shows up)."""
    fake = world.fake
    fake.answer_delay = 0.0
    fake.default_turn = TurnScript(text="r", deltas=1)
    await fake.complete_turn()
    open_ = [a for a in world.attempts if a.admission is not None and a.admission.accepted]
    with trio.move_on_after(4):
        for a in open_:
            assert a.admission is not None
            await a.admission.settled()
    stuck = [(a.text, world.rt.status) for a in open_ if a.admission is not None and a.admission.settlement is None]
    assert not stuck, f"accepted input did not settle although codex was idle: {stuck}"


async def run_program(
    mode: DeliveryMode, store_kind: StoreKind, submitters: list[list[tuple[str, int | None, float]]], chaos: Any
) -> None:
    fake = Recording(default_turn=TurnScript(text="r", deltas=1, hang=True))
    launcher = FakeLauncher(fake)
    cfg = RuntimeConfig(
        runtime_id="prop",
        delivery_mode=mode,
        turn_timeout=5,
        request_timeout=3,
        restart=RestartPolicy(base_delay=0.5, max_delay=2, max_restarts=100_000, within=1),
    )
    store: StateStore = MemoryStateStore() if store_kind == "memory" else InlineSqliteStore(":memory:")
    numbers = itertools.count()
    with trio.fail_after(100_000):
        async with open_runtime(cfg, launcher=launcher, state=store) as rt:
            world = World(rt, fake, launcher)
            fake.runtime = rt
            assert rt.thread_id is not None
            world.threads.append(rt.thread_id)
            events = rt.events()
            async with trio.open_nursery() as nursery:
                world.nursery = nursery
                for plan in submitters:
                    nursery.start_soon(run_submitter, world, plan, numbers)
                nursery.start_soon(run_chaos, world, chaos)
            if not world.stopped_early:
                await drain(world)
                # "No trace": an id that no attempt got accepted is still free.
                accepted_ids = {a.source_id for a in world.attempts if a.admission and a.admission.accepted}
                for source_id in sorted({a.source_id for a in world.attempts} - accepted_ids - {""}):
                    probe = Attempt(source_id, f"{source_id}#probe")
                    probe.admission = await rt.submit(ChannelInput(source_id, probe.text))
                    assert probe.admission.accepted, (source_id, probe.admission)
                    world.attempts.append(probe)
                    await probe.admission.settled()

        # -- after stop --------------------------------------------------------------------------------------
        sent = len(fake.received)
        assert rt.status == "stopped"
        assert launcher.live == 0
        assert (await rt.submit(ChannelInput("z", "after stop"))).status == "stopped"
        assert await rt.interrupt() is False
        await trio.sleep(30)
        assert len(fake.received) == sent, "an RPC was sent after stop"
        seen = [e async for e in events]
        snapshot = await store.load("prop")
        stored_settled = {s.seq for s in await store.recent_settlements("prop", 100_000)}

    check_invariants(world, seen, snapshot, stored_settled)


def check_invariants(world: World, seen: list[Any], snapshot: Any, stored_settled: set[int]) -> None:
    fake = world.fake
    attempts = world.attempts
    accepted = [a for a in attempts if a.admission is not None and a.admission.accepted]
    by_text = {a.text: a for a in attempts}

    # Every accepted input settled exactly once (its admission, and exactly one SubmissionSettled event).
    settled_events = Counter(e.settlement.seq for e in seen if isinstance(e, SubmissionSettled))
    assert all(count == 1 for count in settled_events.values()), settled_events
    for a in accepted:
        assert a.admission is not None and a.admission.settlement is not None, a
        assert settled_events[a.admission.seq or -1] == 1, a

    # A source id is accepted at most once; a duplicate answer means some attempt of that id was accepted.
    per_id = Counter(a.source_id for a in accepted if a.source_id)
    assert all(n == 1 for n in per_id.values()), per_id
    for a in attempts:
        if a.admission is not None and a.admission.status == "duplicate":
            assert per_id[a.source_id] == 1, a

    # What reached codex: each input at most once, in acceptance order, and only accepted ones.
    reached = [str(params["input"][0]["text"]) for params in fake.accepted]
    channel = [t for t in reached if t in by_text]
    assert len(channel) == len(set(channel)), "an input reached codex twice"
    client_ids = [params.get("clientUserMessageId") for params in fake.accepted]
    assert len(client_ids) == len(set(client_ids)), "a client id reached codex twice"
    seqs = [admission.seq or 0 for t in channel if (admission := by_text[t].admission) is not None]
    assert seqs == sorted(seqs), "inputs reached codex out of acceptance order"
    for t in channel:
        attempt = by_text[t]
        assert attempt.admission is not None and attempt.admission.accepted, f"{t} reached codex, never accepted"

    # Threads: every input went to the thread the runtime was on when it was sent, and in acceptance order, inputs
    # go to the runtime's threads in the order it moved to them.
    assert not fake.elsewhere, f"inputs went to a thread the runtime had left: {fake.elsewhere}"
    # The order the runtime moved in is the order of its ThreadLost events; every finished move is one of them, and
    # the runtime ends on the last (a cancelled or failed move left it where it was).
    threads = world.threads[:1] + [e.new_thread_id for e in seen if isinstance(e, ThreadLost)]
    assert set(world.moved) <= set(threads[1:]), (world.moved, threads)
    assert world.rt.thread_id == threads[-1], (world.rt.thread_id, threads)
    where = [
        threads.index(str(params["threadId"])) for params in fake.accepted if params["input"][0]["text"] in by_text
    ]
    assert where == sorted(where), f"an input went back to an older thread: {where}"

    # A cancelled submit left no trace: not at codex, not in the store.
    stored_texts = {p.text for p in snapshot.pending}
    for a in attempts:
        if a.admission is None:
            assert a.text not in channel, a
            assert a.text not in stored_texts, a

    # Outcomes agree with delivery, and with codex's own record of the turn (so a notification about another
    # thread, or a late one, cannot settle an input early).
    codex_turns = {t["id"]: t for thread in fake.threads.values() for t in thread.turns}
    for a in accepted:
        assert a.admission is not None
        settlement = a.admission.settlement
        assert settlement is not None
        if settlement.outcome == "completed":
            assert a.text in channel, settlement
            assert settlement.turn_id in codex_turns, settlement
            assert codex_turns[settlement.turn_id]["status"] == "completed", settlement
            assert a.text in codex_turns[settlement.turn_id]["inputs"], settlement
        if a.text not in channel:
            assert settlement.outcome in ("stopped", "interrupted", "failed"), settlement

    # Durable bookkeeping: each accepted input is settled in the store or still pending there, never both.
    pending = {p.seq for p in snapshot.pending}
    assert not pending & stored_settled
    for a in accepted:
        assert a.admission is not None and a.admission.seq is not None
        assert a.admission.seq in pending | stored_settled, a
        if a.admission.seq in pending:
            assert a.admission.settlement is not None and a.admission.settlement.outcome == "stopped", a


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(["steer", "queue"]),
    submitters=st.lists(submitter, min_size=1, max_size=5),
    chaos=st.lists(chaos_op, max_size=12),
)
def test_concurrent_programs_keep_the_invariants(
    store_kind: StoreKind,
    mode: DeliveryMode,
    submitters: list[list[tuple[str, int | None, float]]],
    chaos: list[tuple[float, str]],
) -> None:
    trio.run(run_program, mode, store_kind, submitters, chaos, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@pytest.mark.parametrize("mode", ["steer", "queue"])
def test_twenty_submits_at_the_same_moment(store_kind: StoreKind, mode: DeliveryMode) -> None:
    """The measured regression: 20 tasks calling submit at once lost 13-16 with the default store."""
    plans: list[list[tuple[str, int | None, float]]] = [[(f"m{i}", None, 0.0)] for i in range(20)]
    trio.run(
        run_program,
        mode,
        store_kind,
        plans,
        [(1.0, "complete")] * 5,
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
