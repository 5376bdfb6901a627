"""Test helpers: a fake upstream that counts its calls, and a reader of the cache file."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import requires
from types import ModuleType

import httpx
import httpx2
from packaging.requirements import Requirement


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


def entries(folder) -> list[dict]:
    """The parsed lines of `folder/cachy.jsonl`."""
    path = folder / "cachy.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def http_module(distribution: str) -> ModuleType:
    """The httpx an installed SDK builds on: httpx2 where it requires it (openai >= 3, anthropic >= 1,
    google-genai >= 3), else httpx. anthropic >= 1 rejects an httpx.Client, and openai 1.x an httpx2.Client."""
    requirements = [Requirement(line) for line in requires(distribution) or []]
    return httpx2 if any(r.name == "httpx2" and r.marker is None for r in requirements) else httpx
