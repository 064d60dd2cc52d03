"""Token usage: what codex reports in ``thread/tokenUsage/updated``, summed per turn and per runtime."""

from __future__ import annotations

import json

import attrs

from ._json import JsonValue

__all__ = ["TokenUsage", "parse_usage", "usage_from_json", "usage_to_json"]

_FIELDS = (
    ("input_tokens", "inputTokens"),
    ("cached_input_tokens", "cachedInputTokens"),
    ("output_tokens", "outputTokens"),
    ("reasoning_output_tokens", "reasoningOutputTokens"),
    ("total_tokens", "totalTokens"),
)


@attrs.frozen
class TokenUsage:
    """Tokens of one or more model calls, as codex counts them (its ``TokenUsageBreakdown``).

    ``cached_input_tokens`` are part of ``input_tokens``, ``reasoning_output_tokens`` part of ``output_tokens``;
    ``total_tokens`` is codex's total (input + output). Records add up with ``+``.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_output_tokens + other.reasoning_output_tokens,
            self.total_tokens + other.total_tokens,
        )


def parse_usage(value: JsonValue) -> TokenUsage:
    """A ``TokenUsageBreakdown`` object (camelCase) as a record; raises ``ValueError`` if it is not one."""
    if not isinstance(value, dict):
        raise ValueError(f"token usage must be an object (got {type(value).__name__})")
    counts: list[int] = []
    for _, wire in _FIELDS:
        count = value.get(wire, 0)
        if not isinstance(count, int) or isinstance(count, bool):
            raise ValueError(f"token usage {wire} must be an integer (got {count!r:.50})")
        counts.append(count)
    return TokenUsage(*counts)


def usage_to_json(usage: TokenUsage) -> str:
    """How the store keeps a runtime's cumulative usage (the wire's camelCase object)."""
    return json.dumps({wire: getattr(usage, name) for name, wire in _FIELDS}, separators=(",", ":"))


def usage_from_json(text: str | None) -> TokenUsage | None:
    """The stored usage, or None if there is none (or it cannot be read: usage is a statistic, never fatal)."""
    if not text:
        return None
    try:
        value: JsonValue = json.loads(text)
        return parse_usage(value)
    except ValueError:
        return None
