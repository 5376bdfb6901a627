"""Reliability: cut-off streams, forks, a disk that refuses writes, damaged or oddly shaped lines, files that
point elsewhere or change in place, secrets in URLs, overlapping blocks and the lock. Each test pins one defect."""

from __future__ import annotations

import asyncio
import builtins
import errno
import io
import json
import os
import re
import time
import warnings
from pathlib import Path

import anthropic
import httpx2
import pytest
from helpers import CHAT, MESSAGES, Upstream, ask, entries, fresh_cache, json_reply, record

from cachy import (
    CachyMiss,
    CachyWarning,
    compact_cachy,
    enable_cachy,
)
from cachy.cli import main

NOT_SAVED = r"(?i)not saved"  # what the warning about an entry that could not be written must say


def key_of(line: str) -> str:
    return json.loads(line)["key"]


def cachy_warnings(warned) -> list:
    """The CachyWarnings among the warnings that `pytest.warns` caught."""
    return [warning for warning in warned if issubclass(warning.category, CachyWarning)]


# ------------------------------------------------------------ 3. a cache that cannot be written
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


# --------------------------------------------------------------------- 4. deeply nested JSON
DEEP_LINES = {"arrays": "[" * 100_000, "objects": '{"key": ' * 100_000 + "1" + "}" * 100_000}


@pytest.mark.parametrize("deep", DEEP_LINES)
def test_a_deeply_nested_line_is_skipped_as_damaged_and_the_others_still_hit(tmp_path, upstream, deep):
    lines = record(tmp_path / "scratch", upstream, [1, 2])
    folder = fresh_cache(tmp_path / "cache", lines[0] + DEEP_LINES[deep] + "\n" + lines[1])
    enable_cachy(folder)
    with pytest.warns(CachyWarning, match="damaged") as warned:
        assert [ask(upstream, 1), ask(upstream, 2)] == [1, 2]
    assert len(cachy_warnings(warned)) == 1
    assert upstream.calls == 2


def test_an_entry_with_a_deeply_nested_value_is_damaged_and_goes_live(tmp_path, upstream):
    lines = record(tmp_path / "scratch", upstream, [1, 2])
    deep = lines[0].rstrip("\n")[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}\n"  # keeps its key
    folder = fresh_cache(tmp_path / "cache", deep + lines[1])
    enable_cachy(folder)
    with pytest.warns(CachyWarning, match="damaged"):
        assert ask(upstream, 1) == 3  # went live, and was recorded again
    assert [ask(upstream, 1), ask(upstream, 2)] == [3, 2]


def test_stats_and_compact_survive_a_deeply_nested_line(tmp_path, upstream, capsys):
    lines = record(tmp_path / "scratch", upstream, [1, 2, 3])
    deep = DEEP_LINES["arrays"] + "\n" + DEEP_LINES["objects"] + "\n"
    folder = fresh_cache(tmp_path / "cache", lines[0] + deep + lines[1] + lines[2])
    path = str(folder / "cachy.jsonl")
    assert main(["stats", path]) == 0
    assert "3 entries" in capsys.readouterr().out
    assert main(["compact", path]) == 0
    assert [entry["key"] for entry in entries(folder)] == sorted(key_of(line) for line in lines)


# ----------------------------------------------------------------------- 5. wrong-shaped entries
WRONG_SHAPES = {
    "response is a number": lambda entry: entry.update(response=42),
    "response is null": lambda entry: entry.update(response=None),
    "response is an object": lambda entry: entry.update(response={"n": 1}),
    "no status_code": lambda entry: entry.pop("status_code"),
    "no headers": lambda entry: entry.pop("headers"),
    "a header value that is not a string": lambda entry: entry["headers"].update({"x-count": 5}),
    "binary with bad base64": lambda entry: entry.update(binary=True, response="this is not base64!"),
    'status_code "200"': lambda entry: entry.update(status_code="200"),
    "status_code 99": lambda entry: entry.update(status_code=99),
    "status_code 600": lambda entry: entry.update(status_code=600),
    "status_code true": lambda entry: entry.update(status_code=True),
}


def misshapen(line: str, case: str) -> str:
    """`line` rewritten into the wrong shape `case`, keeping its key (first, as cachy writes it)."""
    entry = json.loads(line)
    WRONG_SHAPES[case](entry)
    return json.dumps(entry, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("case", WRONG_SHAPES)
def test_an_entry_of_the_wrong_shape_is_damaged_and_record_mode_goes_live(tmp_path, upstream, case):
    lines = record(tmp_path / "scratch", upstream, [1, 2])
    folder = fresh_cache(tmp_path / "cache", misshapen(lines[0], case) + lines[1])
    enable_cachy(folder)
    with pytest.warns(CachyWarning, match="damaged"):
        assert ask(upstream, 1) == 3  # went live, and was recorded again
    assert [ask(upstream, 1), ask(upstream, 2)] == [3, 2]
    assert upstream.calls == 3


@pytest.mark.parametrize("case", WRONG_SHAPES)
def test_an_entry_of_the_wrong_shape_is_a_replay_miss(tmp_path, upstream, case):
    lines = record(tmp_path / "scratch", upstream, [1, 2])
    folder = fresh_cache(tmp_path / "cache", misshapen(lines[0], case) + lines[1])
    enable_cachy(folder, mode="replay")
    with pytest.warns(CachyWarning, match="damaged"), pytest.raises(CachyMiss):
        ask(upstream, 1)
    assert ask(upstream, 2) == 2
    assert upstream.calls == 2


@pytest.mark.parametrize("case", WRONG_SHAPES)
def test_cachy_show_of_an_entry_of_the_wrong_shape_is_one_line_and_exit_code_1(tmp_path, upstream, capsys, case):
    lines = record(tmp_path / "scratch", upstream, [1, 2])
    folder = fresh_cache(tmp_path / "cache", misshapen(lines[0], case) + lines[1])
    assert main(["show", key_of(lines[0]), "--file", str(folder)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("cachy show: ") and "Traceback" not in err


# ------------------------------------------------------------------- 6. writing outside the cache
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


# ------------------------------------------------------------------------ 10. changed in place
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


# ---------------------------------------------------------------------------- 11. smaller ones
def test_a_utf8_bom_at_the_start_of_the_file_does_not_hide_the_first_entry(tmp_path, upstream):
    lines = record(tmp_path / "scratch", upstream, [1, 2])
    folder = fresh_cache(tmp_path / "cache", "\ufeff" + "".join(lines))
    enable_cachy(folder)
    assert [ask(upstream, 1), ask(upstream, 2)] == [1, 2]
    result = compact_cachy(folder)
    assert (result.kept, result.damaged) == (2, [])
    assert sorted(entry["key"] for entry in entries(folder)) == sorted(key_of(line) for line in lines)


def test_a_cache_dir_whose_name_is_not_utf8_works(tmp_path, upstream):
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    enable_cachy(folder)
    assert [ask(upstream, 1), ask(upstream, 1)] == [1, 1]
    assert b"cachy.jsonl" in os.listdir(os.fsencode(folder))


def test_many_blank_lines_load_quickly_and_give_one_short_warning(tmp_path, upstream):
    lines = record(tmp_path / "scratch", upstream, [1])
    folder = fresh_cache(tmp_path / "cache", "\n" * 200_000 + lines[0])
    enable_cachy(folder)
    start = time.perf_counter()
    with pytest.warns(CachyWarning) as warned:
        assert ask(upstream, 1) == 1
    elapsed = time.perf_counter() - start
    assert len(cachy_warnings(warned)) == 1
    message = str(cachy_warnings(warned)[0].message)
    assert len(message) < 300, message[:300]
    numbers = {int(re.sub(r"[,_]", "", number)) for number in re.findall(r"\d+(?:[,_]\d{3})*", message)}
    assert {1, 2, 3, 200_000} <= numbers, message
    assert elapsed < 1.0


def bytes_read() -> int:
    with open("/proc/self/io") as io_counts:
        return next(int(line.split()[1]) for line in io_counts if line.startswith("rchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts bytes read through /proc/self/io (Linux)")
@pytest.mark.parametrize("tail", ["cut in the middle", "whole but without its newline"])
def test_an_unfinished_last_line_is_not_read_again_at_every_miss(tmp_path, tail):
    big = Upstream(json_reply(lambda request, n: {"n": n, "pad": "x" * 2_000_000}))
    lines = record(tmp_path / "scratch", big, [1, 2])
    last = lines[1][: len(lines[1]) // 2] if tail == "cut in the middle" else lines[1].rstrip("\n")
    folder = fresh_cache(tmp_path / "cache", lines[0] + last)
    enable_cachy(folder, mode="replay")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CachyWarning)  # whether this tail is reported is not the point here
        with pytest.raises(CachyMiss):
            ask(big, "first miss")  # loads the file
    before = bytes_read()
    for question in range(100, 120):
        with pytest.raises(CachyMiss):
            ask(big, question)
    assert bytes_read() - before < 2_000_000  # not even one more read of the 2 MB last line


@pytest.mark.parametrize("headers", [{}, None], ids=["headers {}", "headers null"])
def test_a_file_written_by_the_original_cachy_is_named_in_one_warning(tmp_path, upstream, headers):
    old = [
        json.dumps({"key": key, "response": json.dumps({"answer": key}), "headers": headers, "status_code": 200})
        for key in ("1a2b3c4d", "62816e25", "4a1c17f3")
    ]
    folder = fresh_cache(tmp_path / "cache", "\n".join(old) + "\n")
    enable_cachy(folder)
    with pytest.warns(CachyWarning, match=r"(?i)pycachy|original cachy") as warned:
        assert ask(upstream, 1) == 1  # its entries cannot hit: the request went live
    assert len(cachy_warnings(warned)) == 1
    assert re.search(r"(?i)\bhit", str(cachy_warnings(warned)[0].message))
