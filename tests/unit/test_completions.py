"""Completion framing, the inline budget, the spill file and the idempotence bookkeeping."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from codex_trio._completions import (
    COMPLETION_TRIGGER_TEXT,
    BoundedIdSet,
    Completion,
    CompletionLedger,
    CompletionLedgerSnapshot,
    Plan,
    build_completion_item,
    completion_budget,
    frame_completion,
    needs_spill,
    resolve_completion_body,
    spill_file_name,
    spill_path,
    utf16_length,
)
from codex_trio._errors import ConfigError


def _completion(result: str = "done", *, source: str = "alice", cid: str = "turn-1") -> Completion:
    return Completion(id=cid, source=source, status="completed", result=result)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- record and constants -------------------------------------------------------------------------------


def test_trigger_text_is_the_original_wording() -> None:
    assert COMPLETION_TRIGGER_TEXT == (
        "A TeamMate session you dispatched has settled. Its outcome was just delivered into your "
        "context as a <teammate_session_completion> item. Review it and take any needed follow-up; "
        "if nothing is needed, you may end this turn."
    )


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"id": "", "source": "s", "status": "completed", "result": "r"}, "id"),
        ({"id": 3, "source": "s", "status": "completed", "result": "r"}, "id"),
        ({"id": "i", "source": "", "status": "completed", "result": "r"}, "source"),
        ({"id": "i", "source": "s", "status": "done", "result": "r"}, "status"),
        ({"id": "i", "source": "s", "status": "completed", "result": None}, "result"),
    ],
)
def test_completion_validation(kwargs: dict[str, object], field_name: str) -> None:
    with pytest.raises(ConfigError, match=f"Completion.{field_name}") as info:
        Completion(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field_name


@pytest.mark.parametrize("status", ["completed", "failed", "stopped"])
def test_completion_accepts_each_status(status: str) -> None:
    assert Completion(id="i", source="s", status=status, result="").status == status  # type: ignore[arg-type]


# --- budget -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, 32000),
        ("", 32000),
        ("   ", 32000),
        ("abc", 32000),
        ("32k", 32000),
        ("123abc", 32000),
        ("-5", 32000),
        ("+5", 32000),
        ("1.5", 32000),
        ("1e3", 32000),
        ("0", 32000),
        ("000", 32000),
        ("1", 1),
        ("100", 100),
        (" 100\n", 100),
        ("\ufeff100\u00a0", 100),  # JS trim() strips these too
        ("100\x1c", 32000),  # ... but not this one, which str.strip() would
        ("٣", 32000),  # Arabic-Indic digit: JS \d is ASCII only
        ("0000100", 100),
        ("160000", 160000),
        ("160001", 160000),
        ("99999999999999999999", 160000),
        ("0" * 5000 + "7", 7),
        ("9" * 5000, 160000),  # beyond int()'s digit limit
    ],
)
def test_completion_budget_table(raw: str | None, expected: int) -> None:
    env = {} if raw is None else {"TASK_MAX_OUTPUT_LENGTH": raw}
    assert completion_budget(env) == expected


def test_utf16_length_counts_astral_chars_twice() -> None:
    assert utf16_length("") == 0
    assert utf16_length("abc") == 3
    assert utf16_length("é") == 1
    assert utf16_length("😀") == 2
    assert utf16_length("a😀b") == 4


@given(st.text(), st.integers(min_value=0, max_value=50))
def test_needs_spill_matches_utf16_length(text: str, budget: int) -> None:
    assert utf16_length(text) == len(text.encode("utf-16-le", "surrogatepass")) // 2
    assert needs_spill(text, budget) == (utf16_length(text) > budget)


# --- framing (inline) -------------------------------------------------------------------------------------


def test_inline_item_exact(tmp_path: Path) -> None:
    item = build_completion_item(_completion("all good\nline 2"), tmp_path / "spill", 32000)
    assert item == {
        "type": "message",
        "role": "developer",
        "content": [
            {
                "type": "input_text",
                "text": '<teammate_session_completion source="alice" id="turn-1" status="completed">\n'
                "all good\nline 2\n</teammate_session_completion>",
            }
        ],
    }
    assert not (tmp_path / "spill").exists()  # inline never touches the disk


def test_result_exactly_at_budget_is_inline(tmp_path: Path) -> None:
    assert resolve_completion_body(_completion("x" * 10), tmp_path, 10) == "x" * 10
    # 5 emoji = 10 UTF-16 units: inline at 10, spilled at 9 (the original measured JS length)
    assert resolve_completion_body(_completion("😀" * 5), tmp_path, 10) == "😀" * 5
    assert resolve_completion_body(_completion("😀" * 5), tmp_path, 9).startswith("The output is too long")


def test_frame_escapes_attribute_values_but_not_body() -> None:
    c = Completion(id='id"1&<x>', source="bob&co", status="failed", result="<b>&amp;</b>")
    assert frame_completion(c, c.result) == (
        '<teammate_session_completion source="bob&amp;co" id="id&quot;1&amp;&lt;x&gt;" status="failed">\n'
        "<b>&amp;</b>\n</teammate_session_completion>"
    )


# --- spill ------------------------------------------------------------------------------------------------


def test_spill_writes_full_result_owner_only(tmp_path: Path) -> None:
    spill_dir = tmp_path / "runtime" / "spill"
    result = "é" * 40 + "tail"
    c = _completion(result, source="team/alice", cid="turn 1:x")
    item = build_completion_item(c, spill_dir, 10)
    expected_path = spill_dir / "teammate-team_alice-turn_1_x.output"
    assert item["content"][0]["text"] == (
        '<teammate_session_completion source="team/alice" id="turn 1:x" status="completed">\n'
        f"The output is too long, so the full result was saved to a file: {expected_path}\n"
        "</teammate_session_completion>"
    )
    assert expected_path.read_text("utf-8") == result
    assert _mode(expected_path) == 0o600
    assert _mode(spill_dir) == 0o700
    assert spill_path(spill_dir, c) == str(expected_path)


def test_spill_overwrites_existing_file_and_tightens_its_mode(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir(mode=0o700)
    target = spill_dir / "teammate-alice-turn-1.output"
    target.write_text("old content that is much longer than the new one " * 10)
    os.chmod(target, 0o644)
    resolve_completion_body(_completion("new result!"), spill_dir, 5)
    assert target.read_text() == "new result!"
    assert _mode(target) == 0o600


def test_spill_refuses_a_readable_existing_dir_and_leaves_its_mode(tmp_path: Path) -> None:
    # A directory we did not create is never chmod-ed: the caller is told what to do instead.
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    os.chmod(spill_dir, 0o755)
    with pytest.raises(ConfigError, match="chmod 700"):
        resolve_completion_body(_completion("0123456789"), spill_dir, 1)
    assert _mode(spill_dir) == 0o755


def test_symlinked_spill_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="it is a symlink, not a real directory"):
        resolve_completion_body(_completion("0123456789"), link, 1)
    assert list(real.iterdir()) == []


def test_dangling_symlink_spill_dir_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="symlink"):
        resolve_completion_body(_completion("0123456789"), link, 1)
    assert not (tmp_path / "nowhere").exists()


def test_spill_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "spill"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        resolve_completion_body(_completion("0123456789"), blocker, 1)


def test_foreign_owned_spill_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir(mode=0o700)
    owner = os.stat(spill_dir).st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    expected = f"owned by uid {owner}, not the current user \\(uid {owner + 1}\\)"
    with pytest.raises(ConfigError, match=expected):
        resolve_completion_body(_completion("0123456789"), spill_dir, 1)
    assert list(spill_dir.iterdir()) == []


def test_symlink_planted_at_the_file_name_is_not_followed(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (spill_dir / "teammate-alice-turn-1.output").symlink_to(victim)
    with pytest.raises(OSError):
        resolve_completion_body(_completion("0123456789"), spill_dir, 1)
    assert victim.read_text() == "precious"


def test_lone_surrogates_are_written_as_replacement_chars(tmp_path: Path) -> None:
    resolve_completion_body(_completion("a\ud800b" + "😀" * 3), tmp_path, 1)
    data = (tmp_path / "teammate-alice-turn-1.output").read_bytes()
    assert data == ("a\ufffdb" + "😀" * 3).encode()


@pytest.mark.parametrize(
    ("source", "cid", "expected"),
    [
        ("alice", "turn-1", "teammate-alice-turn-1.output"),
        ("a.b_c-D9", "x", "teammate-a.b_c-D9-x.output"),
        ("../../etc", "p/q\\r", "teammate-.._.._etc-p_q_r.output"),
        ("ünï", "😀", "teammate-_n_-__.output"),  # astral char = two UTF-16 units = two underscores
    ],
)
def test_spill_file_name(source: str, cid: str, expected: str) -> None:
    assert spill_file_name(source, cid) == expected


def test_overlong_spill_file_name_is_shortened_and_unique() -> None:
    a = spill_file_name("s", "x" * 300)
    b = spill_file_name("s", "x" * 299 + "y")
    assert len(a.encode()) <= 255 and len(b.encode()) <= 255
    assert a != b
    assert a.startswith("teammate-s-") and a.endswith(".output")


def test_overlong_id_spills_successfully(tmp_path: Path) -> None:
    text = resolve_completion_body(_completion("0123456789", cid="i" * 400), tmp_path, 1)
    path = Path(text.removeprefix("The output is too long, so the full result was saved to a file: "))
    assert path.parent == tmp_path
    assert path.read_text() == "0123456789"


# --- BoundedIdSet -----------------------------------------------------------------------------------------


def test_bounded_id_set_basics() -> None:
    s = BoundedIdSet(limit=3)
    assert s.add("a") and s.add("b") and s.add("c")
    assert not s.add("a")  # no-op, no reorder
    assert s.add("d")  # evicts the oldest, "a", even though it was re-added
    assert s.items() == ("b", "c", "d")
    assert "a" not in s and "d" in s and len(s) == 3
    assert list(s) == ["b", "c", "d"]


def test_bounded_id_set_default_limit_and_restore() -> None:
    s = BoundedIdSet(str(i) for i in range(300))
    assert s.limit == 256 and len(s) == 256
    assert s.items()[0] == "44" and s.items()[-1] == "299"
    assert BoundedIdSet(s.items()).items() == s.items()


@pytest.mark.parametrize("limit", [0, -1, True, 2.5, "3"])
def test_bounded_id_set_rejects_bad_limit(limit: object) -> None:
    with pytest.raises(ConfigError, match="positive integer"):
        BoundedIdSet(limit=limit)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(limit=st.integers(min_value=1, max_value=6), ops=st.lists(st.sampled_from("abcdefghij"), max_size=60))
def test_bounded_id_set_matches_reference_model(limit: int, ops: list[str]) -> None:
    s = BoundedIdSet(limit=limit)
    model: list[str] = []
    for item in ops:
        added = s.add(item)
        assert added == (item not in model)
        if item not in model:
            model.append(item)
            if len(model) > limit:
                model.pop(0)
        assert s.items() == tuple(model)
        assert all((x in s) == (x in model) for x in "abcdefghij")
    assert BoundedIdSet(s.items(), limit=limit).items() == tuple(model)


# --- CompletionLedger -------------------------------------------------------------------------------------


def test_ledger_plan_transitions_table() -> None:
    ledger = CompletionLedger()
    assert ledger.plan("c1") is Plan.INJECT_AND_TRIGGER
    ledger.mark_injected("c1")
    assert ledger.plan("c1") is Plan.TRIGGER_ONLY  # trigger failed: retry without re-injecting
    assert ledger.next_trigger_source_id("c1") == "teammate:c1#1"
    assert ledger.next_trigger_source_id("c1") == "teammate:c1#2"  # every attempt gets a fresh id
    ledger.mark_accepted("c1")
    assert ledger.plan("c1") is Plan.ALREADY_ACCEPTED
    assert ledger.next_trigger_source_id("c2") == "teammate:c2#3"  # one counter for all ids
    assert ledger.is_accepted("c1") and ledger.is_injected("c1")
    assert not ledger.is_accepted("c2") and not ledger.is_injected("c2")


def test_ledger_forgets_past_limit() -> None:
    ledger = CompletionLedger(limit=2)
    for cid in ("a", "b", "c"):
        ledger.mark_injected(cid)
        ledger.mark_accepted(cid)
    assert ledger.plan("a") is Plan.INJECT_AND_TRIGGER  # evicted from both: re-delivered, as originally
    assert ledger.plan("c") is Plan.ALREADY_ACCEPTED


def test_accepted_evicted_but_still_injected_means_trigger_only() -> None:
    ledger = CompletionLedger(limit=2)
    ledger.mark_injected("a")
    for cid in ("a", "b", "c"):
        ledger.mark_accepted(cid)
    assert ledger.plan("a") is Plan.TRIGGER_ONLY


def test_ledger_snapshot_and_restore() -> None:
    ledger = CompletionLedger()
    ledger.mark_injected("a")
    ledger.mark_injected("b")
    ledger.mark_accepted("a")
    ledger.next_trigger_source_id("a")
    snap = ledger.snapshot()
    assert snap == CompletionLedgerSnapshot(accepted=("a",), injected=("a", "b"), trigger_seq=1)

    fresh = CompletionLedger()
    fresh.restore(snap)
    assert fresh.snapshot() == snap
    assert fresh.plan("a") is Plan.ALREADY_ACCEPTED and fresh.plan("b") is Plan.TRIGGER_ONLY
    assert fresh.next_trigger_source_id("b") == "teammate:b#2"


def test_restore_never_moves_the_counter_back() -> None:
    ledger = CompletionLedger()
    for _ in range(5):
        ledger.next_trigger_source_id("x")
    ledger.restore(CompletionLedgerSnapshot(accepted=(), injected=(), trigger_seq=2))
    assert ledger.trigger_seq == 5
    assert ledger.next_trigger_source_id("x") == "teammate:x#6"


_IDS = st.sampled_from(["a", "b", "c", "d", "e"])


class LedgerMachine(RuleBasedStateMachine):
    """The ledger against a plain-Python model of the original runtime's two caches and counter."""

    LIMIT = 3

    @initialize()
    def setup(self) -> None:
        self.ledger = CompletionLedger(limit=self.LIMIT)
        self.accepted: list[str] = []
        self.injected: list[str] = []
        self.seq = 0
        self.issued: set[str] = set()

    def _remember(self, cache: list[str], cid: str) -> None:
        if cid not in cache:
            cache.append(cid)
            if len(cache) > self.LIMIT:
                cache.pop(0)

    @rule(cid=_IDS)
    def inject(self, cid: str) -> None:
        self.ledger.mark_injected(cid)
        self._remember(self.injected, cid)

    @rule(cid=_IDS)
    def accept(self, cid: str) -> None:
        self.ledger.mark_accepted(cid)
        self._remember(self.accepted, cid)

    @rule(cid=_IDS)
    def trigger(self, cid: str) -> None:
        source_id = self.ledger.next_trigger_source_id(cid)
        self.seq += 1
        assert source_id == f"teammate:{cid}#{self.seq}"
        assert source_id not in self.issued
        self.issued.add(source_id)

    @precondition(lambda self: self.seq > 0)
    @rule()
    def persist_and_reload(self) -> None:
        reloaded = CompletionLedger(limit=self.LIMIT)
        reloaded.restore(self.ledger.snapshot())
        self.ledger = reloaded

    @invariant()
    def plans_match_model(self) -> None:
        for cid in ["a", "b", "c", "d", "e"]:
            if cid in self.accepted:
                expected = Plan.ALREADY_ACCEPTED
            elif cid in self.injected:
                expected = Plan.TRIGGER_ONLY
            else:
                expected = Plan.INJECT_AND_TRIGGER
            assert self.ledger.plan(cid) is expected
        snap = self.ledger.snapshot()
        assert snap.accepted == tuple(self.accepted)
        assert snap.injected == tuple(self.injected)
        assert snap.trigger_seq == self.seq


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
