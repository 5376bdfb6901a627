"""The lines of cachy.jsonl (cachy/lines.py, read in blocks by cachy/fileio.py): what makes a line an entry,
and lines that are damaged, cut, unfinished, deeply nested, of the wrong shape or written by another program
or by the original cachy, each skipped with one warning while the others still hit, wherever the blocks end;
and one writer, whose lines mean what their fields say, whatever their order."""

from __future__ import annotations

import json
import os
import random
import re
import time
import warnings

import pytest
from helpers import (
    CHAT,
    JSON,
    Upstream,
    answer_to,
    as_a_new_process,
    ask,
    counting,
    entries,
    fresh_cache,
    hand_edit,
    json_reply,
    n_of,
    numbered,
    record,
)

from cachy import CachyMiss, CachyWarning, compact_cachy, disable_cachy, enable_cachy, fileio
from cachy import lines as line_format
from cachy.cli import main


# -------------------------------------------------------------------------------- damaged lines
def key_of(line: str) -> str:
    return json.loads(line)["key"]


def cachy_warnings(warned) -> list:
    """The CachyWarnings among the warnings that `pytest.warns` caught."""
    return [warning for warning in warned if issubclass(warning.category, CachyWarning)]


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


def test_a_utf8_bom_at_the_start_of_the_file_does_not_hide_the_first_entry(tmp_path, upstream):
    lines = record(tmp_path / "scratch", upstream, [1, 2])
    folder = fresh_cache(tmp_path / "cache", "\ufeff" + "".join(lines))
    enable_cachy(folder)
    assert [ask(upstream, 1), ask(upstream, 2)] == [1, 2]
    result = compact_cachy(folder)
    assert (result.kept, result.damaged) == (2, [])
    assert sorted(entry["key"] for entry in entries(folder)) == sorted(key_of(line) for line in lines)


# ---------------------------------------------------------------------- an unfinished last line
def record_answers(folder, questions) -> list[str]:
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
    lines = record_answers(tmp_path, [1, 2, 3])
    other = record_answers(tmp_path / "elsewhere", [9])[0]
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
    lines = record_answers(tmp_path, [1, 2])
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
    lines = record_answers(tmp_path, [1, 2])
    other = record_answers(tmp_path / "elsewhere", [9])[0]
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


# --------------------------------------------------------------------------- deeply nested JSON
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


# ------------------------------------------------------------------- entries of the wrong shape
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


def test_a_stored_header_cachy_never_writes_cannot_break_a_hit(tmp_path):
    upstream = counting()
    enable_cachy(tmp_path)
    n_of(upstream.client(), {"q": 1})
    hand_edit(tmp_path, headers={"content-type": "application/json", "content-encoding": "gzip"})
    enable_cachy(tmp_path)
    assert n_of(upstream.client(), {"q": 1}) == 1


# ------------------------------------------------------------------ lines of the original cachy
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


# ------------------------------------------------------------------------ the writer, and field order
def recorded(tmp_path) -> tuple[dict, dict]:
    """A chat recorded once, and the entry it wrote: the first occurrence, key version 2."""
    upstream = Upstream(lambda request, n: (200, JSON, json.dumps({"answer": n}).encode()))
    enable_cachy(tmp_path)
    question = {"model": "m", "messages": [{"role": "user", "content": "héllo"}]}
    upstream.client().post(CHAT, json=question)
    disable_cachy()
    return question, entries(tmp_path)[0]


def shuffled(entry: dict, seed: int) -> dict:
    names = list(entry)
    random.Random(seed).shuffle(names)
    return {name: entry[name] for name in names}


def key_first_version_last(entry: dict) -> dict:
    rest = {name: value for name, value in entry.items() if name not in ("key", "v")}
    return {"key": entry["key"], **rest, "v": entry["v"]}


def key_then_method(entry: dict) -> dict:
    """The order that an old shortcut took for a line written before key versions."""
    return {"key": entry["key"], "method": entry["method"], **entry}


ORDERS = {
    "cachy's": lambda entry: entry,
    "key, then method": key_then_method,
    "sorted": lambda entry: dict(sorted(entry.items())),
    "reversed": lambda entry: dict(reversed(entry.items())),
    "key first, v last": key_first_version_last,
    **{f"shuffled {seed}": lambda entry, seed=seed: shuffled(entry, seed) for seed in range(8)},
}
WRITERS = {
    "json.dumps": lambda entry: json.dumps(entry),
    "compact, ASCII": lambda entry: json.dumps(entry, separators=(",", ":")),
    "UTF-8 as is": lambda entry: json.dumps(entry, ensure_ascii=False),
}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS)
@pytest.mark.parametrize("order", ORDERS.values(), ids=ORDERS)
def test_a_line_reads_as_its_fields_say_whatever_their_order(tmp_path, order, writer, capsys):
    """Observed: a line that starts `{"key": …, "method": …` and carries `"v": 2` further on was read as key
    version 1 by a shortcut for lines written before key versions, and cachy warned that the file holds entries
    of another key formula. Now every order reads as a full parse does: the head equals the parsed fields, the
    entry replays in replay mode, no warning is given (warnings fail the suite), and `cachy stats` counts it
    as version 2."""
    question, entry = recorded(tmp_path)
    line = (writer(order(entry)) + "\n").encode()
    parsed = json.loads(line)
    assert line_format.head_of(line) == line_format.Head(parsed["key"], parsed["raw"], parsed["v"], parsed["n"])
    (tmp_path / "cachy.jsonl").write_bytes(line)
    down = Upstream(lambda request, n: (500, JSON, b"the upstream is down"))
    enable_cachy(tmp_path, mode="replay")
    assert down.client().post(CHAT, json=question).json() == {"answer": 1}
    assert down.calls == 0
    disable_cachy()
    capsys.readouterr()
    assert main(["stats", str(tmp_path)]) == 0
    assert "key versions: 1 by version 2;" in capsys.readouterr().out


def test_the_writer_puts_the_head_where_the_reader_slices_it():
    """Every offset and pattern the loader uses comes from `lines`, and agrees with a line the writer wrote."""
    key, raw = "0123456789abcdef", "fedcba9876543210"
    line = line_format.entry_line(key, raw, 2, 1, {"method": "POST", "response": '{"v": 1, "n": 3}'})
    assert json.loads(line) == {
        "key": key,
        "raw": raw,
        "v": 2,
        "n": 1,
        "method": "POST",
        "response": '{"v": 1, "n": 3}',
    }
    assert line[line_format.KEY_AT : line_format.KEY_AT + line_format.KEY_CHARS].decode() == key
    assert line[line_format.RAW_AT : line_format.RAW_END].decode() == raw
    assert line.startswith(line_format.usual_head_end(2), line_format.RAW_END)
    assert line_format.head_of(line) == line_format.Head(key, raw, 2, 1)
    assert line_format.key_field("0123") in line


def test_an_occurrence_after_the_first_and_a_line_before_key_versions_read_as_their_fields_say():
    later = line_format.entry_line("0123456789abcdef", "fedcba9876543210", 2, 3, {"method": "POST"})
    assert line_format.head_of(later) == line_format.Head("0123456789abcdef", "fedcba9876543210", 2, 3)
    before_versions = b'{"key": "0123456789abcdef", "method": "POST", "url": "u", "response": ""}\n'
    assert line_format.head_of(before_versions) == line_format.Head("0123456789abcdef", None, 1, 1)


def test_a_file_saved_as_utf16_is_read_as_json_loads_reads_it(tmp_path):
    """Observed (review of the line reader): a file saved as UTF-16-BE was read line by line by `json.loads(bytes)`,
    which detects the encoding, and its entries replayed; reading UTF-8 alone, for speed, made every line damaged.
    A line that is not UTF-8 JSON is now read as `json.loads` reads it. (Little-endian lines split at their
    newline before its zero byte, so neither reader ever read them.)"""
    question, entry = recorded(tmp_path)
    (tmp_path / "cachy.jsonl").write_bytes((json.dumps(entry) + "\n").encode("utf-16-be"))
    down = Upstream(lambda request, n: (500, JSON, b"the upstream is down"))
    enable_cachy(tmp_path, mode="replay")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CachyWarning)  # a UTF-16 line splits oddly at its newline
        answer = down.client().post(CHAT, json=question)
    assert answer.json() == {"answer": 1}
    assert down.calls == 0


def test_a_response_with_an_escaped_lone_surrogate_is_a_damaged_entry_not_a_failure(tmp_path):
    """Observed (review of the line reader): a line whose `response` held a JSON-escaped lone surrogate (a hand
    edit, another program) raised UnicodeEncodeError inside `send`, which SDKs retry as a connection error. It is
    now a damaged entry: skipped with a warning, and the call goes live."""
    question, entry = recorded(tmp_path)
    line = json.dumps({**entry, "response": "\udce9"}) + "\n"  # json.dumps escapes it: \\udce9
    (tmp_path / "cachy.jsonl").write_text(line)
    live = Upstream(lambda request, n: (200, JSON, b'{"live": true}'))
    enable_cachy(tmp_path)
    with pytest.warns(CachyWarning, match="damaged"):
        assert live.client().post(CHAT, json=question).json() == {"live": True}
    assert live.calls == 1
