"""cachy.jsonl as a file (cachy/core.py's Store, cachy/index.py): the index and appends; a file replaced,
deleted, edited or truncated under it; where the file may be; a disk that refuses writes; compaction,
pruning and git merges. What makes a line an entry, and damaged lines, are in test_lines.py."""

from __future__ import annotations

import asyncio
import builtins
import errno
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anthropic
import httpx2
import pytest
from helpers import (
    CHAT,
    MESSAGES,
    Upstream,
    as_a_new_process,
    ask,
    counting,
    entries,
    fresh_cache,
    git,
    json_reply,
    n_of,
    record,
)

from cachy import CachyWarning, compact_cachy, core, disable_cachy, enable_cachy, prune_cachy
from cachy.cli import main


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


# ------------------------------------------------------------------------------- duplicate keys
def test_the_last_of_duplicate_keys_wins(tmp_path, upstream):
    lines = record(tmp_path, upstream, [1])
    newer = lines[0].replace('\\"n\\": 1', '\\"n\\": 2')
    (tmp_path / "cachy.jsonl").write_text(lines[0] + newer)
    as_a_new_process()
    enable_cachy(tmp_path)
    assert ask(upstream, 1) == 2


# -------------------------------------------------------- replaced, deleted or changed in place
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


def rewrite_in_place(path: Path, content: str) -> None:
    """Write `content` over the file at `path` without replacing it: the same inode, as an editor may do."""
    inode = path.stat().st_ino
    with open(path, "r+b") as file:
        file.truncate(0)
        file.write(content.encode())
    assert path.stat().st_ino == inode


@pytest.mark.parametrize("change", ["reordered", "a line inserted at the top"])
def test_a_file_rewritten_in_place_still_hits_every_entry(tmp_path, change):
    padded = Upstream(json_reply(lambda request, n: {"n": n, "pad": "x" * 1000}))  # past one read buffer
    lines = record(tmp_path / "cache", padded, range(20))
    other = record(tmp_path / "scratch", padded, ["other"])
    enable_cachy(tmp_path / "cache")
    assert ask(padded, 19) == 20  # the index is loaded
    rewrite_in_place(
        tmp_path / "cache" / "cachy.jsonl", "".join(lines[::-1] if change == "reordered" else other + lines)
    )
    assert [ask(padded, question) for question in range(20)] == list(range(1, 21))
    assert padded.calls == 21


@pytest.mark.parametrize("longer", [1, 300])
def test_a_file_that_grows_by_an_edit_in_place_is_read_afresh_not_from_its_old_end(tmp_path, longer):
    """An edit in place that makes the file longer looks like an append by its size alone: reading on from the
    old end would read a tail that starts inside a line, a damaged line that never was (a CachyWarning, an
    error under the plugin). The last line read is no longer where it was, so the file is read afresh."""
    padded = Upstream(json_reply(lambda request, n: {"n": n, "pad": "x" * 1000}))
    lines = record(tmp_path / "cache", padded, range(5))
    inserted = record(
        tmp_path / "scratch", Upstream(json_reply(lambda r, n: {"n": 0, "pad": "y" * (1000 + longer)})), [9]
    )
    enable_cachy(tmp_path / "cache")
    assert ask(padded, 4) == 5  # the index is loaded
    rewrite_in_place(tmp_path / "cache" / "cachy.jsonl", "".join(inserted + lines))
    assert [ask(padded, question) for question in range(5)] == [1, 2, 3, 4, 5]  # and no warning
    assert padded.calls == 5


def test_a_file_truncated_in_place_is_a_miss_never_a_stale_hit(tmp_path, upstream):
    record(tmp_path, upstream, [1, 2, 3])
    enable_cachy(tmp_path)
    assert ask(upstream, 1) == 1
    os.truncate(tmp_path / "cachy.jsonl", 0)
    assert ask(upstream, 2) == 4
    assert upstream.calls == 4


def test_enabling_again_picks_up_an_edit_made_in_place(tmp_path, upstream):
    lines = record(tmp_path, upstream, [1, 2])
    enable_cachy(tmp_path)
    assert ask(upstream, 1) == 1
    edited = lines[0].replace('\\"n\\": 1,', '\\"n\\": 7,')  # the same length: every offset stays
    assert edited != lines[0]
    rewrite_in_place(tmp_path / "cachy.jsonl", edited + lines[1])
    enable_cachy(tmp_path)
    assert ask(upstream, 1) == 7
    assert upstream.calls == 2


# ------------------------------------------------------------------------ where the file may be
def test_a_cache_file_symlinked_outside_its_folder_is_refused(tmp_path, upstream):
    lines = record(tmp_path / "scratch", upstream, [1, 2])
    target = tmp_path / "elsewhere" / "notes.jsonl"
    target.parent.mkdir()
    target.write_text(lines[1] + lines[0] + lines[1])  # compaction would rewrite it
    before = target.read_bytes()
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "cachy.jsonl").symlink_to(target)
    with pytest.raises(ValueError, match="symlink"):
        enable_cachy(folder)
    with pytest.raises(ValueError, match="symlink"):
        compact_cachy(folder)
    with pytest.raises(ValueError, match="symlink"):
        compact_cachy(folder / "cachy.jsonl")
    assert target.read_bytes() == before


def test_a_cache_file_symlinked_within_its_folder_is_followed(tmp_path, upstream):
    """A guard for the fix above: a link to a file in the same folder is fine."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "cachy.v2.jsonl").write_text("")
    (folder / "cachy.jsonl").symlink_to("cachy.v2.jsonl")
    enable_cachy(folder)
    assert [ask(upstream, 1), ask(upstream, 1)] == [1, 1]
    assert len((folder / "cachy.v2.jsonl").read_text().splitlines()) == 1
    assert compact_cachy(folder).kept == 1


def test_a_cache_dir_whose_name_is_not_utf8_works(tmp_path, upstream):
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    enable_cachy(folder)
    assert [ask(upstream, 1), ask(upstream, 1)] == [1, 1]
    assert b"cachy.jsonl" in os.listdir(os.fsencode(folder))


# ------------------------------------------------------------------- a disk that refuses writes
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def refuse_writes(monkeypatch, folder: Path, failure: str) -> None:
    """Make the disk refuse to write `folder`'s files, through the os calls, as a read-only or full disk would:
    EROFS or EACCES on any open for writing in it, or ENOSPC on writes to its cachy.jsonl, optionally after
    a first write that got only half of its bytes through."""
    folder = os.path.realpath(folder)

    def in_folder(path) -> bool:
        return not isinstance(path, int) and os.path.dirname(os.path.realpath(os.fsdecode(path))) == folder

    if failure in ("EROFS", "EACCES"):
        code = getattr(errno, failure)
        real_os_open, real_open = os.open, io.open

        def os_open(path, flags, mode=0o777, *, dir_fd=None):
            if flags & WRITE_FLAGS and dir_fd is None and in_folder(path):
                raise OSError(code, os.strerror(code), os.fsdecode(path))
            return real_os_open(path, flags, mode, dir_fd=dir_fd)

        def open_(file, mode="r", *args, **kwargs):
            if set(mode) & set("wax+") and in_folder(file):
                raise OSError(code, os.strerror(code), os.fsdecode(file))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        return
    cache_file = os.stat(os.path.join(folder, "cachy.jsonl"))
    real_write, partial = os.write, []

    def write(fd, data):
        stat = os.fstat(fd)
        if (stat.st_dev, stat.st_ino) != (cache_file.st_dev, cache_file.st_ino):
            return real_write(fd, data)
        if failure == "partial write then ENOSPC" and not partial:
            partial.append(real_write(fd, bytes(data[: len(data) // 2])))
            return partial[0]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


FAILURES = ["EROFS", "EACCES", "ENOSPC", "partial write then ENOSPC"]
NOT_SAVED = r"(?i)not saved"  # what the warning about an entry that could not be written must say


def call_sync(upstream):
    return upstream.client().post(CHAT, json={"q": "new"}).content


def call_async(upstream):
    async def call():
        async with upstream.async_client() as client:
            return (await client.post(CHAT, json={"q": "new"})).content

    return asyncio.run(call())


def call_streamed(upstream):
    with upstream.client().stream("POST", CHAT, json={"q": "new"}) as response:
        return b"".join(response.iter_bytes())


@pytest.mark.parametrize("call", [call_sync, call_async, call_streamed], ids=["sync", "async", "streamed"])
@pytest.mark.parametrize("failure", FAILURES)
def test_a_live_response_reaches_the_caller_whole_when_its_entry_cannot_be_written(
    tmp_path, upstream, monkeypatch, failure, call
):
    folder = fresh_cache(tmp_path / "cache", "".join(record(tmp_path / "scratch", upstream, ["old"])))
    before = (folder / "cachy.jsonl").read_bytes()
    refuse_writes(monkeypatch, folder, failure)
    enable_cachy(folder)
    with pytest.warns(CachyWarning, match=NOT_SAVED):
        body = call(upstream)
    assert json.loads(body) == {"n": 2, "echo": '{"q":"new"}'}
    assert upstream.calls == 2
    assert (folder / "cachy.jsonl").read_bytes() == before  # nothing half-written stays behind


ANTHROPIC_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [{"type": "text", "text": "claude 1"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}


@pytest.mark.parametrize("failure", ["EROFS", "ENOSPC"])
def test_an_anthropic_call_reaches_the_upstream_once_and_succeeds_when_its_entry_cannot_be_written(
    tmp_path, monkeypatch, failure
):
    monkeypatch.setattr(anthropic._base_client.time, "sleep", lambda seconds: None)  # a retry would not wait
    calls = []

    def handler(request):
        calls.append(request)
        return httpx2.Response(200, json=ANTHROPIC_MESSAGE)

    folder = fresh_cache(tmp_path / "cache", b"")
    refuse_writes(monkeypatch, folder, failure)
    enable_cachy(folder)
    client = anthropic.Anthropic(api_key="k", http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    with pytest.warns(CachyWarning, match=NOT_SAVED):
        message = client.messages.create(model="claude-x", max_tokens=10, messages=MESSAGES)
    assert message.content[0].text == "claude 1"
    assert len(calls) == 1
    assert (folder / "cachy.jsonl").read_bytes() == b""


@pytest.mark.parametrize("mode", ["record", "replay"])
@pytest.mark.parametrize("failure", ["EROFS", "EACCES"])
def test_a_hit_needs_no_write_access_to_the_cache_folder(tmp_path, upstream, monkeypatch, failure, mode):
    """A guard for the fixes of the lock: a read-only checkout still replays, without a warning."""
    folder = fresh_cache(tmp_path / "cache", "".join(record(tmp_path / "scratch", upstream, [1])))
    refuse_writes(monkeypatch, folder, failure)
    enable_cachy(folder, mode=mode)
    assert ask(upstream, 1) == 1
    assert upstream.calls == 1


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


README = """# A project

Some words about it, and how to use it:

```python
from cachy import enable_cachy
enable_cachy()
```

More words.
"""


def test_compacting_a_file_that_is_mostly_not_cachy_entries_is_refused(tmp_path, upstream):
    lines = record(tmp_path / "scratch", upstream, [1])
    readme = tmp_path / "README.md"
    readme.write_text(README + lines[0])  # one line that is an entry, among many that are not
    before = readme.read_bytes()
    with pytest.raises(ValueError):
        compact_cachy(readme)
    assert readme.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md", "scratch"]


def test_cachy_compact_of_a_readme_is_one_line_and_exit_code_1(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert main(["compact", str(readme)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("cachy compact: ")
    assert readme.read_text() == README


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
