"""``codex-trio send``/``chat`` with ``--model``, ``--effort`` and ``--image`` on the real codex binary: what the
mock model receives, and a bad value refused before codex starts (exit status 2, nothing sent)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from codex_trio.testing._mock_model import MockModelServer, Text, write_codex_home
from tests.real.test_fail_fast_real import cli as fail_fast_cli
from tests.unit.test_turn_options import PNG

pytestmark = pytest.mark.real_codex


def cli(tmp_path: Path, home: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return fail_fast_cli(tmp_path, *argv, "--db", str(tmp_path / "cli.db"), stdin=stdin, CODEX_HOME=str(home))


def test_send_with_model_effort_and_an_image_reaches_the_model(tmp_path: Path) -> None:
    image = tmp_path / "pixel.png"
    image.write_bytes(PNG)
    with MockModelServer() as model:
        model.enqueue(Text("seen it"))
        home = write_codex_home(tmp_path / "home", model.url)
        done = cli(
            tmp_path,
            home,
            "send",
            "what is this?",
            "--model",
            "gpt-test-model",
            "--effort",
            "high",
            "--image",
            str(image),
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "seen it"
        request = model.requests[-1]
        assert request.model == "gpt-test-model"
        assert request.reasoning_effort == "high"
        assert "what is this?" in " ".join(request.input_texts())
        images = request.last_user_images()
        assert len(images) == 1 and images[0].startswith("data:image/png;base64,")


def test_chat_with_a_model_uses_it_for_every_turn(tmp_path: Path) -> None:
    with MockModelServer() as model:
        model.enqueue(Text("one"), Text("two"))
        home = write_codex_home(tmp_path / "home", model.url)
        done = cli(tmp_path, home, "chat", "--model", "gpt-chat-model", stdin="first\nsecond\n")
        assert done.returncode == 0, done.stderr
        assert [r.model for r in model.requests] == ["gpt-chat-model", "gpt-chat-model"]


def test_a_missing_image_is_refused_before_codex_starts(tmp_path: Path) -> None:
    with MockModelServer() as model:
        home = write_codex_home(tmp_path / "home", model.url)
        done = cli(tmp_path, home, "send", "hi", "--image", str(tmp_path / "missing.png"))
        assert done.returncode == 2, done.stderr
        assert "--image" in done.stderr and "missing.png" in done.stderr
        assert "starting codex" not in done.stderr
        assert model.requests == []
