"""Why a request missed: a small fingerprint of each recorded request's fields, compared with the request
that missed, and the sentence that says where they differ.

A replay miss in CI is a failure someone has to fix without the recording machine at hand, so the miss names
the fields that changed (`messages[2].content`, `temperature`), from a fingerprint of under 200 bytes that holds
neither the request's text nor any header. It is stored with each entry, and read only when a miss needs it."""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .lines import parse_json, slot

_FINGERPRINT_BITS = 960  # 160 characters of base64: with ~100 fields held, a change goes unnamed ~1.5% of the time
_FINGERPRINT_DEPTH = 4  # `tools[0].function.description` is a field; anything deeper is hashed into its parent
_LONG_LIST = 64  # a list of more elements, or whose elements hold more than 128 fields, is held by its two ends:
_WHOLE_FIELDS = 128
_ENDS_FIELDS = (24, 72)  # its first elements up to 24 fields, its last up to 72: ~100 fields, whatever a message holds
_BASE64_CHARS = 4 * math.ceil(_FINGERPRINT_BITS / 8 / 3)  # the filter's length in a fingerprint
_LIST_FORM = r"[0-9a-f]{8}=\d+\.\d+\.\d+"  # a long list's hashed path (`_path_id`), length, and ends held
_FINGERPRINT_FORM = re.compile(rf"\d+:[A-Za-z0-9+/=]{{{_BASE64_CHARS}}}:(?:{_LIST_FORM}(?:,{_LIST_FORM})*)?")
_VALUE_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)  # a field's value


def _utf8(text: str) -> bytes:
    """`text` as bytes to hash; a lone surrogate (valid JSON: `"\\udce9"`, from a file name) passes through."""
    return text.encode("utf-8", "surrogatepass")


def _path_id(path: str) -> str:
    """A list's path as the fingerprint names it: hashed, as the fingerprint holds none of the request's words."""
    return f"{zlib.crc32(_utf8(path)):08x}"


class _Fields(list):
    """(JSON path, value) pairs of a request body, and what its long lists were: when fingerprinting, their
    lengths and how many elements each end held, by hashed path; when comparing, the ranges of elements
    a fingerprint cannot hold (new, or gone), and which of its long lists were found again."""

    def __init__(self):
        super().__init__()
        self.long_lists: dict[str, tuple[int, int, int]] = {}
        self.beyond: list[tuple[str, int, int]] = []
        self.found: set[str] = set()


def request_fields(
    document: Any,
    recorded: dict[str, tuple[int, int, int]] | None = None,
    path: str = "",
    depth: int = 0,
    into: _Fields | None = None,
) -> _Fields:
    """(JSON path, value) of a request body's fields, down to a fixed depth: the names a miss explains itself by.
    To compare with a fingerprint, `recorded` holds its long lists."""
    into = _Fields() if into is None else into
    if depth < _FINGERPRINT_DEPTH and isinstance(document, dict) and document:
        for name, value in document.items():
            request_fields(value, recorded, f"{path}.{name}" if path else name, depth + 1, into)
    elif depth < _FINGERPRINT_DEPTH and isinstance(document, list) and document and not _of_values(document):
        _list_fields(document, recorded, path, depth, into)
    else:
        value = document if isinstance(document, str) else _VALUE_JSON.encode(document)
        into.append((path or "(the body)", _utf8(value)))
    return into


def _of_values(items: list) -> bool:
    """A long list of plain values (token ids, texts to embed) is one field: too many elements to name."""
    return len(items) > _LONG_LIST and not isinstance(items[0], (dict, list))


def _list_fields(
    items: list, recorded: dict[str, tuple[int, int, int]] | None, path: str, depth: int, into: _Fields
) -> None:
    """The fields of a list's elements: all of a short list's; of a long one, its two ends', where a chat
    changes (its system prompt, its latest turns), which keeps a long chat's miss as cheap as a short one's
    and its Bloom filter as empty. Compared with a fingerprint, the elements it held; those past the end of
    the recorded list are new, and named as a range without being hashed, as are those gone."""
    length, path_id = len(items), _path_id(path)

    def walk(index: int) -> None:
        request_fields(items[index], recorded, f"{path}[{index}]", depth + 1, into)

    if recorded is None:  # fingerprinting
        start, lists = len(into), len(into.long_lists)
        if length <= _LONG_LIST:
            for index in range(length):
                walk(index)
            if len(into) - start <= _WHOLE_FIELDS:
                return
            del into[start:]  # too many fields to hold whole, as an agent's chat of a few fields a message
            for inner in list(into.long_lists)[lists:]:
                del into.long_lists[inner]
        first = _walk_ends(range(length), _ENDS_FIELDS[0], walk, into)
        last = _walk_ends(range(length - 1, first - 1, -1), _ENDS_FIELDS[1], walk, into)
        into.long_lists[path_id] = (length, first, last)
        return
    held = None if recorded is None else recorded.get(path_id)
    if held is None:  # held whole: at most 64 elements, if the recorded request had a list here
        end = min(length, _LONG_LIST)
        indexes: Iterable[int] = range(end)
    else:
        into.found.add(path_id)
        held_length, first, last = held
        end = min(length, held_length)
        indexes = [index for index in (*range(first), *range(held_length - last, held_length)) if index < length]
    for index in indexes:
        walk(index)
    for start, stop in ((end, length), (length, held[0] if held else 0)):  # elements new here, elements gone
        if stop > start:
            into.beyond.append((path, start, stop))


def _walk_ends(indexes: Iterable[int], budget: int, walk: Callable[[int], None], into: _Fields) -> int:
    """Walk elements in the order of `indexes` until they hold `budget` fields; how many it walked."""
    start, walked = len(into), 0
    for index in indexes:
        if len(into) - start >= budget:
            break
        walk(index)
        walked += 1
    return walked


def field_bits(path: str, value: bytes) -> tuple[int, int, int, int]:
    """The filter's four bits for one field, by double hashing."""
    first = zlib.crc32(value, zlib.crc32(_utf8(path)))
    step = zlib.crc32(value, first) | 1
    return (
        first % _FINGERPRINT_BITS,
        (first + step) % _FINGERPRINT_BITS,
        (first + 2 * step) % _FINGERPRINT_BITS,
        (first + 3 * step) % _FINGERPRINT_BITS,
    )


def fingerprint(document: Any) -> str:
    """A Bloom filter of the body's (path, value) pairs, their count, and how its long lists were held: enough
    to name the fields in which a later request differs, in under 200 bytes for a chat, with neither the
    request's text nor any header."""
    bits = bytearray(_FINGERPRINT_BITS // 8)
    fields = request_fields(document)
    for path, value in fields:
        for bit in field_bits(path, value):
            bits[bit >> 3] |= 1 << (bit & 7)
    lists = ",".join(
        f"{path_id}={length}.{first}.{last}" for path_id, (length, first, last) in fields.long_lists.items()
    )
    return f"{len(fields)}:{base64.b64encode(bits).decode()}:{lists}"


@dataclass
class _Differences:
    """Where a request differs from a fingerprinted one, and how many more fields the recorded one had: exactly,
    when `more_is_exact`, else at least that many. `weight` ranks candidates: a range of elements new or gone
    weighs as many differences as it spans, so a recorded chat of the same length beats its shorter prefixes."""

    paths: list[str]
    more: int
    more_is_exact: bool
    weight: int


_ELEMENT = re.compile(r"(.*)\[(\d+)\]")


def _differences(document: Any, fingerprint: str) -> _Differences:
    """Compare `document` with a fingerprint. Only what the fingerprint holds is compared, so a field that did
    not change is never named; a changed one goes unnamed only when its hashes collide. A list element new as
    a whole is named once (`messages[3]`), and a run of them, or of elements new past the recorded end or
    gone, as one range (`messages[100:300]`), listed first."""
    count, encoded, lists = fingerprint.split(":")
    bits = base64.b64decode(encoded)
    recorded = {}
    for item in filter(None, lists.split(",")):
        path_id, _, held = item.partition("=")
        length, first, last = map(int, held.split("."))
        recorded[path_id] = (length, first, last)
    fields = request_fields(document, recorded)
    differing = {
        path for path, value in fields if not all(bits[b >> 3] >> (b & 7) & 1 for b in field_bits(path, value))
    }
    elements: dict[str, list[str]] = {}
    for path, _ in fields:
        elements.setdefault(re.sub(r"(\[\d+\]).*", r"\1", path), []).append(path)
    named, runs = [], list(fields.beyond)
    for element, paths in elements.items():
        inside = [path for path in paths if path in differing]
        whole = _ELEMENT.fullmatch(element) if len(inside) == len(paths) > 1 else None
        if whole:
            runs.append((whole.group(1), int(whole.group(2)), int(whole.group(2)) + 1))
        else:
            named += inside
    ranges = _merged(runs)
    weight = len(named) + sum(stop - start for _, start, stop in ranges)
    more = 0 if fields.beyond else max(0, int(count) - len(fields))  # a range named says it better than a count
    shown = [f"{path}[{start}]" if stop == start + 1 else f"{path}[{start}:{stop}]" for path, start, stop in ranges]
    return _Differences(shown + named, more, fields.found == set(recorded), weight + more)


def _merged(runs: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """(list path, start, stop) runs of elements, those that touch merged, in order."""
    merged: list[tuple[str, int, int]] = []
    for path, start, stop in sorted(runs):
        if merged and merged[-1][0] == path and merged[-1][2] >= start:
            merged[-1] = (path, merged[-1][1], max(stop, merged[-1][2]))
        else:
            merged.append((path, start, stop))
    return merged


def recorded_requests(file_lines: Iterable[bytes], method: str, url: str) -> list[dict[str, Any]]:
    """What the entries recorded for `method` and `url` tell of their requests, the last of each slot: key,
    key version, stream flag and fingerprint, as `explain` compares them. Lines are found by their URL's JSON,
    then parsed whole, so that a line means what its fields say, whatever their order."""
    needle = json.dumps(url, ensure_ascii=False).encode()
    found = {}
    for line in file_lines:
        data = parse_json(line) if needle in line else None
        if (
            isinstance(data, dict)
            and (data.get("method"), data.get("url")) == (method, url)
            and isinstance(data.get("key"), str)
        ):
            found[slot(data["key"], data.get("n", 1))] = {
                name: data[name] for name in ("key", "v", "stream", "shape") if name in data
            }
    return list(found.values())


def explain(
    method: str, url: str, key: str, n: int, stream: bool, document: Any, recorded: list[dict[str, Any]]
) -> str:
    """Why a request missed: the closest of the requests `recorded` for its endpoint, and the fields that differ.
    `document` is the request's JSON body (None if it has none); each recorded one is what the store read of an
    entry: its key, key version, stream flag and fingerprint."""
    if not recorded:
        return f"Nothing is recorded for {method} {urlsplit(url).path}"
    same = [entry for entry in recorded if entry["key"] == key]
    if same:
        return f"This request is recorded {len(same)} times; this is occurrence {n}"
    if document is None:
        return f"{len(recorded)} requests are recorded for this endpoint; this body is not JSON, so cachy cannot say where it differs"
    compared = [
        (_differences(document, entry["shape"]), entry)
        for entry in recorded
        if isinstance(entry.get("shape"), str) and _FINGERPRINT_FORM.fullmatch(entry["shape"])
    ]
    if not compared:
        return f"{len(recorded)} requests are recorded for this endpoint, none with a fingerprint to compare with"
    differences, closest = min(compared, key=lambda pair: pair[0].weight)
    paths, more = differences.paths, differences.more
    where = f"The closest recorded request (key {closest['key']})"
    streaming = ""
    if bool(closest.get("stream")) != stream:
        streaming = "this request streams and it did not" if stream else "it streamed and this request does not"
    if not paths and not more:
        if streaming:
            return f"{where} shows no difference in its body, but {streaming}"
        return (
            f"{where} looks the same: it may differ where its fingerprint does not look (deeper, or in the "
            f"middle of a long list), or be of key version {closest.get('v', 1)}"
        )
    differs = ", ".join(paths[:8]) + (f" and {len(paths) - 8} more" if len(paths) > 8 else "")
    extra = f"; it had {'' if differences.more_is_exact else 'at least '}{more} more fields" if more else ""
    return f"{where} differs in {differs or 'fields it lacks'}{extra}" + (f"; and {streaming}" if streaming else "")
