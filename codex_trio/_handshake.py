"""The ``initialize`` / ``initialized`` handshake."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from . import _protocol as p
from ._connection import Connection
from ._errors import HandshakeTimeout, ProtocolError, RequestTimeout

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "client_info", "initialize"]

DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0


def client_info(name: str = "codex_trio") -> p.ClientInfo:
    from . import __version__

    return p.ClientInfo(name=name, version=__version__, title="codex_trio (Python/Trio)")


async def initialize(
    connection: Connection,
    *,
    info: p.ClientInfo | None = None,
    opt_out_notification_methods: Sequence[str] = (),
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> p.InitializeResult:
    """Send ``initialize`` (with ``experimentalApi``), then the ``initialized`` notification.

    Raises :class:`~codex_trio.HandshakeTimeout` when no answer comes within ``timeout`` seconds, with a message
    saying the daemon may be hung, crashed, or speaking another protocol.
    """
    params = p.InitializeParams(
        client_info=info or client_info(),
        capabilities=p.InitializeCapabilities(
            experimental_api=True,
            opt_out_notification_methods=list(opt_out_notification_methods) or None,
        ),
    )
    try:
        raw = await connection.request("initialize", p.unstructure(params), timeout=timeout)
    except RequestTimeout:
        raise HandshakeTimeout(timeout) from None
    try:
        result = p.structure(raw, p.InitializeResult)
    except Exception as exc:
        raise ProtocolError(f"initialize returned an unexpected result ({exc}): {raw!r:.300}") from None
    await connection.notify("initialized")
    return result
