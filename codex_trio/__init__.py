"""codex_trio: keep a long-lived Codex app-server runtime alive inside a Trio application."""

from __future__ import annotations

from ._errors import (
    AppServerExited as AppServerExited,
    AppServerNotReady as AppServerNotReady,
    BinaryNotFound as BinaryNotFound,
    CodexTrioError as CodexTrioError,
    ConfigError as ConfigError,
    ConnectionLost as ConnectionLost,
    FrameTooLarge as FrameTooLarge,
    HandshakeTimeout as HandshakeTimeout,
    MethodNotSupported as MethodNotSupported,
    ProcessError as ProcessError,
    ProtocolError as ProtocolError,
    RequestTimeout as RequestTimeout,
    RpcError as RpcError,
    RuntimeGaveUp as RuntimeGaveUp,
    RuntimeStopped as RuntimeStopped,
    ServerDraining as ServerDraining,
    SocketPathError as SocketPathError,
    StateStoreError as StateStoreError,
    TransportError as TransportError,
    TurnFailed as TurnFailed,
)

__version__ = "0.1.0"

__all__ = [
    "AppServerExited",
    "AppServerNotReady",
    "BinaryNotFound",
    "CodexTrioError",
    "ConfigError",
    "ConnectionLost",
    "FrameTooLarge",
    "HandshakeTimeout",
    "MethodNotSupported",
    "ProcessError",
    "ProtocolError",
    "RequestTimeout",
    "RpcError",
    "RuntimeGaveUp",
    "RuntimeStopped",
    "ServerDraining",
    "SocketPathError",
    "StateStoreError",
    "TransportError",
    "TurnFailed",
]
