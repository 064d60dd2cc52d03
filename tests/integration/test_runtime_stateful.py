"""Random programs against the whole runtime (supervisor, worker, router, ledger) with the in-process fake.

Hypothesis draws a program — submits with ids from a small pool (so repeats happen), turn completions and
failures, child kills, dropped connections, interrupts, sleeps, stop — and runs it in one ``trio.run`` on a
MockClock with autojump, so restarts, backoffs and turn deadlines all happen in virtual time. The invariants of
issue 4 are checked at the end against what the fake actually accepted.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codex_trio._config import DeliveryMode, RuntimeConfig
from codex_trio._events import SubmissionSettled
from codex_trio._policy import RestartPolicy
from codex_trio._render import ChannelInput
from codex_trio._runtime import Admission, open_runtime
from codex_trio.testing._fake_app_server import FakeAppServer, TurnScript
from codex_trio.testing._launchers import FakeLauncher

POOL = ["a", "b", "c", "d", "e", ""]  # "" disables dedup

Op = tuple[Any, ...]

_submit = st.tuples(st.just("submit"), st.sampled_from(POOL))
_sleep = st.tuples(st.just("sleep"), st.sampled_from([0, 0.001, 0.05, 0.3, 1.0, 3.0, 6.0]))
# Submits and sleeps (which let turns and restarts progress) weigh more; the program's end is the stop, so an
# explicit early "stop" is rare.
ops = st.one_of(
    _submit,
    _submit,
    _submit,
    _sleep,
    _sleep,
    # codex may answer turn/start or turn/steer after the turn's notifications, even after turn/completed.
    st.tuples(st.just("lag"), st.sampled_from([0.0, 0.01, 0.2])),
    st.sampled_from(
        [
            ("complete",),
            ("complete",),
            ("fail",),
            ("quick",),
            ("quick",),
            ("kill",),
            ("drop",),
            ("interrupt",),
            ("notice",),
            ("stop",),
        ]
    ),
)


class _Recording(FakeAppServer):
    """Records every turn input the fake *accepted*, in order (a refused turn/steer delivered nothing)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.accepted: list[dict[str, Any]] = []
        self.answer_delay = 0.0

    async def _m_turn_start(self, conn: Any, params: dict[str, Any]) -> dict[str, Any]:
        result = await super()._m_turn_start(conn, params)
        self.accepted.append(params)
        await trio.sleep(self.answer_delay)
        return result

    async def _m_turn_steer(self, conn: Any, params: dict[str, Any]) -> dict[str, Any]:
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

    async def _m_turn_interrupt(self, conn: Any, params: dict[str, Any]) -> dict[str, Any]:
        await trio.sleep(self.answer_delay)
        return await super()._m_turn_interrupt(conn, params)


@attrs.define
class _Submitted:
    text: str
    source_id: str
    admission: Admission
    status_before: str


async def _drain(rt: Any, fake: _Recording, submitted: list[_Submitted]) -> None:
    """Liveness: once codex answers promptly and turns end, every accepted input settles, well within one
    turn deadline (so a worker stuck on a turn that already ended, rescued only by the deadline, shows up)."""
    fake.answer_delay = 0.0
    fake.default_turn = TurnScript(text="r", deltas=1)
    await fake.complete_turn()
    open_ = [s for s in submitted if s.admission.accepted]
    with trio.move_on_after(4):
        for s in open_:
            await s.admission.settled()
    stuck = [(s.text, rt.status, s.admission.settlement) for s in open_ if s.admission.settlement is None]
    assert not stuck, f"accepted input did not settle although codex was idle: {stuck}"


async def _run(mode: DeliveryMode, program: list[Op]) -> None:
    fake = _Recording(default_turn=TurnScript(text="r", deltas=1, hang=True))
    launcher = FakeLauncher(fake)
    cfg = RuntimeConfig(
        runtime_id="prop",
        delivery_mode=mode,
        turn_timeout=5,
        restart=RestartPolicy(base_delay=0.5, max_delay=2, max_restarts=100_000, within=1),
    )
    numbers = itertools.count()
    submitted: list[_Submitted] = []
    accepted_ids: set[str] = set()

    with trio.fail_after(100_000):
        async with open_runtime(cfg, launcher=launcher) as rt:
            events = rt.events()
            for op in program:
                kind = op[0]
                if kind == "stop":
                    break
                if kind == "submit":
                    source_id = op[1]
                    text = f"{source_id or '-'}#{next(numbers)}"
                    before = rt.status
                    admission = await rt.submit(ChannelInput(source_id, text))
                    submitted.append(_Submitted(text, source_id, admission, before))
                    # The model of dedup: an id seen before is a duplicate, across restarts too.
                    if source_id and source_id in accepted_ids:
                        assert admission.status == "duplicate", (source_id, admission)
                    else:
                        assert admission.accepted, (source_id, admission)
                        assert admission.status == ("submitted" if before == "ready" else "queued")
                        if source_id:
                            accepted_ids.add(source_id)
                elif kind == "notice":
                    notice = await rt.system_input("notice", reason="runtime-control")
                    assert notice.accepted
                elif kind == "complete":
                    await fake.complete_turn()
                elif kind == "fail":
                    for turn in list(fake.active_turns.values()):
                        turn.script = attrs.evolve(turn.script, hang=False, fail="scripted failure")
                        turn.done.set()
                elif kind == "quick":
                    fake.push_turns(TurnScript(text="quick", deltas=1))
                elif kind == "lag":
                    fake.answer_delay = op[1]
                elif kind == "kill":
                    launcher.kill()
                elif kind == "drop":
                    await launcher.drop_connection()
                elif kind == "interrupt":
                    await rt.interrupt()
                elif kind == "sleep":
                    await trio.sleep(op[1])
                else:  # pragma: no cover
                    raise AssertionError(op)
            else:
                await _drain(rt, fake, submitted)

        # -- after stop -------------------------------------------------------------------------------------
        sent = len(fake.received)
        assert rt.status == "stopped"
        assert launcher.live == 0
        assert (await rt.submit(ChannelInput("z", "after stop"))).status == "stopped"
        assert await rt.interrupt() is False
        await trio.sleep(30)
        assert len(fake.received) == sent, "an RPC was sent after stop"
        seen = [e async for e in events]

    # -- invariants -----------------------------------------------------------------------------------------
    accepted = [s for s in submitted if s.admission.accepted]
    by_text = {s.text: s for s in submitted}

    # Every accepted input settled exactly once (its admission, and exactly one SubmissionSettled event).
    settled_events = Counter(e.settlement.seq for e in seen if isinstance(e, SubmissionSettled))
    assert all(count == 1 for count in settled_events.values()), settled_events
    for s in accepted:
        assert s.admission.settlement is not None, s
        assert settled_events[s.admission.seq or -1] == 1, s

    # What reached codex: channel inputs (notices are "notice"), each at most once, in acceptance order.
    reached = [str(params["input"][0]["text"]) for params in fake.accepted]
    channel = [t for t in reached if t in by_text]
    assert len(channel) == len(set(channel)), "an input reached codex twice"
    ids = [params.get("clientUserMessageId") for params in fake.accepted if params.get("clientUserMessageId")]
    assert len(ids) == len(set(ids)), "a source id reached codex twice"
    seqs = [by_text[t].admission.seq or 0 for t in channel]
    assert seqs == sorted(seqs), "inputs reached codex out of acceptance order"
    for t in channel:
        sub = by_text[t]
        assert sub.admission.accepted, "a duplicate (or refused) input reached codex"
        assert (sub.source_id or None) == next(
            p.get("clientUserMessageId") for p in fake.accepted if p["input"][0]["text"] == t
        )

    # Outcomes agree with delivery: "completed" only for what codex ran; what never reached codex did not
    # complete, fail in a turn, or get interrupted by one.
    for s in accepted:
        settlement = s.admission.settlement
        assert settlement is not None
        if settlement.outcome == "completed":
            assert s.text in channel, settlement
        if s.text not in channel:
            assert settlement.outcome in ("stopped", "interrupted", "failed"), settlement
            assert settlement.turn_id is None, settlement


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(["steer", "queue"]), program=st.lists(ops, min_size=3, max_size=40))
def test_random_programs_keep_the_invariants(mode: DeliveryMode, program: list[Op]) -> None:
    trio.run(_run, mode, program, clock=trio.testing.MockClock(autojump_threshold=0))
