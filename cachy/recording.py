"""The stream recorder: a live stream's chunks pass through to the caller as they arrive, and are recorded
only once the upstream has ended normally.

A streamed miss must not wait for the whole body (the time to the first token stays the provider's), and a
truncated body must never be stored as if complete: a reset, a timeout, `KeyboardInterrupt` or a task's
cancellation breaks a stream off, and what was read by then is not the answer. Each transport adapter hands
its live chunks to one `StreamRecording`, which ends in exactly one of `finish` or `abandon`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator


class StreamRecording:
    """One live stream, recorded only when its upstream ends normally. A transport adapter hands it each chunk,
    then calls `finish` at the upstream's end, or `abandon` when it breaks or is closed unread. Either, once:
    `finish` hands the whole body to `finished`, `abandon` its reason to `abandoned`."""

    def __init__(
        self,
        started: float,
        headers: dict[str, str],
        finished: Callable[[bytes], None],
        abandoned: Callable[[str], None],
        reading: Callable[[], None] = lambda: None,
        dropped: Callable[[], None] = lambda: None,
    ):
        self.started = started  # when the request went out, by `time.perf_counter`
        self.headers = headers  # what a hit will replay
        self._finished = finished
        self._abandoned = abandoned
        self._reading = reading  # once, when the caller begins to read: the stream is being consumed
        self._dropped = dropped  # when the caller drops it before its end: a later close may still finish it
        self._begun = False
        self._chunks: list[bytes] = []
        self.done = False

    def add(self, chunk: bytes) -> None:
        self._begin()
        self._chunks.append(chunk)

    def _begin(self) -> None:
        if not self._begun:
            self._begun = True
            self._reading()

    def relay(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Each live chunk, as it arrives, recorded; finished at the upstream's end, abandoned if anything
        (a reset, a timeout, KeyboardInterrupt) breaks it off: what was read is then not the whole body."""
        self._begin()
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
            try:
                yield chunk
            except GeneratorExit:  # the caller let go before the end (a `break`); closing may yet read the rest
                if not self.done:
                    self._dropped()
                raise

    async def arelay(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`relay`, for an async upstream: cancellation and `asyncio.timeout` break it off too."""
        self._begin()
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
            try:
                yield chunk
            except GeneratorExit:
                if not self.done:
                    self._dropped()
                raise

    def finish(self) -> None:
        """The upstream ended normally: the body is whole."""
        if not self.done:
            self.done = True
            self._finished(b"".join(self._chunks))

    def abandon(self, reason: str) -> None:
        """The stream broke off, or was closed before it was read: nothing is recorded."""
        if not self.done:
            self.done = True
            self._abandoned(reason)
