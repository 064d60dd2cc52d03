"""Small helpers shared by the Trio drivers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import trio

from ._errors import CodexTrioError

__all__ = ["NoPublicConstructor", "best_effort_write", "collapse_exception_groups", "leaf_exceptions", "masked_env"]

_state_log = logging.getLogger("codex_trio.runtime")


async def best_effort_write(runtime_id: str, what: str, write: Callable[..., Awaitable[None]], *args: Any) -> None:
    """A bookkeeping write that must finish even under cancellation and must not take the session down."""
    with trio.CancelScope(shield=True):
        try:
            await write(*args)
        except Exception as exc:
            _state_log.warning("[%s] failed to %s %r: %r", runtime_id, what, args[1:], exc)


class NoPublicConstructor(type):
    """Metaclass for objects only the library creates (trio's own pattern): ``Cls(...)`` raises ``TypeError``;
    the library calls ``Cls._create(...)``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor; use open_runtime()")

    def _create(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs)


def masked_env(env: Mapping[str, str]) -> str:
    """An environment for repr(): the names, never the values (they are often API keys)."""
    return "{" + ", ".join(f"{key!r}: '***'" for key in env) + "}"


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """Every non-group exception inside ``exc`` (depth first), or ``[exc]`` when it is not a group."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for inner in exc.exceptions:
            leaves.extend(leaf_exceptions(inner))
        return leaves
    return [exc]


def _pick(leaves: list[BaseException]) -> BaseException:
    # Cancelled must keep propagating as itself so the caller's cancel scope can catch it; after that, the
    # library's own errors say more than a generic one that followed from them.
    meaningful = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if not meaningful:
        return leaves[0]
    for exc in meaningful:
        if isinstance(exc, CodexTrioError):
            return exc
    for exc in meaningful:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return exc
    return meaningful[0]


@contextmanager
def collapse_exception_groups() -> Iterator[None]:
    """Turn an ExceptionGroup raised by internal nurseries into the one exception that explains it.

    Public context managers use this so users never have to write ``except*`` around codex_trio (the same
    promise trio-websocket's ``open_websocket`` makes). The original group stays reachable as ``__context__``.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = leaf_exceptions(group)
        chosen = _pick(leaves)
        if isinstance(chosen, trio.Cancelled) and len(leaves) == len(
            [e for e in leaves if isinstance(e, trio.Cancelled)]
        ):
            raise chosen from None
        raise chosen from group
