"""Issue-5 behaviour on the real codex 0.169 with the mock model: teammate completions (inline and spilled)
reaching the model, and a command approval declined by the default policy through the runtime."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio

import codex_trio
from codex_trio import ChannelInput, CommandExecutionItem, Completion, RuntimeConfig, ServerRequestAnswered
from codex_trio.testing import ExecCommand, MockModelServer, Text, write_codex_home

pytestmark = pytest.mark.real_codex


def config(
    tmp_path: Path, socket_dir: Path, codex_bin: str, home: Path, *, runtime_id: str = "i5", **extra: object
) -> RuntimeConfig:
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    return RuntimeConfig(
        runtime_id=runtime_id,
        codex_bin=codex_bin,
        codex_home=home,
        cwd=tmp_path / "work",
        sandbox_mode="read-only",
        socket_dir=socket_dir,
        log_dir=tmp_path / "logs",
        spill_dir=tmp_path / "spill",
        **extra,  # type: ignore[arg-type]
    )


async def test_completion_inline_and_spilled_reach_the_model(
    tmp_path: Path, short_socket_dir: Path, codex_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASK_MAX_OUTPUT_LENGTH", "200")
    with MockModelServer() as model, trio.fail_after(60):
        home = write_codex_home(tmp_path / "home", model.url)
        async with codex_trio.open_runtime(config(tmp_path, short_socket_dir, codex_bin, home)) as runtime:
            small = Completion("job-1", "researcher", "completed", "found 3 papers")
            assert (await runtime.completion_input(small)).status == "accepted"
            assert (await runtime.completion_input(small)).status == "accepted"  # idempotent: no second inject
            big = Completion("job-2", "builder", "failed", "x" * 5000)
            assert (await runtime.completion_input(big)).status == "accepted"
            with trio.fail_after(30):
                while len(model.requests) < 2:
                    await trio.sleep(0.05)
            # let both trigger turns finish
            while runtime.statistics().in_flight or runtime.statistics().queued:
                await trio.sleep(0.05)
    texts = [t for r in model.requests for t in r.input_texts()]
    inline = [t for t in texts if 'id="job-1"' in t]
    assert inline and "found 3 papers" in inline[0]
    assert sum(1 for r in model.requests[-1:] for t in r.input_texts() if 'id="job-1"' in t) == 1
    spilled = [t for t in texts if 'id="job-2"' in t]
    assert spilled and "saved to a file" in spilled[0]
    spill_file = tmp_path / "spill" / "i5" / "teammate-builder-job-2.output"
    assert spill_file.read_text() == "x" * 5000
    assert stat.S_IMODE(spill_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(spill_file.parent.stat().st_mode) == 0o700
    assert str(spill_file) in spilled[0]


async def test_command_approval_declined_by_default_through_the_runtime(
    tmp_path: Path, short_socket_dir: Path, codex_bin: str
) -> None:
    marker = tmp_path / "approved-marker.txt"
    with MockModelServer() as model, trio.fail_after(60):
        model.enqueue(
            ExecCommand(f"touch {marker}", sandbox_permissions="require_escalated", justification="test"),
            Text("ok, not done"),
        )
        home = write_codex_home(tmp_path / "home", model.url, approval_policy="on-request")
        cfg = config(tmp_path, short_socket_dir, codex_bin, home, approval_policy="on-request")
        async with codex_trio.open_runtime(cfg) as runtime, runtime.events() as events:
            settled = await (await runtime.submit(ChannelInput("a", "touch it"))).settled()
            while not isinstance(event := await events.receive(), ServerRequestAnswered):
                pass
    assert settled.outcome == "completed" and settled.text == "ok, not done"
    assert event.method == "item/commandExecution/requestApproval" and event.rejected
    assert not marker.exists()
    declined = [i for i in settled.items if isinstance(i, CommandExecutionItem)]
    assert declined and declined[-1].status == "declined"
