"""The echo left out: a response field that repeats the request's field of the same name is stored as a
reference to it, and restored from the request at replay.

OpenAI's Responses API sends the request's configuration back in its resource (`instructions`, `tools`,
`metadata`…), three times in a stream (`response.created`, `response.in_progress`, `response.completed`):
an agent's 8 KB prompt and ten tools would be stored again and again. The rule is generic, not a list of
names: in a JSON body, or in the JSON of each `data:` event of a stream, a field of the document or of an
object directly inside it (the `response` of an event) whose value equals, as JSON, the request's top-level
field of the same name, and takes at least `SMALLEST` bytes, becomes `{"$cachy": "<name>"}`, with the
response's own key order (`"order"`) where it differs from the request's. Values that differ (a resolved
`model`, a chosen `service_tier`) stay as they are, and so do fields whose JSON text any of `key_rules`
matches (a path, notebook noise, or the placeholders the rules write): requests with one key may send them
differently, and a replay gives what was recorded.

The key does not hold everything a reference is restored from (JSON key order is not in it; a rule may make
two texts one), so the entry keeps, per referenced field, a digest of the request's value as recorded, in its
key order (`digest_of`); a request whose value has another digest cannot restore the entry: a miss, never
another answer.

A reference is made only when the exact bytes can be rebuilt: the body must be what `json.dumps` writes in
one of `STYLES` (the style is stored), and restoring the stored body from this request must give back the
live bytes, else the body is stored as it is. A body that already holds the marker's shape is stored as it
is too, so a real value is never mistaken for a reference. The entry says `"echo": {"scheme": 2, "json":
style, "digests": {name: digest}}`; a scheme or style this cachy does not know, or a reference the request
cannot fill, makes the entry a miss, never a broken answer. (Scheme 1, never released, had no digests.)"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from collections.abc import Iterable
from hashlib import sha256
from typing import Any

from .lines import BOM, parse_json

SCHEME = 2
MARK = "$cachy"
SMALLEST = 64  # bytes of JSON below which a field is not worth a reference
STYLES = {
    "compact": {"separators": (",", ":"), "ensure_ascii": False},
    "compact-ascii": {"separators": (",", ":")},
    "spaced": {"ensure_ascii": False},
    "spaced-ascii": {},
    "indented": {"indent": 2, "ensure_ascii": False},
    "indented-ascii": {"indent": 2},
}
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)
_MARK_KEY = '"' + MARK + '"'
_QUOTED_MARK = _MARK_KEY.encode()
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner: a value and where it ends
_SCAN_STRING = json.decoder.scanstring
_SPACE = re.compile(r"[ \t\n\r]*")
_TEXTS: dict[tuple, str] = {}  # (marker's text, style, depth, request field's text, digest): restored text
_TEXTS_KEPT = 64  # an agent sends the same prompt and tools call after call; a few of them are worth keeping


def digest_of(value: Any) -> str:
    """A value's digest, in its key order and whatever its whitespace: 16 hex of the SHA-256 of its JSON."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), check_circular=False)
    return sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _events(body: bytes) -> bool:
    return body.startswith(b"data:") or b"\ndata:" in body


def _documents(body: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The body cut into (before, JSON text, after) pieces that join back to it: one for a JSON body, one per
    line of a stream (a `data:` line's JSON, or a whole other line as `before`)."""
    if not _events(body):
        text = body.rstrip()
        return [(b"", text, body[len(text) :])]
    pieces = []
    for line in body.split(b"\n"):
        prefix = b"data: " if line.startswith(b"data: ") else b"data:"
        pieces.append((prefix, line[len(prefix) :], b"\n") if line.startswith(b"data:") else (line, b"", b"\n"))
    before, text, _ = pieces[-1]
    pieces[-1] = (before, text, b"")  # the split's last piece has no newline after it
    return pieces


def _resources(document: dict) -> list[dict]:
    """The objects whose fields may echo the request: the document, and each object directly in it."""
    return [document, *(value for value in document.values() if isinstance(value, dict))]


def _orders(value: Any, asked: Any, path: tuple = ()) -> list:
    """Where `value`'s key order differs from `asked`'s (equal as JSON values): [path, keys] pairs."""
    if isinstance(value, dict):
        found = [] if list(value) == list(asked) else [[list(path), list(value)]]
        return found + [order for key in value for order in _orders(value[key], asked[key], (*path, key))]
    if isinstance(value, list):
        return [order for index, item in enumerate(value) for order in _orders(item, asked[index], (*path, index))]
    return []


def _arranged(value: Any, orders: dict[tuple, list], path: tuple = ()) -> Any:
    """`value` with its objects' keys in `orders`' order where it names one."""
    if isinstance(value, dict):
        keys = orders.get(path, list(value))
        if sorted(keys) != sorted(value):
            raise KeyError(path)
        return {key: _arranged(value[key], orders, (*path, key)) for key in keys}
    if isinstance(value, list):
        return [_arranged(item, orders, (*path, index)) for index, item in enumerate(value)]
    return value


def _referenced(document: dict, request: dict, canonical: dict[str, str]) -> set[str]:
    """Replace, in place, the echoed fields of `document`'s resources by references; the names referenced."""
    changed = set()
    for resource in _resources(document):
        for name, value in resource.items():
            asked = canonical.get(name)
            if asked is not None and _CANONICAL.encode(value) == asked:
                orders = _orders(value, request[name])
                resource[name] = {MARK: name, "order": orders} if orders else {MARK: name}
                changed.add(name)
    return changed


def _holds_marks(document: dict) -> bool:
    return any(isinstance(value, dict) and MARK in value for r in _resources(document) for value in r.values())


def _ruled(name: str, texts: Iterable[str], rules: Iterable[tuple[re.Pattern, Any]]) -> bool:
    """Whether a key rule matches the field `name` written as one of `texts`: its text may then differ between
    requests of one key (or already be a rule's output, `~/src`), so it is stored, not referenced."""
    fields = [f"{json.dumps(name)}:{text}" for text in texts]
    return any(pattern.search(field) for pattern, _ in rules for field in fields)


def referenced(
    body: bytes, request_body: bytes, document: Any, rules: Iterable[tuple[re.Pattern, Any]] = ()
) -> tuple[bytes, dict | None]:
    """The body to store for `body`, the answer to `request_body` (whose normalised JSON is `document`, keyed
    with the compiled `rules`), and the entry's `echo` field: `(body, None)` when nothing is referenced."""
    names = [name for name, value in document.items() if isinstance(value, (str, list, dict))] if document else []
    if not any(b'"%s"' % name.encode() in body for name in names):  # most bodies are told without parsing
        return body, None
    if _QUOTED_MARK in body:  # the marker's key, anywhere: a replay then finds every marker by its text
        return body, None
    request = parse_json(request_body)
    if not isinstance(request, dict):
        return body, None
    rules = list(rules)
    members = _members(request_body) or {}
    canonical = {name: _CANONICAL.encode(value) for name, value in request.items() if name in document}
    canonical = {  # fields that no key rule touches: a request with the same key sends the same text
        name: text
        for name, text in canonical.items()
        if len(text) >= SMALLEST
        and _CANONICAL.encode(document[name]) == text
        and not _ruled(name, [members.get(name, ("", None))[0], json.dumps(request[name], ensure_ascii=False)], rules)
    }
    pieces, style, names = [], None, set()
    for before, text, after in _documents(body):
        parsed = parse_json(text) if text.startswith(b"{") else None
        if isinstance(parsed, dict) and _holds_marks(parsed):
            return body, None  # a real value of the marker's shape: store the body as it is
        if not isinstance(parsed, dict):
            pieces.append(before + text + after)
            continue
        written = _style_of(parsed, text) if style is None else (style if _dumps(parsed, style) == text else None)
        made = _referenced(parsed, request, canonical) if written is not None else set()
        if made:
            style, names = written, names | made
            text = _dumps(parsed, style)
        pieces.append(before + text + after)
    if style is None:
        return body, None
    digests = {name: digest_of(request[name]) for name in sorted(names)}
    stored, echo = b"".join(pieces), {"scheme": SCHEME, "json": style, "digests": digests}
    return (stored, echo) if restored(stored, request_body, echo) == body else (body, None)


def _dumps(document: Any, style: str) -> bytes:
    return json.dumps(document, **STYLES[style]).encode("utf-8", "surrogatepass")


def _style_of(document: dict, text: bytes) -> str | None:
    """The style among `STYLES` that writes `document` as exactly `text`, if one does."""
    return next((style for style in STYLES if _dumps(document, style) == text), None)


def restored(body: bytes, request_body: bytes, echo: Any) -> bytes | None:
    """`body` as stored with references, its fields filled from `request_body`; None when this cachy cannot
    (an unknown scheme or style, a request that lacks a referenced field, or whose value in it is not the one
    recorded, by its digest): the entry is then a miss.

    The stored body is the style's JSON, so each reference is spliced, not the document rewritten: the
    reference's text is found in the body and replaced by the request's value written in the style at the
    reference's depth. Only that value is written (an indented one by the pure-Python encoder, which
    `indent=` falls back to), and the text of one request value, whose digest was checked, is kept for the
    next hit that sends it."""
    if not isinstance(echo, dict) or echo.get("scheme") != SCHEME or echo.get("json") not in STYLES:
        return None
    digests = echo.get("digests")
    if not isinstance(digests, dict):
        return None
    try:
        spliced = _spliced(body, request_body, echo["json"], digests)
        return _rewritten(body, request_body, echo["json"], digests) if spliced is None else spliced
    except UnicodeEncodeError:  # a lone surrogate that UTF-8 cannot write: the bytes cannot be rebuilt
        return None


def _spliced(body: bytes, request_body: bytes, style: str, digests: dict) -> bytes | None:
    """`restored` by splicing; None when a splice cannot tell (a reference the request cannot fill, a body
    not as `referenced` writes it, a value not the one recorded): `_rewritten` then decides.

    `referenced` stores no body that holds the marker's key anywhere, so each `"$cachy"` in a stored body is
    the first key of a reference, whose end the C scanner finds, and in an indented body whose depth is its
    line's indentation."""
    try:
        text = body.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    at = text.find(_MARK_KEY)
    fields = _members(request_body) if at >= 0 else {}
    if fields is None:
        return None
    indented = style.startswith("indented")
    pieces, done = [], 0
    while at >= 0:
        start = text.rfind("{", done, at)
        if start < 0 or text[start + 1 : at].strip(" \n"):
            return None
        try:
            mark, end = _SCAN(text, start)
        except (StopIteration, RecursionError):
            return None
        source, orders = mark.get(MARK), mark.get("order", [])
        if source not in fields or source not in digests or not isinstance(orders, list):
            return None
        line = text[text.rfind("\n", 0, start) + 1 : start]
        depth = (len(line) - len(line.lstrip(" "))) // 2 if indented else 0
        raw, value = fields[source]
        key = (text[start:end], style, depth, raw, digests[source])  # a text kept was checked against the digest
        filled = _TEXTS.get(key)
        if filled is None:
            if digest_of(value) != digests[source]:
                return None
            try:
                arranged = _arranged(value, {tuple(path): keys for path, keys in orders}) if orders else value
            except (TypeError, ValueError, KeyError, IndexError):
                return None
            filled = json.dumps(arranged, **STYLES[style])
            filled = filled.replace("\n", "\n" + "  " * depth) if depth else filled
            if len(_TEXTS) >= _TEXTS_KEPT:
                _TEXTS.clear()
            _TEXTS[key] = filled
        pieces += [text[done:start], filled]
        done = end
        at = text.find(_MARK_KEY, end)
    pieces.append(text[done:])
    return "".join(pieces).encode("utf-8", "surrogatepass")


def _members(request_body: bytes) -> dict[str, tuple[str, Any]] | None:
    """The request's top-level fields, each as its JSON text and value, read by the C scanner as `json.loads`
    reads them (the last of a repeated name wins); None when the body is not a JSON object."""
    try:
        text = request_body.removeprefix(BOM).decode("utf-8", "surrogatepass")
        at = _SPACE.match(text).end()
        if text[at : at + 1] != "{":
            return None
        at = _SPACE.match(text, at + 1).end()
        fields: dict[str, tuple[str, Any]] = {}
        if text[at : at + 1] == "}":
            at += 1
        else:
            while True:
                if text[at : at + 1] != '"':
                    return None
                name, at = _SCAN_STRING(text, at + 1)
                at = _SPACE.match(text, at).end()
                if text[at : at + 1] != ":":
                    return None
                start = _SPACE.match(text, at + 1).end()
                value, at = _SCAN(text, start)
                fields[name] = (text[start:at], value)
                at = _SPACE.match(text, at).end()
                closing = text[at : at + 1]
                at = _SPACE.match(text, at + 1).end() if closing else at
                if closing == "}":
                    break
                if closing != ",":
                    return None
        return fields if _SPACE.match(text, at).end() == len(text) else None
    except (ValueError, StopIteration, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _rewritten(body: bytes, request_body: bytes, style: str, digests: dict) -> bytes | None:
    """`restored` by parsing each document that holds a reference, filling it and writing it again."""
    request = parse_json(request_body)
    if not isinstance(request, dict):
        return None
    checked: set[str] = set()
    pieces = []
    for before, text, after in _documents(body):
        if _QUOTED_MARK in text:
            document = parse_json(text)
            if not isinstance(document, dict) or not _filled(document, request, digests, checked):
                return None
            text = _dumps(document, style)
        pieces.append(before + text + after)
    return b"".join(pieces)


def _filled(document: dict, request: dict, digests: dict, checked: set[str]) -> bool:
    """Replace, in place, the references of `document`'s resources by the request's fields; False when one
    cannot be filled, or the request's value is not the one recorded (`checked`: the names found to be)."""
    for resource in _resources(document):
        for name, value in resource.items():
            if isinstance(value, dict) and MARK in value:
                source, orders = value.get(MARK), value.get("order", [])
                if source not in request or source not in digests or not isinstance(orders, list):
                    return False
                if source not in checked:
                    if digest_of(request[source]) != digests[source]:
                        return False
                    checked.add(source)
                try:
                    arranged = {tuple(path): keys for path, keys in orders}
                    resource[name] = _arranged(request[source], arranged)
                except (TypeError, ValueError, KeyError, IndexError):
                    return False
    return True
