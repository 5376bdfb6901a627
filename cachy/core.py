"""Cache LLM API calls in a `cachy.jsonl` file: the key, the store, the engine, and the httpx patch.

`enable_cachy()` patches `Client.send` and `AsyncClient.send` of httpx (and of httpx2 when it is
installed). A request to a known LLM host is keyed deterministically, answered from the file when
seen before, and recorded otherwise. The requests and aiohttp adapters, in their own modules, hand
their requests to the same engine.

The public API is what `cachy/__init__.py` exports. The unprefixed names here that it does not export
(`Call`, `Engine`, `Entry`, `Store`, `route`, `sending`, `public_url`, `scan_file`...) are this package's
internal interface: the adapters, the command line and the plugin use them, and they may change.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import datetime
import functools
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
from fastcore.meta import delegates

from .lazy import PatchOnImport

try:
    import httpx2
except ImportError:  # optional: only the newest openai, anthropic and google-genai use it
    httpx2 = None

_HTTPX = tuple(module for module in (httpx, httpx2) if module is not None)
_HTTP_ERRORS = tuple(module.HTTPError for module in _HTTPX)

doms: tuple[str, ...] = (
    "api.openai.com",
    "chatgpt.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "api.deepseek.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.together.xyz",
    "api.together.ai",
    "api.fireworks.ai",
    "openrouter.ai",
    "api.x.ai",
    "api.moonshot.ai",
    "api.moonshot.cn",
)
MODES = ("record", "replay", "refresh")
KEY_VERSION = 2  # bump on any change to what enters the key; the README keeps their changelog
KEY_CHARS = 16  # 64 bits: 100k entries have a ~3e-10 chance of any two keys colliding


class CachyMiss(BaseException):
    """Replay mode found no recorded response for a request.

    Like pytest's own outcomes it derives from BaseException: SDKs (anthropic, for one) retry, then re-wrap
    as a "connection error", an Exception raised inside `send`, and this one must reach you at once."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of the traceback: the message first, then only the lines of the user's own
        code that led here (a notebook cell's); the frames of cachy, httpx and the SDK add nothing to the message."""
        from IPython import get_ipython  # only IPython calls this

        cell_name = getattr(getattr(get_ipython(), "compile", None), "format_code_name", None)  # IPython >= 8.7
        lines = [f"CachyMiss: {self}"]
        for frame in traceback.extract_tb(self.__traceback__):
            if not frame.filename.startswith(_library_folders()):
                cell = cell_name(frame.filename) if cell_name else None  # ("Cell", "In[3]"), None for a file
                lines.append(f"  {' '.join(cell) if cell else frame.filename}, line {frame.lineno}: {frame.line}")
        return lines


class CachyWarning(UserWarning):
    """Something in `cachy.jsonl` needs your attention: damaged lines, stale keys, an entry not saved."""


def _warn(message: str) -> None:
    """Warn at the user's own line that led here (a notebook cell, a test), not inside cachy or an SDK."""
    warnings.warn(message, CachyWarning, stacklevel=_user_stacklevel())


@functools.cache
def _library_folders() -> tuple[str, ...]:
    """Where cachy, the standard library and installed packages (httpx, the SDKs, IPython) live: not the user's code."""
    import sysconfig  # 10 ms: only once a warning or an error is shown

    paths = (
        os.path.dirname(__file__),
        *(sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")),
    )
    return tuple({os.path.join(path, "") for path in paths})


def _user_stacklevel() -> int:
    """The `stacklevel`, for `_warn`'s call to `warnings.warn`, of the nearest line of the user's own code."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_library_folders()):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2


# ---------------------------------------------------------------------------------- request key
class _Folders(dict):
    """Absolute folders and their placeholders. As a rule's replacement it names the folder that matched; the
    engine adds the project's folders to it at enable time, so that all folders are matched in one rule."""

    def __call__(self, match: re.Match) -> str:
        return self[match.group()]

    def rule(self) -> tuple[str, _Folders]:
        """One alternation, longest folder first: a venv inside the project or home is named as the venv.
        Each folder is matched whole: not inside a longer name, nor after another path or word, though a
        JSON escape (`\\n`) may precede it. Its literal comes first, which keeps the scan fast."""
        folders = [path for path in self if len(path) > 1]  # never the root folder itself
        forms = _Folders({form: self[path] for path in folders for form in (path, json.dumps(path)[1:-1])})
        boundary = r"(?:(?<![\w./-])|(?<=\\[nrt]))"
        alternatives = [
            f"{re.escape(form)}(?<={boundary}{re.escape(form)})" for form in sorted(forms, key=len, reverse=True)
        ]
        return rf"(?:{'|'.join(alternatives)})(?![\w.-])", forms


def _machine_rules() -> list[tuple[str, Any]]:
    """What differs between two machines that run the same code: where packages, Python and home are."""
    folders = _Folders({sys.base_prefix: "<python>", sys.prefix: "<python>", str(Path.home()): "~"})
    return [
        # A literal first keeps the scan fast; bounded segments keep a long run of slashes linear.
        (r"/(?:[^/\s\"'<>]{1,100}/){0,16}?(?:site|dist)-packages(?=/)", "<site-packages>"),
        folders.rule(),
    ]


key_rules: list[tuple[str, Any]] = [
    *_machine_rules(),
    # a notebook cell's file, per kernel, in the temp folder of Linux, macOS or Windows
    (r"(?:/tmp|/var/folders/[\w-]+/[\w-]+/T)/ipykernel_\d+/\d+\.py", "<tmp>/ipykernel/<cell>.py"),
    (r"ipykernel_\d+([/\\]+)\d+\.py", r"ipykernel\1<cell>.py"),
    (r"<ipython-input-\d+-[0-9a-f]+>", "<ipython-input>"),  # the same, in older IPython
    (r" at 0x[0-9a-fA-F]{6,16}>", " at 0x…>"),  # memory addresses in reprs: <function f at 0x7f…>
    # tempfile's names (tmp and 8 characters) in the temp folders of Linux and macOS
    (r"(?:/tmp|/var/folders/[\w-]+/[\w-]+/T)/tmp[a-z0-9_]{8}(?![\w.-])", "<tmp>"),
    (r'("prompt_cache_key"\s*:\s*)"[^"]*"', r'\1"…"'),  # a per-session id that wrappers generate
]
"""(pattern, replacement) pairs applied, in order, to a request body's text before it is hashed, so that what
changes between two runs of unchanged code does not change the key. A replacement is what `re.sub` takes: a
string or a function of the match. Only the key changes: the body sent and stored is untouched. Extend it
before `enable_cachy`; at enable time cachy adds the project's folders (`<project>`) to the folders rule."""


@dataclass(slots=True)  # not frozen: each request makes one, and frozen dataclasses are slow to make
class Call:
    """A request as every transport adapter hands it to the engine."""

    method: str
    url: str  # as sent: the engine strips credentials
    body: bytes
    headers: Mapping[str, str]  # the request's, case-insensitive; only a multipart boundary is read from them
    stream: bool


_SECRET_PARAMS = frozenset(
    [
        "key",
        "api_key",
        "apikey",
        "x_api_key",
        "x_goog_api_key",
        "access_token",
        "accesstoken",
        "id_token",
        "refresh_token",
        "session_token",
        "token",
        "auth",
        "sig",
        "signature",
        "secret",
        "client_secret",
        "password",
        "bearer",
        "authorization",
    ]
)


def _is_secret_param(name: str) -> bool:
    """Credential query parameters, whatever their case, separator or padding: `API_KEY`, `apiKey`, `access-token`."""
    return name.strip().strip("\0").lower().replace("-", "_") in _SECRET_PARAMS


@functools.lru_cache(maxsize=1024)  # a program calls a few endpoints many times
def public_url(url: str) -> str:
    """`url` without user and password, credential query parameters or a default port (requests keeps `:443`,
    httpx drops it): fit to hash, store and print, and alike whichever transport sent it."""
    if "?" not in url and "@" not in url and "#" not in url and url.count(":") == 1:  # the usual case, at no cost
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None and (parts.scheme, parts.port) not in (("https", 443), ("http", 80)):
        netloc += f":{parts.port}"
    query = parts.query.replace(";", "&")  # some servers split on both
    params = [(name, value) for name, value in parse_qsl(query, keep_blank_values=True) if not _is_secret_param(name)]
    return urlunsplit(
        (parts.scheme, netloc, parts.path, urlencode(params, quote_via=quote), "")
    )  # no fragment: never sent


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)
_BOUNDARY = re.compile(r'boundary="?([^";\s]+)')


def _normalised(call: Call, rules: list[tuple[re.Pattern, str]]) -> tuple[bytes, Any]:
    """The body with what differs between identical calls made constant (the multipart boundary, the
    `key_rules`, JSON key order), and the JSON document it holds, if any, whatever its content-type says."""
    body = call.body
    if body.startswith(b"--") and (boundary := _BOUNDARY.search(call.headers.get("content-type", ""))):
        return body.replace(boundary.group(1).encode(), b"cachy-boundary"), None
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return body, None
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    try:
        document = json.loads(text)
        return _CANONICAL_JSON.encode(document).encode(), document
    except (ValueError, RecursionError):
        return text.encode(), None


def _digest(head: str, body: bytes) -> str:
    digest = hashlib.sha256(head.encode())
    digest.update(body)
    return digest.hexdigest()[:KEY_CHARS]


_KEYED_HEADERS = ("anthropic-beta", "openai-beta")  # they change the answer; other headers stay out of the key


def _head(call: Call, url: str) -> str:
    head = f"{call.method}\n{url}\n{int(call.stream)}\n"
    for name in _KEYED_HEADERS:
        if name in call.headers:
            head += f"{name}: {call.headers[name]}\n"
    return head


def _key(head: str, body: bytes) -> str:
    """Method, public URL, stream flag and normalised body. Headers stay out, so a rotated API key still hits."""
    return _digest(head, body)


def _raw_digest(head: str, call: Call) -> str:
    """The digest of the exact bytes sent: a re-run sends the same bytes, and is found without parsing JSON."""
    return _digest("raw\n" + head, call.body)


def _compiled(projects: Iterable[Path]) -> list[tuple[re.Pattern, Any]]:
    """`key_rules` as they stand, compiled, with the project's folders joined to the folders rule."""
    compiled = []
    for pattern, replacement in key_rules:
        if isinstance(replacement, _Folders):
            pattern, replacement = _Folders({**dict.fromkeys(map(str, projects), "<project>"), **replacement}).rule()
        compiled.append((re.compile(pattern), replacement))
    return compiled


def request_key(request: httpx.Request, stream: bool = False) -> str:
    """The key of an httpx (or httpx2) request under the current configuration, for tools and debugging."""
    engine = _current_engine()
    rules = engine.rules if engine else _compiled([default_cache_dir()])
    call = _call_of(request, stream)
    return _key(_head(call, public_url(call.url)), _normalised(call, rules)[0])


# ------------------------------------------------------------------ why a request missed, what it cost
_FINGERPRINT_BITS = 960  # 160 characters of base64: with ~100 fields held, a change goes unnamed ~1.5% of the time
_FINGERPRINT_DEPTH = 4  # `tools[0].function.description` is a field; anything deeper is hashed into its parent
_LONG_LIST = 64  # a list of more elements, or whose elements hold more than 128 fields, is held by its two ends:
_WHOLE_FIELDS = 128
_ENDS_FIELDS = (24, 72)  # its first elements up to 24 fields, its last up to 72: ~100 fields, whatever a message holds
_FINGERPRINT_FORM = re.compile(r"\d+:[A-Za-z0-9+/]{160}:(?:[0-9a-f]{8}=\d+\.\d+\.\d+(?:,[0-9a-f]{8}=\d+\.\d+\.\d+)*)?")


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


def _fields(
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
            _fields(value, recorded, f"{path}.{name}" if path else name, depth + 1, into)
    elif depth < _FINGERPRINT_DEPTH and isinstance(document, list) and document and not _of_values(document):
        _list_fields(document, recorded, path, depth, into)
    else:
        value = document if isinstance(document, str) else _CANONICAL_JSON.encode(document)
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
        _fields(items[index], recorded, f"{path}[{index}]", depth + 1, into)

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


def _bits(path: str, value: bytes) -> tuple[int, int, int, int]:
    """The filter's four bits for one field, by double hashing."""
    first = zlib.crc32(value, zlib.crc32(_utf8(path)))
    step = zlib.crc32(value, first) | 1
    return (
        first % _FINGERPRINT_BITS,
        (first + step) % _FINGERPRINT_BITS,
        (first + 2 * step) % _FINGERPRINT_BITS,
        (first + 3 * step) % _FINGERPRINT_BITS,
    )


def _fingerprint(document: Any) -> str:
    """A Bloom filter of the body's (path, value) pairs, their count, and how its long lists were held: enough
    to name the fields in which a later request differs, in under 200 bytes for a chat, with neither the
    request's text nor any header."""
    bits = bytearray(_FINGERPRINT_BITS // 8)
    fields = _fields(document)
    for path, value in fields:
        for bit in _bits(path, value):
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
    fields = _fields(document, recorded)
    differing = {path for path, value in fields if not all(bits[b >> 3] >> (b & 7) & 1 for b in _bits(path, value))}
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


def _usage(body: bytes) -> dict[str, int]:
    """The tokens the provider reported: openai's and anthropic's `usage`, gemini's `usageMetadata`. In a stream
    (server-sent events) the last report of each count wins, as anthropic reports output tokens at the end."""
    if b"sage" not in body:  # usage, usageMetadata: most bodies are rejected without parsing
        return {}
    if body.startswith(b"data:") or b"\ndata:" in body:  # server-sent events, some opening with a comment
        documents = [
            _parse_json(line[5:]) for line in body.split(b"\n") if line.startswith(b"data:") and b"sage" in line
        ]
    else:
        document = _parse_json(body)
        documents = document if isinstance(document, list) else [document]
    usage: dict[str, int] = {}
    for document in documents:
        if not isinstance(document, dict):
            continue
        nested = [document.get(name) for name in ("message", "response")]
        for report in (
            document.get("usage"),
            document.get("usageMetadata"),
            *(n.get("usage") for n in nested if isinstance(n, dict)),
        ):
            if isinstance(report, dict):
                usage |= _counts(report)
    return usage


_TOKEN_NAMES = {
    "input": ("prompt_tokens", "input_tokens", "promptTokenCount"),
    "output": ("completion_tokens", "output_tokens", "candidatesTokenCount"),
}


def _counts(report: dict) -> dict[str, int]:
    counts = {}
    for count, names in _TOKEN_NAMES.items():
        found = [report[name] for name in names if type(report.get(name)) is int]
        if found:
            counts[count] = found[0]
    return counts


# -------------------------------------------------------------------------------- the line format
_LINE_HEAD = re.compile(rb'\{"key": "([0-9a-f]{16})", "raw": "([0-9a-f]{16})", "v": (\d+), "n": (\d+), ')
_USUAL_HEAD = b'", "v": %d, "n": 1, ' % KEY_VERSION  # at byte 52 of a line: its slot is its key
_V1_LINE_HEAD = re.compile(rb'\{"key": "([0-9a-f]{16})", "method": ')  # as cachy wrote lines before key versions
_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)  # readable diffs; made once


def _entry_line(key: str, raw: str, n: int, fields: dict) -> bytes:
    """The one place a line of `cachy.jsonl` is written. Invariant: it starts with key, raw, v and n, in that
    order and spacing (`_LINE_HEAD`), so that loading indexes a line without parsing the rest of its JSON."""
    entry = {"key": key, "raw": raw, "v": KEY_VERSION, "n": n, **fields}
    return _ENCODER.encode(entry).encode() + b"\n"


@dataclass(frozen=True)
class _Head:
    """What the index needs of a line."""

    key: str
    raw: str | None
    version: int
    n: int

    @property
    def slot(self) -> str:
        return _slot(self.key, self.n)


def _slot(key: str, n: int) -> str:
    """Where occurrence `n` of a key is indexed: the key itself for the first, as every entry without repeats."""
    return key if n == 1 else f"{key}#{n}"


def _parse_json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _head_of(line: bytes) -> _Head | None:
    """The head of a line, or None when it is not an entry (blank, cut short, a conflict marker)."""
    if line.endswith(b"}\n"):
        if match := _LINE_HEAD.match(line):
            key, raw, version, n = match.groups()
            return _Head(key.decode(), raw.decode(), int(version), int(n))
        if match := _V1_LINE_HEAD.match(line):
            return _Head(match.group(1).decode(), None, 1, 1)
    if len(line) < 3:  # a blank line, fast: files can hold millions
        return None
    entry = _parse_json(line)
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or not _KEY_FORM.fullmatch(entry["key"]):
        return None  # another program's JSON lines: `{"key": "user1", ...}` is no entry of cachy's
    key = entry["key"]
    raw, version, n = entry.get("raw"), entry.get("v", 1), entry.get("n", 1)
    if not (isinstance(version, int) and isinstance(n, int) and n >= 1 and (raw is None or isinstance(raw, str))):
        return None
    return _Head(key, raw, version, n)


@dataclass(slots=True)
class Entry:
    """A recorded response, as a hit replays it."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float = 0.0  # how long the live call took
    usage: dict[str, int] = field(default_factory=dict)  # tokens the provider reported: input, output


def _entry_of(data: Any) -> Entry | None:
    """The response in a parsed line, or None when it has the wrong shape: each field is checked, since a hit
    must never fail inside `send` (SDKs would retry that as a "connection error")."""
    if not isinstance(data, dict):
        return None
    status, headers, response = data.get("status_code"), data.get("headers"), data.get("response")
    if type(status) is not int or not 100 <= status <= 599 or not isinstance(response, str):
        return None
    if not isinstance(headers, dict):
        return None
    kept = {}
    for name, value in headers.items():
        if not isinstance(value, str):
            return None
        if name.lower() not in _NEVER_STORED:  # a hand edit: a stale content-encoding would break every hit
            kept[name] = value
    try:
        body = base64.b64decode(response, validate=True) if data.get("binary") else response.encode()
    except binascii.Error:
        return None
    seconds, usage = data.get("seconds", 0.0), data.get("usage")
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        seconds = 0.0
    usage = {k: v for k, v in usage.items() if type(v) is int} if isinstance(usage, dict) else {}
    return Entry(status, kept, body, float(seconds), usage)


# ---------------------------------------------------------------------------------------- store
if os.name == "nt":
    import msvcrt

    _LOCK_OFFSET = 2**40  # a byte far past the end: Windows locks are mandatory, and must not block reads

    def _lock(fd: int) -> None:
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        while True:  # LK_LOCK gives up after 10 s; a writer holding the lock that long is still no reason to fail
            try:
                return msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            except OSError:
                continue

    def _unlock(fd: int) -> None:
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    def _read_at(fd: int, size: int, offset: int) -> bytes:
        os.lseek(fd, offset, os.SEEK_SET)  # callers hold the store's mutex
        return os.read(fd, size)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    _read_at = os.pread

_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_BOM = b"\xef\xbb\xbf"
_CLOSE = ord("}")  # the last byte of an entry, before its newline
_HEAD_BYTES = 52  # a line's start, to its raw digest: what tells that the last line read is still in its place
_ORIGINAL_KEY = re.compile(r"[0-9a-f]{8}")  # the original cachy's keys
_KEY_FORM = re.compile(r"[0-9a-f]{16}|[0-9a-f]{8}")


def _read_line(fd: int, offset: int) -> bytes:
    """The whole line that starts at `offset`, newline included (less, if the file ends first)."""
    chunks, size = [], 8192  # most lines fit: a larger first read would copy more than the line
    while chunk := _read_at(fd, size, offset):
        size = 1 << 20
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[: end + 1])
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


_BLOCK = 1 << 18  # what a load reads at once: large enough for few reads, small enough to stay in cache


def _line_blocks(fd: int, offset: int) -> Iterator[tuple[int, bytes, int]]:
    """The file from `offset` on as (offset of the block, block, end of its whole lines): the next block is
    read from `end` on, so a line cut by a block's end is read whole with the next. An unfinished last line
    comes alone, with an end of 0. Read with `pread` into fresh bytes, so no buffer outlives a load."""
    size = _BLOCK
    while block := _read_at(fd, size, offset):
        end = block.rfind(b"\n") + 1
        if end:
            yield offset, block, end
            offset, size = offset + end, _BLOCK
        elif len(block) < size:  # the file ends in an unfinished line
            yield offset, block, 0
            return
        else:  # a line longer than a block
            size *= 2


def _lines(fd: int, offset: int) -> Iterator[bytes]:
    """The lines from `offset` to the end, newlines included, the last one possibly unfinished."""
    for _, block, end in _line_blocks(fd, offset):
        start = 0
        while start < end:
            stop = block.index(b"\n", start) + 1
            yield block[start:stop]
            start = stop
        if end == 0:
            yield block


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells a file changed: its inode (replaced), size (grown, cut) and mtime (edited in place)."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _holds(data: Any, slot: str) -> bool:
    """Whether a parsed line is the entry for `slot`: an index offset can outlive an edit of the file."""
    return isinstance(data, dict) and data.get("key") is not None and _slot(data["key"], data.get("n", 1)) == slot


def _write_all(fd: int, data: bytes) -> None:
    """One write, as a rule; the loop only guards against a write cut short by a signal."""
    while data:
        data = data[os.write(fd, data) :]


@dataclass
class Rewrite:
    """What `compact_cachy` or `prune_cachy` did to the file."""

    kept: int
    duplicates: int
    damaged: list[int]
    pruned: int = 0
    stale: int = 0


class Store:
    """`cachy.jsonl`: an index from key to line position, kept in step with what other processes append.

    Reads use one unbuffered descriptor, so a fork, a truncation or an edit in place leaves no stale buffer.
    Every process that appends or compacts locks that same file (`flock`), and checks after locking that
    the path still leads to it: a compaction elsewhere replaces the file, and the lock moves with it."""

    def __init__(self, path: Path):
        self.path = path
        self._mutex = threading.RLock()  # this process's index and descriptors
        self._stale_reported = False
        self._reset()

    def _reset(self) -> None:
        """Forget the file: the next look reads it again."""
        self._reader: int | None = None  # the descriptor for reads, and the one that is locked
        self._writer: int | None = None  # an appending one, opened at the first append
        self._identity: tuple[int, int, int] = (0, 0, 0)  # inode, size, mtime when last read
        # Both as bytes, as they stand in the lines: loading a large file then decodes nothing.
        self._index: dict[bytes, int] = {}  # slot (key, or key#n) -> offset of its line
        self._raw: dict[bytes, bytes] = {}  # digest of the exact bytes sent -> key
        self._end = 0  # where the unread part starts: after the last whole line
        self._lines = 0  # whole lines read
        self._open_line = False  # the last line read is a whole entry without its newline (a hand-saved file)
        self._last_line, self._last_head = 0, b""  # where the last line read starts, and its start: a file
        # rewritten in place (an editor) no longer has it there, and is read afresh rather than from `_end`
        self._unfinished_at = -1  # where an unfinished last line starts, once reported: it is reported once
        self.versions: Counter[int] = Counter()  # entries by the key version that wrote them
        self._endpoints: dict[tuple[str, str], list[dict]] = {}  # what explains misses, read at the first

    def _close(self) -> None:
        for fd in (self._reader, self._writer):
            if fd is not None:
                os.close(fd)
        self._reset()

    def forget_after_fork(self) -> None:
        """In a forked child: a parent's thread may have held the mutex or been mid-update, so start afresh,
        touching nothing of the parent's but closing descriptors (closing never waits)."""
        self._mutex = threading.RLock()
        self._close()

    # ------------------------------------------------------------------------------ lookups
    def key_of_raw(self, raw: str) -> str | None:
        """The key that the exact bytes `raw` were recorded under, after reading what other processes appended,
        or the file now at the path: one that replaced ours (a git checkout, a compaction elsewhere) leaves ours
        without links."""
        with self._mutex:
            stat = os.fstat(self._reader) if self._reader is not None else None
            if stat is None or stat.st_nlink == 0:
                self._close()
                self._sync()
            elif stat.st_size != self._identity[1]:
                self._sync()
            key = self._raw.get(raw.encode())
            return None if key is None else key.decode()

    def locate(self, slot: str) -> int | None:
        """The offset of the line for `slot`, as `key_of_raw` has just brought the index up to date."""
        return self._index.get(slot.encode())

    def read(self, slot: str, offset: int) -> Entry | None:
        """The entry at `offset`, once its line is confirmed to be `slot`'s. A line that is not (the file was
        edited in place, or truncated) reloads the index and looks once more; a damaged one is dropped."""
        with self._mutex:
            data = self._line_at(offset)
            if not _holds(data, slot):  # edited in place, truncated, or damaged past its head: read afresh
                self._close()
                self._sync()
                offset = self._index.get(slot.encode())
                if offset is None:
                    return None
                data = self._line_at(offset)
        entry = _entry_of(data) if _holds(data, slot) else None
        if entry is None:
            with self._mutex:
                self._index.pop(slot.encode(), None)
            _warn(f"cachy skipped damaged line {self._line_number(offset)} of {self.path}")
        return entry

    def _line_at(self, offset: int) -> Any:
        return _parse_json(_read_line(self._reader, offset)) if self._reader is not None else None

    def _line_number(self, offset: int) -> int:
        """The number of the line at `offset`, for a warning: counted, as the index keeps offsets only."""
        with self._mutex:
            before = 0
            for start in range(0, offset, 1 << 20):
                before += _read_at(self._reader, min(1 << 20, offset - start), start).count(b"\n")
            return before + 1

    def entries_for(self, method: str, url: str) -> list[dict]:
        """What the entries recorded for `method` and `url` tell of their requests (the last of each slot): read
        from the file at a first miss to that endpoint, then kept until the file changes, as misses come in runs."""
        with self._mutex:
            if self._reader is None:
                return []
            if (method, url) not in self._endpoints:
                needle = b'"url": ' + _ENCODER.encode(url).encode()
                found = {}
                matching = [line for line in _lines(self._reader, 0) if needle in line]
                for line in matching:
                    data = _parse_json(line)
                    if isinstance(data, dict) and data.get("method") == method and isinstance(data.get("key"), str):
                        found[_slot(data["key"], data.get("n", 1))] = {
                            name: data[name] for name in ("key", "v", "stream", "shape") if name in data
                        }
                self._endpoints[(method, url)] = list(found.values())
            return self._endpoints[(method, url)]

    def refresh(self) -> None:
        """Notice a file changed in place (same size, other content), as `enable_cachy` does; the next
        lookup reads it again."""
        with self._mutex:
            if self._reader is not None and self._identity != self._path_identity():
                self._close()

    def _path_identity(self) -> tuple[int, int, int]:
        try:
            return _identity(os.stat(self.path))
        except FileNotFoundError:
            return (0, 0, 0)

    def _sync(self) -> None:
        """Index what was appended since the last look; start over if the file was replaced or shrank."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return self._close()
        if (
            self._reader is None
            or stat.st_ino != self._identity[0]
            or stat.st_size < self._end
            or _read_at(self._reader, len(self._last_head), self._last_line) != self._last_head
        ):
            self._close()
            self._reader = os.open(self.path, os.O_RDONLY | _O_BINARY)
        with _FileLock(self):  # writers hold it: no half-written line is mistaken for damage
            self._read_tail()

    def _read_tail(self) -> None:
        """Index the lines from `_end` on. An unfinished last line (a writer was killed) is left unread:
        it is read again only when the file grows, and the next append starts a fresh line."""
        index, raws = self._index, self._raw  # locals: this loop loads the file
        number = self._lines  # of the last line read
        damaged: list[int] = []
        original = 0  # lines in the original's format
        versions: Counter[int] = Counter()
        usual = 0  # lines of this key version's first occurrences, counted apart: the loop stays tight
        if self._open_line and _read_at(self._reader, 1, self._end) == b"\n":
            self._end += 1  # another process's append ended our last line before its own
            self._open_line = False
        loaded = self._end  # where the lines indexed so far end
        for offset, block, end in _line_blocks(self._reader, self._end):
            start, find, starts = 0, block.find, block.startswith
            while start < end:
                stop = find(b"\n", start) + 1
                number += 1
                if starts(_USUAL_HEAD, start + 52, stop) and starts(b'{"key": "', start) and block[stop - 2] == _CLOSE:
                    key = block[start + 9 : start + 25]  # the usual line: key and raw digest sliced, the rest unread
                    index[key] = offset + start
                    raws[block[start + 36 : start + 52]] = key
                    usual += 1
                else:
                    kind = self._index_line(block[start:stop], offset + start, versions)
                    if kind == "damaged" and offset + start != self._unfinished_at:
                        damaged.append(number)
                    elif kind == "original":
                        original += 1
                start = stop
            loaded = offset + end
            if end:
                self._last_line = offset + block.rfind(b"\n", 0, end - 1) + 1
                self._last_head = block[self._last_line - offset : self._last_line - offset + _HEAD_BYTES]
            if end == 0 and isinstance(_parse_json(block), dict):  # whole, only without its newline
                number += 1
                kind = self._index_line(block + b"\n", offset, versions)
                if kind == "damaged":
                    damaged.append(number)
                elif kind == "original":
                    original += 1
                loaded = offset + len(block)
                self._open_line = True
                self._last_line, self._last_head = offset, block[:_HEAD_BYTES]
            elif end == 0 and offset != self._unfinished_at:  # a writer was killed mid-line
                damaged.append(number + 1)
                self._unfinished_at = offset  # the next append ends it with a newline: it is not reported again
        versions[KEY_VERSION] += usual
        self.versions.update(versions)
        if number != self._lines:  # new entries: what explains misses is read again
            self._endpoints.clear()
        self._end, self._lines = loaded, number
        self._identity = _identity(os.fstat(self._reader))
        self._report(damaged, original)

    def _index_line(self, line: bytes, offset: int, versions: Counter[int]) -> str:
        """Index a line that is not of the usual form: another key version, an occurrence after the first, the
        original's format, a BOM before the first line, or damage. Returns "indexed", "original" or "damaged"."""
        start = len(_BOM) if offset == 0 and line.startswith(_BOM) else 0
        match = _LINE_HEAD.match(line, start)
        if match is not None and line.endswith(b"}\n"):  # the form cachy writes: no need to parse the rest
            key, raw, version, n = match.groups()
            self._index[key if n == b"1" else b"%s#%s" % (key, n)] = offset + start
            self._raw[raw] = key
            versions[int(version)] += 1
            return "indexed"
        head = _head_of(line[start:])
        if head is None:
            return "damaged"
        if head.version == 1 and _ORIGINAL_KEY.fullmatch(head.key):
            return "original"
        self._index[head.slot.encode()] = offset + start
        if head.raw is not None:
            self._raw[head.raw.encode()] = head.key.encode()
        versions[head.version] += 1
        return "indexed"

    def _report(self, damaged: list[int], original: int) -> None:
        """One short warning per kind of trouble that a read found."""
        if damaged:
            first = ", ".join(map(str, damaged[:5])) + (", …" if len(damaged) > 5 else "")
            _warn(f"cachy skipped damaged lines of {self.path}: {len(damaged)} in all, line {first}")
        if original:
            _warn(
                f"{self.path} has {original} entries with 8-character keys, as the original cachy (pycachy) "
                "writes them: this cachy keys requests differently, so they will not hit. Record them again."
            )
        stale = {version: n for version, n in self.versions.items() if version != KEY_VERSION}
        if stale and not self._stale_reported:
            self._stale_reported = True
            written = ", ".join(f"{n} by key version {version}" for version, n in sorted(stale.items()))
            _warn(
                f"{self.path} holds entries written by another key formula ({written}; this cachy writes "
                f"version {KEY_VERSION}). They still hit when both versions key the request alike; the others "
                "miss and are recorded again. To drop them: cachy compact --drop-stale"
            )

    # ------------------------------------------------------------------------------ writes
    def append(self, key: str, n: int, raw: str, line: bytes) -> None:
        """Append one whole line in a single write, under the lock. On failure (read-only, disk full) the file
        is cut back to where it was, so no partial line stays, and the OSError is raised."""
        with self._mutex:
            if self._reader is None:  # the first entry of a new file
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | _O_BINARY, 0o666))
                self._sync()
            with _FileLock(self) as locked:
                if locked.st_size != self._identity[1]:
                    self._read_tail()  # other processes' lines first: ours is indexed after them
                if self._writer is None:
                    self._writer = os.open(self.path, os.O_WRONLY | os.O_APPEND | _O_BINARY)
                size = self._identity[1]
                if size > self._end or self._open_line:  # an unfinished last line, or one without its newline
                    line = b"\n" + line
                try:
                    _write_all(self._writer, line)
                except OSError:
                    os.ftruncate(self._writer, size)
                    raise
                self._index[_slot(key, n).encode()] = size + len(line) - len(line.lstrip(b"\n"))
                self._raw[raw.encode()] = key.encode()
                self._endpoints.clear()
                self.versions[KEY_VERSION] += 1
                self._end, self._lines = size + len(line), self._lines + line.count(b"\n")
                self._open_line = False
                self._last_line = self._end - len(line.lstrip(b"\n"))
                self._last_head = line.lstrip(b"\n")[:_HEAD_BYTES]
                self._identity = _identity(os.fstat(self._writer))

    def rewrite(self, keep: set[str] | None = None, drop_stale: bool = False) -> Rewrite:
        """Rewrite the file atomically: the last entry per key and occurrence, damaged lines dropped, sorted,
        mode kept. Refuses a file most of whose lines are not entries: it is not a cache file."""
        with self._mutex:
            if not self.path.exists():
                return Rewrite(kept=0, duplicates=0, damaged=[])
            if self._reader is None:
                self._reader = os.open(self.path, os.O_RDONLY | _O_BINARY)
            with _FileLock(self):
                latest = {}  # the last line of each slot
                damaged = []
                text_lines = 0  # damaged lines that hold text: many of them, and this is no cache file
                stale = 0
                count = 0
                for number, line, head in _scan(self._reader):
                    if head is None:
                        damaged.append(number)
                        text_lines += bool(line.strip())
                    elif drop_stale and head.version != KEY_VERSION:
                        stale += 1
                    else:
                        count += 1
                        latest[(head.key, head.n)] = line
                if text_lines > count + stale:
                    raise ValueError(
                        f"{self.path} is not a cachy file: most of its lines are not entries. Left unchanged."
                    )
                kept = sorted(slot for slot in latest if keep is None or _slot(*slot) in keep)
                fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".cachy-", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as target:
                        target.writelines(latest[slot] for slot in kept)
                    shutil.copymode(self.path, temp)
                    if os.name == "nt":
                        self._close()  # Windows cannot replace an open file
                    os.replace(temp, self.path)
                except BaseException:
                    os.unlink(temp)
                    raise
            self._close()
            self._sync()
        return Rewrite(len(kept), count - len(latest), damaged, len(latest) - len(kept), stale)


def _scan(fd: int) -> Iterator[tuple[int, bytes, _Head | None]]:
    """(line number, line, head or None if damaged) for every line, the first without its BOM, each checked
    whole: a line whose start is intact but whose entry is not (a hand edit) is damaged too."""
    for number, line in enumerate(_lines(fd, 0), 1):
        text = line.removeprefix(_BOM) if number == 1 else line
        if not text.endswith(b"\n") and isinstance(_parse_json(text), dict):
            text += b"\n"  # a last line that is whole but for its newline (cut short, it would not parse)
        head = _head_of(text) if text.endswith(b"\n") else None
        yield number, text, (head if head and _entry_of(_parse_json(text)) else None)


class _FileLock:
    """flock on the store's read descriptor; if the path meanwhile leads to another file (compacted elsewhere),
    let go, re-open, and lock that one. Held inside the store's mutex, which keeps this process's threads apart."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> os.stat_result:
        """The locked file's status, as it stands under the lock."""
        store = self.store
        while True:
            _lock(store._reader)
            stat = os.fstat(store._reader)
            if stat.st_nlink > 0:
                return stat
            _unlock(store._reader)
            store._close()  # replaced, or deleted: a new file is started
            store._reader = os.open(store.path, os.O_RDONLY | os.O_CREAT | _O_BINARY, 0o666)

    def __exit__(self, *exc_info) -> None:
        _unlock(self.store._reader)


def scan_file(path: Path) -> Iterator[tuple[int, bytes, dict | None]]:
    """(line number, line, entry or None if damaged) for every line of a cache file: for the command line."""
    fd = os.open(path, os.O_RDONLY | _O_BINARY)
    try:
        for number, line, head in _scan(fd):
            yield number, line, (_parse_json(line) if head else None)
    finally:
        os.close(fd)


_stores: dict[Path, Store] = {}


def _store_for(path: Path) -> Store:
    """One store per file and process, so that re-enabling does not reload the index. The path is made
    absolute, so that a later change of working directory does not move the cache. A symlink that leads out
    of its folder is refused: a pull request could point `cachy.jsonl` at a file cachy must never write."""
    folder = path.parent.resolve()
    path = folder / path.name
    if path.is_symlink() and path.resolve().parent != folder:
        raise ValueError(f"{path} is a symlink to {path.resolve()}, outside its folder: cachy will not write there")
    if path not in _stores:
        _stores[path] = Store(path)
    return _stores[path]


# ------------------------------------------------------------------------------ what cachy does
@dataclass
class Stats:
    """What happened to requests since `enable_cachy`: a re-run notebook shows only hits."""

    hits: int = 0
    recorded: int = 0
    passed: int = 0
    replay_misses: int = 0
    unrecorded: int = 0  # live answers cachy could not store: a stream cut off, a file not writable
    saved_seconds: float = 0.0  # what the hits' live calls took when recorded
    saved_input_tokens: int = 0
    saved_output_tokens: int = 0
    used: set[str] = field(default_factory=set, repr=False)  # slots hit or recorded: what pruning keeps

    def __str__(self) -> str:
        counts = f"{self.hits} hits, {self.recorded} recorded, {self.passed} passed through, {self.replay_misses} replay misses"
        if self.unrecorded:
            counts += f", {self.unrecorded} not recorded"
        return f"{counts}; saved {self.savings()}" if self._saved_something() else counts

    def savings(self) -> str:
        """What the hits saved, as people read it: `2 min 13 s and 182k tokens`."""
        minutes, seconds = divmod(round(self.saved_seconds), 60)
        spent = f"{minutes} min {seconds} s" if minutes else f"{self.saved_seconds:.1f} s"
        return f"{spent} and {_short(self.saved_input_tokens + self.saved_output_tokens)} tokens"

    def add(self, other: Stats) -> None:
        """Add another part's counts (a test's, a pytest-xdist worker's) to these."""
        for counter in fields(self):
            if counter.name != "used":
                setattr(self, counter.name, getattr(self, counter.name) + getattr(other, counter.name))
        self.used |= other.used

    def to_dict(self) -> dict:
        return {counter.name: getattr(self, counter.name) for counter in fields(self)} | {"used": sorted(self.used)}

    @classmethod
    def from_dict(cls, data: dict) -> Stats:
        return cls(**{**data, "used": set(data["used"])})

    def _repr_html_(self) -> str:
        """How a notebook shows `cachy_stats()`: the counts, and what hits saved, as a small table."""
        counts = {
            "hits": f"{self.hits:,}",
            "recorded": f"{self.recorded:,}",
            "passed through": f"{self.passed:,}",
            "replay misses": f"{self.replay_misses:,}",
        }
        if self.unrecorded:
            counts["not recorded"] = f"{self.unrecorded:,}"
        if self._saved_something():
            counts["time saved"] = f"{self.saved_seconds:.1f} s"
            counts["tokens saved"] = f"{self.saved_input_tokens:,} in, {self.saved_output_tokens:,} out"
        head = "".join(f"<th>{label}</th>" for label in counts)
        row = "".join(f"<td>{count}</td>" for count in counts.values())
        return f"<table><caption>cachy</caption><tr>{head}</tr><tr>{row}</tr></table>"

    def _saved_something(self) -> bool:
        return bool(round(self.saved_seconds, 1) or self.saved_input_tokens or self.saved_output_tokens)


def _short(count: int) -> str:
    return f"{count / 1000:.0f}k" if count >= 10_000 else f"{count:,}"


_stats_lock = threading.Lock()  # counts of every engine; renewed in a forked child


@dataclass
class Miss:
    """A request cachy did not find: what recording its live answer needs."""

    call: Call
    url: str
    key: str
    raw: str
    n: int
    document: Any  # the body's JSON, normalised: its fingerprint is stored to explain later misses
    why: str = ""  # with debug: why it missed, printed with the recorded line
    started: float = field(default_factory=time.perf_counter)

    @property
    def slot(self) -> str:
        return _slot(self.key, self.n)


class StreamRecording:
    """One live stream, recorded only when its upstream ends normally. A transport adapter hands it each chunk,
    then calls `finish` at the upstream's end, or `abandon` when it breaks or is closed unread. Either, once."""

    def __init__(self, engine: Engine, miss: Miss, status: int, headers: dict[str, str]):
        self._engine = engine
        self._miss = miss
        self.started = miss.started  # when the request went out
        self._status = status
        self.headers = headers
        self._chunks: list[bytes] = []
        self.done = False

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def relay(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Each live chunk, as it arrives, recorded; finished at the upstream's end, abandoned if anything
        (a reset, a timeout, KeyboardInterrupt) breaks it off: what was read is then not the whole body."""
        while not self.done:
            try:
                chunk = next(chunks)
            except StopIteration:
                self.finish()
                return
            except BaseException:
                self.abandon("the stream broke off")
                raise
            self.add(chunk)
            yield chunk

    async def arelay(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`relay`, for an async upstream: cancellation and `asyncio.timeout` break it off too."""
        while not self.done:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                self.finish()
                return
            except BaseException:
                self.abandon("the stream broke off")
                raise
            self.add(chunk)
            yield chunk

    def finish(self) -> None:
        if not self.done:
            self.done = True
            body = b"".join(self._chunks)
            if body.startswith(b"event: error") or b"\nevent: error" in body:  # anthropic's overloaded_error
                self._engine.note(
                    "passed", self._miss.call.method, self._miss.url, self._miss.slot, " (an error event)"
                )
            else:
                self._engine.save(self._miss, self._status, self.headers, body)

    def abandon(self, reason: str) -> None:
        if not self.done:
            self.done = True
            self._engine.note("unrecorded", self._miss.call.method, self._miss.url, self._miss.slot, f" ({reason})")


_NEVER_STORED = frozenset({"content-encoding", "content-length", "transfer-encoding"})
_NOT_RECORDED_4XX = frozenset({401, 403, 408, 429})  # depend on credentials or load, not the request
_LABELS = {
    "hits": "hit",
    "recorded": "recorded",
    "passed": "passed",
    "replay_misses": "replay miss",
    "unrecorded": "not recorded",
}


class Engine:
    """What cachy does with a request, whichever transport sent it: key, look up, replay or record, count."""

    def __init__(
        self, store: Store, doms: tuple[str, ...], hdrs: tuple[str, ...], mode: str, debug: bool, repeats: bool
    ):
        self.store = store
        self.doms = doms
        self.mode = mode
        self.debug = debug
        self.repeats = repeats
        self.stats = Stats()
        self.kept_headers = tuple(sorted(name for name in {"content-type", *hdrs} if name not in _NEVER_STORED))
        self.rules = _compiled([store.path.parent, default_cache_dir()])
        self._subdomains = tuple("." + dom for dom in doms)
        self._occurrences: Counter[str] = Counter()  # with repeats: how often each key was asked

    def covers(self, host: str) -> bool:
        """Whether `host` is one of `doms` or below one: the host is matched, never a substring of the URL."""
        host = host.lower().rstrip(".")
        return host in self.doms or host.endswith(self._subdomains)

    def note(
        self, outcome: str, method: str, url: str, slot: str = "-", detail: str = "", entry: Entry | None = None
    ) -> None:
        """Count what happened to a request, and what a hit's `entry` saved; with debug, print it."""
        with _stats_lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
            if outcome in ("hits", "recorded"):
                self.stats.used.add(slot)
            if entry is not None:
                self.stats.saved_seconds = round(self.stats.saved_seconds + entry.seconds, 3)  # no float noise
                self.stats.saved_input_tokens += entry.usage.get("input", 0)
                self.stats.saved_output_tokens += entry.usage.get("output", 0)
        if self.debug:
            print(f"cachy {_LABELS[outcome]:<12} {slot:<16} {method} {url}{detail}", file=sys.stderr)

    def lookup(self, call: Call) -> Entry | Miss:
        """The recorded response when there is one; otherwise a Miss to record the live one with.
        In replay mode a miss raises CachyMiss."""
        url = public_url(call.url)
        head = _head(call, url)
        raw = _raw_digest(head, call)
        key = None if self.mode == "refresh" else self.store.key_of_raw(raw)
        document = None
        if key is None:  # not these exact bytes: the usual miss, or the same request written differently
            body, document = _normalised(call, self.rules)
            key = _key(head, body)
        n = self._occurrence(key) if self.repeats else 1
        slot = _slot(key, n)
        offset = None if self.mode == "refresh" else self.store.locate(slot)
        if offset is not None and (entry := self.store.read(slot, offset)) is not None:
            self.note("hits", call.method, url, slot, entry=entry)
            return entry
        if document is None and call.body:  # a hit by these exact bytes whose entry turned out damaged
            document = _normalised(call, self.rules)[1]
        miss = Miss(call, url, key, raw, n, document)
        if self.mode == "replay":
            why = self.explain(miss)
            self.note("replay_misses", call.method, url, slot, f" - why: {why}")
            occurrence = f" (occurrence {n} of this request)" if n > 1 else ""
            raise CachyMiss(
                f"cachy: no recorded response for {call.method} {url}{occurrence} (key {key}) in "
                f"{self.store.path}, and cachy is in replay mode. Record it by running once with API keys in "
                'record mode (CACHY_MODE=record, or enable_cachy(mode="record")), then commit the file.\n'
                f"Why it missed: {why}."
            )
        if self.debug and self.mode == "record":
            miss.why = f" - why: {self.explain(miss)}"
        return miss

    def explain(self, miss: Miss) -> str:
        """Why `miss` missed: the closest recorded request to the same endpoint, and the fields that differ."""
        recorded = list(self.store.entries_for(miss.call.method, miss.url))
        if not recorded:
            return f"Nothing is recorded for {miss.call.method} {urlsplit(miss.url).path}"
        same = [entry for entry in recorded if entry["key"] == miss.key]
        if same:
            return f"This request is recorded {len(same)} times; this is occurrence {miss.n}"
        if miss.document is None:
            return f"{len(recorded)} requests are recorded for this endpoint; this body is not JSON, so cachy cannot say where it differs"
        compared = [
            (_differences(miss.document, entry["shape"]), entry)
            for entry in recorded
            if isinstance(entry.get("shape"), str) and _FINGERPRINT_FORM.fullmatch(entry["shape"])
        ]
        if not compared:
            return f"{len(recorded)} requests are recorded for this endpoint, none with a fingerprint to compare with"
        differences, closest = min(compared, key=lambda pair: pair[0].weight)
        paths, more = differences.paths, differences.more
        where = f"The closest recorded request (key {closest['key']})"
        streaming = ""
        if bool(closest.get("stream")) != miss.call.stream:
            streaming = (
                "this request streams and it did not" if miss.call.stream else "it streamed and this request does not"
            )
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

    def _occurrence(self, key: str) -> int:
        """With repeats: which time this configuration sees this request."""
        with _stats_lock:
            self._occurrences[key] += 1
            return self._occurrences[key]

    def records(self, status: int) -> bool:
        """2xx, and the 4xx the request itself causes; never 5xx, nor what depends on credentials or load."""
        return 200 <= status < 300 or (400 <= status < 500 and status not in _NOT_RECORDED_4XX)

    def stored_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {name: headers[name] for name in self.kept_headers if name in headers}

    def record(self, miss: Miss, status: int, headers: Mapping[str, str], body: bytes) -> Entry | None:
        """Store a complete live response. Returns what a later hit will replay, for the adapter to answer with;
        None when this response is not recorded, and the adapter passes the live one on untouched."""
        if not self.records(status):
            self.note("passed", miss.call.method, miss.url, miss.slot, f" ({status}, not recorded)")
            return None
        stored = self.stored_headers(headers)
        self.save(miss, status, stored, body)
        return Entry(status, stored, body)

    def record_stream(self, miss: Miss, status: int, headers: Mapping[str, str]) -> StreamRecording | None:
        """The recording of a live stream, or None when this response is not recorded."""
        if not self.records(status):
            self.note("passed", miss.call.method, miss.url, miss.slot, f" ({status}, not recorded)")
            return None
        return StreamRecording(self, miss, status, self.stored_headers(headers))

    def save(self, miss: Miss, status: int, headers: dict[str, str], body: bytes) -> None:
        """Append the entry. A file that cannot be written loses the entry, never the caller's answer."""
        try:
            text, binary = body.decode(), False
        except UnicodeDecodeError:  # audio, images, other encodings: stored losslessly
            text, binary = base64.b64encode(body).decode(), True
        fields = {"method": miss.call.method, "url": miss.url, "status_code": status, "headers": headers}
        if miss.call.stream:
            fields["stream"] = True
        fields["response"] = text
        if binary:
            fields["binary"] = True
        fields["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())  # UTC, to the second
        fields["seconds"] = round(time.perf_counter() - miss.started, 3)
        usage = _usage(body)
        if usage:
            fields["usage"] = usage
        if miss.document is not None:
            fields["shape"] = _fingerprint(miss.document)
        try:
            self.store.append(miss.key, miss.n, miss.raw, _entry_line(miss.key, miss.raw, miss.n, fields))
        except OSError as error:
            self.note("unrecorded", miss.call.method, miss.url, miss.slot, f" (not saved: {error})")
            _warn(
                f"cachy passed on the answer to {miss.call.method} {miss.url} but it is not saved in {self.store.path}: {error}"
            )
            return
        self.note("recorded", miss.call.method, miss.url, miss.slot, miss.why)


# ------------------------------------------------------------------- which engine handles a request
_enabled: Engine | None = None  # set by enable_cachy
_blocks: list[Engine] = []  # `cachy()` blocks open anywhere, in the order they were entered
_context_blocks: contextvars.ContextVar[tuple[Engine, ...]] = contextvars.ContextVar("cachy_blocks", default=())
_bypass = contextvars.ContextVar("cachy_bypass", default=0)  # how many `no_cachy()` blocks this context is in
_sending = contextvars.ContextVar("cachy_sending", default=False)  # inside a live call that cachy handles
_switch_lock = threading.RLock()  # turning cachy on and off, from any thread


def _current_engine() -> Engine | None:
    """This thread's or task's innermost open `cachy()` block, else the last one opened anywhere, else
    `enable_cachy`'s: a block never hands its task's requests to a block that another task opened later."""
    for engine in reversed(_context_blocks.get()):
        if engine in _blocks:
            return engine
    return _blocks[-1] if _blocks else _enabled


def route(method: str, url: str, host: str) -> Engine | None:
    """The engine that handles a request, or None to send it untouched: cachy is off, the host is not cached,
    a `no_cachy()` block, or a transport below one whose request cachy already handles."""
    if _sending.get():
        return None
    engine = _current_engine()
    if engine is None:
        return None
    if _bypass.get() or not engine.covers(host):
        engine.note("passed", method, public_url(url))
        return None
    return engine


class sending:  # noqa: N801 - a context manager, used as `with sending():`
    """Marks a live call that cachy handles, so that a patched transport below it (litellm's httpx transport
    calls aiohttp) passes it through instead of recording it twice. A class: every miss goes through it."""

    def __enter__(self) -> None:
        self._token = _sending.set(True)

    def __exit__(self, *exc_info) -> None:
        _sending.reset(self._token)


def _forget_after_fork() -> None:
    global _stats_lock, _switch_lock
    _stats_lock = threading.Lock()
    _switch_lock = threading.RLock()
    for store in _stores.values():
        store.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# ---------------------------------------------------------------------------- the httpx adapter
def _module_of(request: httpx.Request) -> Any:
    """httpx or httpx2, whichever `request` belongs to, so the answer is of the kind the SDK expects."""
    return httpx2 if httpx2 is not None and isinstance(request, httpx2.Request) else httpx


def _call_of(request: httpx.Request, stream: bool) -> Call:
    return Call(request.method, str(request.url), request.content, request.headers, stream)


@functools.cache
def _takes_content(module: Any) -> bool:
    """Whether a response given its bytes as `_content` reads as a read one, as in httpx 0.28 and httpx2 2.x.
    That spares a hit what `read()` spends on decoders and chunkers for bytes already in hand (a tenth of a
    mocked round trip); should httpx change inside, this check fails and hits call `read()`."""
    response = module.Response(200, stream=module.ByteStream(b"probe"))
    response._content = b"probe"
    try:
        return response.content == response.read() == b"".join(response.iter_bytes()) == b"probe"
    except Exception:
        return False


def _replay(entry: Entry, request: httpx.Request) -> httpx.Response:
    """A read response built from `entry`: stored bytes exactly, no stale length or encoding headers."""
    module = _module_of(request)
    response = module.Response(
        entry.status, headers=entry.headers, stream=module.ByteStream(entry.body), request=request
    )
    if _takes_content(module):
        response._content = entry.body
    else:
        response.read()
    response.elapsed = datetime.timedelta(0)  # as a live response has once read; some code logs it
    return response


class _LiveStream(*(m.SyncByteStream for m in _HTTPX), *(m.AsyncByteStream for m in _HTTPX)):
    """A streamed miss's body: the live chunks reach the caller as they arrive, and the recording.

    It derives from the sync and async stream classes of httpx and httpx2, because their Response checks
    which kind of stream it was given. Closing a stream that was read from reads what is left, since SDKs
    close right after their final event, a moment before the upstream's end. A second iteration raises
    StreamConsumed, as httpx does: openai drains `response.stream` that way after its final event, under a
    0.1 s timeout, then closes it, shielded from that timeout, and the close reads the rest."""

    def __init__(self, live: httpx.Response, recording: StreamRecording):
        self._live = live
        self._recording = recording
        self._chunks: Iterator[bytes] | None = None
        self._achunks = None
        self.outer: httpx.Response | None = None  # the response the caller holds: it gets `elapsed` at close

    def __iter__(self) -> Iterator[bytes]:
        if self._chunks is not None:
            raise _module_of(self._live.request).StreamConsumed()
        self._chunks = self._live.iter_bytes()
        return self._read()

    def __aiter__(self):
        if self._achunks is not None:
            raise _module_of(self._live.request).StreamConsumed()
        self._achunks = self._live.aiter_bytes()
        return self._aread()

    def _read(self) -> Iterator[bytes]:
        return self._recording.relay(self._chunks)

    def _aread(self) -> AsyncIterator[bytes]:
        return self._recording.arelay(self._achunks)

    def close(self) -> None:
        try:
            if self._chunks is None:
                self._recording.abandon("closed before it was read")
            else:
                for _ in self._read():
                    pass
        except _HTTP_ERRORS:
            pass  # abandoned above: a truncated body is never recorded
        finally:
            self._live.close()
            self._pass_elapsed()

    async def aclose(self) -> None:
        try:
            if self._achunks is None:
                self._recording.abandon("closed before it was read")
            else:
                async for _ in self._aread():
                    pass
        except _HTTP_ERRORS:
            pass
        finally:
            await self._live.aclose()
            self._pass_elapsed()

    def _pass_elapsed(self) -> None:
        """The caller's response gets the live one's `elapsed`, or, where httpx2 keeps none, cachy's own count."""
        if self.outer is not None:
            try:
                self.outer.elapsed = self._live.elapsed
            except RuntimeError:
                self.outer.elapsed = datetime.timedelta(seconds=time.perf_counter() - self._recording.started)


def _answer(engine: Engine, miss: Miss, request: httpx.Request, live: httpx.Response) -> httpx.Response:
    """The live response, recorded; shaped as a later hit will replay it."""
    if not miss.call.stream:
        entry = engine.record(miss, live.status_code, live.headers, live.content)
        if entry is not None:
            live.headers = type(live.headers)(entry.headers)  # what a hit will replay; the body is decoded already
        return live
    recording = engine.record_stream(miss, live.status_code, live.headers)
    if recording is None:
        return live
    stream = _LiveStream(live, recording)
    stream.outer = _module_of(request).Response(
        live.status_code, headers=recording.headers, stream=stream, request=request
    )
    return stream.outer


def _patched_sync(original: Callable) -> Callable:
    @functools.wraps(original)
    def send(self, request, **kwargs):
        engine = route(request.method, str(request.url), request.url.host)
        if engine is None:
            return original(self, request, **kwargs)
        request.read()  # a multipart upload is not read yet; reading keeps it sendable
        miss = engine.lookup(_call_of(request, bool(kwargs.get("stream"))))
        if isinstance(miss, Entry):
            return _replay(miss, request)
        with sending():
            live = original(self, request, **kwargs)
        return _answer(engine, miss, request, live)

    return send


def _patched_async(original: Callable) -> Callable:
    @functools.wraps(original)
    async def send(self, request, **kwargs):
        engine = route(request.method, str(request.url), request.url.host)
        if engine is None:
            return await original(self, request, **kwargs)
        await request.aread()
        miss = engine.lookup(_call_of(request, bool(kwargs.get("stream"))))
        if isinstance(miss, Entry):
            return _replay(miss, request)
        with sending():
            live = await original(self, request, **kwargs)
        return _answer(engine, miss, request, live)

    return send


_originals: dict[type, Callable] = {}


def _patch() -> None:
    """Wrap each client class's `send` once; the wrappers read the configuration at call time."""
    for module in _HTTPX:
        for cls, wrap in ((module.Client, _patched_sync), (module.AsyncClient, _patched_async)):
            if cls not in _originals:
                _originals[cls] = cls.__dict__["send"]
                cls.send = wrap(_originals[cls])
    for adapter in _ADAPTERS:
        adapter.patch()


def _unpatch() -> None:
    for cls, original in _originals.items():
        cls.send = original
    _originals.clear()
    for adapter in _ADAPTERS:
        adapter.unpatch()


_ADAPTERS = [PatchOnImport("requests", "cachy.requests_adapter"), PatchOnImport("aiohttp", "cachy.aiohttp_adapter")]


# ----------------------------------------------------------------------------------- public API
def _names(value: Iterable[str] | None, argument: str) -> tuple[str, ...]:
    """Host or header names, lower-cased; a single string is the usual slip, and would be read letter by letter."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{argument} takes a tuple or list of names, not a string: write {argument}=({value!r},)")
    names = tuple(value or ())
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"{argument} takes names as strings, got {names!r}")
    return tuple(name.lower() for name in names)


def _hosts(value: Iterable[str]) -> tuple[str, ...]:
    hosts = tuple(host.rstrip(".") for host in _names(value, "doms"))
    if wrong := [host for host in hosts if not host or "/" in host or ":" in host.strip("[]")]:
        raise ValueError(f"doms are host names, without scheme, port or path: {', '.join(map(repr, wrong))}")
    return hosts


def default_cache_dir() -> Path:
    """The nearest folder at or above the working directory with a `pyproject.toml`, else the working directory."""
    cwd = Path.cwd()
    return next((folder for folder in (cwd, *cwd.parents) if (folder / "pyproject.toml").is_file()), cwd)


def _engine(
    cache_dir: str | os.PathLike | None = None,
    doms: Iterable[str] = doms,
    hdrs: Iterable[str] | None = None,
    mode: str | None = None,
    debug: bool = False,
    repeats: bool = False,
) -> Engine:
    """Check the arguments of `enable_cachy` and make the engine they describe."""
    source = "mode" if mode else "CACHY_MODE"
    mode = mode or os.environ.get("CACHY_MODE") or "record"
    if mode not in MODES:
        raise ValueError(f"unknown cachy mode {mode!r} (from {source}): use one of {', '.join(MODES)}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if folder.is_file():
        raise NotADirectoryError(f"cache_dir {folder} is a file: give the folder that holds (or will hold) cachy.jsonl")
    hosts = _hosts(doms)
    headers = _names(hdrs, "hdrs")
    folder.mkdir(parents=True, exist_ok=True)
    store = _store_for(folder / "cachy.jsonl")
    store.refresh()
    return Engine(store, hosts, headers, mode, debug, repeats)


def enable_cachy(
    cache_dir: str | os.PathLike | None = None,
    doms: Iterable[str] = doms,
    hdrs: Iterable[str] | None = None,
    mode: str | None = None,
    debug: bool = False,
    repeats: bool = False,
) -> None:
    """Answer requests to `doms` from `cache_dir/cachy.jsonl`, and record the ones not seen before.

    `hdrs` names response headers to keep besides content-type (Gemini uploads need two). `mode` is
    "record" (default), "replay" (a miss raises CachyMiss) or "refresh"; `CACHY_MODE` sets the default.
    `repeats=True` gives the n-th identical request the n-th recorded answer, for sampling."""
    global _enabled
    engine = _engine(cache_dir, doms, hdrs, mode, debug, repeats)
    with _switch_lock:
        _enabled = engine
        _patch()


def disable_cachy() -> None:
    """Turn cachy off, `cachy()` blocks included, and put the original `send` methods back; a no-op when off."""
    global _enabled
    with _switch_lock:
        _enabled = None
        _blocks.clear()
        _unpatch()


def cachy_stats() -> Stats:
    """A copy of the counts for the current configuration (all zero when cachy is off)."""
    engine = _current_engine()
    if engine is None:
        return Stats()
    with _stats_lock:
        return Stats.from_dict(engine.stats.to_dict())


def _cache_file(path: str | os.PathLike | None) -> Path:
    file = Path(path) if path is not None else default_cache_dir()
    return file / "cachy.jsonl" if file.is_dir() else file


def compact_cachy(
    path: str | os.PathLike | None = None, keep: set[str] | None = None, drop_stale: bool = False
) -> Rewrite:
    """Rewrite a cache file (or the one in a folder) deduplicated (last wins), without damaged lines, sorted
    by key, atomically. With `keep`, entries whose key is not in it are dropped too; with `drop_stale`, those
    written by another key version."""
    return _store_for(_cache_file(path)).rewrite(keep, drop_stale)


def prune_cachy() -> Rewrite:
    """Drop every entry that no request used (hit or recorded) since `enable_cachy`. Call it after a full run."""
    engine = _current_engine()
    if engine is None:
        raise RuntimeError("cachy is not enabled: prune_cachy keeps the entries used since enable_cachy")
    if worker := os.environ.get("PYTEST_XDIST_WORKER"):
        raise RuntimeError(
            f"prune_cachy in pytest-xdist worker {worker} would drop the entries other workers used: "
            "use pytest --cachy-prune, which merges every worker's keys"
        )
    used = cachy_stats().used
    if not used:
        raise RuntimeError("no entry was used since enable_cachy: refusing to prune the whole file")
    return compact_cachy(engine.store.path, keep=used)


def _decorated(function: Callable, switch: Callable[[], Any]) -> Callable:
    """`function` run inside a fresh `with switch():`: for a coroutine or generator function, while it runs,
    not only while it is called."""
    if inspect.isasyncgenfunction(function):

        @functools.wraps(function)
        async def run_async_generator(*args, **kwargs):
            with switch():
                async for item in function(*args, **kwargs):
                    yield item

        return run_async_generator
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def run_async(*args, **kwargs):
            with switch():
                return await function(*args, **kwargs)

        return run_async
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def run_generator(*args, **kwargs):
            with switch():
                return (yield from function(*args, **kwargs))

        return run_generator

    @functools.wraps(function)
    def run(*args, **kwargs):
        with switch():
            return function(*args, **kwargs)

    return run


class cachy:  # noqa: N801 - reads as a statement: `with cachy():`
    """Cache inside a block or decorated function (plain or async), then put back exactly what was there.

    The block's configuration serves its own thread or task even when other blocks open and close meanwhile,
    and every other thread too unless a later block is open. One instance may be entered again, nested or
    from several threads: each entry is its own."""

    @delegates(enable_cachy)
    def __init__(self, **enable_kwargs):
        self._kwargs = enable_kwargs
        self._entered: list[Engine] = []  # this instance's open blocks, oldest first

    def __call__(self, function: Callable) -> Callable:
        return _decorated(function, lambda: cachy(**self._kwargs))

    def __enter__(self) -> Stats:
        engine = _engine(**self._kwargs)
        with _switch_lock:
            self._entered.append(engine)
            _blocks.append(engine)
            _patch()
        _context_blocks.set((*_context_blocks.get(), engine))
        return engine.stats

    def __exit__(self, *exc_info) -> None:
        """Close this context's newest block of this instance; one left from another thread or task, the
        instance's newest."""
        here = _context_blocks.get()
        with _switch_lock:
            mine = [engine for engine in here if engine in self._entered]
            engine = mine[-1] if mine else self._entered[-1]
            self._entered.remove(engine)
            if engine in _blocks:
                _blocks.remove(engine)
            if _current_engine() is None:
                _unpatch()
        _context_blocks.set(tuple(block for block in here if block is not engine))


class no_cachy:  # noqa: N801
    """Send requests live inside a block or decorated function: nothing is read from or written to the cache.
    It holds for its own thread or task only; one instance may be entered again, nested or from several threads."""

    def __call__(self, function: Callable) -> Callable:
        return _decorated(function, no_cachy)

    def __enter__(self) -> None:
        _bypass.set(_bypass.get() + 1)

    def __exit__(self, *exc_info) -> None:
        _bypass.set(max(0, _bypass.get() - 1))  # a block left in another task must not bypass forever
