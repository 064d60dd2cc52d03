"""Pure renderers for inbound channel input: the ``<channel …>`` envelope.

Theory of operation
-------------------
A host hands the runtime a :class:`ChannelInput`. When the input is *structured* (both ``attrs`` and
``body`` are given) the text that reaches codex is a ``<channel source="…" k="v" …>`` block wrapping the
body; otherwise ``text`` goes through unchanged (system trigger turns, plain chat). This mirrors the original
runtime's ``renderChannelInput`` byte for byte: attribute values and the source are XML-escaped (``&``
first, so entities are never double-escaped), keys that are not plain identifiers are dropped (not escaped:
a bad key could break out of the tag), and the body is inserted verbatim because it *is* the message.

No Trio, no I/O: everything here is a function of its arguments.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

from attrs import field, frozen

from ._errors import ConfigError

__all__ = ["ChannelInput", "escape_attr", "render_channel_block", "render_channel_input"]

# ``fullmatch`` rather than ``^…$``: Python's ``$`` also matches before a trailing newline, JavaScript's
# does not, and a key like "a\n" must be dropped exactly as the original dropped it.
_SAFE_ATTR_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

AttrPairs = tuple[tuple[str, str], ...]


def escape_attr(value: str) -> str:
    """Escape ``value`` for a double-quoted XML attribute: ``&`` first, then ``<``, ``>``, ``"``."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _bad_attrs(value: object) -> ConfigError:
    return ConfigError(
        f"ChannelInput.attrs must be a list of (key, value) string pairs or a mapping, got {type(value).__name__}",
        field="attrs",
        value=value,
    )


def _to_attr_pairs(value: Mapping[str, str] | Iterable[Sequence[str]] | None) -> AttrPairs | None:
    """Normalise ``attrs`` to a tuple of ``(key, value)`` pairs, keeping order; reject anything else."""
    if value is None:
        return None
    if isinstance(value, str | bytes):
        raise _bad_attrs(value)
    items: Iterable[object]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Iterable):
        items = value
    else:
        raise _bad_attrs(value)
    pairs: list[tuple[str, str]] = []
    for index, pair in enumerate(items):
        # A two-character string would unpack into a "pair"; only real 2-sequences count.
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ConfigError(
                f"ChannelInput.attrs[{index}] must be a (key, value) pair, got {pair!r}",
                field="attrs",
                value=value,
            )
        key, val = pair
        if not isinstance(key, str) or not isinstance(val, str):
            raise ConfigError(
                f"ChannelInput.attrs[{index}] must hold two strings, got ({type(key).__name__}, {type(val).__name__})",
                field="attrs",
                value=value,
            )
        pairs.append((key, val))
    return tuple(pairs)


def _to_images(value: Iterable[str | os.PathLike[str]] | None) -> tuple[str, ...]:
    """Normalise ``images`` to a tuple of strings (URLs or paths); what they point at is checked by ``submit``."""
    if value is None:
        return ()
    if isinstance(value, str | bytes | os.PathLike) or not isinstance(value, Iterable):
        raise ConfigError(
            f"ChannelInput.images must be a list of URLs or paths, got {type(value).__name__}",
            field="images",
            value=value,
        )
    images: list[str] = []
    for index, image in enumerate(value):
        path = os.fspath(image) if isinstance(image, os.PathLike) else image
        if not isinstance(path, str):
            raise ConfigError(
                f"ChannelInput.images[{index}] must be a URL or a path (str or os.PathLike), got "
                f"{type(image).__name__}",
                field="images",
                value=value,
            )
        images.append(path)
    return tuple(images)


def _require_str(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        allowed = "a string or None" if optional else "a string"
        raise ConfigError(f"ChannelInput.{name} must be {allowed}, got {type(value).__name__}", field=name, value=value)


@frozen
class ChannelInput:
    """One inbound message for the runtime.

    ``source_id`` is the dedup key (``""`` disables dedup). ``text`` is what codex sees for a plain
    input. When both ``attrs`` and ``body`` are given, codex instead sees a ``<channel>`` block built from
    ``source`` (default ``"channel"``), ``attrs`` (a list of ``(key, value)`` pairs or a mapping; order is
    kept) and ``body``; see :func:`render_channel_input`.

    ``images`` go beside the text: each an ``http(s)://`` URL, a ``data:image/...;base64,`` URL or a path to a
    local PNG, JPEG, GIF or WebP file (``str`` or ``os.PathLike``). ``submit`` checks them (a missing or
    unreadable file, a directory, a file that is not an image, a bad URL: :class:`~codex_trio.InvalidInput`) and
    makes a path absolute then; codex reads the file when the turn starts (a file removed in between fails that
    turn). An ``http(s)://`` image is fetched by ``submit`` (codex 0.171 does not fetch images: it refuses remote
    URLs) and travels as a data URL; one that cannot be fetched, or is not an image, is ``InvalidInput``.
    """

    source_id: str
    text: str
    source: str | None = None
    attrs: AttrPairs | None = field(default=None, converter=_to_attr_pairs)
    body: str | None = None
    images: tuple[str, ...] = field(default=(), converter=_to_images)

    def __attrs_post_init__(self) -> None:
        _require_str("source_id", self.source_id, optional=False)
        _require_str("text", self.text, optional=False)
        _require_str("source", self.source, optional=True)
        _require_str("body", self.body, optional=True)


def render_channel_block(source: str, attrs: Iterable[tuple[str, str]], body: str) -> str:
    """``<channel source="…" k="v" …>``, newline, body, newline, ``</channel>``; unsafe keys dropped."""
    rendered = "".join(f' {key}="{escape_attr(val)}"' for key, val in attrs if _SAFE_ATTR_KEY.fullmatch(key))
    return f'<channel source="{escape_attr(source)}"{rendered}>\n{body}\n</channel>'


def render_channel_input(inp: ChannelInput) -> str:
    """The text codex receives for ``inp``: ``inp.text`` unless both ``attrs`` and ``body`` are present.

    An empty ``attrs`` still counts as present (the block is rendered with just the source), and an empty
    ``source`` is kept as ``source=""`` — only ``None`` falls back to ``"channel"``, as in the original.
    """
    if inp.attrs is None or inp.body is None:
        return inp.text
    return render_channel_block(inp.source if inp.source is not None else "channel", inp.attrs, inp.body)
