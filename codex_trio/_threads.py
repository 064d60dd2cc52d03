"""Thread protocol steps over a :class:`Connection`: what a session does between the handshake and the first turn
(skill roots, then start or resume the thread), and the thread operations an application asks for (list, fork,
archive, compact). The runtime records the outcomes (state store, events) and orders them among the inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from . import _protocol as p
from ._config import RuntimeConfig, SkillSource
from ._connection import Connection
from ._errors import MethodNotSupported, ProtocolError, RpcError
from ._json import JsonObject

__all__ = [
    "ThreadInfo",
    "ThreadPage",
    "ThreadResolution",
    "apply_skill_roots",
    "archive_thread",
    "compact_thread",
    "fork_thread",
    "list_threads",
    "resolve_thread",
    "skill_roots",
    "start_thread",
]

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
    thread_id = _thread_id_of("thread/start", raw)
    await _record_early(connection, config, thread_id)
    return thread_id


def _thread_id_of(method: str, raw: Any) -> str:
    try:
        return p.structure(raw, p.ThreadStartResult).thread_id
    except Exception as exc:
        raise ProtocolError(f"{method} answered without a thread id: {raw!r:.200}") from exc


async def _record_early(connection: Connection, config: RuntimeConfig, thread_id: str) -> None:
    # codex 0.169 writes a thread's rollout only when something is recorded in it; a thread that never ran a turn
    # cannot be resumed after a restart ("no rollout found") and would be lost needlessly. Naming the thread
    # records it without putting anything into the model's context (inject_items would).
    try:
        await connection.request("thread/name/set", {"threadId": thread_id, "name": f"codex_trio:{config.runtime_id}"})
    except RpcError as exc:
        log.warning("[%s] could not persist new thread %s early: %s", config.runtime_id, thread_id, exc)


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


# -- the thread operations an application asks for ------------------------------------------------------------


@attrs.frozen
class ThreadInfo:
    """One thread as ``thread/list`` describes it. ``raw`` keeps every field codex sent."""

    id: str
    name: str | None
    preview: str
    created_at: int | None
    updated_at: int | None
    cwd: str | None
    forked_from: str | None
    raw: JsonObject = attrs.field(repr=False)


@attrs.frozen
class ThreadPage:
    """A page of :meth:`Runtime.list_threads`; pass ``next_cursor`` as ``cursor`` for the next (None: the last)."""

    threads: tuple[ThreadInfo, ...]
    next_cursor: str | None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _thread_info(raw: Mapping[str, Any]) -> ThreadInfo | None:
    thread_id = raw.get("id")
    if not isinstance(thread_id, str):
        return None
    return ThreadInfo(
        id=thread_id,
        name=_str(raw.get("name")),
        preview=_str(raw.get("preview")) or "",
        created_at=_int(raw.get("createdAt")),
        updated_at=_int(raw.get("updatedAt")),
        cwd=_str(raw.get("cwd")),
        forked_from=_str(raw.get("forkedFromId")),
        raw=dict(raw),
    )


async def list_threads(
    connection: Connection, *, limit: int | None, cursor: str | None, archived: bool, search: str | None
) -> ThreadPage:
    """``thread/list``: codex's threads, newest first (all source kinds: the runtime's own threads are started
    over the app-server, which codex does not count as "interactive", its default filter)."""
    params: dict[str, Any] = {"archived": archived, "sourceKinds": []}
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    if search is not None:
        params["searchTerm"] = search
    raw = await connection.request("thread/list", params)
    data = raw.get("data") if isinstance(raw, Mapping) else None
    if not isinstance(data, list):
        raise ProtocolError(f"thread/list answered without a data list: {raw!r:.200}")
    threads = tuple(info for item in data if isinstance(item, Mapping) and (info := _thread_info(item)) is not None)
    return ThreadPage(threads, _str(raw.get("nextCursor")))


async def fork_thread(connection: Connection, config: RuntimeConfig, thread_id: str) -> str:
    """``thread/fork`` of ``thread_id`` (its whole history); returns the new thread's id, recorded at once."""
    cwd = str(config.cwd) if config.cwd is not None else None
    params: dict[str, Any] = {"threadId": thread_id}
    if cwd is not None:
        params["cwd"] = cwd
    forked = _thread_id_of("thread/fork", await connection.request("thread/fork", params))
    await _record_early(connection, config, forked)
    return forked


async def archive_thread(connection: Connection, thread_id: str) -> None:
    """``thread/archive``: codex moves the thread's rollout to its archive (``list_threads(archived=True)``)."""
    await connection.request("thread/archive", {"threadId": thread_id})


async def compact_thread(connection: Connection, thread_id: str) -> None:
    """``thread/compact/start``: codex summarises the history in a turn of its own (turn/started ... completed)."""
    await connection.request("thread/compact/start", {"threadId": thread_id})
