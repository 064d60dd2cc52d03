"""The README's quickstart, as a new user runs it: twice in a row in a fresh directory, on the real codex binary.

The code is read out of README.md (the first ``python`` block under "## Quickstart"), so README and test cannot
drift. codex is pointed at the mock model through the environment the quickstart inherits (``CODEX_HOME``,
``CODEX_TRIO_CODEX_BIN``), as a user's own configuration would: the script itself is run unchanged. The second run
finds ``chat:42`` in ``agent.db`` and must say ``duplicate`` and exit 0, without a second request to the model.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from codex_trio.testing._mock_model import MockModelServer, Text, write_codex_home
from codex_trio.testing._real_codex import require_codex_bin
from codex_trio.testing.pytest_plugin import short_dir

pytestmark = pytest.mark.real_codex

README = Path(__file__).resolve().parents[2] / "README.md"
TIMEOUT = 120


def quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quickstart") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README.md has no python block under '## Quickstart'"
    return match[1]


def test_the_readme_quickstart_runs_twice_in_a_fresh_directory(tmp_path: Path) -> None:
    codex_bin = require_codex_bin()
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart(), encoding="utf-8")
    with MockModelServer() as model, short_dir("rt") as runtime_dir:
        model.enqueue(Text("Hello from the quickstart"))
        env = {
            **os.environ,
            "CODEX_TRIO_CODEX_BIN": codex_bin,
            "CODEX_HOME": str(write_codex_home(tmp_path / "codex-home", model.url)),
            "XDG_STATE_HOME": str(tmp_path / "state"),  # logs and spill files: never the user's
            "XDG_RUNTIME_DIR": str(runtime_dir),  # the socket directory
        }

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, str(script)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )

        first = run()
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == ["submitted", "completed Hello from the quickstart"]
        assert (tmp_path / "agent.db").exists()
        requests = len(model.requests)
        assert any("hello" in text for text in model.last_request().input_texts())  # the message reached the model

        second = run()
        assert second.returncode == 0, second.stderr
        assert second.stdout.splitlines() == ["duplicate", "not sent: duplicate"]
        assert len(model.requests) == requests  # the duplicate never reached codex
