"""Each example runs in the test suite (on the real codex binary with the scripted model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

import embed_in_trio_app
import multi_runtime_host

pytestmark = pytest.mark.real_codex


async def test_embed_in_trio_app(tmp_path: Path, codex_bin: str) -> None:
    with trio.fail_after(60):
        deltas = await embed_in_trio_app.main(tmp_path, codex_bin)
    assert "".join(deltas) == "Hi! I am the agent."


async def test_multi_runtime_host(tmp_path: Path, codex_bin: str) -> None:
    with trio.fail_after(90):
        records = await multi_runtime_host.main(tmp_path, codex_bin)
    assert records == {"alpha": "stopped", "beta": "stopped", "gamma": "stopped"}
