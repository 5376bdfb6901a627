"""Test helpers: fake upstreams that count their calls (a MockTransport handler, and a server on 127.0.0.1),
the answers of the providers they stand for, ways to ask them and to record into a folder, a reader and
writers of the cache file, a fresh process's view of it, and the httpx module each SDK builds on."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import requires
from pathlib import Path
from types import ModuleType

import httpx
import httpx2
from packaging.requirements import Requirement

from cachy import core, disable_cachy, enable_cachy

CHAT = "https://api.openai.com/v1/chat/completions"
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}
MESSAGES = [{"role": "user", "content": "hi"}]


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


def ask(upstream: Upstream, question, url: str = CHAT) -> int:
    """Send question `question`; the answer says which upstream call produced it."""
    return upstream.client().post(url, json={"q": question}).json()["n"]


def record(folder: Path, upstream: Upstream, questions) -> list[str]:
    """Record `questions` into folder/cachy.jsonl and return its lines."""
    enable_cachy(folder)
    for question in questions:
        ask(upstream, question)
    disable_cachy()
    return (folder / "cachy.jsonl").read_text().splitlines(keepends=True)


def numbered(request, n):
    """An upstream reply that does not echo the request: answer number n."""
    return 200, JSON, json.dumps({"answer": n}).encode()


def answer_to(client, body: dict, url: str = CHAT):
    """The answer number (of `numbered`) that `client` gets for `body`."""
    return client.post(url, json=body).json()["answer"]


def counting() -> Upstream:
    """An upstream that answers only `{"n": call number}`."""
    return Upstream(json_reply(lambda request, n: {"n": n}))


def n_of(client, body: dict, **kwargs) -> int:
    """The call number (of `counting`) that answered `body`, posted to CHAT."""
    return client.post(CHAT, json=body, **kwargs).json()["n"]


def git(folder, *args) -> str:
    return subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, text=True).stdout


def fresh_cache(folder: Path, content: str | bytes) -> Path:
    """A folder this process has never loaded, whose cachy.jsonl holds `content`: as a new process would see it."""
    folder.mkdir(parents=True)
    data = content.encode() if isinstance(content, str) else content
    (folder / "cachy.jsonl").write_bytes(data)
    return folder


def as_a_new_process() -> None:
    """Forget every loaded index, as a new process (or notebook kernel) would. cachy keeps them in a private
    registry, which no public name clears: this is the one place the tests reach into it."""
    core._stores.clear()


def engine_in_use():
    """What would handle a request here and now: the innermost `cachy()` block's engine, else
    `enable_cachy`'s, else None. No public name says which: this is the one place the tests ask cachy."""
    return core._current_engine()


def hand_edit(tmp_path, **fields) -> None:
    """Rewrite the one entry in tmp_path/cachy.jsonl with `fields` changed, as a hand edit would."""
    path = tmp_path / "cachy.jsonl"
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, **fields}) + "\n")


def openai_reply(request, n):
    """openai's answer n to chat.completions or Responses, whole or streamed, with the tokens it used."""
    body = json.loads(request.content)
    if request.url.path.endswith("/responses"):
        response = {
            "id": f"resp_{n}",
            "object": "response",
            "created_at": 1,
            "model": body["model"],
            "status": "completed",
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "output": [
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": f"response {n}", "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": 21,
                "output_tokens": 8,
                "total_tokens": 29,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }
        if not body.get("stream"):
            return 200, JSON, json.dumps(response).encode()
        created = {**response, "status": "in_progress", "output": [], "usage": None}
        return (
            200,
            SSE,
            sse(
                [
                    ("response.created", {"type": "response.created", "sequence_number": 0, "response": created}),
                    ("response.completed", {"type": "response.completed", "sequence_number": 1, "response": response}),
                ]
            ),
        )
    chunk = {"id": f"c{n}", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    if body.get("stream"):
        delta = {"index": 0, "delta": {"content": f"streamed {n}"}, "finish_reason": "stop"}
        events = [
            (None, {**chunk, "choices": [delta], "usage": None}),
            (None, {**chunk, "choices": [], "usage": usage}),
        ]
        return 200, SSE, sse([*events, (None, "[DONE]")])
    message = {"index": 0, "message": {"role": "assistant", "content": f"answer {n}"}, "finish_reason": "stop"}
    return 200, JSON, json.dumps({**chunk, "object": "chat.completion", "choices": [message], "usage": usage}).encode()


def old_line(key: str, answer: int) -> str:
    """A line as cachy wrote it before it kept dates, durations and usage (key version 1)."""
    return json.dumps(
        {
            "key": key,
            "method": "POST",
            "url": CHAT,
            "status_code": 200,
            "headers": JSON,
            "response": json.dumps({"answer": answer, "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        }
    )


def http_module(distribution: str) -> ModuleType:
    """The httpx an installed SDK builds on: httpx2 where it requires it (openai >= 3, anthropic >= 1,
    google-genai >= 3), else httpx. anthropic >= 1 rejects an httpx.Client, and openai 1.x an httpx2.Client."""
    requirements = [Requirement(line) for line in requires(distribution) or []]
    return httpx2 if any(r.name == "httpx2" and r.marker is None for r in requirements) else httpx


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 256  # socketserver's 5 resets connections that come 50 at once (tests of coalescing)

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
