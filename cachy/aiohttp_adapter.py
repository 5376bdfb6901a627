"""The aiohttp adapter: a client middleware, the innermost of every request a `ClientSession` sends, hands the
request to cachy's engine. Imported only once the program has imported aiohttp (see `lazy`).

A middleware sees the request as it goes out (the URL with its query, the encoded body, the headers), and a
replay it returns goes through the rest of `ClientSession._request` as a live response does: `raise_for_status`,
traces, history. aiohttp has no stream flag, as every body is read as the caller goes: its requests are keyed
with `stream=False`, and a live body is recorded once it has all arrived, however the caller reads it.
"""

from __future__ import annotations

import functools
import http.client
import inspect
import warnings
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import ClientRequest, ClientResponse, ClientSession, HttpVersion11, StreamReader
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import sentinel
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy

from .core import Call, Engine, Miss, aserve, wrap
from .errors import CachyWarning
from .lines import Entry
from .recording import StreamRecording
from .stats import Outcome

_Handler = Callable[[ClientRequest], Awaitable[ClientResponse]]

# aiohttp 3.14 asks a response how much of its request went out; a replay sent nothing.
_UNSENT = (
    {"stream_writer": SimpleNamespace(output_size=0)}
    if "stream_writer" in inspect.signature(ClientResponse.__init__).parameters
    else {}
)


def _show(response: ClientResponse, headers: dict[str, str]) -> None:
    """Give `response` the headers a hit replays: the stored ones, so that a miss answers as its hits will."""
    response._headers = CIMultiDictProxy(CIMultiDict(headers))
    response._raw_headers = tuple((name.encode(), value.encode()) for name, value in headers.items())
    response._cache.pop("headers", None)  # `headers` and `raw_headers` are cached properties
    response._cache.pop("raw_headers", None)


_recordings: dict[StreamReader, StreamRecording] = {}
"""The recording of each live body still arriving. Every live reader ends in `feed_eof` or `set_exception` (release,
close and a lost connection set one), which takes its entry out."""


class _RecordedReader(StreamReader):
    """A live body's reader that hands each decoded chunk to its recording as aiohttp feeds it, however the caller
    reads (`read()`, `text()`, lines, `iter_chunked`, `iter_any`): the recording ends with the body, when all has
    arrived, or is abandoned when it breaks off or is released first. A live reader becomes one by a change of
    class, as aiohttp made it before cachy sees it; it keeps its slots."""

    __slots__ = ()

    def feed_data(self, data: bytes, *args: Any) -> Any:
        recording = _recordings.get(self)
        if recording is not None:
            recording.add(data)
        return super().feed_data(data, *args)

    def feed_eof(self) -> None:
        super().feed_eof()
        recording = _recordings.pop(self, None)
        if recording is not None:
            recording.finish()

    def set_exception(self, *args: Any) -> None:
        recording = _recordings.pop(self, None)
        if recording is not None:
            recording.abandon("the body broke off, or was released before its end")
        super().set_exception(*args)


def _record(reader: StreamReader, recording: StreamRecording) -> None:
    """Record the body `reader` receives: what arrived with the headers, and the rest as it comes."""
    if reader is EMPTY_PAYLOAD:  # HEAD, 204, 304: no body; a shared reader that must stay as it is
        recording.finish()
        return
    for chunk in reader._buffer:  # nobody has read yet: the buffer holds all that arrived
        recording.add(chunk)
    if reader.is_eof():
        recording.finish()
    elif reader.exception() is not None:
        recording.abandon("the body broke off")
    else:
        _recordings[reader] = recording
        reader.__class__ = _RecordedReader


class _Aiohttp:
    """A `ClientSession`'s requests, as `aserve` walks them from cachy's middleware (see `cachy.core.Adapter`).
    aiohttp has no stream flag: every request is keyed as not streamed, and every body recorded as it arrives."""

    def __init__(self, decoded: bool, limit: float | None):
        self._decoded = decoded  # the session decompresses bodies: else an encoded one is passed on unrecorded
        self._limit = limit  # the request's timeout, as `_wait_limit` reads it

    def target(self, request: ClientRequest) -> tuple[str, str, str]:
        return request.method, str(request.url), request.url.host or ""

    async def call(self, request: ClientRequest, url: str, stream: bool) -> Call:
        body = await request.body.as_bytes() if request.body else b""  # a streamed payload keeps what it read
        return Call(request.method, url, body, request.headers, stream)

    def wait_limit(self, request: ClientRequest) -> float | None:
        return self._limit

    def replay(self, entry: Entry, request: ClientRequest) -> ClientResponse:
        """A real ClientResponse whose body is a real StreamReader holding the stored bytes, then its end."""
        response = request.response_class(
            request.method,
            request.original_url,
            writer=None,
            continue100=None,
            timer=None,
            request_info=request.request_info,
            traces=[],
            loop=request.loop,
            session=request.session,
            **_UNSENT,
        )
        response.version, response.status = HttpVersion11, entry.status
        response.reason = http.client.responses.get(entry.status, "")
        _show(response, entry.headers)
        # A limit above the body's size: a reader with no connection must never ask one to pause.
        response.content = StreamReader(BaseProtocol(request.loop), len(entry.body) + 1, loop=request.loop)
        response.content.feed_data(entry.body)
        response.content.feed_eof()
        return response

    def answer(self, engine: Engine, miss: Miss, request: ClientRequest, response: ClientResponse) -> ClientResponse:
        """The live response, its body recorded once it has all arrived, however the caller reads it."""
        if not self._decoded and "content-encoding" in response.headers:
            engine.count(Outcome.PASSED, miss.call.method, miss.url, miss.slot, " (encoded: auto_decompress is off)")
            return response
        recording = engine.record_stream(miss, response.status, response.headers)
        if recording is not None:
            _show(response, recording.headers)
            _record(response.content, recording)
        return response


async def _cache(request: ClientRequest, handler: _Handler, decoded: bool, limit: float | None) -> ClientResponse:
    """The middleware: a hit answers from the store, a miss goes live and is recorded once its body has arrived."""
    return await aserve(_Aiohttp(decoded, limit), request, False, lambda: handler(request))


def _wait_limit(timeout: aiohttp.ClientTimeout | float | None) -> float | None:
    """How long a request may wait for an identical one in flight: the smaller of its timeout's `total` and
    `sock_read` (a number is a total; aiohttp's own timer raises its timeout error at the total anyway)."""
    if not isinstance(timeout, aiohttp.ClientTimeout):
        return timeout
    return min((limit for limit in (timeout.total, timeout.sock_read) if limit), default=None)


def _patched(original: Callable) -> Callable:
    @functools.wraps(original)  # google-genai reads the signature of `_request` to choose its arguments
    async def _request(self: ClientSession, method: str, str_or_url: Any, **kwargs: Any) -> ClientResponse:
        middlewares = kwargs.get("middlewares")
        decoded = kwargs.get("auto_decompress")
        timeout = kwargs.get("timeout", sentinel)
        cache = functools.partial(
            _cache,
            decoded=self.auto_decompress if decoded is None else decoded,
            limit=_wait_limit(self.timeout if timeout is sentinel else timeout),
        )
        kwargs["middlewares"] = (*(self._middlewares if middlewares is None else middlewares), cache)
        return await original(self, method, str_or_url, **kwargs)

    return _request


def patch() -> None:
    """Wrap `ClientSession._request`, which every request of a session goes through, once; cachy's middleware
    goes last, next to the network, so that it sees what the session's own middlewares made of the request."""
    if "middlewares" not in inspect.signature(ClientSession._request).parameters:
        warnings.warn(
            f"cachy caches aiohttp from version 3.12 on, and this is aiohttp {aiohttp.__version__}: "
            "its requests go out uncached",
            CachyWarning,
            stacklevel=2,
        )
    else:
        wrap(ClientSession, "_request", _patched)
