"""Testing your own agent app offline with the testing kit: no codex, no model, virtual time.

Your app is ``answer_ticket``; the test scripts the app-server's turns with FakeAppServer and even kills "the
child" mid-turn to check how the app copes. Run with ``./dev test examples/``.
"""

from __future__ import annotations

import trio

import codex_trio
from codex_trio.testing import FakeLauncher, TurnScript


async def answer_ticket(runtime: codex_trio.Runtime, ticket_id: str, text: str) -> str:
    """The application code under test: ask the agent, retry once with a new id if the child died mid-turn."""
    for attempt in range(2):
        admission = await runtime.submit(codex_trio.ChannelInput(f"ticket:{ticket_id}#{attempt}", text))
        settlement = await admission.settled()
        if settlement.outcome == "completed" and settlement.text:
            return settlement.text
        if settlement.outcome != "interrupted":
            break
    return "sorry, the agent is unavailable"


async def test_answer_ticket_survives_a_crash(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    launcher.fake.push_turns(TurnScript(hang=True), TurnScript(text="Reset your password here."))
    config = codex_trio.RuntimeConfig(runtime_id="support", restart=codex_trio.RestartPolicy(base_delay=1))
    async with codex_trio.open_runtime(config, launcher=launcher) as runtime, trio.open_nursery() as nursery:
        answer: list[str] = []

        async def app() -> None:
            answer.append(await answer_ticket(runtime, "7", "I forgot my password"))

        nursery.start_soon(app)
        await trio.sleep(5)  # the first turn hangs ...
        launcher.kill()  # ... and the app-server dies under it
    assert answer == ["Reset your password here."]
    assert runtime.restarts == 1
    # the retry went to codex with a fresh source id, on the same (resumed) thread
    starts = launcher.fake.requests("turn/start")
    assert [s["clientUserMessageId"] for s in starts] == ["ticket:7#0", "ticket:7#1"]
    assert len({s["threadId"] for s in starts}) == 1
