"""Embed a codex runtime in a Trio application (here on the real codex, offline, with the scripted model).

./dev setup && .venv/bin/python examples/embed_in_trio_app.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

import codex_trio
from codex_trio.testing import MockModelServer, Text, require_codex_bin, write_codex_home


async def main(workdir: Path, codex_bin: str) -> list[str]:
    printed: list[str] = []
    with MockModelServer() as model:
        model.enqueue(Text("Hi! I am the agent.", deltas=5))
        (workdir / "work").mkdir(parents=True, exist_ok=True)
        config = codex_trio.RuntimeConfig(
            runtime_id="embedded",
            codex_bin=codex_bin,
            codex_home=write_codex_home(workdir / "codex-home", model.url),
            cwd=workdir / "work",
            sandbox_mode="read-only",
            state_dir=workdir / "state",
        )
        async with codex_trio.open_runtime(config) as runtime, runtime.events() as events:
            # Subscribed before submitting, and read up to this input's settlement: the runtime publishes events
            # in order, so every delta of its turn comes before it (cancelling a reader when settled() returns
            # could cut off deltas it has not printed yet).
            admission = await runtime.submit(codex_trio.ChannelInput("chat:1", "hello"))
            async for event in events:
                if isinstance(event, codex_trio.AgentMessageDelta):
                    printed.append(event.delta)
                    print(event.delta, end="", flush=True)
                elif isinstance(event, codex_trio.SubmissionSettled) and event.settlement.seq == admission.seq:
                    settlement = event.settlement
                    print(f"\n[{settlement.outcome}] {settlement.text}")
                    break
    return printed


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp), require_codex_bin())
