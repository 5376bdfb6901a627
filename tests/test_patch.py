"""The patch on httpx and httpx2: which hosts are cached, what is replayed, what is stored, and httpx alone
where httpx2 is not installed. Turning it on and off is in test_switches.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import subprocess
import sys

import httpx
import httpx2
import pytest
from helpers import CHAT, Upstream, ask, entries

from cachy import enable_cachy


# ------------------------------------------------------------------------------- domain filter
def test_foreign_host_goes_untouched_and_its_body_is_not_read(cache_dir):
    seen = []

    class Transport(httpx.BaseTransport):
        def handle_request(self, request):
            seen.append(hasattr(request, "_content"))  # True once somebody has read the body
            return httpx.Response(200, content=b"".join(request.stream))

    with httpx.Client(transport=Transport()) as client:
        body = iter([b"streamed ", b"body"])
        assert client.post("https://example.com/upload", content=body).content == b"streamed body"
    assert seen == [False]
    assert not (cache_dir / "cachy.jsonl").exists()


@pytest.mark.parametrize(
    ("url", "cached"),
    [
        ("https://api.openai.com/v1/x", True),
        ("https://eu.api.openai.com/v1/x", True),
        ("https://API.OpenAI.com/v1/x", True),
        ("https://api.openai.com.evil.example/v1/x", False),
        ("https://evil.example/api.openai.com/v1/x", False),
        ("https://notapi.openai.com/v1/x", False),
    ],
)
def test_the_host_is_matched_not_a_substring(cache_dir, upstream, url, cached):
    upstream.client().post(url, json={})
    assert len(entries(cache_dir)) == int(cached)


def test_custom_domains_extend_the_defaults(tmp_path, upstream):
    from cachy import doms

    enable_cachy(tmp_path, doms=(*doms, "api.example.ai"))
    client = upstream.client()
    client.post("https://api.example.ai/v1/x", json={})
    client.post("https://api.example.ai/v1/x", json={})
    assert upstream.calls == 1


def test_a_host_with_a_trailing_dot_is_cached_like_the_host(cache_dir, upstream):
    url = "https://api.openai.com./v1/chat/completions"
    assert [ask(upstream, 1, url=url), ask(upstream, 1, url=url)] == [1, 1]
    assert len(entries(cache_dir)) == 1


def test_a_domain_with_a_port_is_refused_when_cachy_is_enabled(tmp_path):
    with pytest.raises(ValueError, match=re.escape("api.example.ai:8443")):
        enable_cachy(tmp_path, doms=("api.example.ai:8443",))


# ------------------------------------------------------------------------------ replayed answer
@pytest.mark.parametrize("module", [httpx, httpx2])
def test_replay_is_the_same_modules_response_with_request_and_no_stale_headers(cache_dir, module):
    body = json.dumps({"answer": "hi"}).encode()

    def reply(request, n):
        headers = {"content-type": "application/json", "content-encoding": "gzip", "x-request-id": f"r{n}"}
        return 200, headers, gzip.compress(body)

    upstream = Upstream(reply)
    client = upstream.client(module)
    live, replayed = client.post(CHAT, json={"q": 1}), client.post(CHAT, json={"q": 1})
    assert upstream.calls == 1
    for response in (live, replayed):
        assert type(response) is module.Response
        assert response.request.url == CHAT
        assert response.content == body
        assert not {"content-encoding", "content-length", "transfer-encoding"} & set(response.headers)
        response.raise_for_status()
    assert dict(replayed.headers) == dict(live.headers) == {"content-type": "application/json"}
    assert replayed.elapsed.total_seconds() == 0  # code that logs it works on a replay too


@pytest.mark.parametrize("module", [httpx, httpx2])
def test_a_replay_reads_like_a_live_response(cache_dir, module):
    """Streamed or not, sync or async."""
    body = b"data: 1\n\ndata: 2\n\n"
    upstream = Upstream(lambda request, n: (200, {"content-type": "text/event-stream"}, body))
    client = upstream.client(module)
    for _ in range(2):
        response = client.post(CHAT, json={})
        assert response.content == response.read() == body
        assert list(response.iter_lines()) == ["data: 1", "", "data: 2", ""]
        with client.stream("POST", CHAT, json={}) as response:
            assert b"".join(response.iter_bytes()) == body

    async def streamed():
        async with (
            upstream.async_client(module) as async_client,
            async_client.stream("POST", CHAT, json={}) as response,
        ):
            return b"".join([chunk async for chunk in response.aiter_bytes()])

    assert asyncio.run(streamed()) == body
    assert upstream.calls == 2


def test_errors_are_passed_on_and_not_recorded(cache_dir):
    statuses = iter([500, 429, 401, 200])
    upstream = Upstream(lambda request, n: (next(statuses), {"retry-after": "1"}, b'{"error": "x"}'))
    client = upstream.client()
    assert [client.post(CHAT, json={}).status_code for _ in range(5)] == [500, 429, 401, 200, 200]
    assert client.post(CHAT, json={}).status_code == 200
    assert upstream.calls == 4
    assert [entry["status_code"] for entry in entries(cache_dir)] == [200]


def test_a_deterministic_client_error_is_recorded(cache_dir):
    upstream = Upstream(lambda request, n: (404, {"content-type": "application/json"}, b'{"error": "no model"}'))
    client = upstream.client()
    assert client.post(CHAT, json={"model": "gone"}).status_code == 404
    assert client.post(CHAT, json={"model": "gone"}).status_code == 404
    assert upstream.calls == 1


@pytest.mark.parametrize(
    "body",
    [bytes(range(256)) * 4, "café au lait, ½ price".encode("latin-1"), "naïve 😀 text".encode()],
    ids=["binary", "latin-1", "utf-8"],
)
def test_any_body_is_stored_losslessly(cache_dir, body):
    upstream = Upstream(lambda request, n: (200, {"content-type": "text/html"}, body))
    client = upstream.client()
    assert client.post(CHAT, json={}).content == body
    assert client.post(CHAT, json={}).content == body
    assert upstream.calls == 1
    assert entries(cache_dir)[0].get("binary", False) is (body != "naïve 😀 text".encode())


def test_an_unread_multipart_request_is_read_and_still_sent_whole(cache_dir, upstream):
    client = upstream.client()
    for _ in range(2):
        client.post("https://api.anthropic.com/v1/files", files={"file": ("a.txt", b"payload")})
    assert upstream.calls == 1
    assert b"payload" in upstream.requests[0].content


def test_headers_that_would_be_stale_are_never_stored_even_when_named(tmp_path):
    enable_cachy(tmp_path, hdrs=["Content-Encoding", "content-length", "X-Request-Id"])
    body = b'{"a": 1}'
    headers = {"content-type": "application/json", "content-encoding": "gzip", "x-request-id": "req_1"}
    upstream = Upstream(lambda request, n: (200, headers, gzip.compress(body)))
    client = upstream.client()
    assert client.post(CHAT, json={}).content == client.post(CHAT, json={}).content == body
    assert entries(tmp_path)[0]["headers"] == {"content-type": "application/json", "x-request-id": "req_1"}


def test_stored_headers_are_sorted_whatever_order_hdrs_names_them_in(tmp_path):
    names = [f"x-header-{letter}" for letter in "hcfadgbe"]  # all sort after content-type
    headers = {"content-type": "application/json", **dict.fromkeys(names, "1")}
    upstream = Upstream(lambda request, n: (200, headers, b"{}"))
    for order, folder in ((names, "given"), (names[::-1], "reversed"), (sorted(names), "sorted")):
        enable_cachy(tmp_path / folder, hdrs=order)
        upstream.client().post(CHAT, json={})
        stored = list(entries(tmp_path / folder)[0]["headers"])
        assert stored == sorted(stored) and len(stored) == 9, order


# ------------------------------------------------------------------------------- without httpx2


def test_without_httpx2_installed_httpx_alone_is_patched(tmp_path):
    script = f"""
import sys
sys.modules["httpx2"] = None  # as if it were not installed (it needs Python 3.11; cachy runs on 3.10)
import httpx
from cachy import disable_cachy, enable_cachy, httpx_stream
assert httpx_stream.HTTPX_MODULES == (httpx,)
original = httpx.Client.send
enable_cachy({str(tmp_path)!r})
client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={{"live": True}})))
with client.stream("POST", "{CHAT}", json={{}}) as response:
    response.read()
assert client.post("{CHAT}", json={{}}).json() == {{"live": True}}
disable_cachy()
assert httpx.Client.send is original
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert len(entries(tmp_path)) == 2
