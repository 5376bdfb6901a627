"""cachy.jsonl: the index, appends, damage, duplicates, compaction, pruning and git merges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import CHAT, as_a_new_process, ask, entries, git, record

from cachy import CachyWarning, compact_cachy, core, enable_cachy, fileio, prune_cachy


# ------------------------------------------------------------------------------- index and appends
def test_a_hit_writes_nothing_and_does_not_look_at_the_file_again(tmp_path, upstream, monkeypatch):
    record(tmp_path, upstream, [1])
    before = (tmp_path / "cachy.jsonl").stat()
    enable_cachy(tmp_path)
    original_sync, syncs = core.Store._sync, []

    def counting_sync(self):
        syncs.append(1)
        return original_sync(self)

    monkeypatch.setattr(core.Store, "_sync", counting_sync)
    assert ask(upstream, 1) == 1
    after = (tmp_path / "cachy.jsonl").stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert syncs == []
    assert upstream.calls == 1


def test_appends_keep_the_files_permissions(tmp_path, upstream):
    record(tmp_path, upstream, [1])
    os.chmod(tmp_path / "cachy.jsonl", 0o664)
    record(tmp_path, upstream, [2])
    assert (tmp_path / "cachy.jsonl").stat().st_mode & 0o777 == 0o664


def test_the_index_sees_what_another_process_appended(tmp_path, upstream):
    record(tmp_path, upstream, [1])
    enable_cachy(tmp_path)
    assert ask(upstream, 1) == 1  # the index is loaded now
    script = f"""
        import httpx
        from cachy import enable_cachy
        enable_cachy({str(tmp_path)!r})
        answer = lambda request: httpx.Response(200, json={{"n": "from the other process"}})
        client = httpx.Client(transport=httpx.MockTransport(answer))
        client.post({CHAT!r}, json={{"q": 2}})
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True)
    assert ask(upstream, 2) == "from the other process"
    assert upstream.calls == 1


def test_the_index_follows_a_file_replaced_by_another_process(tmp_path, upstream):
    record(tmp_path, upstream, [1, 2])
    enable_cachy(tmp_path)
    assert ask(upstream, 1) == 1
    lines = (tmp_path / "cachy.jsonl").read_text().splitlines(keepends=True)
    replacement = tmp_path / "replacement"
    replacement.write_text(lines[1] + lines[0].replace('"n\\": 1', '"n\\": 99'))
    os.replace(replacement, tmp_path / "cachy.jsonl")  # as a compaction elsewhere, or a git checkout, would
    assert ask(upstream, 3) == 3  # a miss looks at the file, notices it was replaced, and re-reads it
    assert ask(upstream, 1) == 99
    assert ask(upstream, 2) == 2


def test_a_file_rewritten_in_place_never_answers_with_another_requests_line(tmp_path, upstream):
    lines = record(tmp_path, upstream, range(60))  # more than the read buffer holds
    enable_cachy(tmp_path)
    assert ask(upstream, 59) == 60  # the index is loaded, and the read buffer is at the file's end
    swapped = [*lines[:10], lines[11], lines[10], *lines[12:]]  # questions 10 and 11: lines of equal length
    (tmp_path / "cachy.jsonl").write_text("".join(swapped))  # in place: same inode, same size
    assert ask(upstream, 10) == 11  # the line at 10's offset is 11's now: reloaded, 10's own answer, never 11's
    assert ask(upstream, 11) == 12
    assert upstream.calls == 60  # and neither went live


# ------------------------------------------------------------------------------------ damage
def damage_cases(lines: list[str]) -> dict[str, tuple[str, list[int]]]:
    """File contents with each kind of damage, and the line numbers the warning must name."""
    a, b, c = lines
    return {
        "blank lines": (a + "\n" + b + "   \n" + c, [2, 4]),
        "truncated last line": (a + b + c[: len(c) // 2], [3]),
        "conflict markers": (f"<<<<<<< HEAD\n{a}=======\n{b}>>>>>>> feature\n{c}", [1, 3, 5]),
        "not entries": (a + "[1, 2]\n" + '"text"\n' + b + '{"no": "key"}\n' + "not json at all\n" + c, [2, 3, 5, 6]),
    }


@pytest.mark.parametrize("block", [64, 500, fileio.BLOCK], ids=["lines longer than a block", "cut lines", "default"])
@pytest.mark.parametrize("case", ["blank lines", "truncated last line", "conflict markers", "not entries"])
def test_damaged_lines_are_skipped_with_one_warning_and_the_file_still_takes_appends(
    tmp_path, upstream, monkeypatch, case, block
):
    monkeypatch.setattr(fileio, "BLOCK", block)  # the file is read in blocks: lines cut by their ends load alike
    lines = record(tmp_path, upstream, [1, 2, 3])
    content, numbers = damage_cases(lines)[case]
    (tmp_path / "cachy.jsonl").write_text(content)
    as_a_new_process()
    enable_cachy(tmp_path)
    with pytest.warns(CachyWarning) as warned:
        intact = [ask(upstream, n) for n in (1, 2, 3)]
    assert len(warned) == 1
    assert f": {len(numbers)} in all, line {', '.join(map(str, numbers))}" in str(warned[0].message)
    expected_hits = [1, 2] if case == "truncated last line" else [1, 2, 3]
    assert [intact[n - 1] for n in expected_hits] == expected_hits
    recorded_after_the_damage = ask(upstream, 4)
    assert recorded_after_the_damage == upstream.calls
    as_a_new_process()
    enable_cachy(tmp_path)
    with pytest.warns(CachyWarning):
        assert ask(upstream, 4) == recorded_after_the_damage  # a new process reads it back


@pytest.mark.parametrize("block", [64, 500, fileio.BLOCK])
def test_a_file_of_many_lines_loads_whole_wherever_its_blocks_end(tmp_path, upstream, monkeypatch, block):
    monkeypatch.setattr(fileio, "BLOCK", block)
    record(tmp_path, upstream, range(40))
    as_a_new_process()
    enable_cachy(tmp_path)
    assert [ask(upstream, n) for n in range(40)] == list(range(1, 41))
    assert upstream.calls == 40


def test_a_line_damaged_behind_a_valid_start_is_a_miss_not_a_failure(tmp_path, upstream):
    lines = record(tmp_path, upstream, [1, 2])
    (tmp_path / "cachy.jsonl").write_text(lines[0].replace('"response"', '"resp', 1) + lines[1])
    as_a_new_process()
    enable_cachy(tmp_path)
    with pytest.warns(CachyWarning, match=r"damaged line 1 "):
        assert ask(upstream, 1) == 3  # went live and recorded again
    assert ask(upstream, 1) == 3
    assert ask(upstream, 2) == 2


def test_the_last_of_duplicate_keys_wins(tmp_path, upstream):
    lines = record(tmp_path, upstream, [1])
    newer = lines[0].replace('\\"n\\": 1', '\\"n\\": 2')
    (tmp_path / "cachy.jsonl").write_text(lines[0] + newer)
    as_a_new_process()
    enable_cachy(tmp_path)
    assert ask(upstream, 1) == 2


# ------------------------------------------------------------------------------------ compaction
def test_compact_deduplicates_drops_damage_and_sorts_by_key(tmp_path, upstream):
    lines = record(tmp_path, upstream, [1, 2, 3])
    newer_first = lines[0].replace('\\"n\\": 1', '\\"n\\": 9')
    (tmp_path / "cachy.jsonl").write_text(lines[2] + lines[0] + "<<<<<<< HEAD\n" + lines[1] + newer_first + "[1]\n")
    os.chmod(tmp_path / "cachy.jsonl", 0o640)
    inode = (tmp_path / "cachy.jsonl").stat().st_ino
    result = compact_cachy(tmp_path / "cachy.jsonl")
    assert (result.kept, result.duplicates, result.damaged, result.pruned) == (3, 1, [3, 6], 0)
    kept = entries(tmp_path)
    assert [entry["key"] for entry in kept] == sorted(entry["key"] for entry in kept)
    assert json.loads(next(e for e in kept if e["key"] == json.loads(lines[0])["key"])["response"])["n"] == 9
    stat = (tmp_path / "cachy.jsonl").stat()
    assert stat.st_mode & 0o777 == 0o640
    assert stat.st_ino != inode  # written aside and renamed over the original
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cachy.jsonl"]
    enable_cachy(tmp_path)
    assert [ask(upstream, n) for n in (1, 2, 3)] == [9, 2, 3]


def test_compact_is_atomic_a_failure_leaves_the_original_whole(tmp_path, upstream, monkeypatch):
    lines = record(tmp_path, upstream, [1, 2])
    original = (tmp_path / "cachy.jsonl").read_text() + lines[0]
    (tmp_path / "cachy.jsonl").write_text(original)

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        compact_cachy(tmp_path / "cachy.jsonl")
    assert (tmp_path / "cachy.jsonl").read_text() == original
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cachy.jsonl"]


# -------------------------------------------------------------------------------------- pruning
def test_prune_keeps_what_this_run_used(tmp_path, upstream):
    enable_cachy(tmp_path)
    for n in range(3):
        upstream.client().post(CHAT, json={"n": n})
    os.chmod(tmp_path / "cachy.jsonl", 0o640)
    enable_cachy(tmp_path)
    upstream.client().post(CHAT, json={"n": 1})
    upstream.client().post(CHAT, json={"n": 3})
    result = prune_cachy()
    assert (result.kept, result.pruned) == (2, 2)
    assert sorted(json.loads(json.loads(e["response"])["echo"])["n"] for e in entries(tmp_path)) == [1, 3]
    assert (tmp_path / "cachy.jsonl").stat().st_mode & 0o777 == 0o640


def test_prune_refuses_what_would_lose_entries(tmp_path, upstream, monkeypatch):
    with pytest.raises(RuntimeError, match="not enabled"):
        prune_cachy()
    enable_cachy(tmp_path)
    upstream.client().post(CHAT, json={})
    enable_cachy(tmp_path)
    with pytest.raises(RuntimeError, match="no entry was used"):
        prune_cachy()
    upstream.client().post(CHAT, json={})
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    with pytest.raises(RuntimeError, match=r"gw1.*--cachy-prune"):
        prune_cachy()
    assert len(entries(tmp_path)) == 1


# ------------------------------------------------------------------------------------------ git


def test_a_union_merge_of_two_branches_replays_both(tmp_path, upstream):
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / ".gitattributes").write_text("cachy.jsonl merge=union\n")
    record(tmp_path, upstream, [0])
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "base")
    git(tmp_path, "checkout", "-qb", "feature")
    record(tmp_path, upstream, [1, 2])
    git(tmp_path, "commit", "-qam", "feature")
    git(tmp_path, "checkout", "-q", "main")
    record(tmp_path, upstream, [3])
    git(tmp_path, "commit", "-qam", "main")
    git(tmp_path, "merge", "-q", "feature", "-m", "merge")
    as_a_new_process()
    enable_cachy(tmp_path, mode="replay")
    assert [ask(upstream, n) for n in (0, 1, 2, 3)] == [1, 2, 3, 4]
    assert upstream.calls == 4
