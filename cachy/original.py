"""The original cachy's (pycachy's) entries: the key formulas of its releases, and which entry answers a request.

Projects that used the original commit a `cachy.jsonl` whose entries have 8-hex-character keys. Those keys
are the start of a SHA-256 of the request as one release of the original saw it, and the formula changed
between releases: the host or the whole URL, the `key` parameter kept or dropped, the stream flag always
`False`, as passed or as a bool, JSON bodies with sorted keys, notebook noise replaced in the body and then
the URL, and the `accept` header. Each formula below was found by running the releases (see
`tests/benchmarks/original_keys.py`), and each is tried in turn when a file holds such entries.

32 bits are few, and several formulas are tried, so a match is only taken when it agrees in kind with the
request: a request for server-sent events is never answered by a JSON body, nor a plain one by events.
Only `Engine` calls in here, and only when the file holds entries of the original's, so others pay nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx

from .lines import Entry, parse_json


class Call(Protocol):
    """What the formulas read of a request (`cachy.core.Call`): this module does not import the core."""

    method: str
    url: str
    body: bytes
    headers: Mapping[str, str]
    stream: bool


class Store(Protocol):
    """What finding the original's entries needs of the store (`cachy.core.Store`)."""

    def find(self, slot: str) -> Entry | None: ...


# What the original replaced before hashing, as of 0.0.13: a notebook cell's file, temp folders, memory
# addresses and traceback line numbers. The patterns match what its releases matched, character for character.
_NOISE_0_0_13 = (
    (re.compile(r"/ipykernel_\d+/\d+\.py"), "/ipykernel_N/X.py"),
    (re.compile(r"<ipython-input-\d+-\w+>"), "<ipython-input>"),
    (re.compile(r"/var/folders/[\w|/]+"), "/tmp/tmpT"),
    (re.compile(r"/tmp/tmp\w+"), "/tmp/tmpX"),
    (re.compile(r"ipykernel_\d+"), "ipykernel_N"),
    (re.compile(r"0x[0-9a-fA-F]{6,}"), "0xMEM"),
    (re.compile(r"line \d+, in"), "line N, in"),
)
_NOISE_0_0_22 = (*_NOISE_0_0_13, (re.compile(r'"prompt_cache_key"\s*:\s*"[^"]*"'), '"prompt_cache_key":"notebook"'))


@dataclass(frozen=True)
class Formula:
    """How one group of the original's releases keyed a request: what of it went into the hash, and how."""

    releases: str
    url: str  # "host", "url" (without `key`), or "normalised url" (that, with `noise` replaced)
    stream: str  # "False" always, "as passed" (None when `send` had no stream argument), or "bool"
    boundary: bool  # the multipart boundary made constant
    sorted_json: bool  # a JSON body (by its content-type) re-serialised with sorted keys
    noise: tuple[tuple[re.Pattern, str], ...] = ()  # replaced in the body's text (and the URL's, when normalised)
    accept: bool = False  # the `accept` header after the stream flag
    keeps_bytes: bool = False  # a body that is not UTF-8 is hashed as it is, not with replacement characters
    serves: bool = True  # whether its keys answer requests: a key of the host alone tells no two requests apart


FORMULAS = (  # newest first: the files people still use were mostly written by recent releases
    Formula("0.0.22", "normalised url", "bool", True, True, _NOISE_0_0_22, accept=True, keeps_bytes=True),
    Formula("0.0.21", "normalised url", "bool", True, True, _NOISE_0_0_13, accept=True),
    Formula("0.0.20", "normalised url", "bool", True, True, _NOISE_0_0_13),
    Formula("0.0.13 to 0.0.19", "url", "bool", True, True, _NOISE_0_0_13),
    Formula("0.0.12", "url", "as passed", True, True),
    Formula("0.0.9 to 0.0.11", "url", "False", True, True),
    Formula("0.0.5 to 0.0.8", "url", "False", True, False),
    Formula("0.0.2 to 0.0.4", "host", "False", False, False, serves=False),
)


def _multipart_boundary(content_type: str) -> str | None:
    """The boundary of a `multipart/form-data` content-type, unquoted, as the original found it."""
    if not content_type.startswith("multipart/form-data"):
        return None
    for part in content_type.split(";"):
        if part.strip().lower().startswith("boundary="):
            return part.strip()[len("boundary=") :].strip('"')
    return None


def _body(formula: Formula, call: Call) -> bytes:
    """The request body as `formula` hashed it."""
    body = call.body
    content_type = call.headers.get("content-type", "")
    if formula.boundary and (boundary := _multipart_boundary(content_type)):
        body = body.replace(boundary.encode(), b"cachy-boundary")
    if formula.sorted_json and "json" in content_type.lower():
        with contextlib.suppress(ValueError, RecursionError):  # not JSON after all: hashed as it is
            body = json.dumps(json.loads(body), sort_keys=True).encode()
    if formula.noise:
        errors = "surrogateescape" if formula.keeps_bytes else "replace"
        text = body.decode("utf-8", errors)
        for pattern, replacement in formula.noise:
            text = pattern.sub(replacement, text)
        body = text.encode("utf-8", errors)
    return body


def _url(formula: Formula, call: Call) -> str:
    """The URL as `formula` hashed it: the host alone, or the URL without its `key` parameter."""
    url = httpx.URL(call.url)
    if formula.url == "host":
        return url.host
    text = str(url.copy_remove_param("key"))
    for pattern, replacement in formula.noise if formula.url == "normalised url" else ():
        text = pattern.sub(replacement, text)
    return text


def _stream_flags(formula: Formula, call: Call) -> tuple[str, ...]:
    """The stream flag as `formula` wrote it. A release that hashed the argument as passed wrote None for a
    plain `client.post` and False for an SDK's call, and cachy no longer knows which it was: both are tried."""
    if formula.stream == "False":
        return ("False",)
    if formula.stream == "as passed" and not call.stream:
        return ("False", "None")
    return (str(call.stream),)


def formula_keys(formula: Formula, call: Call) -> list[str]:
    """The request's keys under `formula`: one, or two when the stream argument it hashed is not known."""
    url, body = _url(formula, call), _body(formula, call)
    accept = call.headers.get("accept", "") if formula.accept else ""
    prefixes = (f"{url}{flag}{accept}".encode("utf-8", "surrogateescape") for flag in _stream_flags(formula, call))
    return [hashlib.sha256(prefix + body).hexdigest()[:8] for prefix in prefixes]


def keys(call: Call) -> Iterator[str]:
    """The request's key under each formula that serves, newest first, each once."""
    seen = set()
    for formula in FORMULAS:
        for key in formula_keys(formula, call) if formula.serves else ():
            if key not in seen:
                seen.add(key)
                yield key


def wants_events(call: Call) -> bool:
    """Whether the request asks for server-sent events: `"stream": true` in its JSON body, or Gemini's `alt=sse`."""
    if "alt=sse" in call.url:
        return True
    if b'"stream"' not in call.body:
        return False
    document = parse_json(call.body)
    return isinstance(document, dict) and document.get("stream") is True


def holds_events(entry: Entry) -> bool:
    """Whether a stored answer is server-sent events, by its content-type or, when the original kept no headers,
    by its body."""
    content_type = next((value for name, value in entry.headers.items() if name.lower() == "content-type"), "")
    if content_type:
        return content_type.startswith("text/event-stream")
    body = entry.body.lstrip()
    return body.startswith((b"data:", b"event:", b":")) or b"\ndata:" in body


def agrees(call: Call, entry: Entry) -> bool:
    """Whether `entry` can be the answer to `call`: events for a request for events, else no events. An error
    status may answer a request for events with JSON, as providers do."""
    if holds_events(entry):
        return wants_events(call)
    return not wants_events(call) or entry.status >= 400


def find(store: Store, call: Call) -> tuple[str, Entry] | None:
    """The original's key and entry that answer `call`: the first formula whose key the file holds, and whose
    entry agrees in kind; its headers by lower-case name, as cachy keeps them. Only a POST is answered (the
    LLM calls the original recorded): its keys hold no method, so another method's request could match."""
    if call.method != "POST":  # the original's keys hold no method: a GET and a DELETE of one URL share one
        return None
    for key in keys(call):
        entry = store.find(key)
        if entry is not None and agrees(call, entry):
            entry.headers = {name.lower(): value for name, value in entry.headers.items()}
            return key, entry
    return None


def upgraded_from(line: bytes) -> str | None:
    """The original's key that a line of cachy's was upgraded from, if it was (see `Engine`'s `"from"` field)."""
    if b'"from": "' not in line:  # most lines: no parse
        return None
    data = parse_json(line)
    found = data.get("from") if isinstance(data, dict) else None
    return found if isinstance(found, str) else None
