"""codex_trio: keep a long-lived Codex app-server runtime alive inside a Trio application."""

from __future__ import annotations

from ._approvals import (
    ApprovalDecisionRecord as ApprovalDecisionRecord,
)
from ._approvals import (
    ApprovalPolicy as ApprovalPolicy,
)
from ._approvals import (
    ApprovalRequest as ApprovalRequest,
)
from ._approvals import (
    fail_closed_answer as fail_closed_answer,
)
from ._completions import Completion as Completion
from ._config import McpServer as McpServer
from ._config import RuntimeConfig as RuntimeConfig
from ._config import SkillSource as SkillSource
from ._doctor import DoctorReport as DoctorReport
from ._doctor import Finding as Finding
from ._doctor import doctor as doctor
from ._errors import (
    AppServerExited as AppServerExited,
)
from ._errors import (
    AppServerNotReady as AppServerNotReady,
)
from ._errors import (
    BinaryNotFound as BinaryNotFound,
)
from ._errors import (
    CodexTrioError as CodexTrioError,
)
from ._errors import (
    ConfigError as ConfigError,
)
from ._errors import (
    ConnectionLost as ConnectionLost,
)
from ._errors import (
    FrameTooLarge as FrameTooLarge,
)
from ._errors import (
    HandshakeTimeout as HandshakeTimeout,
)
from ._errors import (
    MethodNotSupported as MethodNotSupported,
)
from ._errors import (
    ProcessError as ProcessError,
)
from ._errors import (
    ProtocolError as ProtocolError,
)
from ._errors import (
    RequestTimeout as RequestTimeout,
)
from ._errors import (
    RpcError as RpcError,
)
from ._errors import (
    RuntimeGaveUp as RuntimeGaveUp,
)
from ._errors import (
    RuntimeStopped as RuntimeStopped,
)
from ._errors import (
    ServerDraining as ServerDraining,
)
from ._errors import (
    SocketPathError as SocketPathError,
)
from ._errors import (
    StateStoreError as StateStoreError,
)
from ._errors import (
    TransportError as TransportError,
)
from ._errors import (
    TurnFailed as TurnFailed,
)
from ._events import (
    AgentMessageDelta as AgentMessageDelta,
)
from ._events import (
    Event as Event,
)
from ._events import (
    EventStream as EventStream,
)
from ._events import (
    ItemCompleted as ItemCompleted,
)
from ._events import (
    ItemStarted as ItemStarted,
)
from ._events import (
    Lagged as Lagged,
)
from ._events import (
    Restarting as Restarting,
)
from ._events import (
    ServerRequestAnswered as ServerRequestAnswered,
)
from ._events import (
    StatusChanged as StatusChanged,
)
from ._events import (
    SubmissionSettled as SubmissionSettled,
)
from ._events import (
    ThreadLost as ThreadLost,
)
from ._events import (
    ThreadReady as ThreadReady,
)
from ._events import (
    TurnCompleted as TurnCompleted,
)
from ._events import (
    TurnStarted as TurnStarted,
)
from ._launcher import Launched as Launched
from ._launcher import Launcher as Launcher
from ._launcher import ProcessLauncher as ProcessLauncher
from ._ledger import Settlement as Settlement
from ._policy import RestartPolicy as RestartPolicy
from ._render import ChannelInput as ChannelInput
from ._render import render_channel_input as render_channel_input
from ._runtime import (
    Admission as Admission,
)
from ._runtime import (
    Checkpoint as Checkpoint,
)
from ._runtime import (
    CompletionResult as CompletionResult,
)
from ._runtime import (
    Runtime as Runtime,
)
from ._runtime import (
    open_runtime as open_runtime,
)
from ._state import (
    MemoryStateStore as MemoryStateStore,
)
from ._state import (
    SqliteStateStore as SqliteStateStore,
)
from ._state import (
    StateStore as StateStore,
)
from ._state import (
    open_state_store as open_state_store,
)

__version__ = "0.1.0"

__all__ = [
    "Admission",
    "AgentMessageDelta",
    "AppServerExited",
    "AppServerNotReady",
    "ApprovalDecisionRecord",
    "ApprovalPolicy",
    "ApprovalRequest",
    "BinaryNotFound",
    "ChannelInput",
    "Checkpoint",
    "CodexTrioError",
    "Completion",
    "CompletionResult",
    "ConfigError",
    "ConnectionLost",
    "DoctorReport",
    "Event",
    "EventStream",
    "Finding",
    "FrameTooLarge",
    "HandshakeTimeout",
    "ItemCompleted",
    "ItemStarted",
    "Lagged",
    "Launched",
    "Launcher",
    "McpServer",
    "MemoryStateStore",
    "MethodNotSupported",
    "ProcessError",
    "ProcessLauncher",
    "ProtocolError",
    "RequestTimeout",
    "RestartPolicy",
    "Restarting",
    "RpcError",
    "Runtime",
    "RuntimeConfig",
    "RuntimeGaveUp",
    "RuntimeStopped",
    "ServerDraining",
    "ServerRequestAnswered",
    "Settlement",
    "SkillSource",
    "SocketPathError",
    "SqliteStateStore",
    "StateStore",
    "StateStoreError",
    "StatusChanged",
    "SubmissionSettled",
    "ThreadLost",
    "ThreadReady",
    "TransportError",
    "TurnCompleted",
    "TurnFailed",
    "TurnStarted",
    "doctor",
    "fail_closed_answer",
    "open_runtime",
    "open_state_store",
    "render_channel_input",
]
