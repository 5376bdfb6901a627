"""What an adversarial review of the engine found: each test failed before its fix."""

from __future__ import annotations

import os

import pytest
from helpers import CHAT, counting, entries, hand_edit, n_of

from cachy import compact_cachy, disable_cachy, enable_cachy


# ---------------------------------------------------------------------------------- the file
def test_a_file_replaced_by_rename_is_read_again_before_a_replay_miss(tmp_path):
    """A git checkout or pull replaces the file: its entries hit at once, without a re-enable."""
    upstream = counting()
    client = upstream.client()
    enable_cachy(tmp_path / "other")
    n_of(client, {"q": "other"})
    enable_cachy(tmp_path / "d")
    n_of(client, {"q": "mine"})
    enable_cachy(tmp_path / "d", mode="replay")
    assert n_of(client, {"q": "mine"}) == 2
    merged = (tmp_path / "d" / "cachy.jsonl").read_bytes() + (tmp_path / "other" / "cachy.jsonl").read_bytes()
    (tmp_path / "d" / "new").write_bytes(merged)
    os.replace(tmp_path / "d" / "new", tmp_path / "d" / "cachy.jsonl")
    assert n_of(client, {"q": "other"}) == 1
    assert upstream.calls == 2


def test_a_deleted_file_is_started_afresh_and_keeps_recording(tmp_path):
    upstream = counting()
    client = upstream.client()
    enable_cachy(tmp_path)
    n_of(client, {"q": 1})
    (tmp_path / "cachy.jsonl").unlink()
    assert n_of(client, {"q": 2}) == 2
    assert [entry["response"] for entry in entries(tmp_path)] == ['{"n": 2}']


def test_another_programs_json_lines_are_no_entries(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"key": "user1", "event": "login"}\n{"key": "user1", "event": "logout"}\n')
    with pytest.raises(ValueError, match="not a cachy file"):
        compact_cachy(events)
    assert "login" in events.read_text()


def test_compaction_keeps_the_good_copy_when_a_later_one_is_damaged(tmp_path):
    enable_cachy(tmp_path)
    counting().client().post(CHAT, json={"q": 1})
    disable_cachy()
    path = tmp_path / "cachy.jsonl"
    good = path.read_text()
    damaged = good.replace('"response": "{\\"n\\": 1}"', '"response": {"n": 1}')  # hand-edited: not a string
    path.write_text(good + damaged)
    result = compact_cachy(tmp_path)
    assert (result.kept, result.damaged) == (1, [2])
    assert path.read_text() == good


def test_a_stored_header_cachy_never_writes_cannot_break_a_hit(tmp_path):
    upstream = counting()
    enable_cachy(tmp_path)
    n_of(upstream.client(), {"q": 1})
    hand_edit(tmp_path, headers={"content-type": "application/json", "content-encoding": "gzip"})
    enable_cachy(tmp_path)
    assert n_of(upstream.client(), {"q": 1}) == 1
