"""The line format of `cachy.jsonl`: the one writer of a line, and everything reading relies on, derived from it.

A line is a JSON object that starts with its key, the digest of the exact bytes sent, the key version and the
occurrence, in that order and spacing, so that loading a large file indexes a line by slicing it, without
parsing the rest. Every offset and pattern that reading uses is built here from the writer's own pieces, and
checked against a line the writer wrote once, at import: a change to the writer cannot leave a reader behind.
A line in any other order (a script's or an editor's rewrite) is parsed whole, and means what its fields say."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import fileio

KEY_CHARS = 16  # 64 bits of hex: 100k entries have a ~3e-10 chance of any two keys colliding
NEVER_STORED = frozenset({"content-encoding", "content-length", "transfer-encoding"})  # the body is stored decoded

# The head of a line, piece by piece, as `entry_line` writes it.
KEY_FIELD = b'{"key": "'
RAW_FIELD = b'", "raw": "'
_VERSION_FIELD = b'", "v": '
_OCCURRENCE_FIELD = b', "n": '
_REST = b", "  # before the rest of the fields, as `_ENCODER` writes them

KEY_AT = len(KEY_FIELD)  # where the key starts in a line
RAW_AT = KEY_AT + KEY_CHARS + len(RAW_FIELD)  # where the raw digest starts
RAW_END = RAW_AT + KEY_CHARS  # the start of a line up to here tells that a line is still where it was read
_HEX = rb"([0-9a-f]{%d})" % KEY_CHARS
HEAD = re.compile(
    re.escape(KEY_FIELD)
    + _HEX
    + re.escape(RAW_FIELD)
    + _HEX
    + re.escape(_VERSION_FIELD)
    + rb"(\d+)"
    + re.escape(_OCCURRENCE_FIELD)
    + rb"(\d+)"
    + re.escape(_REST)
)
"""The head of a line as cachy writes it: key, raw digest, version and occurrence, as groups."""

BOM = b"\xef\xbb\xbf"
CLOSE = ord("}")  # the last byte of an entry, before its newline
ORIGINAL_KEY = re.compile(r"[0-9a-f]{8}")  # the original cachy's keys
_KEY_FORM = re.compile(rf"[0-9a-f]{{{KEY_CHARS}}}|[0-9a-f]{{8}}")
_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)  # readable diffs; made once


def entry_line(key: str, raw: str, version: int, n: int, fields: dict) -> bytes:
    """The one place a line of `cachy.jsonl` is written: the head (`HEAD`), then `fields`, as JSON."""
    head = b"%s%s%s%s%s%d%s%d%s" % (
        KEY_FIELD,
        key.encode(),
        RAW_FIELD,
        raw.encode(),
        _VERSION_FIELD,
        version,
        _OCCURRENCE_FIELD,
        n,
        _REST,
    )
    return head + _ENCODER.encode(fields).encode()[1:] + b"\n"


def usual_head_end(version: int) -> bytes:
    """What follows the raw digest in the usual line, the first occurrence of a key written by `version`:
    a line whose bytes from `RAW_END` on start with it is indexed by its key, sliced from `KEY_AT`."""
    return b"%s%d%s1%s" % (_VERSION_FIELD, version, _OCCURRENCE_FIELD, _REST)


def key_field(key_start: str) -> bytes:
    """How a key, or its start, stands in a line as cachy writes it: to find the lines of a damaged entry."""
    return KEY_FIELD[1:] + key_start.encode()


def _check_layout() -> None:
    """The offsets and patterns above read a line of the writer's as a full parse does."""
    key, raw = "a" * KEY_CHARS, "b" * KEY_CHARS
    line = entry_line(key, raw, 7, 1, {"method": "GET"})
    match = HEAD.match(line)
    if not (
        json.loads(line) == {"key": key, "raw": raw, "v": 7, "n": 1, "method": "GET"}
        and match is not None
        and match.groups() == (key.encode(), raw.encode(), b"7", b"1")
        and line[KEY_AT : KEY_AT + KEY_CHARS] == key.encode()
        and line[RAW_AT:RAW_END] == raw.encode()
        and line.startswith(usual_head_end(7), RAW_END)
    ):
        raise RuntimeError("cachy's line format and its readers disagree")


_check_layout()


def slot(key: str, n: int) -> str:
    """Where occurrence `n` of a key is indexed: the key itself for the first, as every entry without repeats."""
    return key if n == 1 else f"{key}#{n}"


def parse_json(line: bytes) -> Any:
    """The JSON value of a line, or None when it is not JSON (or nested too deep to parse), as `json.loads`
    reads bytes. UTF-8 (BOM and lone surrogates included) is decoded first, without `json.loads`'s search for
    other encodings, which costs a hit more than a microsecond; only a line that fails so is searched (UTF-16)."""
    try:
        return json.loads(line.removeprefix(BOM).decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        pass
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


@dataclass(frozen=True)
class Head:
    """What the index needs of a line."""

    key: str
    raw: str | None
    version: int
    n: int

    @property
    def slot(self) -> str:
        return slot(self.key, self.n)


def head_of(line: bytes) -> Head | None:
    """The head of a line, or None when it is not an entry (blank, cut short, a conflict marker, another
    program's JSON). A line in the writer's order is read from its head; any other is parsed whole."""
    if line.endswith(b"}\n") and (match := HEAD.match(line)):
        key, raw, version, n = match.groups()
        return Head(key.decode(), raw.decode(), int(version), int(n))
    if len(line) < 3:  # a blank line, fast: files can hold millions
        return None
    entry = parse_json(line)
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or not _KEY_FORM.fullmatch(entry["key"]):
        return None  # another program's JSON lines: `{"key": "user1", ...}` is no entry of cachy's
    raw, version, n = entry.get("raw"), entry.get("v", 1), entry.get("n", 1)  # lines before key versions: 1
    if not (isinstance(version, int) and isinstance(n, int) and n >= 1 and (raw is None or isinstance(raw, str))):
        return None
    return Head(entry["key"], raw, version, n)


def holds(data: Any, wanted: str) -> bool:
    """Whether a parsed line is the entry for slot `wanted`: an index offset can outlive an edit of the file."""
    return isinstance(data, dict) and data.get("key") is not None and slot(data["key"], data.get("n", 1)) == wanted


@dataclass(slots=True)
class Entry:
    """A recorded response, as a hit replays it."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float = 0.0  # how long the live call took
    usage: dict[str, int] = field(default_factory=dict)  # tokens the provider reported: input, output
    recorded_at: str | None = None  # when, in UTC: what `max_age` reads
    echo: Any = None  # how the body refers to the request (see `echo`): None, the body is as it was sent


def entry_of(data: Any) -> Entry | None:
    """The response in a parsed line, or None when it has the wrong shape: each field is checked, since a hit
    must never fail inside `send` (SDKs would retry that as a "connection error")."""
    if not isinstance(data, dict):
        return None
    if "v" not in data and isinstance(data.get("key"), str) and ORIGINAL_KEY.fullmatch(data["key"]):
        data = _as_the_original_read_it(data)
    status, headers, response = data.get("status_code"), data.get("headers"), data.get("response")
    if type(status) is not int or not 100 <= status <= 599 or not isinstance(response, str):
        return None
    if not isinstance(headers, dict):
        return None
    kept = {}
    for name, value in headers.items():
        if not isinstance(value, str):
            return None
        if name.lower() not in NEVER_STORED:  # a hand edit: a stale content-encoding would break every hit
            kept[name] = value
    try:
        body = base64.b64decode(response, validate=True) if data.get("binary") else response.encode()
    except (binascii.Error, UnicodeEncodeError):  # bad base64; a lone surrogate escaped by a hand edit
        return None
    seconds, usage = data.get("seconds", 0.0), data.get("usage")
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        seconds = 0.0
    usage = {k: v for k, v in usage.items() if type(v) is int} if isinstance(usage, dict) else {}
    recorded_at = data.get("recorded_at")
    recorded_at = recorded_at if isinstance(recorded_at, str) else None
    return Entry(status, kept, body, float(seconds), usage, recorded_at, data.get("echo"))


def _as_the_original_read_it(data: dict) -> dict:
    """An entry the original cachy wrote, with what its early releases left out as it read them: status 200,
    no headers (absent, or null), not binary. A field that is there must still have the right type."""
    return {
        **data,
        "status_code": data.get("status_code", 200),
        "headers": {} if data.get("headers") is None else data["headers"],
    }


def scan(fd: int) -> Iterator[tuple[int, bytes, Head | None]]:
    """(line number, line, head or None if damaged) for every line, the first without its BOM, each checked
    whole: a line whose start is intact but whose entry is not (a hand edit) is damaged too."""
    for number, line in enumerate(fileio.lines(fd, 0), 1):
        text = line.removeprefix(BOM) if number == 1 else line
        if not text.endswith(b"\n") and isinstance(parse_json(text), dict):
            text += b"\n"  # a last line that is whole but for its newline (cut short, it would not parse)
        head = head_of(text) if text.endswith(b"\n") else None
        yield number, text, (head if head and entry_of(parse_json(text)) else None)
