"""Cache LLM API calls in a `cachy.jsonl` file: the hosts, the request key, the store, the httpx patch, and
the switches that turn it on and off.

`enable_cachy()` patches `Client.send` and `AsyncClient.send` of httpx (and of httpx2 when it is
installed). A request to a known LLM host is keyed deterministically, answered from the file when
seen before, and recorded otherwise. This module reads top to bottom in that order; what goes beyond
it lives next to it, each in a module of its own: the line format (`lines`), file I/O (`fileio`), the
stream recorder (`recording`), why a miss missed (`explain`), counts and savings (`stats`), errors and
warnings (`errors`), and the requests and aiohttp adapters, which walk their requests through `serve`.

The public API is what `cachy/__init__.py` exports. The unprefixed names here that it does not export
(`Adapter`, `Call`, `Engine`, `Miss`, `Store`, `route`, `serve`, `wrap`, `public_url`, `scan_file`...) are
this package's internal interface: the adapters, the command line and the plugin use them, and they may change.
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import datetime
import functools
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx

from . import compaction, echo, errors, expiry, fileio, inflight, lines, original, provenance, uploads
from .compaction import Rewrite
from .decorating import decorated
from .errors import CachyMiss, warn
from .explain import explain, fingerprint, recorded_requests
from .httpx_stream import HTTPX_MODULES, LiveStream, module_of
from .index import Index
from .lazy import PatchOnImport
from .lines import KEY_CHARS, Entry
from .normalise import compiled_rules
from .recording import StreamRecording
from .stats import Outcome, Stats, usage

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


# ---------------------------------------------------------------------------------- request key
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
        "oauth_token",
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
)  # query parameters that carry credentials, as `_is_secret_param` spells them


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
    """The first KEY_CHARS hex characters of the SHA-256 of `head`, then `body`: 64 bits, for keys and raw digests."""
    digest = hashlib.sha256(head.encode())
    digest.update(body)
    return digest.hexdigest()[:KEY_CHARS]


_KEYED_HEADERS = ("anthropic-beta", "openai-beta")  # they change the answer; other headers stay out of the key


def _head(call: Call, url: str) -> str:
    """What enters the key besides the body: method, public URL, stream flag, and the beta headers that change the answer."""
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


def request_key(request: httpx.Request, stream: bool = False) -> str:
    """The key of an httpx (or httpx2) request under the current configuration, for tools and debugging."""
    engine = _current_engine()
    rules = engine.rules if engine else compiled_rules([default_cache_dir()])
    call = Call(request.method, str(request.url), request.content, request.headers, stream)
    return _key(_head(call, uploads.session_free(public_url(call.url))), _normalised(call, rules)[0])


# ---------------------------------------------------------------------------------------- store
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
        self._index = Index(KEY_VERSION)
        self._endpoints: dict[tuple[str, str], list[dict]] = {}  # what explains misses, read at the first

    def _close(self) -> None:
        """Close both descriptors and forget the file."""
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
    def catch_up(self) -> None:
        """Index what other processes appended since the last look, or read the file now at the path: one that
        replaced ours (a git checkout, a compaction elsewhere) leaves ours without links. When nothing changed,
        this is one `fstat`."""
        with self._mutex:
            stat = os.fstat(self._reader) if self._reader is not None else None
            if stat is None or stat.st_nlink == 0:
                self._close()
                self._sync()
            elif stat.st_size != self._identity[1]:
                self._sync()

    @property
    def originals(self) -> int:
        """How many entries of the original cachy's the file held at the last `catch_up`: `find` takes their keys."""
        return self._index.originals

    @property
    def holds_originals(self) -> bool:
        return self.originals > 0

    def key_of_raw(self, raw: str) -> str | None:
        """The key that the exact bytes with digest `raw` were recorded under, as of the last `catch_up`."""
        return self._index.key_of_raw(raw)

    def find(self, slot: str) -> Entry | None:
        """The entry recorded for `slot`, as of the last `catch_up`; None when there is none, or its line is
        damaged (it is then dropped from the index, with a warning)."""
        offset = self._index.offset(slot)
        if offset is None:
            return None
        with self._mutex:
            data = self._line_at(offset)
            if not lines.holds(data, slot):  # edited in place, truncated, or damaged past its head: read afresh
                self._close()
                self._sync()
                offset = self._index.offset(slot)
                if offset is None:
                    return None
                data = self._line_at(offset)
                if not lines.holds(data, slot):
                    data = None
        entry = None if data is None else lines.entry_of(data)
        if entry is None:
            with self._mutex:
                self._index.forget(slot)
            warn(f"cachy skipped damaged line {self._line_number(offset)} of {self.path}")
        return entry

    def _line_at(self, offset: int) -> Any:
        """The parsed line at `offset`, or None when it is not JSON (or no file is open)."""
        return lines.parse_json(fileio.read_line(self._reader, offset)) if self._reader is not None else None

    def _line_number(self, offset: int) -> int:
        with self._mutex:
            return fileio.line_number(self._reader, offset)

    def entries_for(self, method: str, url: str) -> list[dict]:
        """What the entries recorded for `method` and `url` tell of their requests (the last of each slot): read
        from the file at a first miss to that endpoint, then kept until the file changes, as misses come in runs.
        Lines are found by their URL's JSON, then parsed whole, so that a line means what its fields say."""
        with self._mutex:
            if self._reader is None:
                return []
            if (method, url) not in self._endpoints:
                self._endpoints[(method, url)] = recorded_requests(fileio.lines(self._reader, 0), method, url)
            return self._endpoints[(method, url)]

    def refresh(self) -> None:
        """Notice a file changed in place (same size, other content), as `enable_cachy` does; the next
        lookup reads it again."""
        with self._mutex:
            if self._reader is not None and self._identity != self._path_identity():
                self._close()

    def _path_identity(self) -> tuple[int, int, int]:
        """The identity of the file now at the path; zeros when there is none."""
        try:
            return fileio.identity(os.stat(self.path))
        except FileNotFoundError:
            return (0, 0, 0)

    def _sync(self) -> None:
        """Index what was appended since the last look; start over if the file was replaced or shrank, or was
        rewritten in place (an editor): then the last line read no longer starts where it did."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return self._close()
        if (
            self._reader is None
            or stat.st_ino != self._identity[0]
            or stat.st_size < self._index.end
            or not self._index.in_place(self._reader)
        ):
            self._close()
            self._reader = os.open(self.path, os.O_RDONLY | fileio.O_BINARY)
        with _FileLock(self):  # writers hold it: no half-written line is mistaken for damage
            self._read_tail()

    def _read_tail(self) -> None:
        """Index the lines appended since the last read, and warn of what it found."""
        found = self._index.read(self._reader)
        if found.read_lines:  # new entries: what explains misses is read again
            self._endpoints.clear()
        self._identity = fileio.identity(os.fstat(self._reader))
        self._report(found.damaged, found.original)

    def _report(self, damaged: list[int], original: int) -> None:
        """One short warning per kind of trouble that a read found."""
        if damaged:
            warn(errors.damaged_lines(self.path, damaged))
        if original:
            warn(errors.original_entries(self.path, original))
        stale = {version: n for version, n in self._index.versions.items() if version != KEY_VERSION}
        if stale and not self._stale_reported:
            self._stale_reported = True
            warn(errors.stale_entries(self.path, stale, KEY_VERSION))

    # ------------------------------------------------------------------------------ writes
    def append(self, key: str, n: int, raw: str, line: bytes) -> None:
        """Append one whole line in a single write, under the lock. On failure (read-only, disk full) the file
        is cut back to where it was, so no partial line stays, and the OSError is raised."""
        with self._mutex:
            if self._reader is None:  # the first entry of a new file
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | fileio.O_BINARY, 0o666))
                self._sync()
            with _FileLock(self) as locked:
                if locked.st_size != self._identity[1]:
                    self._read_tail()  # other processes' lines first: ours is indexed after them
                if self._writer is None:
                    self._writer = os.open(self.path, os.O_WRONLY | os.O_APPEND | fileio.O_BINARY)
                size = self._identity[1]
                written = self._index.to_append(line, size)
                try:
                    fileio.write_all(self._writer, written)
                except OSError:
                    os.ftruncate(self._writer, size)
                    raise
                self._index.appended(key, n, raw, size, written)
                self._endpoints.clear()
                self._identity = fileio.identity(os.fstat(self._writer))

    def rewrite(self, keep: set[str] | None = None, drop_stale: bool = False, older_than: float = 0) -> Rewrite:
        """Rewrite the file atomically, under the lock, with the lines `compaction.chosen` keeps; mode kept."""
        with self._mutex:
            if not self.path.exists():
                return Rewrite(kept=0, duplicates=0, damaged=[])
            if self._reader is None:
                self._reader = os.open(self.path, os.O_RDONLY | fileio.O_BINARY)
            with _FileLock(self):
                scanned = lines.scan(self._reader)
                kept, result = compaction.chosen(scanned, KEY_VERSION, keep, drop_stale, older_than, self.path)
                fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".cachy-", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as target:
                        target.writelines(kept)
                    shutil.copymode(self.path, temp)
                    if os.name == "nt":
                        self._close()  # Windows cannot replace an open file
                    os.replace(temp, self.path)
                except BaseException:
                    os.unlink(temp)
                    raise
            self._close()
            self._sync()
        return result


class _FileLock:
    """flock on the store's read descriptor; if the path meanwhile leads to another file (compacted elsewhere),
    let go, re-open, and lock that one. Held inside the store's mutex, which keeps this process's threads apart."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> os.stat_result:
        """The locked file's status, as it stands under the lock."""
        store = self.store
        while True:
            fileio.lock(store._reader)
            stat = os.fstat(store._reader)
            if stat.st_nlink > 0:
                return stat
            fileio.unlock(store._reader)
            store._close()  # replaced, or deleted: a new file is started
            store._reader = os.open(store.path, os.O_RDONLY | os.O_CREAT | fileio.O_BINARY, 0o666)

    def __exit__(self, *exc_info) -> None:
        fileio.unlock(self.store._reader)


def scan_file(path: Path) -> Iterator[tuple[int, bytes, dict | None]]:
    """(line number, line, entry or None if damaged) for every line of a cache file: for the command line."""
    fd = os.open(path, os.O_RDONLY | fileio.O_BINARY)
    try:
        for number, line, head in lines.scan(fd):
            yield number, line, (lines.parse_json(line) if head else None)
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
_NOT_RECORDED_4XX = frozenset({401, 403, 408, 429})  # depend on credentials or load, not the request
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
    live_start: bool = False  # an upload's start, sent live in record mode though recorded (see `uploads`)
    expired: bool = False  # its entry is older than max_age: recorded again
    started: float = field(default_factory=time.perf_counter)
    flight: inflight.Flight | None = None  # identical requests sent meanwhile wait for its entry
    upgrades: str = ""  # the key of the original cachy's entry that answered it, to be stored in cachy's format

    @property
    def slot(self) -> str:
        return lines.slot(self.key, self.n)


class Engine:
    """What cachy does with a request, whichever transport sent it: key, look up, replay or record, count."""

    def __init__(
        self,
        store: Store,
        doms: tuple[str, ...],
        hdrs: tuple[str, ...],
        mode: str,
        debug: bool | str,
        repeats: bool,
        max_age: float | None = None,
        echo: bool = True,
    ):
        self.store = store
        self.echo = echo
        self.lifetime = expiry.Lifetime(max_age) if max_age else None
        self.doms = doms
        self.mode = mode
        self.debug = debug
        self.repeats = repeats
        self.stats = Stats()
        self.kept_headers = tuple(sorted(name for name in {"content-type", *hdrs} if name not in lines.NEVER_STORED))
        self.rules = compiled_rules([store.path.parent, default_cache_dir()])
        self._subdomains = tuple("." + dom for dom in doms)
        self._covered: dict[str, bool] = {}  # host -> whether it is cached
        self._occurrences: Counter[str] = Counter()  # with repeats: how often each key was asked

    def covers(self, host: str) -> bool:
        """Whether `host` is one of `doms` or below one: the host is matched, never a substring of the URL.
        Answered once per host, as a program calls a few hosts many times."""
        covered = self._covered.get(host)
        if covered is None:
            name = host.lower().rstrip(".")
            covered = self._covered[host] = name in self.doms or name.endswith(self._subdomains)
        return covered

    def count(
        self, outcome: Outcome, method: str, url: str, slot: str = "-", detail: str = "", entry: Entry | None = None
    ) -> None:
        """Count what happened to a request, and what a hit's `entry` saved; with debug, print it (with
        debug="miss", as the original's, only a request looked up and not found)."""
        with _stats_lock:
            self.stats.count(outcome, slot, entry)
        if self.debug and (self.debug != "miss" or (outcome.missed and slot != "-")):
            print(f"cachy {outcome.label:<12} {slot:<16} {method} {url}{detail}", file=sys.stderr)

    # ------------------------------------------------------------------------------ looking up
    def lookup(self, call: Call) -> Entry | Miss:
        """The recorded response to `call` when there is one, else the Miss to record the live one with; in
        replay mode a miss raises CachyMiss. Refresh mode never looks, and records over what was there."""
        url = uploads.session_free(public_url(call.url))
        head = _head(call, url) + uploads.chunk_head(call.url, call.headers, call.body)  # "" but for uploads
        raw = _raw_digest(head, call)
        looks = self.mode != "refresh"
        if looks:
            self.store.catch_up()
        key, document = self._key_of(call, head, raw, looks)
        n = self._occurrence(key) if self.repeats else 1
        slot = lines.slot(key, n)
        entry = self.store.find(slot) if looks else None
        if entry is not None and entry.echo is not None:
            entry = self._replayable(entry, call)
        live_start = entry is not None and self.mode == "record" and uploads.starts_upload(url, call.headers)
        expired = entry is not None and self.lifetime is not None and self._expired(entry, call.method, url, slot)
        if entry is not None and not live_start and not expired:
            self.count(Outcome.HIT, call.method, url, slot, entry=entry)
            return entry
        if document is None and call.body:  # a hit by these exact bytes whose entry turned out damaged
            document = _normalised(call, self.rules)[1]
        miss = Miss(call, url, key, raw, n, document, live_start=live_start, expired=expired)
        if looks and n == 1 and self.store.holds_originals and not live_start and not expired:
            entry = self._from_original(miss)
            if entry is not None:
                return entry
        return self._missed(miss)

    def _from_original(self, miss: Miss) -> Entry | None:
        """The original cachy's entry for the request (see `original`), with the headers cachy keeps; in record
        mode stored in cachy's format too, so that later runs hit by cachy's key. Replay mode writes nothing."""
        found = original.find(self.store, miss.call)
        if found is None or not self.records(found[1].status):  # a 500 or a 429 is no answer to keep serving
            return None
        entry = Entry(
            found[1].status, self.stored_headers(miss.url, found[1].headers), found[1].body, usage=usage(found[1].body)
        )
        self.count(Outcome.HIT, miss.call.method, miss.url, found[0], " (the original cachy's entry)", entry)
        if self.mode == "record":
            miss.upgrades = found[0]
            self._save(miss, entry, None)
        return entry

    def _key_of(self, call: Call, head: str, raw: str, looks: bool) -> tuple[str, Any]:
        """The key of `call`, and its JSON body if it had to be parsed: a re-run sends the same bytes, found by
        their digest `raw` without parsing; anything else is keyed by its normalised body."""
        key = self.store.key_of_raw(raw) if looks else None
        if key is not None:
            return key, None
        body, document = _normalised(call, self.rules)
        return _key(head, body), document

    def _replayable(self, entry: Entry, call: Call) -> Entry | None:
        """`entry`, which refers to the request's fields, with those filled from `call`'s body (see `echo`);
        None, a miss, when it refers in a way this cachy cannot fill."""
        body = echo.restored(entry.body, call.body, entry.echo)
        return None if body is None else dataclasses.replace(entry, body=body, echo=None)

    def _expired(self, entry: Entry, method: str, url: str, slot: str) -> bool:
        """Whether `entry`, older than `max_age`, is to be recorded again: in record mode. Replay never goes
        live, so it serves the entry, and warns once (see `expiry`)."""
        age = self.lifetime.expired(entry.recorded_at)
        if age is None:
            return False
        self.count(Outcome.EXPIRED, method, url, slot, f" ({expiry.spelled(age)} old)")
        if self.mode == "replay":
            self.lifetime.served(age, self.store.path)
        return self.mode == "record"

    def _occurrence(self, key: str) -> int:
        """With repeats: which time this configuration sees this request."""
        with _stats_lock:
            self._occurrences[key] += 1
            return self._occurrences[key]

    def _missed(self, miss: Miss) -> Miss:
        """`miss`, to be sent live and recorded; in replay mode, CachyMiss with why it missed."""
        if self.mode == "replay":
            why = self._why(miss)
            self.count(Outcome.REPLAY_MISS, miss.call.method, miss.url, miss.slot, f" - why: {why}")
            raise CachyMiss(errors.replay_miss(miss.call.method, miss.url, miss.n, miss.key, self.store.path, why))
        if self.debug and self.mode == "record":
            miss.why = f" - why: {self._why(miss)}"
        return miss

    def join(self, miss: Miss, limit: float | None) -> Entry | Miss:
        """The entry of an identical request in flight, once it lands (see `inflight`), or `miss` to send live:
        leading the requests that come meanwhile, or alone. With repeats, each request is its own."""
        alone = self.repeats or uploads.starts_upload(miss.url, miss.call.headers)  # each file its own session
        flying = None if alone else inflight.lead_or_wait(self.store, miss.slot, self._looks_again(miss), limit)
        return self._joined(miss, flying)

    async def ajoin(self, miss: Miss, limit: float | None) -> Entry | Miss:
        """`join`, awaiting the landing: the loop runs on."""
        alone = self.repeats or uploads.starts_upload(miss.url, miss.call.headers)
        flying = None if alone else await inflight.alead_or_wait(self.store, miss.slot, self._looks_again(miss), limit)
        return self._joined(miss, flying)

    def _looks_again(self, miss: Miss) -> bool:
        """Whether a miss takes an entry recorded since it missed: in record mode, unless it missed an expired one."""
        return self.mode == "record" and not miss.expired

    def _joined(self, miss: Miss, found: inflight.Flight | Entry | None) -> Entry | Miss:
        """An entry, counted as joined; or `miss`, leading `found` when that is a flight."""
        if isinstance(found, Entry) and found.echo is not None:
            found = self._replayable(found, miss.call)  # an entry found in the store, not a live one landed
        if isinstance(found, Entry):
            self.count(Outcome.JOINED, miss.call.method, miss.url, miss.slot)
            return found
        miss.flight = found
        return miss

    def _why(self, miss: Miss) -> str:
        """Why `miss` missed, against what is recorded for its endpoint, and what the original cachy's entries,
        which keep no request to compare with, could not tell."""
        recorded = self.store.entries_for(miss.call.method, miss.url)
        why = explain(miss.call.method, miss.url, miss.key, miss.n, miss.call.stream, miss.document, recorded)
        if self.store.holds_originals:
            why += (
                f"; the file also holds {self.store.originals} entries of the original cachy's, which keep no request"
                " to compare with: the key of no release of it matched"
            )
        return why

    # ------------------------------------------------------------------------------ recording
    def records(self, status: int) -> bool:
        """2xx, and the 4xx the request itself causes; never 5xx, nor what depends on credentials or load."""
        return 200 <= status < 300 or (400 <= status < 500 and status not in _NOT_RECORDED_4XX)

    def stored_headers(self, url: str, headers: Mapping[str, str]) -> dict[str, str]:
        """The response headers an entry keeps: content-type, `hdrs`, and what Google's uploads need (see
        `uploads`); never a secret, nor one that would be stale."""
        kept = {name: headers[name] for name in self.kept_headers if name in headers}
        return uploads.upload_headers(url, headers, kept, public_url)

    def record(self, miss: Miss, status: int, headers: Mapping[str, str], body: bytes) -> Entry | None:
        """Store a complete live response. Returns what a later hit will replay, for the adapter to answer with;
        None when this response is not recorded, and the adapter passes the live one on untouched."""
        if not self.records(status):
            self.count(Outcome.PASSED, miss.call.method, miss.url, miss.slot, f" ({status}, not recorded)")
            return None
        entry = Entry(status, self.stored_headers(miss.url, headers), body)
        self._save(miss, entry, miss.flight)
        return entry

    def record_stream(self, miss: Miss, status: int, headers: Mapping[str, str]) -> StreamRecording | None:
        """The recording of a live stream, or None when this response is not recorded."""
        if not self.records(status):
            self.count(Outcome.PASSED, miss.call.method, miss.url, miss.slot, f" ({status}, not recorded)")
            return None
        stored = self.stored_headers(miss.url, headers)
        flight, miss.flight = miss.flight, None  # landed at the stream's end, not when `serve` returns

        def finished(body: bytes) -> None:
            if body.startswith(b"event: error") or b"\nevent: error" in body:  # anthropic's overloaded_error
                self.count(Outcome.PASSED, miss.call.method, miss.url, miss.slot, " (an error event)")
                inflight.land(flight, None)
            else:
                self._save(miss, Entry(status, stored, body), flight)

        def abandoned(reason: str) -> None:
            self.count(Outcome.UNRECORDED, miss.call.method, miss.url, miss.slot, f" ({reason})")
            inflight.land(flight, None)

        if flight is None:
            return StreamRecording(miss.started, stored, finished, abandoned)
        flight.handed_over()  # its waiters wait only while its caller reads it (see `inflight`)
        return StreamRecording(
            miss.started, stored, finished, abandoned, reading=flight.being_read, dropped=lambda: flight.land(None)
        )

    def _save(self, miss: Miss, entry: Entry, flight: inflight.Flight | None) -> None:
        """Append the entry, then land `flight` with it. A file that cannot be written loses the entry, never
        the caller's answer; the flight then lands empty, and its waiters go on by themselves."""
        if miss.live_start:  # an upload's start: its entry is written once, and replays every start
            self.count(Outcome.PASSED, miss.call.method, miss.url, miss.slot, " (an upload's start, recorded before)")
            inflight.land(flight, None)
            return
        saved = None
        try:
            self.store.append(miss.key, miss.n, miss.raw, self._line(miss, entry.status, entry.headers, entry.body))
        except OSError as error:
            self.count(Outcome.UNRECORDED, miss.call.method, miss.url, miss.slot, f" (not saved: {error})")
            warn(
                f"cachy passed on the answer to {miss.call.method} {miss.url} but it is not saved in {self.store.path}: {error}"
            )
        else:
            saved = entry
            self.count(
                Outcome.UPGRADED if miss.upgrades else Outcome.RECORDED, miss.call.method, miss.url, miss.slot, miss.why
            )
        finally:
            inflight.land(flight, saved)

    def _line(self, miss: Miss, status: int, headers: dict[str, str], body: bytes) -> bytes:
        """The entry's line: the request, the response, what the call cost, and the fingerprint of its fields."""
        stored, references = (
            echo.referenced(body, miss.call.body, miss.document, self.rules) if self.echo else (body, None)
        )
        try:
            text, binary = stored.decode(), False
        except UnicodeDecodeError:  # audio, images, other encodings: stored losslessly
            text, binary = base64.b64encode(stored).decode(), True
        fields = {"method": miss.call.method, "url": miss.url, "status_code": status, "headers": headers}
        if miss.call.stream:
            fields["stream"] = True
        fields["response"] = text
        if references:
            fields["echo"] = references
        if binary:
            fields["binary"] = True
        if not miss.upgrades:  # an upgrade's answer is as old as the original's entry, which says not when
            fields["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())  # UTC, to the second
            fields["seconds"] = round(time.perf_counter() - miss.started, 3)
        tokens = usage(body)
        if tokens:
            fields["usage"] = tokens
        fields |= provenance.of(miss.call.headers if not miss.upgrades else {}, body)
        if miss.document is not None:
            fields["shape"] = fingerprint(miss.document)
        if miss.upgrades:
            fields["from"] = miss.upgrades
        return lines.entry_line(miss.key, miss.raw, KEY_VERSION, miss.n, fields)


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
        engine.count(Outcome.PASSED, method, public_url(url))
        return None
    return engine


class sending:  # noqa: N801 - a context manager, used as `with sending():`
    """Marks a live call that cachy handles, so that a patched transport below it (litellm's httpx transport
    calls aiohttp) passes it through instead of recording it twice. A class: every miss goes through it."""

    def __enter__(self) -> None:
        self._token = _sending.set(True)

    def __exit__(self, *exc_info) -> None:
        _sending.reset(self._token)


class Adapter(Protocol):
    """What cachy needs to know of one transport (httpx, requests, aiohttp) to walk its requests through
    `serve` or `aserve`: the transport adapters implement it, each for its own request and response types."""

    def target(self, request: Any) -> tuple[str, str, str]:
        """The request's method, URL and host: enough to route it, before its body is read."""

    def call(self, request: Any, url: str, stream: bool) -> Call | Awaitable[Call]:
        """The request as the engine reads it, its body read (awaitable, for an async transport); `url` is
        the one `target` gave."""

    def replay(self, entry: Entry, request: Any) -> Any:
        """A response of the transport's own type, built from a recorded entry."""

    def wait_limit(self, request: Any) -> float | None:
        """How long the request may wait for an identical one in flight: its client's timeout (None: none)."""

    def answer(self, engine: Engine, miss: Miss, request: Any, live: Any) -> Any:
        """The live response to a miss, recorded, and shaped as a later hit will replay it."""


def serve(adapter: Adapter, request: Any, stream: bool, send: Callable[[], Any]) -> Any:
    """One request through cachy, whichever transport sent it: routed, looked up, then replayed, or sent live
    and recorded. `send()` sends it as the transport would have without cachy."""
    method, url, host = adapter.target(request)
    engine = route(method, url, host)
    if engine is None:
        return send()
    found = engine.lookup(adapter.call(request, url, stream))
    if isinstance(found, Miss):
        found = engine.join(found, adapter.wait_limit(request))
    if isinstance(found, Entry):
        return adapter.replay(found, request)
    try:
        with sending():
            live = send()
        return adapter.answer(engine, found, request, live)
    finally:
        inflight.land(found.flight, None)  # unless it landed, or a stream's recording holds it: it lands empty


async def aserve(adapter: Adapter, request: Any, stream: bool, send: Callable[[], Awaitable[Any]]) -> Any:
    """`serve`, for an async transport: its body is read, and the request sent, with `await`."""
    method, url, host = adapter.target(request)
    engine = route(method, url, host)
    if engine is None:
        return await send()
    found = engine.lookup(await adapter.call(request, url, stream))
    if isinstance(found, Miss):
        found = await engine.ajoin(found, adapter.wait_limit(request))
    if isinstance(found, Entry):
        return adapter.replay(found, request)
    try:
        with sending():
            live = await send()
        return adapter.answer(engine, found, request, live)
    finally:
        inflight.land(found.flight, None)


_originals: dict[tuple[type, str], Callable] = {}  # what cachy replaced, to put back


def wrap(cls: type, name: str, wrapper: Callable[[Callable], Callable]) -> None:
    """Replace the method `name` of `cls` by `wrapper(original)`, once. Every patch cachy makes, in every
    adapter, goes through here, so that turning cachy off puts each original back."""
    if (cls, name) not in _originals:
        _originals[(cls, name)] = cls.__dict__[name]
        setattr(cls, name, wrapper(_originals[(cls, name)]))


def _forget_after_fork() -> None:
    """In a forked child, renew the locks a parent's thread may have held, and let each store start afresh."""
    global _stats_lock, _switch_lock
    _stats_lock = threading.Lock()
    _switch_lock = threading.RLock()
    for store in _stores.values():
        store.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# ---------------------------------------------------------------------------- the httpx patch
_NO_TIME = datetime.timedelta(0)


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


class _Httpx:
    """httpx's and httpx2's `Client.send`, as `serve` walks it (see `Adapter`)."""

    def target(self, request: httpx.Request) -> tuple[str, str, str]:
        return request.method, str(request.url), request.url.host

    def call(self, request: httpx.Request, url: str, stream: bool) -> Call:
        request.read()  # a multipart upload is not read yet; reading keeps it sendable
        return Call(request.method, url, request.content, request.headers, stream)

    def wait_limit(self, request: httpx.Request) -> float | None:
        return request.extensions.get("timeout", {}).get("read")  # a live call waits for its answer that long

    def replay(self, entry: Entry, request: httpx.Request) -> httpx.Response:
        """A read response built from `entry`: stored bytes exactly, no stale length or encoding headers."""
        module = module_of(request)
        response = module.Response(
            entry.status, headers=entry.headers, stream=module.ByteStream(entry.body), request=request
        )
        if _takes_content(module):
            response._content = entry.body
        else:
            response.read()
        response.elapsed = _NO_TIME  # as a live response has once read; some code logs it
        return response

    def answer(self, engine: Engine, miss: Miss, request: httpx.Request, live: httpx.Response) -> httpx.Response:
        if not miss.call.stream:
            entry = engine.record(miss, live.status_code, live.headers, live.content)
            if entry is not None:
                live.headers = type(live.headers)(entry.headers)  # what a hit will replay; the body is decoded already
            return live
        recording = engine.record_stream(miss, live.status_code, live.headers)
        if recording is None:
            return live
        stream = LiveStream(live, recording)
        stream.outer = module_of(request).Response(
            live.status_code, headers=recording.headers, stream=stream, request=request
        )
        return stream.outer


class _AsyncHttpx(_Httpx):
    """httpx's and httpx2's `AsyncClient.send`: the body is read with `await`."""

    async def call(self, request: httpx.Request, url: str, stream: bool) -> Call:
        await request.aread()
        return Call(request.method, url, request.content, request.headers, stream)


_HTTPX_SYNC = _Httpx()
_HTTPX_ASYNC = _AsyncHttpx()


def _patched_sync(original: Callable) -> Callable:
    """`Client.send` walked through `serve`; every keyword (stream, auth, follow_redirects) goes on to `original`."""

    @functools.wraps(original)
    def send(self, request, **kwargs):
        return serve(_HTTPX_SYNC, request, bool(kwargs.get("stream")), lambda: original(self, request, **kwargs))

    return send


def _patched_async(original: Callable) -> Callable:
    """`AsyncClient.send` walked through `aserve`."""

    @functools.wraps(original)
    async def send(self, request, **kwargs):
        return await aserve(
            _HTTPX_ASYNC, request, bool(kwargs.get("stream")), lambda: original(self, request, **kwargs)
        )

    return send


def _patch() -> None:
    """Wrap each client class's `send` once; the wrappers read the configuration at call time."""
    for module in HTTPX_MODULES:
        wrap(module.Client, "send", _patched_sync)
        wrap(module.AsyncClient, "send", _patched_async)
    for adapter in _ADAPTERS:
        adapter.patch()


def _unpatch() -> None:
    """Put back every method `wrap` replaced, and stop waiting for requests and aiohttp to be imported."""
    for (cls, name), method in _originals.items():
        setattr(cls, name, method)
    _originals.clear()
    for adapter in _ADAPTERS:
        adapter.stop_waiting()


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
    """Host names, checked: a scheme, port or path is the usual slip, and would never match a host."""
    hosts = tuple(host.rstrip(".") for host in _names(value, "doms"))
    if wrong := [host for host in hosts if not host or "/" in host or ":" in host.strip("[]")]:
        raise ValueError(f"doms are host names, without scheme, port or path: {', '.join(map(repr, wrong))}")
    return hosts


def default_cache_dir() -> Path:
    """The nearest folder at or above the working directory with a `pyproject.toml`, else the working directory."""
    cwd = Path.cwd()
    return next((folder for folder in (cwd, *cwd.parents) if (folder / "pyproject.toml").is_file()), cwd)


def _engine(**settings: Any) -> Engine:
    """The engine that `enable_cachy`'s arguments describe (`cachy()` takes the same), each checked: a name
    `enable_cachy` does not take is a TypeError, as it would be in a call of `enable_cachy` itself."""
    given = inspect.signature(enable_cachy).bind(**settings)
    given.apply_defaults()
    setting = given.arguments
    max_age = setting["max_age"]
    if max_age is None and os.environ.get("CACHY_MAX_AGE"):
        max_age = expiry.seconds_of(os.environ["CACHY_MAX_AGE"], "CACHY_MAX_AGE")
    seconds = None if max_age is None else expiry.seconds_of(max_age)
    source = "mode" if setting["mode"] else "CACHY_MODE"
    mode = setting["mode"] or os.environ.get("CACHY_MODE") or "record"
    if mode not in MODES:
        raise ValueError(f"unknown cachy mode {mode!r} (from {source}): use one of {', '.join(MODES)}")
    folder = Path(setting["cache_dir"]) if setting["cache_dir"] is not None else default_cache_dir()
    if folder.is_file():
        raise NotADirectoryError(f"cache_dir {folder} is a file: give the folder that holds (or will hold) cachy.jsonl")
    debug = setting["debug"]
    if debug not in (True, False, "miss"):
        raise ValueError(f"debug is True, False or 'miss' (print only misses), not {debug!r}")
    hosts = _hosts(setting["doms"])
    headers = _names(setting["hdrs"], "hdrs")
    folder.mkdir(parents=True, exist_ok=True)
    store = _store_for(folder / "cachy.jsonl")
    store.refresh()
    return Engine(store, hosts, headers, mode, debug, setting["repeats"], seconds, setting["echo"])


def enable_cachy(
    cache_dir: str | os.PathLike | None = None,
    doms: Iterable[str] = doms,
    hdrs: Iterable[str] | None = None,
    mode: str | None = None,
    debug: bool | str = False,
    repeats: bool = False,
    max_age: float | datetime.timedelta | str | None = None,
    echo: bool = True,
) -> None:
    """Answer requests to `doms` from `cache_dir/cachy.jsonl`, and record the ones not seen before.

    `hdrs` names response headers to keep besides content-type (Gemini uploads need two). `mode` is
    "record" (default), "replay" (a miss raises CachyMiss) or "refresh"; `CACHY_MODE` sets the default.
    `debug=True` prints what happens to each request to stderr; `debug="miss"`, only the misses.
    `repeats=True` gives the n-th identical request the n-th recorded answer, for sampling. An entry older than
    `max_age` (seconds, a timedelta, or "30d", "12h", "90m"; `CACHY_MAX_AGE` sets the default) is recorded
    again. `echo=False` stores bodies byte for byte, with no references to the request's fields (see `echo`)."""
    global _enabled
    engine = _engine(**locals())  # this function's arguments, as given
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
    """The cache file a path names: the file itself, or `cachy.jsonl` in a folder (default: the project's)."""
    file = Path(path) if path is not None else default_cache_dir()
    return file / "cachy.jsonl" if file.is_dir() else file


def compact_cachy(
    path: str | os.PathLike | None = None,
    keep: set[str] | None = None,
    drop_stale: bool = False,
    older_than: float | datetime.timedelta | str | None = None,
) -> Rewrite:
    """Rewrite a cache file (or the one in a folder) deduplicated (last wins), without damaged lines, sorted
    by key, atomically. With `keep`, entries whose key is not in it are dropped too; with `drop_stale`, those
    written by another key version, and the original cachy's entries that were upgraded to this cachy's format;
    with `older_than` (an age, as `max_age` takes it), those recorded before (entries without a recording time
    are kept)."""
    seconds = 0 if older_than is None else expiry.seconds_of(older_than, "older_than")
    return _store_for(_cache_file(path)).rewrite(keep, drop_stale, seconds)


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


class cachy:  # noqa: N801 - reads as a statement: `with cachy():`
    """Cache inside a block or decorated function (plain or async), then put back exactly what was there.

    The block's configuration serves its own thread or task even when other blocks open and close meanwhile,
    and every other thread too unless a later block is open. One instance may be entered again, nested or
    from several threads: each entry is its own."""

    def __init__(self, **enable_kwargs):
        self._kwargs = enable_kwargs
        self._entered: list[Engine] = []  # this instance's open blocks, oldest first

    # enable_cachy's parameters, for help() and completion: fastcore's `delegates` does this only from 2.2.7 on
    __init__.__signature__ = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *(p.replace(kind=p.KEYWORD_ONLY) for p in inspect.signature(enable_cachy).parameters.values()),
        ]
    )

    def __call__(self, function: Callable) -> Callable:
        return decorated(function, lambda: cachy(**self._kwargs))

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
        return decorated(function, no_cachy)

    def __enter__(self) -> None:
        _bypass.set(_bypass.get() + 1)

    def __exit__(self, *exc_info) -> None:
        _bypass.set(max(0, _bypass.get() - 1))  # a block left in another task must not bypass forever
