"""Streaming through cachy: chunks pass through live on a miss, only a complete body is recorded (not one
cut off by an interrupt, a timeout or a cancel, nor an error event), and a hit replays the same bytes."""

from __future__ import annotations

import asyncio
import datetime
import json

import httpx
import httpx2
import openai
import pytest
from helpers import CHAT, MESSAGES, SSE, Upstream, chunked, entries

from cachy import enable_cachy, request_key

URL = "https://api.anthropic.com/v1/messages"
EVENTS = [b"event: a\ndata: 1\n\n", b"event: b\ndata: 2\n\n", b"event: c\ndata: 3\n\n"]


class PacedUpstream:
    """Streams EVENTS, recording what the caller had received when each chunk was produced; can break midway.
    Unlike helpers.Upstream, it sees the caller's progress, which is what shows that nothing is buffered."""

    def __init__(self, module=httpx, break_after: int | None = None):
        self.module, self.break_after, self.calls = module, break_after, 0
        self.received: list[bytes] = []  # what the caller has seen, appended by the test as it reads
        self.seen_when_sending: list[int] = []

    def chunks(self):
        for index, event in enumerate(EVENTS):
            if index == self.break_after:
                raise self.module.ReadError("connection reset by peer")
            self.seen_when_sending.append(len(self.received))
            yield event

    def handler(self, request):
        self.calls += 1
        stream = chunked(self.module, self.chunks())
        return self.module.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    def client(self):
        return self.module.Client(transport=self.module.MockTransport(self.handler))

    def async_client(self):
        return self.module.AsyncClient(transport=self.module.MockTransport(self.handler))


def read(client, upstream: PacedUpstream) -> bytes:
    with client.stream("POST", URL, json={"stream": True}) as response:
        for chunk in response.iter_bytes():
            upstream.received.append(chunk)
    return b"".join(upstream.received)


@pytest.mark.parametrize("module", [httpx, httpx2])
def test_a_miss_passes_chunks_on_as_they_arrive_and_records_at_the_end(cache_dir, module):
    upstream = PacedUpstream(module)
    with upstream.client().stream("POST", URL, json={"stream": True}) as response:
        for chunk in response.iter_bytes():
            assert entries(cache_dir) == []  # nothing is written before the stream's end
            upstream.received.append(chunk)
    # Each event was produced only after the caller had received the ones before it: nothing was buffered.
    assert upstream.seen_when_sending == [0, 1, 2]
    assert entries(cache_dir)[0]["response"] == b"".join(EVENTS).decode()
    upstream.received.clear()
    assert read(upstream.client(), upstream) == b"".join(EVENTS)
    assert upstream.calls == 1


def test_an_async_miss_passes_chunks_on_as_they_arrive(cache_dir):
    upstream = PacedUpstream(httpx2)

    async def run():
        async with upstream.async_client() as client, client.stream("POST", URL, json={"stream": True}) as response:
            async for chunk in response.aiter_bytes():
                upstream.received.append(chunk)

    asyncio.run(run())
    assert upstream.seen_when_sending == [0, 1, 2]
    upstream.received.clear()
    asyncio.run(run())
    assert b"".join(upstream.received) == b"".join(EVENTS)
    assert upstream.calls == 1


def test_a_hit_replays_the_exact_bytes_including_the_final_blank_line(cache_dir):
    upstream = PacedUpstream()
    read(upstream.client(), upstream)
    upstream.received.clear()
    replayed = read(upstream.client(), upstream)
    assert replayed.endswith(b"data: 3\n\n") and replayed == b"".join(EVENTS)


def test_stream_and_non_stream_calls_are_cached_apart(cache_dir):
    upstream = PacedUpstream()
    read(upstream.client(), upstream)
    upstream.client().post(URL, json={"stream": True})
    assert upstream.calls == 2
    request = httpx.Request("POST", URL, json={"stream": True})
    assert {entry["key"] for entry in entries(cache_dir)} == {request_key(request, True), request_key(request, False)}


def test_a_stream_closed_after_its_first_chunk_is_completed_before_it_is_stored(cache_dir):
    """SDKs close a stream once they see its final event: the rest is read so the whole body is stored."""
    upstream = PacedUpstream()
    with upstream.client().stream("POST", URL, json={"stream": True}) as response:
        next(response.iter_bytes())
    assert entries(cache_dir)[0]["response"] == b"".join(EVENTS).decode()


def test_a_stream_closed_before_it_is_read_records_nothing(cache_dir):
    upstream = PacedUpstream()
    with upstream.client().stream("POST", URL, json={"stream": True}) as response:
        assert response.status_code == 200
    assert entries(cache_dir) == []


@pytest.mark.parametrize("module", [httpx, httpx2])
def test_a_stream_that_breaks_midway_records_nothing(cache_dir, module):
    upstream = PacedUpstream(module, break_after=2)
    with pytest.raises(module.ReadError), upstream.client().stream("POST", URL, json={"stream": True}) as response:
        for chunk in response.iter_bytes():
            upstream.received.append(chunk)
    assert upstream.received == EVENTS[:2]
    assert entries(cache_dir) == []


def test_a_stream_that_breaks_while_being_completed_records_nothing(cache_dir):
    upstream = PacedUpstream(break_after=2)
    with upstream.client().stream("POST", URL, json={"stream": True}) as response:
        next(response.iter_bytes())
    assert entries(cache_dir) == []


def test_an_async_stream_closed_early_is_completed_and_one_that_breaks_is_not(cache_dir):
    async def first_chunk_then_close(upstream):
        async with upstream.async_client() as client, client.stream("POST", URL, json={"s": 1}) as response:
            async for _ in response.aiter_bytes():
                break

    asyncio.run(first_chunk_then_close(PacedUpstream(httpx2, break_after=2)))
    assert entries(cache_dir) == []
    asyncio.run(first_chunk_then_close(PacedUpstream(httpx2)))
    assert entries(cache_dir)[0]["response"] == b"".join(EVENTS).decode()


def test_over_a_real_socket_the_first_event_arrives_while_the_server_is_still_sending(tmp_path):
    """A server on 127.0.0.1 sends one event, then waits until the client has read it before it sends the
    rest: if cachy buffered the stream on a miss, the client would read nothing until the server gave up."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cachy import enable_cachy

    client_has_first_event = threading.Event()
    waited = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for number, event in enumerate(EVENTS):
                if number == 1:
                    waited.append(client_has_first_event.wait(timeout=5))
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    enable_cachy(tmp_path, doms=("127.0.0.1",))
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/messages"
    try:
        with httpx.Client() as client:
            for _ in range(2):  # a miss, then a hit
                with client.stream("POST", url, json={"stream": True}) as response:
                    received = []
                    for chunk in response.iter_bytes():
                        received.append(chunk)
                        client_has_first_event.set()
                assert b"".join(received) == b"".join(EVENTS)
    finally:
        server.shutdown()
        server.server_close()
    assert waited == [True]  # the server was asked once, and the client had the first event before it went on


# ----------------------------------------------- cut off by an interrupt, a timeout or a cancel
def interrupted_once(module, interruption):
    """A streamed upstream whose first answer is cut off after its first event by `interruption`; later answers
    are whole. Returns the list of requests it saw, and the handler for MockTransport."""
    calls = []

    def handler(request):
        calls.append(request)
        first = len(calls) == 1
        return module.Response(200, headers=SSE, stream=interruption(module) if first else chunked(module, EVENTS))

    return calls, handler


def keyboard_interrupt(module):
    def events():
        yield EVENTS[0]
        raise KeyboardInterrupt  # as Ctrl-C striking while the caller waits for the next chunk

    return chunked(module, events())


def stalls(module, first: bytes = EVENTS[0]):
    """A stream that sends `first`, then waits for an event that never comes."""

    class Stalling(module.AsyncByteStream):
        async def __aiter__(self):
            yield first
            await asyncio.Event().wait()
            yield b"never sent"

    return Stalling()


@pytest.mark.parametrize("module", [httpx, httpx2])
def test_a_stream_cut_off_by_keyboard_interrupt_records_nothing_and_goes_live_next_time(cache_dir, module):
    calls, handler = interrupted_once(module, keyboard_interrupt)
    client = module.Client(transport=module.MockTransport(handler))
    received = []
    with pytest.raises(KeyboardInterrupt), client.stream("POST", CHAT, json={"stream": True}) as response:
        for chunk in response.iter_bytes():
            received.append(chunk)
    assert received == EVENTS[:1]
    assert entries(cache_dir) == []
    with client.stream("POST", CHAT, json={"stream": True}) as response:
        assert b"".join(response.iter_bytes()) == b"".join(EVENTS)
    assert len(calls) == 2


async def read_until_cut_off(client, how: str) -> list[bytes]:
    """Read a stream in `client.stream`'s block, which closes the response, until `how` cuts it off."""
    received, got_first = [], asyncio.Event()

    async def read():
        async with client.stream("POST", CHAT, json={"stream": True}) as response:
            async for chunk in response.aiter_bytes():
                received.append(chunk)
                got_first.set()

    if how == "asyncio.timeout":
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await read()
    elif how == "asyncio.wait_for":
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(read(), 0.05)
    else:
        task = asyncio.create_task(read())
        await got_first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return received


@pytest.mark.parametrize("how", ["asyncio.timeout", "asyncio.wait_for", "task.cancel"])
@pytest.mark.parametrize("module", [httpx, httpx2])
def test_an_async_stream_cut_off_by_cancellation_records_nothing_and_goes_live_next_time(cache_dir, module, how):
    calls, handler = interrupted_once(module, stalls)

    async def scenario():
        async with module.AsyncClient(transport=module.MockTransport(handler)) as client:
            assert await read_until_cut_off(client, how) == EVENTS[:1]
            assert entries(cache_dir) == []
            async with client.stream("POST", CHAT, json={"stream": True}) as response:
                return b"".join([chunk async for chunk in response.aiter_bytes()])

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == b"".join(EVENTS)
    assert len(calls) == 2


def openai_events(text: str) -> list[bytes]:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    deltas = [{"content": text}, {}]
    events = [{**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    return [f"data: {json.dumps(event)}\n\n".encode() for event in events] + [b"data: [DONE]\n\n"]


def test_an_openai_stream_cut_off_by_asyncio_timeout_records_nothing(cache_dir):
    calls = []

    def handler(request):
        calls.append(request)
        events = openai_events(f"streamed {len(calls)}")
        stream = stalls(httpx2, events[0]) if len(calls) == 1 else chunked(httpx2, events)
        return httpx2.Response(200, headers=SSE, stream=stream)

    client = openai.AsyncOpenAI(api_key="k", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))

    async def chat() -> list[str]:
        deltas = []
        async with await client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True) as stream:
            async for chunk in stream:
                deltas.append(chunk.choices[0].delta.content or "")
        return deltas

    async def scenario():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await chat()
        assert entries(cache_dir) == []
        return "".join(await chat())

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == "streamed 2"
    assert len(calls) == 2


# ---------------------------------------------------------------------- errors and elapsed time
def test_an_error_event_in_a_streamed_200_is_not_recorded(tmp_path):
    """anthropic reports overload inside a 200 stream: replaying it would freeze a transient failure."""
    bodies = [
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n',
        b"event: x\ndata: 1\n\n",
    ]
    upstream = Upstream(lambda request, n: (200, SSE, bodies[min(n, 2) - 1]))
    enable_cachy(tmp_path)
    client = upstream.client()
    for expected in bodies:
        with client.stream("POST", "https://api.anthropic.com/v1/messages", json={"stream": True}) as response:
            assert response.read() == expected
    assert upstream.calls == 2
    assert len(entries(tmp_path)) == 1


@pytest.mark.parametrize("module", [httpx, httpx2])
def test_elapsed_of_a_streamed_miss_can_be_read_once_it_is_closed(cache_dir, module):
    upstream = Upstream(lambda request, n: (200, SSE, list(EVENTS)))
    client = upstream.client(module)
    with client.stream("POST", CHAT, json={}) as response:
        response.read()
    assert isinstance(response.elapsed, datetime.timedelta)
