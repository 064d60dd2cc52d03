"""The typed-events example runs (its types are checked by ``./dev lint`` with ``--disallow-any-expr``)."""

from __future__ import annotations

from pathlib import Path

import trio
import typed_events


async def test_typed_events(tmp_path: Path, codex_bin: str) -> None:
    with trio.fail_after(90):
        lines = await typed_events.main(tmp_path, codex_bin)
    assert lines[0] == "runtime usage: 61 tokens"  # 42 + 7 for the command's model call, 10 + 2 for the answer's
    # The hub existed before the runtime: its first start is in the stream.
    assert lines[1:4] == ["[typed] declared -> starting", lines[2], "[typed] starting -> ready"]
    assert lines[2].startswith("[typed] thread ") and lines[2].endswith(" started")
    assert "[typed] reasoned: Let me look" in lines
    assert any(
        line.startswith("[typed] ran ") and "echo hi" in line and "(completed, exit 0)" in line for line in lines
    )
    assert "[typed] said 'Done.'" in lines
    assert lines[-1] == "chat:1 completed: 'Done.' (1 command(s), 61 tokens)"
