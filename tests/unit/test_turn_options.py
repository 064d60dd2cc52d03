"""Per-turn options, images and structured output, without codex: the checks at the door, the wire params, the
stored form, the core's steering rule and the parsed output on the settlement."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codex_trio import (
    ChannelInput,
    ConfigError,
    InvalidInput,
    MemoryStateStore,
    StateStoreError,
    TurnOptions,
    _turn_options,
)
from codex_trio._core import AdmitRequest, Answer, RuntimeCore, Send, Settle, Submission, Write, may_steer
from codex_trio._engine import delivery_params
from codex_trio._recovery import load
from codex_trio._state import StoredSubmission
from codex_trio._turn_options import (
    ImageInput,
    check_images,
    check_options,
    decode_payload,
    encode_payload,
    parse_output,
)
from tests.unit.test_core import THREAD, Driver, agent_message, item_params, of, one, settled

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


# == options: the checks ==============================================================================================


@pytest.mark.parametrize(
    ("options", "field", "accepted"),
    [
        (TurnOptions(effort="extreme"), "options.effort", "'none' | 'minimal' | 'low' | 'medium' | 'high' | 'xhigh'"),  # type: ignore[arg-type]
        (TurnOptions(summary="short"), "options.summary", "'auto' | 'concise' | 'detailed' | 'none'"),  # type: ignore[arg-type]
        (TurnOptions(sandbox="readOnly"), "options.sandbox", "'read-only' | 'workspace-write' | 'danger-full-access'"),  # type: ignore[arg-type]
        (TurnOptions(approval_policy="always"), "options.approval_policy", "'untrusted' | 'on-request' | 'never'"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_value_names_the_field_and_what_is_accepted(options: TurnOptions, field: str, accepted: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_options(options)
    assert info.value.field == field
    assert accepted in str(info.value)


@pytest.mark.parametrize("model", ["", "   ", "gpt 5", "x" * 300, 5])
def test_a_bad_model_name_is_refused(model: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        check_options(TurnOptions(model=model))
    assert info.value.field == "options.model"


def test_cwd_must_be_an_existing_directory_and_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidInput, match="does not exist; pass an existing directory") as info:
        check_options(TurnOptions(cwd=tmp_path / "missing"))
    assert info.value.field == "options.cwd"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="is not a directory"):
        check_options(TurnOptions(cwd=tmp_path / "file"))
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    checked = check_options(TurnOptions(cwd="sub", model="m"))
    assert checked == TurnOptions(cwd=str(tmp_path / "sub"), model="m")


def test_an_output_schema_must_be_a_json_object() -> None:
    with pytest.raises(InvalidInput, match="must be a JSON Schema object") as info:
        check_options(TurnOptions(output_schema=["not", "an", "object"]))  # type: ignore[arg-type]
    assert info.value.field == "options.output_schema"
    with pytest.raises(InvalidInput, match="is not JSON"):
        check_options(TurnOptions(output_schema={"default": float("nan")}))
    with pytest.raises(InvalidInput, match="is not JSON"):
        check_options(TurnOptions(output_schema={"x": object()}))


def test_text_that_cannot_travel_is_refused_at_the_door(tmp_path: Path) -> None:
    # A lone surrogate (what an undecodable byte of a path becomes) would break the JSON-RPC frame on the wire.
    bad = "model-\udcff"
    for options, field in [
        (TurnOptions(model=bad), "options.model"),
        (TurnOptions(cwd=str(tmp_path) + "/\udcff"), "options.cwd"),
        (TurnOptions(output_schema={"description": bad}), "options.output_schema"),
    ]:
        with pytest.raises(InvalidInput, match="UTF-8 cannot encode") as info:
            check_options(options)
        assert info.value.field == field
    with pytest.raises(InvalidInput, match="UTF-8 cannot encode") as info:
        check_images([DATA_URL, str(tmp_path / "\udcff.png")])
    assert info.value.field == "images[1]"


def test_the_checked_schema_is_a_copy_made_of_plain_json() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}  # dict[str, object]: type-checks as is
    checked = check_options(TurnOptions(output_schema=schema))
    assert checked is not None and checked.output_schema == schema
    schema["properties"] = {}
    assert checked.output_schema == {"type": "object", "properties": {"a": {"type": "integer"}}}


def test_no_options_and_empty_options_are_the_same() -> None:
    assert check_options(None) is None
    assert check_options(TurnOptions()) is None
    with pytest.raises(InvalidInput, match="options must be a TurnOptions"):
        check_options({"model": "x"})


# == images: the checks ================================================================================================


def test_images_a_data_url_and_a_local_file_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    (tmp_path / "c.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    (tmp_path / "d.webp").write_bytes(b"RIFF\0\0\0\0WEBPVP8 ")
    monkeypatch.chdir(tmp_path)
    assert check_images([DATA_URL, "a.png", str(tmp_path / "b.jpg"), "c.gif", "d.webp"]) == (
        ImageInput("url", DATA_URL),
        ImageInput("local", str(tmp_path / "a.png")),
        ImageInput("local", str(tmp_path / "b.jpg")),
        ImageInput("local", str(tmp_path / "c.gif")),
        ImageInput("local", str(tmp_path / "d.webp")),
    )


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("missing.png", "no such image file"),
        ("dir", "is a directory, not an image file"),
        ("notes.txt", "is not a PNG, JPEG, GIF or WebP image"),
        ("data:text/plain;base64,aGk=", "is not a data:image/"),
        ("data:image/png;base64,***", "not valid base64"),
        ("data:image/png,rawbytes", "is not a data:image/"),
        ("", "must be a URL or a path"),
    ],
)
def test_a_bad_image_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image: str, message: str
) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput, match=message) as info:
        check_images([DATA_URL, image])
    assert info.value.field == "images[1]"


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    """/cat.png: a PNG; /slow.png: a PNG after a pause; /notes.txt: text; anything else: 404."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/slow.png":
            time.sleep(2)
        body = PNG if self.path in ("/cat.png", "/slow.png") else b"just text" if self.path == "/notes.txt" else None
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png" if body is PNG else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_image_by_url_is_fetched_at_submit_and_travels_as_a_data_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    with image_server() as base:
        (image,) = check_images([f"{base}/cat.png"])
    assert image == ImageInput("url", DATA_URL)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/missing.png", "answered HTTP 404"),
        ("/notes.txt", "is not a PNG, JPEG, GIF or WebP image"),
    ],
)
def test_an_image_url_that_gives_no_image_is_refused(monkeypatch: pytest.MonkeyPatch, path: str, message: str) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    with image_server() as base, pytest.raises(InvalidInput, match=message) as info:
        check_images([DATA_URL, f"{base}{path}"])
    assert info.value.field == "images[1]"


def test_an_image_url_that_cannot_be_fetched_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(InvalidInput, match=r"cannot fetch .* check the URL and the network"):
        check_images([f"http://127.0.0.1:{closed}/cat.png"])
    monkeypatch.setattr(_turn_options, "IMAGE_FETCH_TIMEOUT", 0.5)
    with image_server() as base, pytest.raises(InvalidInput, match="cannot fetch"):
        check_images([f"{base}/slow.png"])
    monkeypatch.setattr(_turn_options, "MAX_IMAGE_BYTES", len(PNG) - 1)
    with image_server() as base, pytest.raises(InvalidInput, match="larger than"):
        check_images([f"{base}/cat.png"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    path.write_bytes(PNG)
    path.chmod(0)
    with pytest.raises(InvalidInput, match="cannot read image file"):
        check_images([str(path)])


def test_too_many_images_are_refused() -> None:
    with pytest.raises(InvalidInput, match="at most 16 per input"):
        check_images([DATA_URL] * 17)


def test_channel_input_takes_paths_and_refuses_a_single_string(tmp_path: Path) -> None:
    assert ChannelInput("a", "hi", images=[tmp_path / "x.png", DATA_URL]).images == (str(tmp_path / "x.png"), DATA_URL)
    assert ChannelInput("a", "hi").images == ()
    with pytest.raises(ConfigError, match="must be a list of URLs or paths"):
        ChannelInput("a", "hi", images=DATA_URL)  # a str is an iterable of str: refused all the same
    with pytest.raises(ConfigError, match=r"images\[0\] must be a URL or a path"):
        ChannelInput("a", "hi", images=[3])  # type: ignore[list-item]


# == the wire and the store ===========================================================================================


def send(method: str, options: TurnOptions | None, images: tuple[ImageInput, ...] = ()) -> Send:
    sub = Submission(7, "src", "channel", "hello", options=options, images=images)
    return Send(1, 1, method, sub, THREAD, "t1" if method == "turn/steer" else None)  # type: ignore[arg-type]


def test_turn_start_carries_the_options_with_codex_wire_names() -> None:
    options = TurnOptions(
        model="gpt-x",
        effort="high",
        summary="detailed",
        sandbox="workspace-write",
        approval_policy="on-request",
        cwd="/w",
        output_schema=SCHEMA,
    )
    images = (ImageInput("url", DATA_URL), ImageInput("local", "/tmp/a.png"))
    assert delivery_params(send("turn/start", options, images)) == {
        "threadId": THREAD,
        "input": [
            {"type": "text", "text": "hello", "text_elements": []},
            {"type": "image", "url": DATA_URL},
            {"type": "localImage", "path": "/tmp/a.png"},
        ],
        "clientUserMessageId": "src",
        "cwd": "/w",
        "model": "gpt-x",
        "effort": "high",
        "summary": "detailed",
        "approvalPolicy": "on-request",
        "sandboxPolicy": {"type": "workspaceWrite"},
        "outputSchema": SCHEMA,
    }
    for name, wire in [("read-only", "readOnly"), ("danger-full-access", "dangerFullAccess")]:
        params = delivery_params(send("turn/start", TurnOptions(sandbox=name)))  # type: ignore[arg-type]
        assert params["sandboxPolicy"] == {"type": wire}


def test_a_steer_carries_images_but_never_options() -> None:
    params = delivery_params(send("turn/steer", TurnOptions(model="m"), (ImageInput("local", "/a.png"),)))
    assert params == {
        "threadId": THREAD,
        "expectedTurnId": "t1",
        "input": [{"type": "text", "text": "hello", "text_elements": []}, {"type": "localImage", "path": "/a.png"}],
        "clientUserMessageId": "src",
    }
    assert set(delivery_params(send("turn/start", None))) == {"threadId", "input", "clientUserMessageId"}


def test_options_and_images_round_trip_through_their_stored_form() -> None:
    options = TurnOptions(model="m", effort="low", sandbox="read-only", cwd="/w", output_schema=SCHEMA)
    images = (ImageInput("url", DATA_URL), ImageInput("local", "/a.png"))
    assert decode_payload(encode_payload(options, images)) == (options, images)
    assert decode_payload(encode_payload(None, images)) == (None, images)
    assert decode_payload(encode_payload(options, ())) == (options, ())
    assert encode_payload(None, ()) is None and decode_payload(None) == (None, ())
    with pytest.raises(ValueError, match="not a JSON object"):
        decode_payload("[1]")
    with pytest.raises(ValueError, match="not \\[kind, value\\]"):
        decode_payload('{"images": [["ftp", "x"]]}')


# == structured output ===============================================================================================


def test_parse_output() -> None:
    assert parse_output('{"answer": 42}') == ({"answer": 42}, None)
    assert parse_output("[1, 2]") == ([1, 2], None)
    value, error = parse_output("The answer is 42")
    assert value is None and error is not None and "not valid JSON" in error and "The answer is 42" in error
    assert parse_output("NaN")[1] is not None
    assert "without a final message" in (parse_output(None)[1] or "")


# == the core: the steering rule and the output =====================================================================

A = TurnOptions(model="model-a")
B = TurnOptions(model="model-b")


def accept(d: Driver, source_id: str, options: TurnOptions | None) -> tuple[Any, list[Any]]:
    request = AdmitRequest(source_id, "channel", source_id, options=options)
    d.core.request(request)
    actions = d.take()
    for write in of(actions, Write):
        assert [s.options for s in write.submissions] == [options]
        d.core.written(write.batch)
        actions += d.take()
    answer = one([a for a in of(actions, Answer) if a.request is request], Answer)
    assert answer.submission is not None
    return answer.submission, actions


def test_may_steer() -> None:
    assert may_steer(None, None) and may_steer(None, A)
    assert may_steer(A, TurnOptions(model="model-a"))
    assert not may_steer(A, None) and not may_steer(A, B)


def test_an_input_with_the_running_turns_options_steers_into_it() -> None:
    d = Driver()
    d.up()
    _, actions = accept(d, "a", A)
    d.answer(one(actions, Send), "t1")
    b, actions = accept(d, "b", TurnOptions(model="model-a"))
    steer = one(actions, Send)
    assert (steer.method, steer.expected_turn_id, steer.submission) == ("turn/steer", "t1", b)
    d.answer(steer, "t1")
    _, actions = accept(d, "c", None)  # sets nothing: joins whatever runs
    assert one(actions, Send).method == "turn/steer"


def test_an_input_with_other_options_waits_for_the_turn_and_starts_its_own_and_fifo_holds() -> None:
    d = Driver()
    d.up()
    _, actions = accept(d, "a", A)
    d.answer(one(actions, Send), "t1")
    b, actions = accept(d, "b", B)
    assert of(actions, Send) == []  # t1 runs model-a: b cannot join it
    c, actions = accept(d, "c", None)
    assert of(actions, Send) == []  # c could steer into t1, but it was accepted after b: it waits behind it
    assert [s.seq for s in d.core.queued()] == [b.seq, c.seq]
    actions = d.completed("t1")
    start = one(actions, Send)
    assert (start.method, start.submission) == ("turn/start", b)
    actions = d.answer(start, "t2")
    steer = one(actions, Send)
    assert (steer.method, steer.expected_turn_id, steer.submission) == ("turn/steer", "t2", c)


def test_options_wait_for_a_turn_nobody_here_started_too() -> None:
    d = Driver()
    d.up()
    d.started("foreign")
    _, actions = accept(d, "a", A)
    assert of(actions, Send) == []
    _, actions = accept(d, "b", None)
    assert of(actions, Send) == []  # behind a
    assert one(d.completed("foreign"), Send).method == "turn/start"


def test_queue_mode_is_unchanged_by_options() -> None:
    d = Driver(delivery_mode="queue")
    d.up()
    _, actions = accept(d, "a", A)
    d.answer(one(actions, Send), "t1")
    b, actions = accept(d, "b", A)
    assert of(actions, Send) == []
    assert one(d.completed("t1"), Send).submission is b


def test_restored_input_keeps_its_options_and_images() -> None:
    image = (ImageInput("local", "/a.png"),)
    core = RuntimeCore(
        pending=[(2, "b", "channel", "two", A, image), (3, "c", "channel", "three")],
        in_doubt=[(1, "a", "channel", "one", False, B, ())],
    )
    assert [(s.options, s.images) for s in core.queued()] == [(A, image), (None, ())]
    assert [(s.options, s.images) for s in core.in_doubt()] == [(B, ())]


def schema_turn(text: str) -> list[Any]:
    d = Driver()
    d.up()
    _, actions = accept(d, "a", TurnOptions(output_schema=SCHEMA))
    d.answer(one(actions, Send), "t1")
    d.notify("item/completed", item_params("t1", agent_message(text)))
    return d.completed("t1")


def test_a_json_final_message_settles_completed_with_the_parsed_output() -> None:
    (settlement,) = settled(schema_turn('{"answer": 42}'))
    assert (settlement.outcome, settlement.output, settlement.text) == ("completed", {"answer": 42}, '{"answer": 42}')
    assert settlement.error is None


def test_a_final_message_that_is_not_json_settles_failed_keeping_the_text() -> None:
    actions = schema_turn("The answer is 42.")
    (settlement,) = settled(actions)
    assert (settlement.outcome, settlement.output, settlement.text) == ("failed", None, "The answer is 42.")
    assert settlement.error is not None and "not valid JSON for the turn's output schema" in settlement.error
    assert one(actions, Settle).persist


def test_without_a_schema_there_is_no_output_and_a_failed_turn_stays_failed() -> None:
    d = Driver()
    d.up()
    _, actions = accept(d, "a", A)
    d.answer(one(actions, Send), "t1")
    d.notify("item/completed", item_params("t1", agent_message('{"answer": 42}')))
    (settlement,) = settled(d.completed("t1"))
    assert (settlement.outcome, settlement.output) == ("completed", None)
    d2 = Driver()
    d2.up()
    _, actions = accept(d2, "a", TurnOptions(output_schema=SCHEMA))
    d2.answer(one(actions, Send), "t1")
    (failed,) = settled(d2.completed("t1", "failed", error="model down"))
    assert (failed.outcome, failed.error, failed.output) == ("failed", "model down", None)


# == recovery: what a restarted host reads back =======================================================================


async def test_load_gives_the_core_each_inputs_options_and_images() -> None:
    store = MemoryStateStore()
    await store.acquire("rt")
    options = TurnOptions(model="m", effort="low")
    images = (ImageInput("local", "/a.png"),)
    rows = [
        StoredSubmission(1, "a", "channel", "one", 1.0, options=encode_payload(options, images)),
        StoredSubmission(2, "b", "channel", "two", 1.0),
    ]
    await store.accept("rt", rows, dedup_window=8)
    await store.delivering("rt", 1)
    restored = await load(store, "rt")
    assert restored.in_doubt == ((1, "a", "channel", "one", False, options, images),)
    assert restored.pending == ((2, "b", "channel", "two", None, ()),)
    core = RuntimeCore(pending=restored.pending, in_doubt=restored.in_doubt)
    assert [(s.options, s.images) for s in core.in_doubt()] == [(options, images)]


async def test_options_this_version_cannot_read_stop_the_load() -> None:
    store = MemoryStateStore()
    await store.acquire("rt")
    await store.accept("rt", [StoredSubmission(1, "a", "channel", "one", 1.0, options="[1]")], dedup_window=8)
    with pytest.raises(StateStoreError, match="stored options of input 1 cannot be read"):
        await load(store, "rt")
