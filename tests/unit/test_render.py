"""The channel envelope renders exactly as the original runtime's ``renderChannelInput``."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, strategies as st

from codex_trio._errors import ConfigError
from codex_trio._render import ChannelInput, escape_attr, render_channel_block, render_channel_input


def test_structured_input_renders_native_envelope() -> None:
    inp = ChannelInput(
        source_id="m1",
        source="feishu",
        text="ignored fallback",
        attrs=[("chat_id", "chat-1"), ("sender_id", "sender-1")],
        body="hello world",
    )
    assert render_channel_input(inp) == (
        '<channel source="feishu" chat_id="chat-1" sender_id="sender-1">\nhello world\n</channel>'
    )


def test_plain_input_passes_text_through() -> None:
    assert render_channel_input(ChannelInput(source_id="m1", text="a trigger turn")) == "a trigger turn"


@pytest.mark.parametrize(
    ("attrs_value", "body"),
    [
        ([("chat_id", "c")], None),  # attrs without body
        (None, "the body"),  # body without attrs
    ],
)
def test_text_unchanged_unless_both_attrs_and_body(attrs_value: list[tuple[str, str]] | None, body: str | None) -> None:
    inp = ChannelInput(source_id="x", text="<raw & text>", source="s", attrs=attrs_value, body=body)
    assert render_channel_input(inp) == "<raw & text>"


def test_empty_attrs_with_body_still_renders_block_and_default_source() -> None:
    inp = ChannelInput(source_id="x", text="fallback", attrs=[], body="b")
    assert render_channel_input(inp) == '<channel source="channel">\nb\n</channel>'


def test_empty_body_renders_empty_line() -> None:
    inp = ChannelInput(source_id="x", text="fallback", attrs=[], body="")
    assert render_channel_input(inp) == '<channel source="channel">\n\n</channel>'


def test_empty_source_is_kept_not_defaulted() -> None:
    # The original used `source ?? 'channel'`: only a missing source defaults.
    inp = ChannelInput(source_id="x", text="t", source="", attrs=[], body="b")
    assert render_channel_input(inp) == '<channel source="">\nb\n</channel>'


def test_values_and_source_are_escaped_ampersand_first() -> None:
    inp = ChannelInput(
        source_id="x",
        text="t",
        source='s"<&>',
        attrs=[("chat_id", 'a"b<c>&d'), ("pre", "&amp;")],
        body="body <b>&amp;</b> stays verbatim",
    )
    assert render_channel_input(inp) == (
        '<channel source="s&quot;&lt;&amp;&gt;" chat_id="a&quot;b&lt;c&gt;&amp;d" pre="&amp;amp;">\n'
        "body <b>&amp;</b> stays verbatim\n</channel>"
    )


def test_unsafe_keys_dropped_order_kept() -> None:
    inp = ChannelInput(
        source_id="x",
        text="t",
        source="feishu",
        attrs=[
            ("z_last", "1"),
            ("bad-key", "dropped"),
            ("1leading", "dropped"),
            ("", "dropped"),
            ("trailing\n", "dropped"),  # JS `$` does not match before a final newline
            ("sp ace", "dropped"),
            ("ünï", "dropped"),
            ("_Under9", "2"),
            ("a", "3"),
        ],
        body="b",
    )
    expected = '<channel source="feishu" z_last="1" _Under9="2" a="3">\nb\n</channel>'
    assert render_channel_input(inp) == expected


def test_duplicate_keys_are_all_rendered_in_order() -> None:
    inp = ChannelInput(source_id="x", text="t", attrs=[("k", "1"), ("k", "2")], body="b")
    assert render_channel_input(inp) == '<channel source="channel" k="1" k="2">\nb\n</channel>'


def test_mapping_attrs_keep_insertion_order() -> None:
    inp = ChannelInput(source_id="x", text="t", attrs={"b": "2", "a": "1"}, body="body")
    assert inp.attrs == (("b", "2"), ("a", "1"))
    assert render_channel_input(inp) == '<channel source="channel" b="2" a="1">\nbody\n</channel>'


def test_list_pairs_are_normalised_to_tuples_and_input_is_frozen() -> None:
    inp = ChannelInput(source_id="x", text="t", attrs=[["k", "v"]], body="b")
    assert inp.attrs == (("k", "v"),)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        inp.text = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"source_id": 1, "text": "t"}, "source_id"),
        ({"source_id": None, "text": "t"}, "source_id"),
        ({"source_id": "x", "text": None}, "text"),
        ({"source_id": "x", "text": "t", "source": 3}, "source"),
        ({"source_id": "x", "text": "t", "body": b"bytes"}, "body"),
        ({"source_id": "x", "text": "t", "attrs": "ab"}, "attrs"),
        ({"source_id": "x", "text": "t", "attrs": 5}, "attrs"),
        ({"source_id": "x", "text": "t", "attrs": ["ab"]}, "attrs"),
        ({"source_id": "x", "text": "t", "attrs": [("a", "b", "c")]}, "attrs"),
        ({"source_id": "x", "text": "t", "attrs": [("a", 1)]}, "attrs"),
        ({"source_id": "x", "text": "t", "attrs": {"a": None}}, "attrs"),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(kwargs: dict[str, object], field_name: str) -> None:
    with pytest.raises(ConfigError, match=f"ChannelInput.{field_name}") as info:
        ChannelInput(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field_name


def test_escape_attr_order() -> None:
    assert escape_attr('&<>"') == "&amp;&lt;&gt;&quot;"
    assert escape_attr("&lt;") == "&amp;lt;"
    assert escape_attr("plain 'single' quotes") == "plain 'single' quotes"


def _unescape(text: str) -> str:
    return text.replace("&quot;", '"').replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")


@given(st.text())
def test_escape_attr_is_reversible_and_quote_free(value: str) -> None:
    escaped = escape_attr(value)
    assert '"' not in escaped and "<" not in escaped and ">" not in escaped
    assert _unescape(escaped) == value


@given(
    source=st.text(),
    attrs_value=st.lists(st.tuples(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]*", fullmatch=True), st.text())),
    body=st.text(),
)
def test_block_shape_for_safe_keys(source: str, attrs_value: list[tuple[str, str]], body: str) -> None:
    out = render_channel_block(source, attrs_value, body)
    head, rest = out.split(">\n", 1)
    assert rest == f"{body}\n</channel>"
    expected_head = f'<channel source="{escape_attr(source)}"' + "".join(
        f' {k}="{escape_attr(v)}"' for k, v in attrs_value
    )
    assert head == expected_head
