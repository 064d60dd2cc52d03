"""``Admission.settled()`` on an input that was not accepted raises the library's typed error."""

from __future__ import annotations

import pytest
import trio

import codex_trio
from codex_trio._admission import Admission


@pytest.mark.parametrize(
    ("status", "why"),
    [
        ("duplicate", "already accepted"),
        ("skipped", "restart notice is skipped"),
        ("failed", "admission.error says why"),
        ("stopped", "the runtime is stopping"),
    ],
)
def test_settled_on_an_admission_that_was_not_accepted_raises_not_accepted(status: str, why: str) -> None:
    admission = Admission(status, "chat:42")  # type: ignore[arg-type]
    assert not admission.accepted
    with pytest.raises(codex_trio.NotAccepted) as info:
        trio.run(admission.settled)
    assert isinstance(info.value, codex_trio.CodexTrioError)
    assert (info.value.status, info.value.source_id) == (status, "chat:42")
    message = str(info.value)
    assert f"submission 'chat:42' was not accepted ({status})" in message
    assert why in message and "Check admission.accepted" in message
