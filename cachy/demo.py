"""`cachy demo`: what cachy does, in ten seconds, with no API key and no network."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from .core import cachy, cachy_stats


class FakeProvider(ThreadingHTTPServer):
    """A slow chat-completions endpoint on 127.0.0.1 that numbers its answers, so a replay is easy to tell."""

    def __init__(self, delay: float = 0.5):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay, self.calls = delay, 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FakeProvider:
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeProvider
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.calls += 1
        words = f"answer number {self.server.calls} to: {request['messages'][-1]['content']}".split()
        if request.get("stream"):
            return self._stream(words)
        time.sleep(self.server.delay)
        usage = {"prompt_tokens": 12, "completion_tokens": len(words)}
        body = json.dumps(
            {"id": f"fake-{self.server.calls}", "choices": [{"message": {"content": " ".join(words)}}], "usage": usage}
        )
        self._start("application/json", {"content-length": str(len(body))})
        self.wfile.write(body.encode())

    def _stream(self, words: list[str]) -> None:
        """One server-sent event per word, spread over the delay, so the first byte comes early."""
        self._start("text/event-stream", {"transfer-encoding": "chunked"})
        usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": len(words)}})
        for word in [*words, usage, "[DONE]"]:
            time.sleep(self.server.delay / len(words))
            data = word if word in (usage, "[DONE]") else json.dumps({"choices": [{"delta": {"content": word + " "}}]})
            event = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _start(self, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, *args) -> None:  # keep the demo's output to what cachy did
        pass


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def _outcome(before: int) -> str:
    return "hit" if cachy_stats().hits > before else "miss, recorded"


def run(delay: float = 0.5) -> Path:
    """Make one call and one streamed call twice each through cachy, printing what happened; returns the file."""
    folder = Path(tempfile.mkdtemp(prefix="cachy-demo-"))
    with FakeProvider(delay) as provider, httpx.Client(base_url=provider.url) as client:
        print(f"A fake LLM provider on {provider.url} answers in about {delay} s.")
        with cachy(cache_dir=folder, doms=("127.0.0.1",)):
            _calls(client)
        print(f"The provider was called {provider.calls} times.")
    print(f"The cache file is {folder / 'cachy.jsonl'}")
    return folder / "cachy.jsonl"


def _calls(client: httpx.Client) -> None:
    """One call and one streamed call, twice each, with what cachy did and how long it took."""
    question = {"model": "demo", "messages": [{"role": "user", "content": "why cache LLM calls?"}]}
    for attempt in (1, 2):
        hits = cachy_stats().hits
        start = time.perf_counter()
        answer = client.post("/v1/chat/completions", json=question).json()["choices"][0]["message"]["content"]
        print(f"call {attempt}:   {_outcome(hits):<15} {_ms(time.perf_counter() - start)}  {answer!r}")
    for attempt in (1, 2):
        hits = cachy_stats().hits
        start = time.perf_counter()
        first = None  # when the first chunk came
        with client.stream("POST", "/v1/chat/completions", json={**question, "stream": True}) as response:
            for _ in response.iter_bytes():
                first = first or time.perf_counter() - start
        total = time.perf_counter() - start
        print(f"stream {attempt}: {_outcome(hits):<15} {_ms(total)}  (first bytes after {_ms(first).strip()})")
    print(cachy_stats())
