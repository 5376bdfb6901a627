"""The requests adapter: `HTTPAdapter.send`, which `requests.get`, `Session` and `stream=True` all go through,
hands its requests to cachy's engine. Imported only once the program has imported requests (see `lazy`)."""

from __future__ import annotations

import functools
import http.client
import io
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import urllib3
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from .core import Call, Engine, Miss, serve, wrap
from .lines import Entry
from .recording import StreamRecording


def _body(request: PreparedRequest) -> bytes:
    """The body as bytes. One that streams (a file, a generator) is read, and left as bytes so it still sends."""
    body = request.body
    if body is None:
        return b""
    if isinstance(body, (str, bytes, bytearray, memoryview)):
        return _bytes(body)
    request.body = _bytes(body.read()) if hasattr(body, "read") else b"".join(map(_bytes, body))
    return request.body


def _bytes(chunk: str | bytes | bytearray | memoryview) -> bytes:
    return chunk.encode() if isinstance(chunk, str) else bytes(chunk)  # urllib3 sends a str as UTF-8


class _StoredBody(io.BytesIO):
    """A recorded body that urllib3 reads as it reads a connection: `stream()` stops once `isclosed()` says so,
    which a connection does at its end and a plain BytesIO never would."""

    def __init__(self, body: bytes):
        super().__init__(body)
        self.size = len(body)

    def isclosed(self) -> bool:
        return self.closed or self.tell() == self.size


class _LiveRaw:
    """A streamed miss's `response.raw`: the live body, decoded, reaches the caller as it arrives, and the recording.

    `stream()` (what `iter_content` and `iter_lines` use) and `read()` are recorded; anything else is the live
    response's. Streaming again continues where the last stream stopped. Closing a body that was read from reads
    what is left, since SDKs close right after their final event, a moment before the upstream's end."""

    def __init__(self, live: urllib3.HTTPResponse, recording: StreamRecording):
        self._live, self._recording = live, recording
        self._chunks: Iterator[bytes] | None = None
        self._read_from = False

    def stream(self, amt: int | None = 2**16, decode_content: bool | None = None) -> Iterator[bytes]:
        self._read_from = True
        if self._chunks is None:
            self._chunks = self._live.stream(amt, decode_content=True)  # the caller's answer has no content-encoding
        return self._recording.relay(self._chunks)

    def read(self, amt: int | None = None, decode_content: bool | None = None, cache_content: bool = False) -> bytes:
        self._read_from = True
        try:
            data = self._live.read(amt, decode_content=True, cache_content=cache_content)
        except BaseException:
            self._recording.abandon("the stream broke off")
            raise
        self._recording.add(data)
        if amt is None or (amt and not data):
            self._recording.finish()
        return data

    def close(self) -> None:
        try:
            if not self._read_from:
                self._recording.abandon("closed before it was read")
            for _ in self.stream():
                pass
        except urllib3.exceptions.HTTPError:
            pass  # abandoned above: a truncated body is never recorded
        finally:
            self._live.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._live, name)


class _Requests:
    """`HTTPAdapter.send`, as `serve` walks it (see `cachy.core.Adapter`)."""

    def __init__(self, adapter: HTTPAdapter, timeout: Any):
        self._adapter = adapter  # the one sending: its `build_response` builds a replay as a live response
        self._timeout = timeout  # `send`'s: a number, a (connect, read) pair, a urllib3 Timeout, or None

    def target(self, request: PreparedRequest) -> tuple[str, str, str]:
        url = request.url or ""
        return request.method or "GET", url, urlsplit(url).hostname or ""

    def call(self, request: PreparedRequest, url: str, stream: bool) -> Call:
        return Call(request.method or "GET", url, _body(request), request.headers, stream)

    def wait_limit(self, request: PreparedRequest) -> float | None:
        """The read timeout: a live call waits that long for its answer."""
        timeout = self._timeout[-1] if isinstance(self._timeout, tuple) else self._timeout
        if isinstance(timeout, urllib3.Timeout):  # its read_timeout raises until its connect timer has started
            timer = timeout.clone()
            timer.start_connect()
            timeout = timer.read_timeout
        return timeout if isinstance(timeout, (int, float)) else None

    def replay(self, entry: Entry, request: PreparedRequest) -> Response:
        """A response built from `entry` the way requests builds a live one, so it reads alike in every way."""
        raw = urllib3.HTTPResponse(
            body=_StoredBody(entry.body),
            headers=entry.headers,
            status=entry.status,
            reason=http.client.responses.get(entry.status, ""),
            preload_content=False,
        )
        return self._adapter.build_response(request, raw)

    def answer(self, engine: Engine, miss: Miss, request: PreparedRequest, live: Response) -> Response:
        if not miss.call.stream:
            entry = engine.record(miss, live.status_code, live.headers, live.content)
            if entry is not None:
                live.headers = CaseInsensitiveDict(entry.headers)  # what a hit will replay; the body is decoded already
            return live
        recording = engine.record_stream(miss, live.status_code, live.headers)
        if recording is not None:
            live.headers = CaseInsensitiveDict(recording.headers)
            live.raw = _LiveRaw(live.raw, recording)
        return live


def _patched(original: Callable) -> Callable:
    @functools.wraps(original)
    def send(
        self: HTTPAdapter,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Response:
        live = functools.partial(original, self, request, stream, timeout, *args, **kwargs)
        return serve(_Requests(self, timeout), request, bool(stream), live)

    return send


def patch() -> None:
    """Wrap `HTTPAdapter.send` once; the wrapper reads cachy's configuration at call time."""
    wrap(HTTPAdapter, "send", _patched)
