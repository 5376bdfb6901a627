"""The line format: one writer, and a reader that means what a line's fields say, whatever their order."""

from __future__ import annotations

import json
import random

import pytest
from helpers import CHAT, JSON, Upstream, entries

from cachy import disable_cachy, enable_cachy, lines
from cachy.cli import main


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
    assert lines.head_of(line) == lines.Head(parsed["key"], parsed["raw"], parsed["v"], parsed["n"])
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
    line = lines.entry_line(key, raw, 2, 1, {"method": "POST", "response": '{"v": 1, "n": 3}'})
    assert json.loads(line) == {
        "key": key,
        "raw": raw,
        "v": 2,
        "n": 1,
        "method": "POST",
        "response": '{"v": 1, "n": 3}',
    }
    assert line[lines.KEY_AT : lines.KEY_AT + lines.KEY_CHARS].decode() == key
    assert line[lines.RAW_AT : lines.RAW_END].decode() == raw
    assert line.startswith(lines.usual_head_end(2), lines.RAW_END)
    assert lines.head_of(line) == lines.Head(key, raw, 2, 1)
    assert lines.key_field("0123") in line


def test_an_occurrence_after_the_first_and_a_line_before_key_versions_read_as_their_fields_say():
    later = lines.entry_line("0123456789abcdef", "fedcba9876543210", 2, 3, {"method": "POST"})
    assert lines.head_of(later) == lines.Head("0123456789abcdef", "fedcba9876543210", 2, 3)
    before_versions = b'{"key": "0123456789abcdef", "method": "POST", "url": "u", "response": ""}\n'
    assert lines.head_of(before_versions) == lines.Head("0123456789abcdef", None, 1, 1)
