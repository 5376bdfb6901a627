"""Cache LLM API calls made through httpx (and httpx2) in a `cachy.jsonl` file.

`enable_cachy()` patches `Client.send` and `AsyncClient.send`. A request to a known LLM host is
keyed deterministically, answered from the file when seen before, and recorded otherwise.
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
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import ContextDecorator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from fastcore.meta import delegates
from fastcore.xtras import find_file_parents

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
KEY_CHARS = 16  # 64 bits: 100k entries have a ~3e-10 chance of any two keys colliding
_SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "api-key", "access_token"})
_NEVER_STORED = frozenset({"content-encoding", "content-length", "transfer-encoding"})
_LABELS = {"hits": "hit", "recorded": "recorded", "passed": "passed", "replay_misses": "replay miss"}
_NOT_RECORDED_4XX = frozenset({401, 403, 408, 429})  # depend on credentials or load, not the request


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
    """`cachy.jsonl` has lines that cachy could not read and skipped."""


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
    """The `stacklevel`, for the function that calls this and warns, of the nearest line of the user's own code
    (a notebook cell, a test), so that a warning shows that line rather than cachy's internals."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_library_folders()):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2


# ---------------------------------------------------------------------------------- request key
def public_url(url: httpx.URL) -> str:
    """`url` without the query parameters that carry credentials (Gemini's `?key=`): fit to hash, store and print."""
    if url.query:
        for name in _SECRET_PARAMS.intersection(url.params.keys()):
            url = url.copy_remove_param(name)
    return str(url)


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)
_BOUNDARY = re.compile(r'boundary="?([^";\s]+)')


def _normalised_body(request: httpx.Request) -> bytes:
    """The body with what differs between identical calls made constant: the multipart boundary, JSON key order."""
    body = request.content
    if body.startswith(b"--") and (boundary := _BOUNDARY.search(request.headers.get("content-type", ""))):
        return body.replace(boundary.group(1).encode(), b"cachy-boundary")  # multipart bodies start with it
    try:  # any body that parses as JSON, whatever its content-type says
        return _CANONICAL_JSON.encode(json.loads(body.decode())).encode()
    except (ValueError, RecursionError):
        return body


def request_key(request: httpx.Request, stream: bool = False) -> str:
    """Hash of method, public URL, stream flag and normalised body. Headers stay out, so a rotated API key still hits."""
    return _key(request, public_url(request.url), stream)


def _key(request: httpx.Request, url: str, stream: bool) -> str:
    digest = hashlib.sha256(f"{request.method}\n{url}\n{int(stream)}\n".encode())
    digest.update(_normalised_body(request))
    return digest.hexdigest()[:KEY_CHARS]


# ---------------------------------------------------------------------------------------- store
def _parse_entry(line: bytes) -> dict | None:
    """The entry on `line`, or None when the line is damaged (truncated, a conflict marker, not an entry)."""
    try:
        entry = json.loads(line.decode())
    except ValueError:  # UnicodeDecodeError included
        return None
    is_entry = isinstance(entry, dict) and isinstance(entry.get("key"), str) and "response" in entry
    return entry if is_entry else None


_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)  # readable diffs; made once
_KEY_START = b'{"key": "'
_KEY_END = len(_KEY_START) + KEY_CHARS


def _line_key(line: bytes) -> str | None:
    """The key of a complete line; lines in the form cachy writes are read without parsing all their JSON."""
    key = line[len(_KEY_START) : _KEY_END]
    if (
        line.startswith(_KEY_START)
        and line.endswith(b"}\n")
        and line[_KEY_END : _KEY_END + 1] == b'"'
        and key.isalnum()
    ):
        return key.decode()
    entry = _parse_entry(line)
    return entry["key"] if entry else None


_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def _write_all(fd: int, data: bytes) -> None:
    """One write, as a rule; the loop only guards against a write cut short by a signal."""
    while data:
        data = data[os.write(fd, data) :]


def scan(file: IO[bytes]) -> Iterator[tuple[int, int, bytes, dict | None]]:
    """(line number, offset, line, entry or None if damaged) for every line, fully checked: for compaction and stats."""
    file.seek(offset := 0)
    for number, line in enumerate(file, 1):
        yield number, offset, line, _parse_entry(line)
        offset += len(line)


if os.name == "nt":
    import msvcrt

    def _lock(fd: int) -> None:
        while True:  # LK_LOCK gives up after 10 s; a writer holding the lock that long is still no reason to fail
            try:
                return msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            except OSError:
                continue

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class _ProcessLock:
    """Keeps other processes out while a line is appended or read. Its file is in the temp folder, so nothing
    appears in the user's repo; threads of this process are kept apart by the store's mutex, held around it."""

    def __init__(self, path: Path):
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        self._path, self.fd, self._depth = Path(tempfile.gettempdir()) / f"cachy-{digest}.lock", None, 0

    def __enter__(self) -> None:
        if self._depth == 0:
            if self.fd is None:
                self.fd = os.open(self._path, os.O_RDONLY | os.O_CREAT, 0o666)
            _lock(self.fd)
        self._depth += 1

    def __exit__(self, *exc_info) -> None:
        self._depth -= 1
        if self._depth == 0:
            _unlock(self.fd)


@dataclass
class Rewrite:
    """What `compact_cachy` or `prune_cachy` did to the file."""

    kept: int
    duplicates: int
    damaged: list[int]
    pruned: int = 0


class Store:
    """`cachy.jsonl`: an index from key to line position, kept in step with what other processes append."""

    def __init__(self, path: Path):
        self.path = path
        self._process_lock = _ProcessLock(path)
        self._mutex = threading.RLock()  # this process's index and read handle
        self._file: IO[bytes] | None = None  # read handle, and
        self._writer: int | None = None  # appending descriptor, both on the file with this inode:
        self._inode = 0
        self._index: dict[str, int] = {}  # key -> offset of its line; the line is read on a hit
        self._end = self._lines = 0  # how far the index has read
        self._warned: set[int] = set()

    def get(self, key: str) -> dict | None:
        """The entry for `key`, looking at what other processes appended before calling it a miss."""
        with self._mutex:
            if key not in self._index and self._file_grew():
                self._sync()
            if (offset := self._index.get(key)) is None:
                return None
            self._file.seek(offset)
            line = self._file.readline()
        if (entry := _parse_entry(line)) is None:
            self._warn([self._line_number(offset)])
            with self._mutex:
                self._index.pop(key, None)
            return None
        if entry["key"] != key:  # the file changed under the index (rewritten in place): reload at the next look
            with self._mutex:
                self._close()
            return None
        return entry

    def append(self, entry: dict) -> None:
        """Append `entry` as one whole line, under the cross-process lock, in a single write."""
        line = _ENCODER.encode(entry).encode() + b"\n"
        with self._mutex, self._process_lock:
            if self._indexed_to_the_end():  # the usual case: write, and index our own line without reading it back
                _write_all(self._writer, line)
                self._index[entry["key"]] = self._end
                self._end, self._lines = self._end + len(line), self._lines + 1
                return
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_BINARY, 0o666)
            try:
                if os.fstat(fd).st_size and (os.lseek(fd, -1, os.SEEK_END), os.read(fd, 1))[1] != b"\n":
                    line = b"\n" + line  # the last line is unfinished (a writer was killed): start afresh
                _write_all(fd, line)
            finally:
                os.close(fd)
            self._sync()

    def _indexed_to_the_end(self) -> bool:
        """Whether the index has read all of the file that is at `path`, through the appending descriptor.

        A file replaced or deleted since (compaction, git checkout) has no links left, so no path lookup is needed."""
        if self._file is None:
            return False
        if self._writer is None:
            try:
                self._writer = os.open(self.path, os.O_WRONLY | os.O_APPEND | _O_BINARY)
            except FileNotFoundError:
                return False
        stat = os.fstat(self._writer)
        return stat.st_nlink > 0 and (stat.st_ino, stat.st_size) == (self._inode, self._end)

    def rewrite(self, keep: set[str] | None = None) -> Rewrite:
        """Rewrite the file atomically: last entry per key, damaged lines dropped, sorted by key, mode kept."""
        with self._mutex, self._process_lock:
            if not self.path.exists():
                return Rewrite(kept=0, duplicates=0, damaged=[])
            self._close()  # Windows cannot replace a file that is open
            latest, damaged, count = {}, [], 0
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".cachy-", suffix=".tmp")
            try:
                with open(self.path, "rb") as source, os.fdopen(fd, "wb") as target:
                    for number, offset, line, entry in scan(source):
                        if entry is None:
                            damaged.append(number)
                            continue
                        count += 1
                        latest[entry["key"]] = (offset, len(line))
                    kept = sorted(key for key in latest if keep is None or key in keep)
                    for key in kept:
                        source.seek(latest[key][0])
                        target.write(source.read(latest[key][1]).rstrip(b"\n") + b"\n")
                shutil.copymode(self.path, temp)
                os.replace(temp, self.path)
            except BaseException:
                os.unlink(temp)
                raise
            self._sync()
        return Rewrite(kept=len(kept), duplicates=count - len(latest), damaged=damaged, pruned=len(latest) - len(kept))

    def _close(self) -> None:
        if self._file:
            self._file.close()
        if self._writer is not None:
            os.close(self._writer)
        self._file, self._writer, self._index, self._end, self._lines, self._warned = None, None, {}, 0, 0, set()

    def reopen_in_child(self) -> None:
        """After a fork: close what is shared with the parent (closing does not touch the parent's), start afresh."""
        self._close()
        if self._process_lock.fd is not None:
            os.close(self._process_lock.fd)
        self._mutex, self._process_lock = threading.RLock(), _ProcessLock(self.path)

    def _file_grew(self) -> bool:
        """The cheap check before a miss: has our file grown? A replaced file is noticed at the next append."""
        return self._file is None or os.fstat(self._file.fileno()).st_size != self._end

    def _sync(self) -> None:
        """Index the lines appended since the last look; start over if the file was replaced or shrank."""
        try:
            size, inode = (stat := os.stat(self.path)).st_size, stat.st_ino
        except FileNotFoundError:
            return self._close()
        if self._file is None or inode != self._inode or size < self._end:
            self._close()
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open for reads on hits
            self._inode = os.fstat(self._file.fileno()).st_ino
        if size > self._end:
            with self._process_lock:  # writers hold it: no half-written line is mistaken for damage
                self._read_tail()

    def _read_tail(self) -> None:
        index, damaged, offset, number = self._index, [], self._end, self._lines  # locals: this loop loads the file
        self._file.seek(offset)
        for line in self._file:
            if not line.endswith(b"\n"):  # unfinished: index it if it is whole, and read it again once it ends
                if (key := _line_key(line + b"\n")) is not None:
                    index[key] = offset
                else:  # a writer was killed mid-line; the next append starts a new one
                    damaged.append(number + 1)
                break
            number += 1
            if (key := _line_key(line)) is None:
                damaged.append(number)
            else:
                index[key] = offset
            offset += len(line)
        self._end, self._lines = offset, number
        self._warn(damaged)

    def _line_number(self, offset: int) -> int:
        with open(self.path, "rb") as file:
            return file.read(offset).count(b"\n") + 1

    def _warn(self, numbers: list[int]) -> None:
        if new := [number for number in numbers if number not in self._warned]:
            self._warned.update(new)
            warnings.warn(
                f"cachy skipped damaged lines {new} of {self.path}", CachyWarning, stacklevel=_user_stacklevel()
            )


_stores: dict[Path, Store] = {}


def _give_forked_child_its_own_files() -> None:
    """A forked child would share its parent's file offsets and lock: every store starts afresh in it."""
    for store in _stores.values():
        store.reopen_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_give_forked_child_its_own_files)


def _store_for(path: Path) -> Store:
    """One store per file and process, so that re-enabling does not reload the index. The path is made
    absolute, so that a later change of working directory does not move the cache."""
    path = path.resolve()
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
    used: set[str] = field(default_factory=set, repr=False)  # keys hit or recorded: what pruning keeps

    def __str__(self) -> str:
        return f"{self.hits} hits, {self.recorded} recorded, {self.passed} passed through, {self.replay_misses} replay misses"

    def _repr_html_(self) -> str:
        """How a notebook shows `cachy_stats()`: the counts as a small table."""
        counts = {
            "hits": self.hits,
            "recorded": self.recorded,
            "passed through": self.passed,
            "replay misses": self.replay_misses,
        }
        head = "".join(f"<th>{label}</th>" for label in counts)
        row = "".join(f"<td>{count:,}</td>" for count in counts.values())
        return f"<table><caption>cachy</caption><tr>{head}</tr><tr>{row}</tr></table>"


def _module_of(request: httpx.Request) -> Any:
    """httpx or httpx2, whichever `request` belongs to, so the answer is of the kind the SDK expects."""
    return httpx2 if httpx2 is not None and isinstance(request, httpx2.Request) else httpx


def _takes_content_directly(module: Any) -> bool:
    """Whether a response given its bytes as `_content` reads as a read one, as in httpx 0.28 and httpx2 2.x.
    That spares a hit the ~10 us (a tenth of a plain round trip) that `read()` spends on decoders and chunkers
    for bytes already in hand; should httpx change inside, this check fails and hits call `read()`."""
    response = module.Response(200, stream=module.ByteStream(b"probe"))
    response._content = b"probe"
    try:
        return response.content == response.read() == b"".join(response.iter_bytes()) == b"probe"
    except Exception:
        return False


_TAKES_CONTENT = {module: _takes_content_directly(module) for module in _HTTPX}


def _replay(entry: dict, request: httpx.Request) -> httpx.Response:
    """A read response built from `entry`: stored bytes exactly, no stale length or encoding headers."""
    body = base64.b64decode(entry["response"]) if entry.get("binary") else entry["response"].encode()
    module = _module_of(request)
    response = module.Response(
        entry["status_code"], headers=entry["headers"], stream=module.ByteStream(body), request=request
    )
    if _TAKES_CONTENT[module]:
        response._content = body
    else:
        response.read()
    response.elapsed = datetime.timedelta(0)  # as a live response has once read; some code logs it
    return response


class _Recorder(*(m.SyncByteStream for m in _HTTPX), *(m.AsyncByteStream for m in _HTTPX)):
    """Passes a live stream's chunks on as they arrive, and records the body once it is complete.

    SDKs close a stream as soon as they see its final event, before the upstream's end: closing a
    stream that was read from therefore reads what is left, so that the whole body is recorded. A
    stream that breaks midway records nothing."""

    def __init__(self, response: httpx.Response, on_complete: Callable[[bytes], None]):
        self._response, self._on_complete = response, on_complete
        self._chunks: list[bytes] = []
        self._upstream = None  # the live iterator, once the caller starts reading

    def __iter__(self) -> Iterator[bytes]:
        self._upstream = self._response.iter_bytes()
        try:
            for chunk in self._upstream:
                self._chunks.append(chunk)
                yield chunk
        except Exception:
            self._upstream = None  # broken midway: nothing to complete or record
            raise
        self._complete()

    async def __aiter__(self):
        self._upstream = self._response.aiter_bytes()
        try:
            async for chunk in self._upstream:
                self._chunks.append(chunk)
                yield chunk
        except Exception:
            self._upstream = None
            raise
        self._complete()

    def _complete(self) -> None:
        if self._upstream is not None:
            self._upstream = None
            self._on_complete(b"".join(self._chunks))

    def close(self) -> None:
        try:
            if self._upstream is not None:
                self._chunks.extend(self._upstream)
                self._complete()
        except _HTTP_ERRORS:
            pass  # the upstream broke: a truncated body is never recorded
        finally:
            self._response.close()

    async def aclose(self) -> None:
        try:
            if self._upstream is not None:
                self._chunks.extend([chunk async for chunk in self._upstream])
                self._complete()
        except _HTTP_ERRORS:
            pass
        finally:
            await self._response.aclose()


@dataclass
class _Config:
    store: Store
    doms: tuple[str, ...]
    hdrs: frozenset[str]
    mode: str
    debug: bool
    stats: Stats = field(default_factory=Stats)
    _count_lock: threading.Lock = field(default_factory=threading.Lock)

    def covers(self, host: str) -> bool:
        """Whether `host` is one of `doms` or below one: the host is matched, never a substring of the URL."""
        return host in self.doms or host.endswith(self._subdomain_suffixes)

    @functools.cached_property
    def _subdomain_suffixes(self) -> tuple[str, ...]:
        return tuple("." + dom for dom in self.doms)

    @functools.cached_property
    def kept_headers(self) -> tuple[str, ...]:
        """content-type and the `hdrs`, less those that would be stale once the body is stored decoded."""
        return tuple(dict.fromkeys(name for name in ("content-type", *self.hdrs) if name not in _NEVER_STORED))

    def note(self, outcome: str, request: httpx.Request, key: str = "-", detail: str = "") -> None:
        with self._count_lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
            if outcome in ("hits", "recorded"):
                self.stats.used.add(key)
        if self.debug:
            print(
                f"cachy {_LABELS[outcome]:<11} {key:<16} {request.method} {public_url(request.url)}{detail}",
                file=sys.stderr,
            )

    def lookup(self, request: httpx.Request, stream: bool) -> tuple[dict, httpx.Response | None]:
        """The recorded response when there is one, and the start of the entry that records it otherwise.
        In replay mode a miss raises CachyMiss."""
        url = public_url(request.url)
        key = _key(request, url, stream)
        entry = None if self.mode == "refresh" else self.store.get(key)
        if entry is not None:
            self.note("hits", request, key)
            return entry, _replay(entry, request)
        if self.mode == "replay":
            self.note("replay_misses", request, key)
            raise CachyMiss(
                f"cachy: no recorded response for {request.method} {url} (key {key}) in {self.store.path}, "
                "and cachy is in replay mode. Record it by running once with API keys in record mode "
                '(CACHY_MODE=record, or enable_cachy(mode="record")), then commit the file.'
            )
        return {"key": key, "method": request.method, "url": url}, None

    def record(self, entry: dict, request: httpx.Request, response: httpx.Response, stream: bool) -> httpx.Response:
        """Store a live response, and answer with exactly what a later hit will replay."""
        status = response.status_code  # 2xx and the 4xx the request itself causes; never 5xx, credentials or load
        if not (200 <= status < 300 or (400 <= status < 500 and status not in _NOT_RECORDED_4XX)):
            self.note("passed", request, entry["key"], f" ({status}, not recorded)")
            return response
        headers = {name: value for name in self.kept_headers if (value := response.headers.get(name)) is not None}
        entry.update(status_code=status, headers=headers)

        def save(body: bytes) -> None:
            try:
                entry["response"] = body.decode()
            except UnicodeDecodeError:  # audio, images, other encodings: stored losslessly
                entry.update(response=base64.b64encode(body).decode(), binary=True)
            self.store.append(entry)
            self.note("recorded", request, entry["key"])

        if not stream:
            save(response.content)
            response.headers = type(response.headers)(headers)  # what a hit will replay; the body is decoded already
            return response
        module = _module_of(request)
        return module.Response(status, headers=headers, stream=_Recorder(response, save), request=request)


# ---------------------------------------------------------------------------------- the patches
_config: _Config | None = None
_originals: dict[type, Callable] = {}
_bypass = contextvars.ContextVar("cachy_bypass", default=False)


def _route(request: httpx.Request) -> _Config | None:
    """The configuration that handles `request`, or None to send it untouched."""
    if (config := _config) is None:
        return None
    if _bypass.get() or not config.covers(request.url.host):
        config.note("passed", request)
        return None
    return config


def _patched_sync(original: Callable) -> Callable:
    @functools.wraps(original)
    def send(self, request, **kwargs):
        if (config := _route(request)) is None:
            return original(self, request, **kwargs)
        request.read()  # a multipart upload is not read yet; reading keeps it sendable
        entry, cached = config.lookup(request, stream := bool(kwargs.get("stream")))
        if cached is not None:
            return cached
        return config.record(entry, request, original(self, request, **kwargs), stream)

    return send


def _patched_async(original: Callable) -> Callable:
    @functools.wraps(original)
    async def send(self, request, **kwargs):
        if (config := _route(request)) is None:
            return await original(self, request, **kwargs)
        await request.aread()
        entry, cached = config.lookup(request, stream := bool(kwargs.get("stream")))
        if cached is not None:
            return cached
        return config.record(entry, request, await original(self, request, **kwargs), stream)

    return send


def _patch() -> None:
    """Wrap each client class's `send` once; the wrappers read the configuration at call time."""
    for module in _HTTPX:
        for cls, wrap in ((module.Client, _patched_sync), (module.AsyncClient, _patched_async)):
            if cls not in _originals:
                _originals[cls] = cls.__dict__["send"]
                cls.send = wrap(_originals[cls])


def _unpatch() -> None:
    for cls, original in _originals.items():
        cls.send = original
    _originals.clear()


# ----------------------------------------------------------------------------------- public API
def _names(value: Iterable[str] | None, argument: str) -> tuple[str, ...]:
    """Host or header names, lower-cased; a single string is the usual slip, and would be read letter by letter."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{argument} takes a tuple or list of names, not a string: write {argument}=({value!r},)")
    names = tuple(value or ())
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"{argument} takes names as strings, got {names!r}")
    return tuple(name.lower() for name in names)


def default_cache_dir() -> Path:
    """The nearest folder at or above the working directory with a `pyproject.toml`, else the working directory."""
    return find_file_parents("pyproject.toml") or Path.cwd()


def enable_cachy(
    cache_dir: str | os.PathLike | None = None,
    doms: Iterable[str] = doms,
    hdrs: Iterable[str] | None = None,
    mode: str | None = None,
    debug: bool = False,
) -> None:
    """Answer requests to `doms` from `cache_dir/cachy.jsonl`, and record the ones not seen before.

    `hdrs` names response headers to keep besides content-type (Gemini uploads need two). `mode` is
    "record" (default), "replay" (a miss raises CachyMiss) or "refresh"; `CACHY_MODE` sets the default."""
    global _config
    source = "mode" if mode else "CACHY_MODE"
    mode = mode or os.environ.get("CACHY_MODE") or "record"
    if mode not in MODES:
        raise ValueError(f"unknown cachy mode {mode!r} (from {source}): use one of {', '.join(MODES)}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if folder.is_file():
        raise NotADirectoryError(f"cache_dir {folder} is a file: give the folder that holds (or will hold) cachy.jsonl")
    folder.mkdir(parents=True, exist_ok=True)
    store = _store_for(folder / "cachy.jsonl")
    _config = _Config(store, _names(doms, "doms"), frozenset(_names(hdrs, "hdrs")), mode, debug)
    _patch()


def disable_cachy() -> None:
    """Put the original `send` methods back; a no-op when cachy is not enabled."""
    global _config
    _config = None
    _unpatch()


def _restore(config: _Config | None) -> None:
    global _config
    if config is None:
        return disable_cachy()
    _config = config
    _patch()


def cachy_stats() -> Stats:
    """A copy of the counts for the current configuration (all zero when cachy is off)."""
    if _config is None:
        return Stats()
    with _config._count_lock:
        return dataclasses.replace(_config.stats, used=set(_config.stats.used))


def compact_cachy(path: str | os.PathLike | None = None, keep: set[str] | None = None) -> Rewrite:
    """Rewrite a cache file (or the one in a folder) deduplicated (last wins), without damaged lines,
    sorted by key, atomically. With `keep`, entries whose key is not in it are dropped too."""
    file = Path(path) if path is not None else default_cache_dir()
    return _store_for(file / "cachy.jsonl" if file.is_dir() else file).rewrite(keep)


def prune_cachy() -> Rewrite:
    """Drop every entry that no request used (hit or recorded) since `enable_cachy`. Call it after a full run."""
    if _config is None:
        raise RuntimeError("cachy is not enabled: prune_cachy keeps the entries used since enable_cachy")
    if worker := os.environ.get("PYTEST_XDIST_WORKER"):
        raise RuntimeError(
            f"prune_cachy in pytest-xdist worker {worker} would drop the entries other workers used: "
            "use pytest --cachy-prune, which merges every worker's keys"
        )
    used = cachy_stats().used
    if not used:
        raise RuntimeError("no entry was used since enable_cachy: refusing to prune the whole file")
    return compact_cachy(_config.store.path, keep=used)


class _Switch(ContextDecorator):
    """Base of the scoped switches: a `with` block, or a decorator of plain and async functions."""

    def __call__(self, func: Callable) -> Callable:
        if not inspect.iscoroutinefunction(func):
            return super().__call__(func)

        @functools.wraps(func)
        async def run(*args, **kwargs):
            with self._recreate_cm():
                return await func(*args, **kwargs)

        return run


class cachy(_Switch):  # noqa: N801 - reads as a statement: `with cachy():`
    """Enable cachy inside a block or decorated function, then restore whatever configuration was there before."""

    @delegates(enable_cachy)
    def __init__(self, **kwargs):
        self._kwargs, self._previous = kwargs, None

    def _recreate_cm(self) -> cachy:
        return cachy(**self._kwargs)

    def __enter__(self) -> Stats:
        self._previous = _config
        enable_cachy(**self._kwargs)
        return _config.stats

    def __exit__(self, *exc_info) -> None:
        _restore(self._previous)


class no_cachy(_Switch):  # noqa: N801
    """Send requests live inside a block: nothing is read from or written to the cache (per thread and task)."""

    def _recreate_cm(self) -> no_cachy:
        return no_cachy()

    def __enter__(self) -> None:
        self._token = _bypass.set(True)

    def __exit__(self, *exc_info) -> None:
        _bypass.reset(self._token)
