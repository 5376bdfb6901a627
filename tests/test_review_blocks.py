"""What an adversarial review of the block reader (`_line_blocks`, `Store._read_tail`) and of long-list
fingerprints found: each test failed before its fix, and its docstring says what was wrong and why it
matters to a user."""

from __future__ import annotations

import json

import pytest
from helpers import Upstream, answer_to, as_a_new_process, entries, numbered

from cachy import CachyWarning, compact_cachy, disable_cachy, enable_cachy, fileio


# ------------------------------------------------------------------------------- the cache file
def record(folder, questions) -> list[str]:
    """Record `questions` (answers 1, 2, ... in order) into folder/cachy.jsonl and return its lines."""
    enable_cachy(folder)
    client = Upstream(numbered).client()
    for n in questions:
        answer_to(client, {"question": n})
    disable_cachy()
    return (folder / "cachy.jsonl").read_text().splitlines(keepends=True)


@pytest.mark.parametrize("block", [64, fileio.BLOCK], ids=["unfinished line longer than a block", "default"])
def test_an_unfinished_last_line_is_reported_once_when_another_process_finishes_it(tmp_path, monkeypatch, block):
    """A writer killed mid-line leaves an unfinished last line: the load reports it (line 3). When another
    cachy process (an xdist worker that survived) then appends, it starts with "\\n", which turns the cut line
    into a whole, damaged one; this process reads its tail again from the start of that line and reports
    line 3 a second time, in a second warning. Under the plugin, where CachyWarning is an error, a test that
    expected the first warning fails on the second, in a later, unrelated request. (The same repeat happens
    when `Store.read` reloads the file after finding a line damaged behind a valid start.) Suggested fix:
    remember the offset of the unfinished line reported (`self._unfinished = loaded`) and do not report a
    damaged line that starts there again."""
    monkeypatch.setattr(fileio, "BLOCK", block)
    lines = record(tmp_path, [1, 2, 3])
    other = record(tmp_path / "elsewhere", [9])[0]
    (tmp_path / "cachy.jsonl").write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    as_a_new_process()
    enable_cachy(tmp_path)
    client = Upstream(numbered).client()
    with pytest.warns(CachyWarning) as warned:
        assert answer_to(client, {"question": 1}) == 1
        with open(tmp_path / "cachy.jsonl", "a") as file:
            file.write("\n" + other)  # what another process's `Store.append` writes after a cut line
        assert answer_to(client, {"question": 9}) == 1  # its entry: a hit, read from the grown file
    reports = [str(warning.message) for warning in warned if "damaged" in str(warning.message)]
    assert len(reports) == 1, reports


def test_compaction_keeps_a_whole_last_entry_that_only_lacks_its_newline(tmp_path):
    """A last line that is a complete entry but has no final newline is taken for a writer's cut line:
    `_scan` marks every line not ending in "\\n" as damaged, so `compact_cachy` (and `cachy compact`) deletes
    the entry for good, and loading skips it (a replay miss in CI). Such files are common: a script that
    filters the file and writes `"\\n".join(lines)`, an editor set not to add a final newline. A prefix of a
    cachy line cannot parse as a JSON object (the object closes at its last byte), so a last line that
    parses as an entry is whole; only the next append needs to start with "\\n", as it already does.
    Suggested fix: in `_scan` (and in `_read_tail` for an `end == 0` block), accept a last line without
    newline when `_head_of(line + b"\\n")` and `_entry_of` accept it."""
    lines = record(tmp_path, [1, 2])
    (tmp_path / "cachy.jsonl").write_text("".join(lines).rstrip("\n"))
    result = compact_cachy(tmp_path / "cachy.jsonl")
    assert (result.kept, result.damaged) == (2, [])
    assert len(entries(tmp_path)) == 2


@pytest.mark.parametrize("block", [64, fileio.BLOCK], ids=["a line longer than a block", "default"])
def test_a_whole_last_entry_without_its_newline_hits_and_later_appends_stay_lines_of_their_own(
    tmp_path, monkeypatch, block
):
    """The same file read live: its last entry hits without a warning; another process's append (which
    ends that line first) and this process's own append each become a line of their own."""
    monkeypatch.setattr(fileio, "BLOCK", block)
    lines = record(tmp_path, [1, 2])
    other = record(tmp_path / "elsewhere", [9])[0]
    (tmp_path / "cachy.jsonl").write_text("".join(lines).rstrip("\n"))
    as_a_new_process()
    enable_cachy(tmp_path)
    client = Upstream(numbered).client()
    assert [answer_to(client, {"question": n}) for n in (1, 2)] == [1, 2]  # a CachyWarning would fail the test
    with open(tmp_path / "cachy.jsonl", "a") as file:
        file.write("\n" + other)  # what another process's append writes after a line without its newline
    assert answer_to(client, {"question": 9}) == 1
    assert answer_to(client, {"question": 3}) == 1  # a miss, recorded by this process
    assert [entry["response"] for entry in entries(tmp_path)] == [json.dumps({"answer": n}) for n in (1, 2, 1, 1)]
    as_a_new_process()
    enable_cachy(tmp_path, mode="replay")
    assert [answer_to(client, {"question": n}) for n in (1, 2, 9, 3)] == [1, 2, 1, 1]
