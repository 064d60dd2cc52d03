"""codex_trio: keep a long-lived Codex app-server runtime alive inside a Trio application."""

from __future__ import annotations

from typing import TYPE_CHECKING

# The public names, imported on first use (``__getattr__`` below reads this block): ``import codex_trio`` and
# ``codex-trio --version`` do not pay for trio, attrs and the whole runtime (~0.5 s) before they need them.
if TYPE_CHECKING:
    from ._admission import (
        Admission as Admission,
        AdmissionStatus as AdmissionStatus,
        CompletionResult as CompletionResult,
    )
    from ._approvals import (
        ApprovalDecisionRecord as ApprovalDecisionRecord,
        ApprovalPolicy as ApprovalPolicy,
        ApprovalRequest as ApprovalRequest,
        fail_closed_answer as fail_closed_answer,
    )
    from ._completions import Completion as Completion
    from ._config import McpServer as McpServer, RuntimeConfig as RuntimeConfig, SkillSource as SkillSource
    from ._doctor import DoctorReport as DoctorReport, Finding as Finding, doctor as doctor
    from ._errors import (
        AppServerExited as AppServerExited,
        AppServerNotReady as AppServerNotReady,
        BinaryNotFound as BinaryNotFound,
        CodexTrioError as CodexTrioError,
        ConfigError as ConfigError,
        ConnectionLost as ConnectionLost,
        EventStreamOverflow as EventStreamOverflow,
        FrameTooLarge as FrameTooLarge,
        HandshakeTimeout as HandshakeTimeout,
        InvalidInput as InvalidInput,
        LeaseLost as LeaseLost,
        MethodNotSupported as MethodNotSupported,
        NotAccepted as NotAccepted,
        ProcessError as ProcessError,
        ProtocolError as ProtocolError,
        RequestTimeout as RequestTimeout,
        RpcError as RpcError,
        RuntimeBusy as RuntimeBusy,
        RuntimeGaveUp as RuntimeGaveUp,
        RuntimeStopped as RuntimeStopped,
        ServerDraining as ServerDraining,
        SocketPathError as SocketPathError,
        StateStoreError as StateStoreError,
        TransportError as TransportError,
    )
    from ._events import (
        AgentMessageDelta as AgentMessageDelta,
        CodexError as CodexError,
        CodexRetrying as CodexRetrying,
        CodexWarning as CodexWarning,
        CommandOutputDelta as CommandOutputDelta,
        Event as Event,
        EventHub as EventHub,
        EventStream as EventStream,
        FileChangeOutputDelta as FileChangeOutputDelta,
        FileChangePatchUpdated as FileChangePatchUpdated,
        ItemCompleted as ItemCompleted,
        ItemStarted as ItemStarted,
        Lagged as Lagged,
        McpToolCallProgress as McpToolCallProgress,
        PlanDelta as PlanDelta,
        PlanStep as PlanStep,
        PlanUpdated as PlanUpdated,
        ReasoningSummaryDelta as ReasoningSummaryDelta,
        ReasoningSummaryPartAdded as ReasoningSummaryPartAdded,
        ReasoningTextDelta as ReasoningTextDelta,
        Restarting as Restarting,
        ServerRequestAnswered as ServerRequestAnswered,
        StatusChanged as StatusChanged,
        SubmissionSettled as SubmissionSettled,
        ThreadLost as ThreadLost,
        ThreadReady as ThreadReady,
        TokenUsageUpdated as TokenUsageUpdated,
        TurnCompleted as TurnCompleted,
        TurnDiffUpdated as TurnDiffUpdated,
        TurnStarted as TurnStarted,
        merge_events as merge_events,
    )
    from ._items import (
        AgentMessageItem as AgentMessageItem,
        CommandExecutionItem as CommandExecutionItem,
        FileChangeItem as FileChangeItem,
        FileUpdate as FileUpdate,
        McpToolCallItem as McpToolCallItem,
        OtherItem as OtherItem,
        PlanItem as PlanItem,
        ReasoningItem as ReasoningItem,
        ThreadItem as ThreadItem,
        WebSearchItem as WebSearchItem,
    )
    from ._jsonrpc import ServerRequest as ServerRequest
    from ._launcher import Launched as Launched, Launcher as Launcher, ProcessLauncher as ProcessLauncher
    from ._policy import RestartPolicy as RestartPolicy
    from ._render import ChannelInput as ChannelInput, render_channel_input as render_channel_input
    from ._runtime import (
        Checkpoint as Checkpoint,
        Runtime as Runtime,
        RuntimeStatistics as RuntimeStatistics,
        open_runtime as open_runtime,
    )
    from ._settlement import Settlement as Settlement
    from ._signals import (
        DEFAULT_STOP_SIGNALS as DEFAULT_STOP_SIGNALS,
        SignalStop as SignalStop,
        stop_on_signals as stop_on_signals,
    )
    from ._state import (
        MemoryStateStore as MemoryStateStore,
        SqliteStateStore as SqliteStateStore,
        StateStore as StateStore,
        open_state_store as open_state_store,
    )
    from ._threads import ThreadInfo as ThreadInfo, ThreadPage as ThreadPage
    from ._turn_options import (
        AskForApproval as AskForApproval,
        ReasoningEffort as ReasoningEffort,
        ReasoningSummary as ReasoningSummary,
        SandboxMode as SandboxMode,
        TurnOptions as TurnOptions,
    )
    from ._usage import TokenUsage as TokenUsage

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_STOP_SIGNALS",
    "Admission",
    "AdmissionStatus",
    "AgentMessageDelta",
    "AgentMessageItem",
    "AppServerExited",
    "AppServerNotReady",
    "ApprovalDecisionRecord",
    "ApprovalPolicy",
    "ApprovalRequest",
    "AskForApproval",
    "BinaryNotFound",
    "ChannelInput",
    "Checkpoint",
    "CodexError",
    "CodexRetrying",
    "CodexTrioError",
    "CodexWarning",
    "CommandExecutionItem",
    "CommandOutputDelta",
    "Completion",
    "CompletionResult",
    "ConfigError",
    "ConnectionLost",
    "DoctorReport",
    "Event",
    "EventHub",
    "EventStream",
    "EventStreamOverflow",
    "FileChangeItem",
    "FileChangeOutputDelta",
    "FileChangePatchUpdated",
    "FileUpdate",
    "Finding",
    "FrameTooLarge",
    "HandshakeTimeout",
    "InvalidInput",
    "ItemCompleted",
    "ItemStarted",
    "Lagged",
    "Launched",
    "Launcher",
    "LeaseLost",
    "McpServer",
    "McpToolCallItem",
    "McpToolCallProgress",
    "MemoryStateStore",
    "MethodNotSupported",
    "NotAccepted",
    "OtherItem",
    "PlanDelta",
    "PlanItem",
    "PlanStep",
    "PlanUpdated",
    "ProcessError",
    "ProcessLauncher",
    "ProtocolError",
    "ReasoningEffort",
    "ReasoningItem",
    "ReasoningSummary",
    "ReasoningSummaryDelta",
    "ReasoningSummaryPartAdded",
    "ReasoningTextDelta",
    "RequestTimeout",
    "RestartPolicy",
    "Restarting",
    "RpcError",
    "Runtime",
    "RuntimeBusy",
    "RuntimeConfig",
    "RuntimeGaveUp",
    "RuntimeStatistics",
    "RuntimeStopped",
    "SandboxMode",
    "ServerDraining",
    "ServerRequest",
    "ServerRequestAnswered",
    "Settlement",
    "SignalStop",
    "SkillSource",
    "SocketPathError",
    "SqliteStateStore",
    "StateStore",
    "StateStoreError",
    "StatusChanged",
    "SubmissionSettled",
    "ThreadInfo",
    "ThreadItem",
    "ThreadLost",
    "ThreadPage",
    "ThreadReady",
    "TokenUsage",
    "TokenUsageUpdated",
    "TransportError",
    "TurnCompleted",
    "TurnDiffUpdated",
    "TurnOptions",
    "TurnStarted",
    "WebSearchItem",
    "doctor",
    "fail_closed_answer",
    "merge_events",
    "open_runtime",
    "open_state_store",
    "render_channel_input",
    "stop_on_signals",
]


if not TYPE_CHECKING:  # type checkers see the imports above; at run time a public name is imported when first used

    def __getattr__(name: str) -> object:
        module = _lazy_names().get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # once: later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})

    _LAZY: dict[str, str] = {}

    def _lazy_names() -> dict[str, str]:
        """Public name -> its module (``._config``), read once from the ``TYPE_CHECKING`` imports of this file: one
        list of public names, the one type checkers read too (the lazy_loader pattern of Scientific Python's SPEC 1)."""
        cache = _LAZY
        if not cache:
            import ast

            with open(__file__, encoding="utf-8") as source:
                tree = ast.parse(source.read())
            for node in tree.body:
                if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                    for statement in node.body:
                        if isinstance(statement, ast.ImportFrom) and statement.level == 1:
                            for alias in statement.names:
                                cache[alias.asname or alias.name] = f".{statement.module}"
        return cache
