"""A host running several runtimes on one SQLite state store, then reading their state back.

./dev setup && .venv/bin/python examples/multi_runtime_host.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

import codex_trio
from codex_trio.testing import MockModelServer, require_codex_bin, write_codex_home


async def run_one(runtime_id: str, config: codex_trio.RuntimeConfig, store: codex_trio.StateStore) -> str | None:
    async with codex_trio.open_runtime(config, state=store) as runtime:
        admission = await runtime.submit(codex_trio.ChannelInput(f"{runtime_id}:1", f"hello from {runtime_id}"))
        return (await admission.settled()).text


async def main(workdir: Path, codex_bin: str) -> dict[str, str]:
    results: dict[str, str | None] = {}
    with MockModelServer() as model:
        home = write_codex_home(workdir / "codex-home", model.url)
        store = codex_trio.SqliteStateStore(workdir / "host.db")
        async with trio.open_nursery() as nursery:
            for name in ("alpha", "beta", "gamma"):
                (workdir / name).mkdir(parents=True, exist_ok=True)
                config = codex_trio.RuntimeConfig(
                    runtime_id=name,
                    codex_bin=codex_bin,
                    codex_home=home,
                    cwd=workdir / name,
                    sandbox_mode="read-only",
                    state_dir=workdir / "state",
                )

                async def one(name: str = name, config: codex_trio.RuntimeConfig = config) -> None:
                    results[name] = await run_one(name, config, store)

                nursery.start_soon(one)
        records: dict[str, str] = {r.runtime_id: r.status for r in await store.list_runtimes()}
        await store.aclose()
    for name, text in sorted(results.items()):
        print(f"{name}: {records[name]} — last reply {text!r}")
    return records


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp), require_codex_bin())
