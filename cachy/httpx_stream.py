"""The httpx side of a streamed miss: the body that hands the live chunks to the caller and to the recording,
and which of httpx and httpx2 a request belongs to (an answer must be of the module the SDK built on).

httpx and httpx2 share a design but not their classes: openai >= 3, anthropic >= 1 and google-genai >= 3
build on httpx2, litellm and older SDKs on httpx, and a program may use both at once."""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from .recording import StreamRecording

try:
    import httpx2
except ImportError:  # optional: only the newest openai, anthropic and google-genai use it
    httpx2 = None

HTTPX_MODULES = tuple(module for module in (httpx, httpx2) if module is not None)
_HTTP_ERRORS = tuple(module.HTTPError for module in HTTPX_MODULES)


def module_of(request: httpx.Request) -> Any:
    """httpx or httpx2, whichever `request` belongs to, so the answer is of the kind the SDK expects."""
    return httpx2 if httpx2 is not None and isinstance(request, httpx2.Request) else httpx


class LiveStream(*(m.SyncByteStream for m in HTTPX_MODULES), *(m.AsyncByteStream for m in HTTPX_MODULES)):
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
            raise module_of(self._live.request).StreamConsumed()
        self._chunks = self._live.iter_bytes()
        return self._read()

    def __aiter__(self):
        if self._achunks is not None:
            raise module_of(self._live.request).StreamConsumed()
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
