"""What a session does between the handshake and the first turn: skill roots, then start or resume the thread.

Pure protocol steps over a :class:`Connection`; the runtime records the outcome (state store, events).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs

from . import _protocol as p
from ._config import RuntimeConfig, SkillSource
from ._connection import Connection
from ._errors import MethodNotSupported, RpcError

__all__ = ["ThreadResolution", "apply_skill_roots", "resolve_thread", "skill_roots", "start_thread"]

log = logging.getLogger("codex_trio.threads")


def skill_roots(sources: Sequence[SkillSource]) -> list[str]:
    """Unique parent directories (first-occurrence order) of the ``skill-dir`` sources."""
    roots: list[str] = []
    for source in sources:
        if source.layout == "skill-dir":
            root = str(source.path.parent)
            if root not in roots:
                roots.append(root)
    return roots


async def apply_skill_roots(connection: Connection, config: RuntimeConfig) -> None:
    """``skills/extraRoots/set``, every generation. Fails open (a warning) only when the method is unsupported."""
    roots = skill_roots(config.skill_sources)
    if not roots:
        return
    try:
        await connection.request("skills/extraRoots/set", p.unstructure(p.SkillsExtraRootsSetParams(roots)))
    except MethodNotSupported:
        log.warning(
            "[%s] skills/extraRoots/set unsupported by this app-server; continuing skill-blind "
            "(%d extra root(s) not applied)",
            config.runtime_id,
            len(roots),
        )
        return
    log.info("[%s] applied %d skill extra root(s): %s", config.runtime_id, len(roots), ", ".join(roots))


async def start_thread(connection: Connection, config: RuntimeConfig) -> str:
    """``thread/start``, then name the thread so codex records it at once (see below). Returns its id."""
    cwd = str(config.cwd) if config.cwd is not None else None
    raw = await connection.request(
        "thread/start",
        p.unstructure(p.ThreadStartParams(config.base_instructions, config.developer_instructions, cwd)),
    )
    thread_id = p.structure(raw, p.ThreadStartResult).thread_id
    # codex 0.169 writes a thread's rollout only when something is recorded in it; a thread that never ran a turn
    # cannot be resumed after a restart ("no rollout found") and would be lost needlessly. Naming the thread
    # records it without putting anything into the model's context (inject_items would).
    try:
        await connection.request("thread/name/set", {"threadId": thread_id, "name": f"codex_trio:{config.runtime_id}"})
    except RpcError as exc:
        log.warning("[%s] could not persist new thread %s early: %s", config.runtime_id, thread_id, exc)
    return thread_id


@attrs.frozen
class ThreadResolution:
    thread_id: str
    resumed: bool
    #: set when ``thread/resume`` of ``lost_thread_id`` failed and a fresh thread was started instead
    lost_thread_id: str | None = None
    lost_reason: str | None = None


async def resolve_thread(connection: Connection, config: RuntimeConfig, existing: str | None) -> ThreadResolution:
    """Resume ``existing`` or start a fresh thread; a failed resume falls back to a fresh thread (and says so)."""
    if existing is None:
        return ThreadResolution(await start_thread(connection, config), resumed=False)
    cwd = str(config.cwd) if config.cwd is not None else None
    params = p.ThreadResumeParams(existing, config.base_instructions, config.developer_instructions, cwd)
    try:
        await connection.request("thread/resume", p.unstructure(params))
    except RpcError as exc:
        reason = f"thread/resume failed: {exc.rpc_message}"
        log.warning("[%s] %s for %s; starting a fresh thread", config.runtime_id, reason, existing)
        new_id = await start_thread(connection, config)
        return ThreadResolution(new_id, resumed=False, lost_thread_id=existing, lost_reason=reason)
    return ThreadResolution(existing, resumed=True)
