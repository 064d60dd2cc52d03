"""Per-turn options, images and structured output on the real codex binary, with the mock model checking what
reached it.

Observed on codex 0.171.0 (and relied on here): ``model``, ``effort`` and ``summary`` become the model request's
``model`` and ``reasoning``; ``sandboxPolicy`` and ``approvalPolicy`` change the permissions instructions codex
writes into the request (``sandbox_mode`` is ..., and how to ask for escalation); ``cwd`` becomes the
``<cwd>`` of the environment context; ``outputSchema`` becomes ``text.format`` (``json_schema``, strict, named
``codex_output_schema``); codex keeps every setting but the schema for the thread's later turns; an ``image`` input
must be a data URL (a remote URL fails ``turn/start`` with -32600), and a ``localImage`` reaches the model as a data
URL between ``<image name=[Image #n] path="...">`` text parts.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from codex_trio import ChannelInput, InvalidInput, SqliteStateStore, TurnOptions
from codex_trio._state import StoredSubmission
from codex_trio._turn_options import ImageInput, encode_payload
from codex_trio.testing._mock_model import Hang, MockModelServer, RecordedRequest, Text
from tests.real.test_runtime_real import real_runtime
from tests.unit.test_turn_options import DATA_URL, PNG, SCHEMA, image_server

pytestmark = pytest.mark.real_codex


def developer_text(request: RecordedRequest) -> str:
    return "\n".join(text for role, text in request.input_messages() if role == "developer")


def environment_context(request: RecordedRequest) -> str:
    contexts = [text for role, text in request.input_messages() if "<environment_context>" in text]
    assert contexts, "no environment context in the request"
    return contexts[-1]


def request_with(model: MockModelServer, text: str) -> RecordedRequest:
    """The first model request whose newest user message starts with ``text`` (images follow the text)."""
    for request in model.requests:
        users = [t for role, t in request.input_messages() if role == "user"]
        if users and users[-1].startswith(text):
            return request
    raise AssertionError(f"no model request ended with {text!r}")


async def test_options_reach_the_model_and_codex(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with MockModelServer() as model, trio.fail_after(120):
        async with real_runtime(tmp_path, model) as (runtime, _):
            plain = await (await runtime.submit(ChannelInput("a", "plain"))).settled()
            assert plain.outcome == "completed"
            options = TurnOptions(
                model="mock-two",
                effort="high",
                summary="detailed",
                sandbox="workspace-write",
                approval_policy="on-request",
                cwd=other,
            )
            chosen = await (await runtime.submit(ChannelInput("b", "with options"), options=options)).settled()
            assert chosen.outcome == "completed"
            later = await (await runtime.submit(ChannelInput("c", "no options again"))).settled()
            assert later.outcome == "completed"
    before, with_options, after = (request_with(model, t) for t in ("plain", "with options", "no options again"))
    # config.toml's settings first (model "mock-model", read-only, approval never, the runtime's cwd) ...
    assert (before.model, before.reasoning_effort) == ("mock-model", None)
    assert "`sandbox_mode` is `read-only`" in developer_text(before)
    assert "require_escalated" not in developer_text(before)  # approval "never": no escalation to ask for
    assert f"<cwd>{tmp_path / 'work'}</cwd>" in environment_context(before)
    # ... then the turn's: model and reasoning in the request, sandbox and approval in codex's instructions, cwd in
    # the environment context.
    assert (with_options.model, with_options.reasoning_effort, with_options.reasoning_summary) == (
        "mock-two",
        "high",
        "detailed",
    )
    assert "`sandbox_mode` is `workspace-write`" in developer_text(with_options)
    assert "require_escalated" in developer_text(with_options)  # on-request: the model may ask for escalation
    assert f"<cwd>{other}</cwd>" in environment_context(with_options)
    # codex keeps them for the thread's later turns (documented on TurnOptions)
    assert (after.model, after.reasoning_effort) == ("mock-two", "high")


async def test_images_by_data_url_and_local_file_reach_the_model(tmp_path: Path) -> None:
    image = tmp_path / "pixel.png"
    image.write_bytes(PNG)
    with MockModelServer() as model, trio.fail_after(120):
        async with real_runtime(tmp_path, model) as (runtime, _):
            item = ChannelInput("a", "look at these", images=[DATA_URL, image])
            settled = await (await runtime.submit(item)).settled()
            assert settled.outcome == "completed", settled
    request = model.last_request()
    images = request.last_user_images()
    assert len(images) == 2
    assert images[0] == DATA_URL
    # codex reads the local file and sends it as a data URL, announced by its path
    assert images[1].startswith("data:image/png;base64,")
    assert base64.b64decode(images[1].split(",", 1)[1])[:8] == PNG[:8]
    assert f'<image name=[Image #2] path="{image}">' in request.input_texts()
    user = settled.items[0]  # a userMessage: no record of its own, so its content is in raw
    content = user.raw["content"]
    assert user.type == "userMessage" and isinstance(content, list)
    assert [c["type"] for c in content if isinstance(c, dict)] == ["text", "image", "localImage"]


async def test_an_image_by_url_is_fetched_at_submit_and_reaches_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """codex 0.171 refuses remote image URLs on turn/start; submit fetches the image and sends it as a data URL."""
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    with MockModelServer() as model, image_server() as base, trio.fail_after(120):
        async with real_runtime(tmp_path, model) as (runtime, _):
            item = ChannelInput("a", "what is this?", images=[f"{base}/cat.png"])
            settled = await (await runtime.submit(item)).settled()
            assert settled.outcome == "completed", settled
    assert model.last_request().last_user_images() == [DATA_URL]


async def test_a_bad_image_or_option_is_invalid_input_and_nothing_is_recorded(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with MockModelServer() as model, trio.fail_after(120):
        async with SqliteStateStore(db) as store, real_runtime(tmp_path, model, state=store) as (runtime, _):
            missing = tmp_path / "missing.png"
            with pytest.raises(InvalidInput, match="no such image file") as info:
                await runtime.submit(ChannelInput("chat:1", "see", images=[missing]))
            assert info.value.field == "images[0]"
            with image_server() as base, pytest.raises(InvalidInput, match="answered HTTP 404"):
                await runtime.submit(ChannelInput("chat:1", "see", images=[f"{base}/missing.png"]))
            with pytest.raises(InvalidInput, match="does not exist") as info:
                await runtime.submit(ChannelInput("chat:1", "see"), options=TurnOptions(cwd=tmp_path / "nope"))
            assert info.value.field == "options.cwd"
            with pytest.raises(InvalidInput, match="'low'"):
                await runtime.submit(ChannelInput("chat:1", "see"), options=TurnOptions(effort="max"))  # type: ignore[arg-type]
            snapshot = await store.load(runtime.runtime_id)
            assert (snapshot.pending, snapshot.dedup_ids, snapshot.next_seq) == ([], [], 1)
            assert model.requests == []
            # the id stayed unused: the fixed input goes through
            missing.write_bytes(PNG)
            fixed = await runtime.submit(ChannelInput("chat:1", "see", images=[missing]))
            assert fixed.status == "submitted" and fixed.seq == 1
            assert (await fixed.settled()).outcome == "completed"
    assert len(model.last_request().last_user_images()) == 1


async def test_structured_output(tmp_path: Path) -> None:
    options = TurnOptions(output_schema=SCHEMA)
    with MockModelServer() as model, trio.fail_after(120):
        model.enqueue(Text.json({"answer": 42}), Text("The answer is 42."))
        async with real_runtime(tmp_path, model) as (runtime, _):
            good = await (await runtime.submit(ChannelInput("a", "answer as JSON"), options=options)).settled()
            assert (good.outcome, good.output, good.text, good.error) == (
                "completed",
                {"answer": 42},
                '{"answer": 42}',
                None,
            )
            bad = await (await runtime.submit(ChannelInput("b", "answer again"), options=options)).settled()
            assert (bad.outcome, bad.output, bad.text) == ("failed", None, "The answer is 42.")
            assert bad.error is not None and "not valid JSON for the turn's output schema" in bad.error
            plain = await (await runtime.submit(ChannelInput("c", "no schema"))).settled()
            assert (plain.outcome, plain.output) == ("completed", None)
    first, second, third = model.requests
    assert first.output_schema == SCHEMA and second.output_schema == SCHEMA
    assert first.body["text"]["format"]["strict"] is True
    assert third.output_schema is None  # the schema is per turn: codex does not keep it


async def wait_for(predicate: Any, what: str) -> None:
    with trio.fail_after(30):
        while not predicate():
            await trio.sleep(0.05)


async def test_the_steering_rule_with_options(tmp_path: Path) -> None:
    """delivery_mode "steer": an input with the running turn's options joins it; one with other options waits for it
    to end and starts its own turn (with its model); an input without options accepted after it waits behind it."""
    a_options = TurnOptions(model="model-a")
    with MockModelServer() as model, trio.fail_after(120):
        # codex restarts the model request when input is steered in: the second Hang holds the turn after that.
        hang, held = Hang(then=Text("first reply")), Hang(then=Text("first reply"))
        model.enqueue(hang, held)
        async with real_runtime(tmp_path, model, delivery_mode="steer") as (runtime, _):
            first = await runtime.submit(ChannelInput("a", "first"), options=a_options)
            await trio.to_thread.run_sync(hang.wait_started, 30)
            # an image travels on the turn/steer too
            same = await runtime.submit(
                ChannelInput("d", "same options", images=[DATA_URL]), options=TurnOptions(model="model-a")
            )
            await wait_for(lambda: runtime.statistics().queued == 0 and runtime.statistics().in_flight == 2, "steer")
            await trio.to_thread.run_sync(held.wait_started, 30)
            other = await runtime.submit(ChannelInput("b", "other model"), options=TurnOptions(model="model-b"))
            behind = await runtime.submit(ChannelInput("c", "no options"))
            await trio.sleep(0.5)
            stats = runtime.statistics()
            assert (stats.queued, stats.in_flight, len(stats.open_turns)) == (2, 2, 1)  # b waits, c behind it
            hang.release()
            held.release()
            one, two, three, four = [await x.settled() for x in (first, same, other, behind)]
    assert all(s.outcome == "completed" for s in (one, two, three, four)), (one, two, three, four)
    assert one.turn_id == two.turn_id  # steered: same options
    assert three.turn_id not in (None, one.turn_id)  # its own turn
    assert four.turn_id not in (None, one.turn_id)
    steered = request_with(model, "same options")
    assert steered.model == "model-a" and steered.last_user_images() == [DATA_URL]
    other_request = request_with(model, "other model")
    assert other_request.model == "model-b"
    # nothing of b or c reached the model before the first turn ended
    for request in model.requests:
        texts = request.input_texts()
        if "other model" in texts or "no options" in texts:
            assert request.model == "model-b"
            assert "first reply" in texts


async def test_options_and_images_survive_a_restart_with_a_sqlite_store(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    image = tmp_path / "pixel.png"
    image.write_bytes(PNG)
    options = TurnOptions(model="model-after-restart", effort="low")
    with MockModelServer() as model, trio.fail_after(180):
        hang = Hang()
        model.enqueue(hang)
        async with SqliteStateStore(db) as store:
            async with real_runtime(tmp_path, model, state=store, delivery_mode="queue") as (runtime, _):
                await runtime.submit(ChannelInput("a", "hangs"))
                await trio.to_thread.run_sync(hang.wait_started, 30)
                queued = await runtime.submit(ChannelInput("b", "queued with options", images=[image]), options=options)
                assert queued.accepted
                snapshot = await store.load(runtime.runtime_id)
                assert [p.options is not None for p in snapshot.pending] == [False, True]
            assert (await queued.settled()).outcome == "stopped"
        hang.release()
        stored = json.loads(next(p.options for p in (await _load(db)).pending if p.options))
        assert stored["options"]["model"] == "model-after-restart"
        # the next host: the hanging input is reconciled (codex has it), the queued one goes with its options
        async with (
            SqliteStateStore(db) as store,
            real_runtime(tmp_path, model, state=store, delivery_mode="queue") as (runtime, _),
        ):
            await wait_for(lambda: runtime.statistics().queued == 0, "delivered")
            with trio.fail_after(60):
                while not any("queued with options" in r.input_texts() for r in model.requests):
                    await trio.sleep(0.05)
            assert await _wait_settled(store, runtime.runtime_id) == []
    request = request_with(model, "queued with options")
    assert (request.model, request.reasoning_effort) == ("model-after-restart", "low")
    assert len(request.last_user_images()) == 1


async def _load(db: Path) -> Any:
    async with SqliteStateStore(db) as store:
        return await store.load("real")


async def _wait_settled(store: SqliteStateStore, runtime_id: str) -> list[Any]:
    with trio.fail_after(60):
        while True:
            pending = (await store.load(runtime_id)).pending
            if not pending:
                return pending
            await trio.sleep(0.1)


async def test_a_dead_hosts_in_doubt_input_is_sent_again_with_its_options(tmp_path: Path) -> None:
    """A host that died after marking an input in doubt and before sending it: the next host asks codex, which has
    no record of it, and sends it again — with its options and image."""
    db = tmp_path / "state.db"
    image = tmp_path / "pixel.png"
    image.write_bytes(PNG)
    options = TurnOptions(model="model-in-doubt", summary="concise")
    async with SqliteStateStore(db) as store:
        await store.acquire("real")
        payload = encode_payload(options, (ImageInput("local", str(image)),))
        await store.accept(
            "real", [StoredSubmission(1, "a", "channel", "in doubt", time.time(), options=payload)], dedup_window=8
        )
        await store.delivering("real", 1)
        await store.release("real")
    with MockModelServer() as model, trio.fail_after(120):
        async with (
            SqliteStateStore(db) as store,
            real_runtime(tmp_path, model, state=store) as (runtime, _),
        ):
            assert await _wait_settled(store, runtime.runtime_id) == []
            settlement = (await store.recent_settlements(runtime.runtime_id))[-1]
            assert settlement.outcome == "completed"
    request = request_with(model, "in doubt")
    assert (request.model, request.reasoning_summary) == ("model-in-doubt", "concise")
    assert len(request.last_user_images()) == 1
