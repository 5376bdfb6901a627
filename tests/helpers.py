"""Test helpers: fake upstreams that count their calls (a MockTransport handler, and a server on 127.0.0.1),
a reader of the cache file, and the httpx module each SDK builds on."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import requires
from types import ModuleType

import httpx
import httpx2
from packaging.requirements import Requirement

CHAT = "https://api.openai.com/v1/chat/completions"
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}


class Upstream:
    """A fake provider for MockTransport. `reply(request, n)` gives the n-th answer (status, headers, body);
    a body that is a list of byte chunks is streamed. It counts calls, so a replay is told from a second live call."""

    def __init__(self, reply: Callable[[httpx.Request, int], tuple[int, dict, bytes | list[bytes]]]):
        self.reply, self.calls, self.requests = reply, 0, []

    def __call__(self, request):
        self.calls += 1
        self.requests.append(request)
        status, headers, body = self.reply(request, self.calls)
        module = httpx2 if isinstance(request, httpx2.Request) else httpx
        if isinstance(body, list):
            return module.Response(status, headers=headers, stream=chunked(module, body))
        return module.Response(status, headers=headers, content=body)

    def client(self, module=httpx, **kwargs):
        return module.Client(transport=module.MockTransport(self), **kwargs)

    def async_client(self, module=httpx, **kwargs):
        return module.AsyncClient(transport=module.MockTransport(self), **kwargs)


def chunked(module, chunks: Iterable[bytes]):
    """A stream of `chunks`, read once, for either module (MockTransport wants that module's stream classes)."""

    class Chunks(module.SyncByteStream, module.AsyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield from chunks

        async def __aiter__(self):
            for chunk in chunks:
                yield chunk

    return Chunks()


def json_reply(make: Callable[[httpx.Request, int], dict]):
    """An Upstream reply function answering JSON made from the request and the call number."""
    return lambda request, n: (200, {"content-type": "application/json"}, json.dumps(make(request, n)).encode())


def sse(events: list[tuple[str | None, dict | str]]) -> list[bytes]:
    """Server-sent events, one chunk each, each ending with the blank line the SDKs need."""
    chunks = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        chunks.append(((f"event: {name}\n" if name else "") + f"data: {text}\n\n").encode())
    return chunks


def anthropic_answer(body: dict, n: int, text: str, tokens: tuple[int, int] = (1, 1), headers: dict = JSON):
    """anthropic's answer to a Messages request `body` (status, headers, body): whole, or the events of a
    stream when `body` asks for one, with the input tokens at its start and the output tokens at its end."""
    input_tokens, output_tokens = tokens
    message = {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    if not body.get("stream"):
        done = {**message, "content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}
        return (
            200,
            headers,
            json.dumps({**done, "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}).encode(),
        )
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
    events = [
        ("message_start", {"type": "message_start", "message": message}),
        ("content_block_start", start),
        ("content_block_delta", delta),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {**end, "usage": {"output_tokens": output_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return 200, SSE, sse(events)


def entries(folder) -> list[dict]:
    """The parsed lines of `folder/cachy.jsonl`."""
    path = folder / "cachy.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def http_module(distribution: str) -> ModuleType:
    """The httpx an installed SDK builds on: httpx2 where it requires it (openai >= 3, anthropic >= 1,
    google-genai >= 3), else httpx. anthropic >= 1 rejects an httpx.Client, and openai 1.x an httpx2.Client."""
    requirements = [Requirement(line) for line in requires(distribution) or []]
    return httpx2 if any(r.name == "httpx2" and r.marker is None for r in requirements) else httpx


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hangs up is no server error
            super().handle_error(request, client_address)


class Server:
    """A fake provider on a real socket: a threaded HTTP/1.1 server on 127.0.0.1 that answers like Upstream
    (`reply(request, n)`, with an httpx.Request). A body that is a list of chunks goes out chunked, one HTTP
    chunk each, `pause` seconds apart, and the stream's end comes `pause` after its last event, as a real
    provider's does. Unlike a MockTransport's stream, it can be read only once."""

    def __init__(self, reply: Callable[[httpx.Request, int], tuple[int, dict, bytes | list[bytes]]], pause=0.01):
        self.reply, self.pause, self.calls, self.requests = reply, pause, 0, []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Server:
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()  # quick shutdown
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, method: str, path: str, headers: dict, body: bytes):
        request = httpx.Request(method, self.url + path, headers=headers, content=body)
        with self._lock:
            self.calls += 1
            self.requests.append(request)
            n = self.calls
        return self.reply(request, n)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                try:
                    status, headers, body = server._answer(self.command, self.path, dict(self.headers), self._body())
                except Exception as error:  # a failed assertion in `reply`: answer, rather than hang the client
                    status, headers, body = 500, {"content-type": "text/plain"}, repr(error).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if isinstance(body, list):
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for chunk in body:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                        time.sleep(server.pause)
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                self.wfile.flush()

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    parts = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(parts)
                return self.rfile.read(int(self.headers.get("content-length", 0)))

            def log_message(self, *args):
                pass

        return Handler
