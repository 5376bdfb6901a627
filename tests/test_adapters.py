"""The requests and aiohttp adapters, against a fake provider on 127.0.0.1: the same key, store, modes and
recording policy as httpx, and answers that read like the live ones."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import httpx
import litellm
import pytest
import requests
from google import genai
from google.genai import types
from helpers import entries
from litellm.llms.custom_httpx.aiohttp_transport import LiteLLMAiohttpTransport

import cachy
from cachy import CachyMiss, CachyWarning, cachy_stats, disable_cachy, enable_cachy, no_cachy

EVENTS = [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
FIXED = {"content-type": "application/json", "x-request-id": "req_1", "set-cookie": "session=s"}


class Provider(ThreadingHTTPServer):
    """A provider on 127.0.0.1 that counts its calls. By path: `/events` streams EVENTS chunked (with `pace`, the
    second only once the client has the first), `/broken` drops the connection after two of them, `/gzip` answers
    gzip-encoded JSON, `/fixed` the same JSON every time, `/status/N` status N; OpenAI and Gemini paths answer
    their shapes, and anything else `{"n": call number, "echo": request body}`."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls, self.pace, self.waited = 0, False, []
        self.first_received = threading.Event()  # set by a test once its client has the first event
        threading.Thread(target=self.serve_forever, args=(0.01,), daemon=True).start()

    def handle_error(self, request, client_address):
        pass  # a client that leaves before the end (a test of exactly that) is no error here

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Provider

    def do_GET(self):
        self.do_POST()

    def do_POST(self):
        self.server.calls += 1
        n = self.server.calls
        body = self.read_body()
        path = self.path.partition("?")[0]
        request = json.loads(body) if body.startswith(b"{") else {}
        if path in ("/events", "/broken") or path.endswith(":streamGenerateContent") or request.get("stream"):
            return self.stream(path, request, n)
        if path == "/fixed":
            return self.answer(200, {}, json.dumps({"answer": "the same", "n": [1, 2]}, indent=1).encode())
        if path == "/gzip":
            return self.answer(200, {"content-encoding": "gzip"}, gzip.compress(json.dumps({"n": n}).encode()))
        if path.startswith("/status/"):
            return self.answer(int(path.rpartition("/")[2]), {}, json.dumps({"error": {"message": "no"}}).encode())
        if path.endswith(":generateContent"):
            return self.answer(200, {}, json.dumps(gemini_answer(n)).encode())
        if path.endswith("/chat/completions"):
            message = {"role": "assistant", "content": f"answer {n}"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            completion = {"id": f"c{n}", "object": "chat.completion", "created": 1, "model": "gpt-x"}
            return self.answer(200, {}, json.dumps({**completion, "choices": [choice]}).encode())
        self.answer(200, {}, json.dumps({"n": n, "echo": body.decode(errors="replace")}).encode())

    def read_body(self) -> bytes:
        if self.headers.get("transfer-encoding") != "chunked":
            return self.rfile.read(int(self.headers.get("content-length", 0)))
        chunks = []
        while size := int(self.rfile.readline(), 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(chunks)

    def answer(self, status: int, headers: dict, body: bytes):
        self.send_response(status)
        for name, value in {**FIXED, **headers, "content-length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def stream(self, path: str, request: dict, n: int):
        if path.endswith(":streamGenerateContent"):
            events = [f"data: {json.dumps(gemini_answer(n))}\n\n".encode()] * 2
        elif path.endswith("/chat/completions"):
            chunk = {"id": f"c{n}", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
            choices = [
                {"index": 0, "delta": {"role": "assistant", "content": f"streamed {n}"}, "finish_reason": None},
                {"index": 0, "delta": {}, "finish_reason": "stop"},
            ]
            events = [b"data: %s\n\n" % json.dumps({**chunk, "choices": [choice]}).encode() for choice in choices]
            events.append(b"data: [DONE]\n\n")
        else:
            events = EVENTS
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for number, event in enumerate(events):
            if number == 2 and path == "/broken":
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # no final chunk: the body is cut short
                return
            if number == 1 and self.server.pace:
                self.server.waited.append(self.server.first_received.wait(timeout=5))
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args):
        pass


def gemini_answer(n: int) -> dict:
    candidate = {"content": {"role": "model", "parts": [{"text": f"gemini {n}"}]}, "finishReason": "STOP"}
    return {"candidates": [candidate], "usageMetadata": {"promptTokenCount": 1, "totalTokenCount": 2}}


@pytest.fixture
def upstream(tmp_path):
    """The fake provider, with cachy enabled for its host."""
    server = Provider()
    enable_cachy(tmp_path, doms=("127.0.0.1",))
    yield server
    server.shutdown()
    server.server_close()


def run(coroutine_function, *args):
    """Run an aiohttp scenario in a fresh session and event loop."""

    async def scenario():
        async with aiohttp.ClientSession() as session:
            return await coroutine_function(session, *args)

    return asyncio.run(scenario())


def stored(folder) -> list[tuple[str, str, str]]:
    """(method, path, response) of each entry."""
    return [(entry["method"], entry["url"].split("/", 3)[3], entry["response"]) for entry in entries(folder)]


# ------------------------------------------------------------------------------------- requests
def test_requests_records_then_replays(upstream, tmp_path):
    answers = [requests.post(f"{upstream.url}/v1/x", json={"q": "é"}) for _ in range(2)]
    assert upstream.calls == 1
    assert answers[0].json() == answers[1].json() == {"n": 1, "echo": '{"q": "\\u00e9"}'}
    for answer in answers:  # a miss answers as its hits will: the stored headers only
        assert dict(answer.headers) == {"content-type": "application/json"}
        assert answer.status_code == 200 and answer.reason == "OK" and answer.url == f"{upstream.url}/v1/x"
    assert len(entries(tmp_path)) == 1
    assert cachy_stats().hits == 1


def looks(response: requests.Response) -> dict:
    """What code reads of a response besides its body."""
    return {
        "status": (response.status_code, response.reason, response.ok, response.url, response.encoding),
        "headers": (response.headers["Content-Type"], "content-encoding" in response.headers),
        "request": (response.request.method, response.request.url),
        "elapsed": response.elapsed.total_seconds() >= 0,
    }


READS = {
    "json": lambda response: response.json(),
    "text": lambda response: response.text,
    "content": lambda response: response.content,
    "iter_lines": lambda response: list(response.iter_lines()),
    "iter_content": lambda response: b"".join(response.iter_content(3)),
    "iter_content_none": lambda response: b"".join(response.iter_content(None)),
    "raw_read": lambda response: response.raw.read(),
    "raw_read_sized": lambda response: b"".join(iter(lambda: response.raw.read(5), b"")),
    "raw_stream": lambda response: b"".join(response.raw.stream(4)),
}


@pytest.mark.parametrize(
    ("way", "stream"),
    [(way, stream) for way in READS for stream in (False, True) if stream or not way.startswith("raw")],
)  # without stream=True, requests has read the raw body already
def test_a_requests_replay_reads_like_the_live_response(upstream, way, stream):
    path = "/events" if way in ("iter_lines", "raw_read_sized") else "/fixed"

    def read():
        response = requests.post(upstream.url + path, json={"q": 1}, stream=stream)
        return READS[way](response), looks(response)

    with no_cachy():
        live = read()
    recorded, replayed = read(), read()
    assert upstream.calls == 2
    assert live == recorded == replayed


def test_requests_raise_for_status_on_a_replayed_client_error(upstream):
    for _ in range(2):
        response = requests.post(f"{upstream.url}/status/404", json={})
        with pytest.raises(requests.HTTPError, match="404 Client Error: Not Found"):
            response.raise_for_status()
    assert upstream.calls == 1


def test_requests_errors_pass_through_unrecorded(upstream, tmp_path):
    assert [requests.post(f"{upstream.url}/status/500").status_code for _ in range(2)] == [500, 500]
    assert upstream.calls == 2
    assert entries(tmp_path) == []
    assert requests.post(f"{upstream.url}/status/500").headers["x-request-id"] == "req_1"  # untouched


def test_a_requests_stream_passes_chunks_on_as_they_arrive_and_records_at_the_end(upstream, tmp_path):
    upstream.pace = True
    for run in ("miss", "hit"):
        received = []
        with requests.post(f"{upstream.url}/events", stream=True) as response:
            for chunk in response.iter_content(None):
                received.append(chunk)
                upstream.first_received.set()
                if run == "miss" and len(received) < len(EVENTS):
                    assert entries(tmp_path) == []  # nothing is written before the stream's end
        assert b"".join(received) == b"".join(EVENTS)
    assert upstream.waited == [True]  # the server sent the rest only once the client had the first event
    assert stored(tmp_path) == [("POST", "events", b"".join(EVENTS).decode())]


def test_a_requests_stream_closed_early_is_completed_and_one_closed_unread_is_not_recorded(upstream, tmp_path):
    with requests.post(f"{upstream.url}/events", stream=True) as response:
        assert response.status_code == 200
    assert entries(tmp_path) == []
    with requests.post(f"{upstream.url}/events", stream=True) as response:
        assert next(response.iter_lines()) == b"data: 1"
    assert stored(tmp_path) == [("POST", "events", b"".join(EVENTS).decode())]


def test_a_requests_stream_that_breaks_records_nothing(upstream, tmp_path):
    received = []
    with (
        pytest.raises(requests.exceptions.ChunkedEncodingError),
        requests.post(f"{upstream.url}/broken", stream=True) as response,
    ):
        received.extend(response.iter_content(None))
    assert b"".join(received) == b"".join(EVENTS[:2])
    assert entries(tmp_path) == []
    assert cachy_stats().unrecorded == 1


def test_requests_gzip_is_recorded_and_replayed_decoded(upstream, tmp_path):
    answers = [requests.get(f"{upstream.url}/gzip") for _ in range(2)]
    assert upstream.calls == 1
    assert answers[0].json() == answers[1].json() == {"n": 1}
    assert all("content-encoding" not in answer.headers for answer in answers)
    assert entries(tmp_path)[0]["response"] == '{"n": 1}'


def test_requests_replay_mode_and_no_cachy(upstream, tmp_path):
    enable_cachy(tmp_path, doms=("127.0.0.1",), mode="replay")
    with pytest.raises(CachyMiss, match=r"no recorded response for POST http://127\.0\.0\.1"):
        requests.post(f"{upstream.url}/v1/x", json={})
    with no_cachy():
        assert requests.post(f"{upstream.url}/v1/x", json={}).json()["n"] == 1
    assert upstream.calls == 1
    assert entries(tmp_path) == []


def test_requests_reads_a_streamed_upload_and_still_sends_it(upstream, tmp_path):
    (tmp_path / "upload.bin").write_bytes(b"file body")
    for _ in range(2):
        with open(tmp_path / "upload.bin", "rb") as file:
            assert requests.post(f"{upstream.url}/v1/upload", data=file).json()["echo"] == "file body"
        chunks = (chunk for chunk in [b"generated ", "body"])
        assert requests.post(f"{upstream.url}/v1/upload", data=chunks).json()["echo"] == "generated body"
    assert upstream.calls == 2


def test_requests_to_other_hosts_go_untouched(upstream, tmp_path):
    enable_cachy(tmp_path, doms=("api.openai.com",))
    for _ in range(2):
        requests.post(f"{upstream.url}/v1/x", json={})
    assert upstream.calls == 2
    assert entries(tmp_path) == []


# -------------------------------------------------------------------------------------- aiohttp
async def post_json(session: aiohttp.ClientSession, url: str) -> tuple:
    async with session.post(url, json={"q": "é"}) as response:
        return await response.json(), response.status, response.reason, dict(response.headers), str(response.url)


def test_aiohttp_records_then_replays(upstream, tmp_path):
    answers = [run(post_json, f"{upstream.url}/v1/x") for _ in range(2)]
    assert upstream.calls == 1
    assert answers[0] == answers[1]
    assert answers[0] == (
        {"n": 1, "echo": '{"q": "\\u00e9"}'},
        200,
        "OK",
        {"content-type": "application/json"},
        f"{upstream.url}/v1/x",
    )
    assert len(entries(tmp_path)) == 1
    assert cachy_stats().hits == 1


async def read_all(response: aiohttp.ClientResponse) -> bytes:
    return await response.read()


async def iterate_lines(response: aiohttp.ClientResponse) -> list[bytes]:
    return [line async for line in response.content]


async def read_lines(response: aiohttp.ClientResponse) -> list[bytes]:
    lines = []
    while line := await response.content.readline():
        lines.append(line)
    return lines


async def iter_chunked(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    chunks = [chunk async for chunk in response.content.iter_chunked(4)]
    return b"".join(chunks), all(len(chunk) <= 4 for chunk in chunks)  # a live body's chunks vary with timing


async def iter_any(response: aiohttp.ClientResponse) -> bytes:
    return b"".join([chunk async for chunk in response.content.iter_any()])


async def read_after_release(response: aiohttp.ClientResponse) -> bytes:
    body = await response.read()
    response.release()
    with pytest.raises(aiohttp.ClientConnectionError, match="Connection closed"):
        await response.read()
    return body


AIOHTTP_READS = {
    "json": lambda response: response.json(),
    "text": lambda response: response.text(),
    "read": read_all,
    "lines": iterate_lines,
    "readline": read_lines,
    "iter_chunked": iter_chunked,
    "iter_any": iter_any,
    "release": read_after_release,
}


@pytest.mark.parametrize(
    ("way", "path"),
    [(way, path) for path in ("/fixed", "/events") for way in AIOHTTP_READS if (way, path) != ("json", "/events")],
)
def test_an_aiohttp_replay_reads_like_the_live_response(upstream, way, path):
    async def read(session):
        async with session.post(upstream.url + path, json={"q": 1}) as response:
            looks = (response.status, response.reason, response.ok, str(response.url), response.content_type)
            return await AIOHTTP_READS[way](response), looks, response.headers.get("content-encoding")

    with no_cachy():
        live = run(read)
    recorded, replayed = run(read), run(read)
    assert upstream.calls == 2
    assert live == recorded == replayed


def test_aiohttp_raise_for_status_on_a_replayed_client_error(upstream):
    async def post(session):
        async with session.post(f"{upstream.url}/status/404", json={}) as response:
            assert (response.status, response.ok, response.reason) == (404, False, "Not Found")
            assert await response.json() == {"error": {"message": "no"}}
            with pytest.raises(aiohttp.ClientResponseError, match="404, message='Not Found'"):
                response.raise_for_status()
        with pytest.raises(aiohttp.ClientResponseError, match="404"):  # raised by the session, on a hit
            await session.post(f"{upstream.url}/status/404", json={}, raise_for_status=True)

    for _ in range(2):
        run(post)
    assert upstream.calls == 1


def test_aiohttp_errors_pass_through_unrecorded(upstream, tmp_path):
    async def post(session):
        async with session.post(f"{upstream.url}/status/500") as response:
            return response.status, response.headers["x-request-id"], await response.json()

    assert run(post) == run(post) == (500, "req_1", {"error": {"message": "no"}})
    assert upstream.calls == 2
    assert entries(tmp_path) == []


def test_an_aiohttp_miss_passes_chunks_on_as_they_arrive_and_records_at_the_end(upstream, tmp_path):
    upstream.pace = True

    async def stream(session, run):
        received = []
        async with session.post(f"{upstream.url}/events") as response:
            async for chunk in response.content.iter_any():
                received.append(chunk)
                upstream.first_received.set()
                if run == "miss" and b"".join(received) != b"".join(EVENTS):
                    assert entries(tmp_path) == []  # nothing is written before the body's end
        return b"".join(received)

    assert run(stream, "miss") == run(stream, "hit") == b"".join(EVENTS)
    assert upstream.waited == [True]  # the server sent the rest only once the client had the first event
    assert stored(tmp_path) == [("POST", "events", b"".join(EVENTS).decode())]


def test_an_aiohttp_body_that_breaks_or_is_released_early_records_nothing(upstream, tmp_path):
    async def broken(session):
        async with session.post(f"{upstream.url}/broken") as response:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()

    async def released(session):
        upstream.pace = True  # the upstream holds the rest back until the first event is received
        async with session.post(f"{upstream.url}/events") as response:
            assert await response.content.readline() == b"data: 1\n"
        upstream.first_received.set()

    run(broken)
    run(released)
    assert entries(tmp_path) == []
    assert cachy_stats().unrecorded == 2


def test_an_aiohttp_body_that_arrived_whole_is_recorded_though_never_read(upstream, tmp_path):
    async def unread(session):
        async with session.post(f"{upstream.url}/fixed") as response:
            await asyncio.sleep(0.1)  # the whole body arrives meanwhile
            assert response.status == 200

    run(unread)
    assert len(entries(tmp_path)) == 1


def test_aiohttp_gzip_is_recorded_and_replayed_decoded(upstream, tmp_path):
    async def get(session):
        async with session.get(f"{upstream.url}/gzip") as response:
            return await response.json(), "content-encoding" in response.headers

    assert run(get) == run(get) == ({"n": 1}, False)
    assert upstream.calls == 1
    assert entries(tmp_path)[0]["response"] == '{"n": 1}'


def test_aiohttp_without_decompression_passes_an_encoded_body_through(upstream, tmp_path):
    async def get(session):
        async with session.get(f"{upstream.url}/gzip", auto_decompress=False) as response:
            return gzip.decompress(await response.read())

    assert run(get) == b'{"n": 1}'
    assert entries(tmp_path) == []
    assert cachy_stats().passed == 1


def test_aiohttp_replay_mode_and_no_cachy(upstream, tmp_path):
    enable_cachy(tmp_path, doms=("127.0.0.1",), mode="replay")
    with pytest.raises(CachyMiss, match=r"no recorded response for POST http://127\.0\.0\.1"):
        run(post_json, f"{upstream.url}/v1/x")
    with no_cachy():
        assert run(post_json, f"{upstream.url}/v1/x")[0]["n"] == 1
    assert upstream.calls == 1
    assert entries(tmp_path) == []


def test_aiohttp_to_other_hosts_goes_untouched(upstream, tmp_path):
    enable_cachy(tmp_path, doms=("api.openai.com",))
    run(post_json, f"{upstream.url}/v1/x")
    run(post_json, f"{upstream.url}/v1/x")
    assert upstream.calls == 2
    assert entries(tmp_path) == []


def test_aiohttp_keys_the_body_and_query_it_sends(upstream, tmp_path):
    """A session's base URL and params, form data and a streamed upload: keyed as they go out, and still sent."""

    async def chunks():
        yield b"streamed "
        yield b"upload"

    async def post(session, **kwargs):
        async with session.post("/v1/x", params={"a": "b c"}, **kwargs) as response:
            return (await response.json())["echo"]

    async def scenario():
        async with aiohttp.ClientSession(base_url=upstream.url) as session:
            return [await post(session, data=data) for data in ({"form": "é"}, chunks(), chunks())]

    assert asyncio.run(scenario()) == ["form=%C3%A9", "streamed upload", "streamed upload"]
    assert upstream.calls == 2
    assert [entry["url"] for entry in entries(tmp_path)] == [f"{upstream.url}/v1/x?a=b%20c"] * 2


# ------------------------------------------------------------------------------ across transports
@pytest.mark.parametrize("query", ["", "?alt=sse&key=SECRET", "?"], ids=["plain", "query", "empty-query"])
def test_one_request_has_one_key_through_httpx_requests_and_aiohttp(upstream, tmp_path, query):
    """Recorded through one, a hit through the others: the URL as each writes it, the JSON as each encodes it."""
    url = f"{upstream.url}/v1beta/models/gemini-x:generateContent{query}"
    body = {"contents": [{"parts": [{"text": "é ü"}]}], "config": {"temperature": 0}}

    async def through_aiohttp(session):
        async with session.post(url, json=body) as response:
            return await response.json()

    answers = [
        httpx.post(url, json=body).json(),
        requests.post(url, json=body).json(),
        run(through_aiohttp),
        httpx.post(url, content=json.dumps(body, indent=2)).json(),  # the same JSON, written otherwise
    ]
    assert answers == [gemini_answer(1)] * 4
    assert upstream.calls == 1
    assert len(entries(tmp_path)) == 1
    assert cachy_stats().hits == 3


def test_streamed_requests_share_a_key_between_httpx_and_requests(upstream, tmp_path):
    with httpx.stream("POST", f"{upstream.url}/events", json={}) as response:
        first = b"".join(response.iter_bytes())
    with requests.post(f"{upstream.url}/events", json={}, stream=True) as response:
        assert b"".join(response.iter_content(None)) == first
    assert upstream.calls == 1


# ------------------------------------------------------------------------------------ real SDKs
@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")  # its own
def test_google_genai_async_client_on_its_aiohttp_path(upstream, tmp_path):
    async def generate():
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=upstream.url))
        assert client._api_client._use_aiohttp()  # its default whenever aiohttp is installed
        answer = await client.aio.models.generate_content(model="gemini-x", contents="hi")
        stream = await client.aio.models.generate_content_stream(model="gemini-x", contents="hi")
        return answer.text, [chunk.text async for chunk in stream]

    assert asyncio.run(generate()) == asyncio.run(generate()) == ("gemini 1", ["gemini 2", "gemini 2"])
    assert upstream.calls == 2
    paths = [path.partition("/")[2] for _, path, _ in stored(tmp_path)]  # after the API version: v1, v1beta
    assert paths == ["models/gemini-x:generateContent", "models/gemini-x:streamGenerateContent?alt=sse"]


@pytest.mark.slow
def test_litellm_over_its_aiohttp_transport_records_each_call_once(upstream, tmp_path, monkeypatch):
    """litellm's httpx client sends through aiohttp: the httpx layer records, the aiohttp layer passes it on."""
    through_aiohttp = []
    handle = LiteLLMAiohttpTransport.handle_async_request

    async def spied(self, request):
        through_aiohttp.append(request.url.path)
        return await handle(self, request)

    monkeypatch.setattr(LiteLLMAiohttpTransport, "handle_async_request", spied)
    call = {"model": "openai/gpt-x", "messages": [{"role": "user", "content": "hi"}], "api_key": "k"}

    async def complete():
        answer = await litellm.acompletion(**call, api_base=f"{upstream.url}/v1")
        stream = await litellm.acompletion(**call, api_base=f"{upstream.url}/v1", stream=True)
        return answer.choices[0].message.content, "".join([c.choices[0].delta.content or "" async for c in stream])

    assert asyncio.run(complete()) == asyncio.run(complete()) == ("answer 1", "streamed 2")
    assert through_aiohttp == ["/v1/chat/completions"] * 2  # the misses; the hits never reached a transport
    assert upstream.calls == 2
    assert len(entries(tmp_path)) == 2
    assert cachy_stats().recorded == 2


# -------------------------------------------------------------------------------- lazy patching
def python(code: str, tmp_path) -> str:
    """Run `code` in a fresh interpreter that imports this cachy; its stdout."""
    root = str(Path(cachy.__file__).parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_neither_library_is_imported_by_cachy_and_one_imported_later_is_patched(upstream, tmp_path):
    code = f"""
import asyncio, sys
import cachy
cachy.enable_cachy(doms=("127.0.0.1",))
print(sorted({{"requests", "aiohttp", "urllib3"}} & set(sys.modules)))
import requests
print([requests.post("{upstream.url}/v1/x", json={{}}).json()["n"] for _ in range(2)])
import aiohttp

async def post():
    async with aiohttp.ClientSession() as session, session.post("{upstream.url}/v1/y", json={{}}) as response:
        return (await response.json())["n"]

print([asyncio.run(post()) for _ in range(2)])
cachy.disable_cachy()
print(requests.post("{upstream.url}/v1/x", json={{}}).json()["n"])
"""
    assert python(code, tmp_path).split("\n") == ["[]", "[1, 1]", "[2, 2]", "3", ""]


@pytest.mark.slow
def test_cachy_works_without_requests_and_aiohttp(upstream, tmp_path):
    code = f"""
import sys
sys.modules["requests"] = sys.modules["aiohttp"] = None  # as if not installed
import cachy, httpx
cachy.enable_cachy(doms=("127.0.0.1",))
print([httpx.post("{upstream.url}/v1/x", json={{}}).json()["n"] for _ in range(2)])
try:
    import aiohttp
except ImportError:
    print("no aiohttp")
cachy.disable_cachy()
"""
    assert python(code, tmp_path).split("\n") == ["[1, 1]", "no aiohttp", ""]


def test_disable_puts_back_the_originals_and_enable_wraps_once(tmp_path):
    from requests.adapters import HTTPAdapter

    originals = HTTPAdapter.__dict__["send"], aiohttp.ClientSession.__dict__["_request"]
    enable_cachy(tmp_path)
    enable_cachy(tmp_path)
    assert HTTPAdapter.send.__wrapped__ is originals[0]
    assert aiohttp.ClientSession._request.__wrapped__ is originals[1]
    disable_cachy()
    assert (HTTPAdapter.__dict__["send"], aiohttp.ClientSession.__dict__["_request"]) == originals


def test_an_aiohttp_without_middlewares_is_left_alone_and_says_so(tmp_path, monkeypatch):
    async def old_request(self, method, str_or_url, **kwargs):  # aiohttp before 3.12 had no middlewares
        raise AssertionError("not called here")

    monkeypatch.setattr(aiohttp.ClientSession, "_request", old_request)
    with pytest.warns(CachyWarning, match="cachy caches aiohttp from version 3.12 on"):
        enable_cachy(tmp_path)
    assert aiohttp.ClientSession._request is old_request
