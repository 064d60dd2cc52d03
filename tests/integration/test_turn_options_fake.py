"""Per-turn options through the whole runtime on the in-memory FakeAppServer (virtual time): what reaches
``turn/start`` and ``turn/steer``, the steering rule with a hanging turn, and structured output."""

from __future__ import annotations

import base64

import trio

from codex_trio import ChannelInput, RuntimeConfig, TurnOptions, open_runtime
from codex_trio.testing._fake_app_server import FakeAppServer, TurnScript
from codex_trio.testing._launchers import FakeLauncher

DATA_URL = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n0000").decode()


async def test_options_and_images_reach_turn_start_and_steer(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer()
    fake.script.append(TurnScript(text="first", delay=5.0))
    async with open_runtime(RuntimeConfig(runtime_id="rt"), launcher=FakeLauncher(fake)) as rt:
        first = await rt.submit(ChannelInput("a", "first", images=[DATA_URL]), options=TurnOptions(model="m"))
        await trio.sleep(1)
        joins = await rt.submit(ChannelInput("b", "joins", images=[DATA_URL]), options=TurnOptions(model="m"))
        await trio.sleep(1)
        waits = await rt.submit(ChannelInput("c", "waits"), options=TurnOptions(model="other", effort="low"))
        behind = await rt.submit(ChannelInput("d", "behind"))
        await trio.sleep(1)
        assert rt.statistics().queued == 2  # c cannot join a turn of model "m"; d waits behind it
        one, two, three, four = [await a.settled() for a in (first, joins, waits, behind)]
    assert one.turn_id == two.turn_id != three.turn_id
    starts, steers = fake.requests("turn/start"), fake.requests("turn/steer")
    assert [s["input"][0]["text"] for s in starts] == ["first", "waits"]
    assert starts[0]["model"] == "m" and starts[0]["input"][1] == {"type": "image", "url": DATA_URL}
    assert (starts[1]["model"], starts[1]["effort"]) == ("other", "low")
    assert steers[0]["input"] == [
        {"type": "text", "text": "joins", "text_elements": []},
        {"type": "image", "url": DATA_URL},
    ]
    assert all("model" not in s for s in steers)
    assert [s["input"][0]["text"] for s in steers] == ["joins", "behind"]  # d joins c's turn: it sets nothing
    assert four.turn_id == three.turn_id


async def test_structured_output_on_the_settlement(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeAppServer()
    fake.script.extend([TurnScript(text='{"ok": true, "n": [1, 2]}'), TurnScript(text="not json")])
    schema = {"type": "object"}
    async with open_runtime(RuntimeConfig(runtime_id="rt"), launcher=FakeLauncher(fake)) as rt:
        good = await (await rt.submit(ChannelInput("a", "x"), options=TurnOptions(output_schema=schema))).settled()
        bad = await (await rt.submit(ChannelInput("b", "y"), options=TurnOptions(output_schema=schema))).settled()
    assert (good.outcome, good.output) == ("completed", {"ok": True, "n": [1, 2]})
    assert (bad.outcome, bad.output, bad.text) == ("failed", None, "not json")
    assert [s["outputSchema"] for s in fake.requests("turn/start")] == [schema, schema]
